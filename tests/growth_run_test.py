"""Growth inside a continual-pretraining run: the configs, recompilation, results, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from helpers import ROOT, cpu_env, load_config, main_command, run_tasks, shared_run

from jaxcl import checkpoint
from jaxcl.data import text
from jaxcl.lm import growth_events, models, two_stage

CONFIGS = ("growth_stack", "growth_msg", "growth_bert2bert", "growth_ligo")
EXACT = {"growth_msg", "growth_bert2bert"}  # the smoke events are function preserving


@pytest.mark.parametrize("name", CONFIGS)
def test_growth_config_smoke_run(name, tmp_path):
  config = load_config(name, "smoke")
  results = run_tasks(config, tmp_path)
  events = results["growth_events"]
  assert results["train_compiles"] == 1 + len(config.growth.events) == 1 + len(events)
  for event, planned in zip(events, config.growth.events, strict=True):
    assert set(event) >= {"step", "operator", "from", "to", "max_abs_logit_change"}
    assert event["step"] == planned["step"]
    assert event["to"]["num_layers"] >= event["from"]["num_layers"]
    if name in EXACT:
      assert event["max_abs_logit_change"] < 1e-5
    else:
      assert event["max_abs_logit_change"] > 1e-3
  if name == "growth_msg":  # one dimension per event
    grown = [
      sum(e["from"][k] != e["to"][k] for k in e["from"] if k != "num_kv_heads") for e in events
    ]
    assert grown == [1] * len(events)
  flops = [p["flops"] for p in results["curve"]]
  assert all(b > a for a, b in zip(flops, flops[1:], strict=False))
  assert results["flops_seen"] == pytest.approx(flops[-1])
  # MFU per model shape: one phase per shape, back to back from step 0 to the last step.
  last = config.train.steps_per_domain * len(results["domains"])
  phases = results["mfu_phases"]
  bounds = [0, *(e["step"] for e in events), last]
  assert [p["steps"] for p in phases] == [list(b) for b in zip(bounds, bounds[1:], strict=False)]
  assert sum(p["flops"] for p in phases) == pytest.approx(results["flops_seen"])
  per_step = [p["flops"] / (p["steps"][1] - p["steps"][0]) for p in phases]
  assert all(b > a for a, b in zip(per_step, per_step[1:], strict=False))
  assert np.isfinite(results["loss_matrix"]).all()
  if config.growth.two_stage_steps:  # bert2BERT's stage 1 counts its sub-models' FLOPs
    assert results["flops_seen"] == pytest.approx(_flops_with_sub_models(config, results))
  written = json.loads((tmp_path / "results.json").read_text())
  assert written["growth_events"] == results["growth_events"]
  # The smoke run exercises what the default preset runs: its operators and optimizer rules.
  default = load_config(name, "default")
  assert {e["operator"] for e in default.growth.events} == {e["operator"] for e in events}
  assert default.growth.opt_state == config.growth.opt_state
  assert default.growth.lr_after == config.growth.lr_after


def _flops_with_sub_models(config, results) -> float:
  """The run's FLOPs recounted step by step: each step's model shape, or in a stage 1 its
  sampled sub-model (jaxcl/lm/two_stage.py), which must be shallower at some step."""
  vocab = text.make_tokenizer(config.data.tokenizer).vocab_size
  plan = growth_events.GrowthPlan(config, models.shape(config, vocab), None, None, 2)
  steps = [int(e["step"]) for e in plan.events]
  sub_models = two_stage.from_config(config, steps, [c.num_layers for c in plan.cfgs[1:]])
  total = config.train.steps_per_domain * len(results["domains"])
  tokens_per_step = results["tokens_seen"] / total
  flops, shallower = 0.0, False
  for t in range(total):
    cfg = plan.cfgs[sum(s <= t for s in steps)]
    depth = sub_models.depth_at(t)
    if depth is not None:
      shallower |= depth < cfg.num_layers
      cfg = dataclasses.replace(cfg, num_layers=depth)
    flops += tokens_per_step * models.flops_per_token(cfg, config.data.seq_len)
  assert shallower
  return flops


def _ckpt_steps(workdir) -> dict[int, int]:
  """Checkpoint id -> the global step saved there (from its metadata)."""
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"))
  steps = {i: ckpt.read_meta(i)["step"] for i in ckpt.steps()}
  ckpt.close()
  return steps


def _killed_after(straight_dir, workdir, step: int, later: str = "deleted") -> None:
  """A copy of a straight run "killed" after `step` steps: no results, and its later
  checkpoints never happened ("deleted") or lost their arrays with metadata intact
  ("corrupted")."""
  shutil.copytree(straight_dir, workdir)
  for name in ("results.json", "made_once.json"):
    os.remove(workdir / name)
  for i, saved in _ckpt_steps(workdir).items():
    if saved > step:
      shutil.rmtree(workdir / "checkpoints" / str(i) / ("" if later == "deleted" else "state"))


@pytest.mark.parametrize(  # before / after the event at step 3; later checkpoints gone or bad
  ("keep_through_step", "later"), [(2, "deleted"), (5, "deleted"), (2, "corrupted")]
)
def test_resume_across_a_growth_event_matches_a_straight_run(tmp_path, keep_through_step, later):
  overrides = {"checkpoint.every_steps": 1, "checkpoint.keep": 100}
  straight, straight_dir = shared_run("growth_stack", **overrides)
  _killed_after(straight_dir, tmp_path / "b", keep_through_step, later)
  if later == "deleted":
    resumed = run_tasks(load_config("growth_stack", "smoke", **overrides), tmp_path / "b")
    resumed = json.loads(json.dumps(resumed))  # as the shared straight run was stored
  else:  # a fresh process, as after a crash (this one's TensorStore cache holds the old bytes)
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    command = main_command("growth_stack", tmp_path / "b", *flags)
    done = subprocess.run(command, env=cpu_env(8), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CANNOT BE RESTORED" in done.stderr  # loudly
    resumed = json.loads((tmp_path / "b" / "results.json").read_text())
  assert resumed["growth_events"] == straight["growth_events"]
  np.testing.assert_allclose(resumed["loss_matrix"], straight["loss_matrix"], rtol=0, atol=1e-6)
  assert resumed["curve"][-1]["flops"] == pytest.approx(straight["curve"][-1]["flops"])
  # Resuming before the event compiles the small and the grown step; after it, only the grown.
  assert resumed["train_compiles"] == (2 if keep_through_step < 3 else 1)


def test_resume_inside_stage_one_trains_the_same_sub_models(tmp_path):
  """bert2BERT's smoke run (event at step 3, stage 1 on steps 3-5, sub-model depths 2, 2, 1)
  killed after step 4 and resumed: the depths are a function of the checkpointed step, so the
  resumed run is the straight run, bit for bit."""
  overrides = {"checkpoint.every_steps": 1, "checkpoint.keep": 100}
  straight, straight_dir = shared_run("growth_bert2bert", **overrides)
  _killed_after(straight_dir, tmp_path / "b", 4)
  resumed = run_tasks(load_config("growth_bert2bert", "smoke", **overrides), tmp_path / "b")
  resumed = json.loads(json.dumps(resumed))  # as the shared straight run was stored
  assert [p["step"] for p in resumed["curve"]] == [p["step"] for p in straight["curve"]]
  assert resumed["curve"] == straight["curve"]  # losses and FLOPs at every evaluation
  assert resumed["loss_matrix"] == straight["loss_matrix"]
  assert resumed["train_compiles"] == 1  # the grown shape only, for both stages
