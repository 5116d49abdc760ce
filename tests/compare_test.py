"""`python -m jaxcl.compare`: one table (markdown + CSV) and one PNG over several workdirs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from helpers import ROOT

from jaxcl import compare


def _workdir(tmp_path, name, preset, results, method=None, dirname=None, **config):
  root = tmp_path / (dirname or f"{name}-{preset}")
  root.mkdir()
  config = {"name": name, "preset": preset, "method": {"name": method or name}, **config}
  (root / "config.json").write_text(json.dumps(config))
  (root / "results.json").write_text(json.dumps(results))
  return root


def _cil(a_curve, forgetting, wall=90.0):
  return {
    "method": "x",
    "acc_matrix": [[a_curve[0]]],
    "A_last": a_curve[-1],
    "A_avg": float(np.mean(a_curve)),
    "A_curve": a_curve,
    "forgetting": forgetting,
    "task_il_A_last": 97.5,
    "wall_seconds": wall,
    "train_compiles": 1,
  }


def _cpt():
  curve = [
    {
      "step": s,
      "tokens": 1000 * s,
      "domain": "prose" if s <= 2 else "code",
      "val_loss": {"prose": 3.0 - 0.1 * s, "code": 3.5 - 0.05 * s},
    }
    for s in (1, 2, 3, 4)
  ]
  return {
    "domains": ["prose", "code"],
    "loss_matrix": [[2.8, 3.4], [2.7, 3.3]],
    "final_avg_loss": 3.0,
    "forgetting": [0.125],
    "curve": curve,
    "wall_seconds": 30.0,
    "train_compiles": 1,
  }


def test_table_rows_carry_each_runs_numbers(tmp_path):
  a = _workdir(tmp_path, "l2p", "default", _cil([90.0, 60.0, 51.52], 23.82, wall=348.0))
  b = _workdir(tmp_path, "finetune", "default", _cil([95.0, 40.0, 26.3], 71.7))
  c = _workdir(tmp_path, "cpt", "smoke", _cpt(), method="lm")
  text = compare.compare([str(a), str(b), str(c)], str(tmp_path / "out"))
  lines = text.splitlines()
  assert lines[0].startswith("| run | method | A_last | A_avg | forgetting")
  l2p = next(line for line in lines if line.startswith("| l2p:default"))
  assert "| 51.52 | 67.17 | 23.82 | 97.50 | — | — | 5.8 | 1 |" in l2p
  cpt = next(line for line in lines if line.startswith("| cpt:smoke"))
  assert "| 3.0000 | 0.1250 |" in cpt and cpt.count("—") == 4  # no CIL columns
  csv_rows = (tmp_path / "out" / "compare.csv").read_text().splitlines()
  assert len(csv_rows) == 4 and csv_rows[0].split(",")[:3] == ["run", "method", "A_last"]
  assert csv_rows[3].split(",")[2] == ""  # a CPT run has no A_last
  png = (tmp_path / "out" / "compare.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_globs_expand_and_unfinished_runs_are_named(tmp_path):
  _workdir(tmp_path, "l2p", "fmnist", _cil([80.0, 48.7], 47.1))
  _workdir(tmp_path, "ease", "fmnist", _cil([85.0, 65.8], 16.1))
  (tmp_path / "slca-fmnist").mkdir()  # still running: no results.json
  (tmp_path / "ease-fmnist.log").write_text("a run's console, beside its workdir\n")
  text = compare.compare([str(tmp_path / "*-fmnist*")], str(tmp_path))  # matches the .log too
  assert sum(line.startswith("|") for line in text.splitlines()) == 4  # header, rule, 2 runs
  assert "skipped (no results.json yet)" in text and "slca-fmnist" in text


def test_command_line_without_results_exits_with_a_message(tmp_path):
  done = subprocess.run(
    [sys.executable, "-m", "jaxcl.compare", str(tmp_path / "nothing"), f"--out={tmp_path}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 1
  assert "no results.json" in done.stderr and "Traceback" not in done.stderr


def test_runs_of_one_config_are_told_apart_and_folded_over_seeds(tmp_path):
  dirs = []
  for fraction, losses in ((0.0, (3.0, 3.2, 3.4)), (0.25, (2.5, 2.5, 2.8))):
    for seed, loss in enumerate(losses):
      results = {**_cpt(), "final_avg_loss": loss, "forgetting": [0.1 * (seed + 1)]}
      replay = {"fraction": fraction, "source": "seen"}
      dirs.append(
        _workdir(
          tmp_path,
          "cpt",
          "default",
          results,
          "lm",
          f"r{fraction}-s{seed}",
          seed=seed,
          replay=replay,
        )
      )
  rows = compare.compare([str(d) for d in dirs], str(tmp_path / "all")).splitlines()[2:]
  # Six rows, each labelled with what sets it apart from the others of cpt:default.
  assert [r.split(" | ")[0] for r in rows[:2]] == [
    "| cpt:default replay.fraction=0.0 seed=0",
    "| cpt:default replay.fraction=0.0 seed=1",
  ]
  folded = compare.compare([str(d) for d in dirs], str(tmp_path / "f"), fold_seeds=True)
  rows = folded.splitlines()[2:]
  assert len(rows) == 2
  assert rows[0].startswith("| cpt:default replay.fraction=0.0 | lm |")
  assert "| 3.2000 ± 0.2000 (3) | 0.2000 ± 0.1000 (3) | 0.5 ± 0.0 (3) | 1 |" in rows[0]
  assert "| 2.6000 ± 0.1732 (3) |" in rows[1]
  # Paired by seed against the replay-free runs: the gap is clear though the spreads overlap.
  base = str(tmp_path / "r0.0-s*")
  paired = compare.compare([str(d) for d in dirs], str(tmp_path / "p"), True, base).splitlines()
  assert paired[0].endswith("| vs_baseline | wall_min | train_compiles |")
  assert "| 0.0000 ± 0.0000 (3) | 0.5 ± 0.0 (3) |" in paired[2]
  assert "| -0.6000 ± 0.1000 (3) | 0.5 ± 0.0 (3) |" in paired[3]
