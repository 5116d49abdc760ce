"""Every notebooks/*.ipynb runs top to bottom in a fresh kernel, and is stored clean.

The kernel gets `JAXCL_NOTEBOOK_SMOKE=1` (each notebook then shrinks its runs to seconds) and
one CPU device, like a single-chip Colab runtime; cells meant for Colab, a TPU or user data
skip themselves (see the first cell of each notebook).
"""

import glob
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' (nbclient)")
kernelspec = pytest.importorskip("jupyter_client.kernelspec", reason="needs jupyter_client")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
KERNEL = "python3"
COLAB = "https://colab.research.google.com/github/"


def _ids(paths):
  return [os.path.basename(p) for p in paths]


def _has_kernel() -> bool:
  try:
    return KERNEL in kernelspec.KernelSpecManager().find_kernel_specs()
  except Exception:  # noqa: BLE001  (a broken Jupyter install: skip, don't error)
    return False


def test_there_are_notebooks():
  names = set(_ids(NOTEBOOKS))
  expected = ("quickstart", "continual_pretraining", "growth", "read_workdir")
  assert {f"{name}.ipynb" for name in expected} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_stored_without_outputs_and_with_colab_link(path):
  with open(path) as f:
    nb = json.load(f)
  for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] == "code":
      assert not cell["outputs"] and cell["execution_count"] is None, f"cell {i} has outputs"
  first = "".join(nb["cells"][0]["source"])
  links = re.findall(re.escape(COLAB) + r"[^)\s]+", first)
  assert links, "the first cell has no Open-in-Colab link"
  assert all(link.endswith(f"/blob/main/notebooks/{os.path.basename(path)}") for link in links)


def _repository():
  """notebooks/repository.py, the one place naming the repository the notebooks install."""
  spec = importlib.util.spec_from_file_location(
    "repository", os.path.join(ROOT, "notebooks", "repository.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_install_cell_and_colab_link_come_from_notebooks_repository_py(path):
  repo = _repository()
  with open(path) as f:
    cells = json.load(f)["cells"]
  install = "".join(cells[repo.install_cell_index(cells)]["source"])
  assert install == repo.INSTALL_CELL.format(repository=repo.REPOSITORY, branch=repo.BRANCH), (
    "run `python notebooks/repository.py`"
  )
  assert repo.colab_link(os.path.basename(path)) in "".join(cells[0]["source"])


def _run_install_cell(monkeypatch, fail: bool = False) -> list:
  """Runs the install cell as on Colab, with a `subprocess.run` that records its calls."""
  repo = _repository()
  calls = []

  def run(cmd, **kwargs):
    calls.append((cmd, kwargs))
    if fail:
      raise subprocess.CalledProcessError(128, cmd)

  monkeypatch.setattr(subprocess, "run", run)
  monkeypatch.setattr(sys, "path", list(sys.path))
  cell = repo.INSTALL_CELL.format(repository=repo.REPOSITORY, branch=repo.BRANCH)
  exec(cell, {"ON_COLAB": True, "os": os, "sys": sys})  # noqa: S102
  return calls


def test_install_cell_on_colab_clones_and_keeps_the_runtime_jax(monkeypatch):
  monkeypatch.setenv("JAXCL_REPOSITORY", "https://example.com/fork.git")
  (clone, clone_kw), (pip, pip_kw) = _run_install_cell(monkeypatch)
  assert clone[:2] == ["git", "clone"] and clone[-2:] == [
    "https://example.com/fork.git",
    "/content/jaxcl",
  ]
  installed = importlib.metadata.version("jax")
  assert pip[1:] == ["-m", "pip", "install", "-q", "-e", "/content/jaxcl", f"jax=={installed}"]
  assert clone_kw == pip_kw == {"check": True}


def test_a_failed_clone_stops_the_install_cell(monkeypatch):
  with pytest.raises(subprocess.CalledProcessError):
    _run_install_cell(monkeypatch, fail=True)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_runs_top_to_bottom(path, tmp_path, monkeypatch):
  if not _has_kernel():
    pytest.skip(f"no Jupyter kernel {KERNEL!r}: pip install -e '.[test]' (ipykernel)")
  # The kernel inherits this environment: smoke-sized runs, one CPU device, temp files here,
  # the session's XLA compilation cache (tests/conftest.py; the notebooks share smoke steps).
  monkeypatch.setenv("JAXCL_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  for name in ("JAXCL_CIFAR100_DIR", "JAXCL_VIT_B16", "JAXCL_WORKDIR"):
    monkeypatch.delenv(name, raising=False)
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    nb,
    timeout=300,
    kernel_name=KERNEL,
    resources={"metadata": {"path": os.path.dirname(path)}},
  )
  client.execute()  # raises CellExecutionError naming the failing cell and its traceback
