"""End-to-end behaviour of the class-incremental loop on tiny runs."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from helpers import (
  THREE_TASKS,
  build_learner,
  load_config,
  restore_last,
  run_tasks,
  shared_run,
)

from jaxcl import checkpoint
from jaxcl.engine import loop


def run(tmp_path, name="finetune", preset="smoke", traces=None, **overrides):
  config = load_config(name, preset, **overrides)
  return run_tasks(config, tmp_path), config


def test_three_tasks_compile_the_train_step_once():
  results, _ = shared_run("finetune", **THREE_TASKS)
  assert results["num_tasks"] == 3
  assert results["train_compiles"] == 1
  assert results["traces"]["train"] == 1
  assert results["traces"]["begin_task"] == 1


def test_results_json_has_the_design_keys():
  results, workdir = shared_run("finetune", **THREE_TASKS)
  workdir = pathlib.Path(workdir)
  on_disk = json.loads((workdir / "results.json").read_text())
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
  assert len(acc) == 3 and acc[0][1] is None and acc[1][2] is None and acc[2][2] is not None
  del results["traces"]  # helpers.run_tasks adds it
  assert on_disk == json.loads(json.dumps(results))
  for f in ("config.json", "metrics.jsonl", "acc_matrix.csv", "acc_matrix.png"):
    assert (workdir / f).exists(), f
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"step", "task", "loss", "lr", "examples_per_sec"} <= set(lines[0])
  assert [x["step"] for x in lines] == sorted(x["step"] for x in lines)
  assert os.listdir(workdir / "tb")


def test_simplecil_takes_no_gradient_step_and_beats_chance():
  results, _ = shared_run("simplecil", **THREE_TASKS)
  assert "train" not in results["traces"]
  assert results["A_last"] > 100 / 6


def test_joint_is_one_task_over_all_classes():
  results, _ = shared_run("joint", **THREE_TASKS)
  assert results["num_tasks"] == 1
  assert len(results["class_order"]) == THREE_TASKS["data.num_classes"]


def test_nan_loss_stops_with_step_and_metric_named(tmp_path):
  with pytest.raises(loop.NonFiniteLoss, match=r"step 1 .*'update_norm' = nan"):
    run(tmp_path, **{"optim.lr": float("nan"), "optim.clip_norm": 0.0, "data.num_classes": 2})


def test_nan_skip_policy_skips_every_bad_step_and_keeps_the_parameters(tmp_path):
  """A NaN learning rate makes every update NaN: each step is counted and skipped, and the
  parameters and optimizer state at the end are the initial ones, finite."""
  overrides = {"optim.lr": float("nan"), "optim.clip_norm": 0.0, "train.nan_policy": "skip"}
  results, config = run(tmp_path, **overrides)
  steps = results["num_tasks"] * config.train.steps_per_task
  assert results["skipped_steps"] == steps
  learner = build_learner(config, config.data.num_classes)
  final = restore_last(learner, tmp_path)
  assert int(final.step) == steps
  start = leaves((learner.state.params, learner.state.opt))
  end = leaves((final.params, final.opt))
  assert end.keys() == start.keys()
  for path, x in end.items():
    assert np.isfinite(x).all(), path
    np.testing.assert_array_equal(x, start[path], err_msg=path)


def test_same_seed_same_results(tmp_path):
  a, _ = shared_run("finetune", **THREE_TASKS)
  b, _ = run(tmp_path, **THREE_TASKS)
  assert a["acc_matrix"] == b["acc_matrix"]
  np.testing.assert_equal(a["A_last"], b["A_last"])


def leaves(tree) -> dict:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


def test_every_task_boundary_checkpoint_is_kept_even_without_gradient_steps():
  _, workdir = shared_run("simplecil", **THREE_TASKS)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert len(ckpt.steps()) == 3
  ckpt.close()
