"""Where the notebooks install jaxcl from on Colab: the one place that names the repository.

Change `REPOSITORY` (or `BRANCH`), then run `python notebooks/repository.py`: it writes the
install cell and the Open-in-Colab link of every notebook from them
(tests/notebooks_test.py fails while a notebook disagrees). A user can also point one session
elsewhere without editing anything: `JAXCL_REPOSITORY=https://github.com/me/jaxcl` in the
Colab environment, before the install cell runs.
"""

from __future__ import annotations

import glob
import json
import os
import re

REPOSITORY = "https://github.com/jaxcl/jaxcl"
BRANCH = "main"

HERE = os.path.dirname(os.path.abspath(__file__))

# Colab's TPU runtime (v5e-1) and GPU runtimes come with jax built for their accelerator: the
# cell keeps that jax (pinned to the installed version, so pip fails loudly rather than replace
# it) and installs jax[tpu] only where there is no jax at all. Any failed step raises.
INSTALL_CELL = """\
REPOSITORY = "{repository}"  # written by notebooks/repository.py
if ON_COLAB:
  import importlib.metadata
  import subprocess

  checkout = "/content/jaxcl"
  if not os.path.isdir(checkout):
    source = os.environ.get("JAXCL_REPOSITORY", REPOSITORY)
    clone = ["git", "clone", "-q", "--depth", "1", "-b", "{branch}", source, checkout]
    subprocess.run(clone, check=True)
  try:
    keep = [f"jax=={{importlib.metadata.version('jax')}}"]  # the runtime's own jax
  except importlib.metadata.PackageNotFoundError:
    keep = ["jax[tpu]"]
  pip = [sys.executable, "-m", "pip", "install", "-q", "-e", checkout, *keep]
  subprocess.run(pip, check=True)
  sys.path.insert(0, checkout)  # the editable install is seen after a restart only
else:
  print("not on Colab: using the jaxcl installed in this environment")"""

_COLAB = "https://colab.research.google.com/github/"


def colab_link(notebook: str) -> str:
  """The Open-in-Colab address of `notebooks/<notebook>` in REPOSITORY at BRANCH."""
  owner_name = REPOSITORY.removeprefix("https://github.com/")
  return f"{_COLAB}{owner_name}/blob/{BRANCH}/notebooks/{notebook}"


def install_cell_index(cells: list[dict]) -> int:
  """The index of a notebook's install cell (the code cell that clones the repository)."""
  return next(
    i
    for i, cell in enumerate(cells)
    if cell["cell_type"] == "code" and "git" in "".join(cell["source"])
  )


def _source(text: str) -> list[str]:
  lines = text.split("\n")
  return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def write(path: str) -> None:
  """Rewrites the install cell and the Colab link of one notebook from REPOSITORY."""
  with open(path) as f:
    nb = json.load(f)
  cells = nb["cells"]
  cell = INSTALL_CELL.format(repository=REPOSITORY, branch=BRANCH)
  cells[install_cell_index(cells)]["source"] = _source(cell)
  first = "".join(cells[0]["source"])
  link = colab_link(os.path.basename(path))
  cells[0]["source"] = _source(re.sub(re.escape(_COLAB) + r"[^)\s]+", link, first))
  with open(path, "w") as f:
    json.dump(nb, f, indent=1, ensure_ascii=False)
    f.write("\n")


if __name__ == "__main__":
  for notebook in sorted(glob.glob(os.path.join(HERE, "*.ipynb"))):
    write(notebook)
    print("wrote", os.path.relpath(notebook))
