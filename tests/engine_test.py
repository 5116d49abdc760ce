"""End-to-end behaviour of the class-incremental loop on tiny runs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import load_config

from jaxcl.cil import run as cil_run
from jaxcl.engine import loop, step


def run(tmp_path, name="finetune", preset="smoke", traces=None, **overrides):
  config = load_config(name, preset, **overrides)
  return cil_run.run(config, str(tmp_path), traces), config


def test_three_tasks_compile_the_train_step_once(tmp_path):
  traces = step.Traces()
  results, _ = run(tmp_path, traces=traces, **{"data.num_classes": 6})
  assert results["num_tasks"] == 3
  assert results["train_compiles"] == 1
  assert traces["train"] == 1
  assert traces["begin_task"] == 1


def test_results_json_has_the_design_keys(tmp_path):
  results, _ = run(tmp_path)
  on_disk = json.loads((tmp_path / "results.json").read_text())
  for key in (
    "method",
    "dataset",
    "num_tasks",
    "class_order",
    "acc_matrix",
    "A_last",
    "A_avg",
    "A_last_taskmean",
    "forgetting",
    "task_il_A_last",
    "versions",
    "devices",
    "seed",
    "wall_seconds",
    "train_compiles",
  ):
    assert key in on_disk, key
  acc = on_disk["acc_matrix"]
  assert len(acc) == 2 and acc[0][1] is None and acc[1][1] is not None
  assert on_disk == json.loads(json.dumps(results))
  for f in ("config.json", "metrics.jsonl", "acc_matrix.csv", "acc_matrix.png"):
    assert (tmp_path / f).exists(), f
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {"step", "task", "loss", "lr", "examples_per_sec"} <= set(lines[0])
  assert [x["step"] for x in lines] == sorted(x["step"] for x in lines)
  assert os.listdir(tmp_path / "tb")


def test_simplecil_takes_no_gradient_step_and_beats_chance(tmp_path):
  traces = step.Traces()
  results, _ = run(tmp_path, "simplecil", traces)
  assert traces["train"] == 0 and results["train_compiles"] == 0
  assert results["A_last"] > 100 / 4


def test_joint_is_one_task_over_all_classes(tmp_path):
  results, config = run(tmp_path, "joint")
  assert results["num_tasks"] == 1
  assert len(results["class_order"]) == config.data.num_classes


def test_nan_loss_stops_with_step_and_metric_named(tmp_path):
  with pytest.raises(loop.NonFiniteLoss, match=r"step 1 .*'update_norm' = nan"):
    run(tmp_path, **{"optim.lr": float("nan"), "optim.clip_norm": 0.0, "data.num_classes": 2})


def test_nan_skip_policy_keeps_training(tmp_path):
  results, _ = run(
    tmp_path, **{"optim.lr": float("nan"), "optim.clip_norm": 0.0, "train.nan_policy": "skip"}
  )
  assert results["skipped_steps"] > 0


def test_same_seed_same_results(tmp_path):
  a, _ = run(tmp_path / "a")
  b, _ = run(tmp_path / "b")
  assert a["acc_matrix"] == b["acc_matrix"]
  np.testing.assert_equal(a["A_last"], b["A_last"])


def test_every_task_boundary_checkpoint_is_kept_even_without_gradient_steps(tmp_path):
  from jaxcl import checkpoint  # noqa: PLC0415

  run(tmp_path, "simplecil", **{"data.num_classes": 6})
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  assert len(ckpt.steps()) == 3
  ckpt.close()
