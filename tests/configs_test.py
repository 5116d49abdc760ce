"""Every config's `smoke` preset runs; the command line rejects bad input by name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, THREE_TASKS, config_names, load_config, shared_run

CIL_PRESETS = ("default", "fmnist", "smoke", "cifar100", "imagenet_r")
NOT_CIL = {"pretrain_vit"}  # configs without the class-incremental benchmark presets


@pytest.mark.parametrize("name", config_names())
def test_smoke_preset_runs(name):
  """Over three tasks (the run the method contract tests read too): finite accuracies in
  [0, 100], A_last the sample-weighted mean of the last row, the step compiled at most once."""
  results, workdir = shared_run(name, **THREE_TASKS)
  last = np.asarray(results["acc_matrix"][-1], float)
  assert np.isfinite(last).all() and (last >= 0).all() and (last <= 100).all()
  counts = results["test_counts"]
  assert len(counts) == len(last) == results["num_tasks"] and min(counts) > 0
  # (the matrix in results.json is rounded to 4 decimals)
  np.testing.assert_allclose(results["A_last"], np.average(last, weights=counts), atol=1e-4)
  assert results["train_compiles"] == results["traces"].get("train", 0) <= 1
  assert os.path.exists(os.path.join(workdir, "results.json"))


@pytest.mark.parametrize("name", sorted(set(config_names()) - NOT_CIL))
def test_config_has_the_standard_presets_and_they_resolve(name):
  for preset in CIL_PRESETS:
    config = load_config(name, preset)
    assert config.preset == preset
    assert config.name == name


def _cli(*args, cwd):
  env = {**os.environ, "PYTHONPATH": ROOT}
  return subprocess.run(
    [sys.executable, "-m", "jaxcl.main", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_command_line_runs_smoke_and_writes_default_workdir(tmp_path):
  out = _cli(f"--config={ROOT}/configs/finetune.py:smoke", cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  workdir = tmp_path / "runs" / "finetune-smoke"
  results = json.loads((workdir / "results.json").read_text())
  assert results["train_compiles"] == 1
  # The console: jaxcl's own lines, bare; orbax's INFO records only in log.txt.
  assert out.stdout.startswith("finetune:smoke -> runs/finetune-smoke: {'A_last'")
  lines = [line for line in re.split(r"[\r\n]", out.stderr) if line.strip()]
  assert "config finetune:smoke -> workdir runs/finetune-smoke" in lines
  # One accuracy row per task (the progress bar's refreshes also start with "task i/n").
  rows = [line for line in lines if line.startswith("task ") and "accuracy per seen task" in line]
  assert len(rows) == results["num_tasks"], lines
  assert not any("checkpoint_manager.py" in line for line in lines), out.stderr[-3000:]
  log = (workdir / "log.txt").read_text()
  assert "checkpoint_manager.py" in log and "accuracy per seen task" in log


@pytest.mark.parametrize(
  "args,needle",
  [
    (("finetune.py:smoke", "--config.data.no_such_key=1"), "unknown config key.*no_such_key"),
    (("finetune.py:smoke", "--config.data.batch_size=lots"), "batch_size.*lots"),
    (("finetune.py:nope",), "unknown preset 'nope'.*smoke"),
    (("nope.py",), r"nope\.py.*\n.*configs/<name>\.py\[:<preset>\]"),
  ],
)
def test_a_bad_command_line_exits_1_with_a_message_and_no_traceback(args, needle, tmp_path):
  config, *overrides = args
  out = _cli(f"--config={ROOT}/configs/{config}", *overrides, cwd=tmp_path)
  assert out.returncode == 1
  assert re.search(f"jaxcl: .*{needle}", out.stderr), out.stderr
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "runs").exists()


def test_unknown_preset_is_an_error_listing_presets():
  with pytest.raises(ValueError, match="unknown preset 'nope'.*smoke"):
    load_config("finetune", "nope")
