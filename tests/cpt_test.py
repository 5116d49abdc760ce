"""Continual pretraining runs: the domain loop, its evaluation schedule and its outputs."""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import load_config, shared_run

from jaxcl import checkpoint, writers
from jaxcl.engine import loop
from jaxcl.lm import run as lm_run


def test_smoke_run_fills_the_loss_matrix_and_the_curve():
  results, workdir = shared_run("cpt")
  workdir = pathlib.Path(workdir)
  d = len(results["domains"])
  loss = np.asarray(results["loss_matrix"])
  assert loss.shape == (d, d) == (2, 2) and np.isfinite(loss).all()
  # Row i is the evaluation at the end of domain i: the curve's last entry in that domain.
  ends = [[e for e in results["curve"] if e["domain"] == i][-1] for i in range(d)]
  for i, e in enumerate(ends):
    np.testing.assert_allclose(loss[i], [e["val_loss"][n] for n in results["domains"]], 1e-6)
  assert results["forgetting"] == pytest.approx([loss[1, 0] - loss[0, 0]], abs=1e-5)
  # Dense evaluation over the first 2 steps of each domain, then every 3, and the last step.
  assert [e["step"] for e in results["curve"]] == [1, 2, 3, 6, 7, 8, 9, 12]
  assert results["tokens_seen"] == 12 * 8 * 16
  assert results["train_compiles"] == results["traces"]["train"] == 1
  assert results["anneal_branches"] is None  # re-warmed cosine: nothing to branch
  # MFU: the FLOPs executed over the smoke preset's given peak (1 TFLOP/s a device), named.
  peak = 1e12 * results["devices"]["count"]
  assert results["peak"]["source"] == "config" and results["peak"]["flops"] == peak
  mfu = results["flops_seen"] / results["train_seconds"] / peak
  assert results["mfu"] == pytest.approx(mfu, rel=0.05) and results["mfu_phases"] == []
  written = json.loads((workdir / "results.json").read_text())
  assert written["loss_matrix"] == results["loss_matrix"]
  assert (workdir / "loss_matrix.csv").exists() and (workdir / "loss_curves.png").exists()
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert all("tokens_per_sec" in x and "mfu" in x for x in lines if "loss" in x)


def test_sigterm_between_domains_stops_at_the_boundary_and_resumes_identically(
  tmp_path, monkeypatch
):
  """A preemption notice that arrives while a domain's end is evaluated and written (outside
  the step loop) stops the run at that domain's checkpoint, exit code 75."""
  straight, _ = shared_run("cpt")
  real = writers.write_loss_curves
  sent = []

  def signal_once(*args, **kwargs):
    if not sent:
      sent.append(os.kill(os.getpid(), signal.SIGTERM))
    return real(*args, **kwargs)

  monkeypatch.setattr(writers, "write_loss_curves", signal_once)
  work = tmp_path / "stopped"
  with pytest.raises(SystemExit) as stopped:
    lm_run.run(load_config("cpt", "smoke"), str(work))
  assert stopped.value.code == loop.PREEMPTED_EXIT_CODE
  ckpt = checkpoint.Checkpointer(str(work / "checkpoints"))
  meta = ckpt.read_meta()
  ckpt.close()
  assert meta["progress"]["stage"] == 0 and meta["progress"]["phase"] == "done"
  resumed = json.loads(json.dumps(lm_run.run(load_config("cpt", "smoke"), str(work))))
  assert resumed["loss_matrix"] == straight["loss_matrix"]
  assert resumed["curve"] == straight["curve"]


def test_loss_decreases_on_a_tiny_corpus(tmp_path):
  overrides = {
    "data.domains": "prose:json",
    "train.steps_per_domain": 40,
    "eval.every_steps": 40,
    "eval.dense_steps": 1,
    "replay.fraction": 0.0,
  }
  results = lm_run.run(load_config("cpt", "smoke", **overrides), str(tmp_path))
  first, last = results["curve"][0]["val_loss"], results["curve"][-1]["val_loss"]
  assert last["prose:json"] < first["prose:json"] - 0.5


def test_mlm_objective_trains_a_bert(tmp_path):
  overrides = {"train.objective": "mlm", "data.mlm_probability": 0.15, "replay.fraction": 0.0}
  results = lm_run.run(load_config("cpt", "smoke", **overrides), str(tmp_path))
  assert np.isfinite(results["loss_matrix"]).all()
  assert results["objective"] == "mlm"


def test_eval_schedule_is_dense_at_the_start_of_a_domain():
  ev = load_config("cpt", "smoke", **{"eval.dense_steps": 4, "eval.dense_every": 2}).eval
  ev.unlock()
  ev.every_steps = 5
  due = [s for s in range(1, 13) if lm_run.eval_due(s, 12, ev)]
  assert due == [2, 4, 5, 10, 12]


def test_a_new_domain_resets_the_moments_but_keeps_the_global_schedule():
  schedule = lambda count: 1.0 / (1.0 + count)
  tx = optax.adamw(schedule)
  params = {"w": jnp.ones(3)}
  opt = tx.init(params)
  for _ in range(5):
    _, opt = tx.update({"w": jnp.ones(3)}, opt, params)
  fresh = lm_run._keep_schedule_count(tx.init(params), opt)
  adam = [s for s in jax.tree.leaves(fresh, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")]
  assert float(jnp.abs(adam[0].mu["w"]).sum()) == 0.0 and int(adam[0].count) == 0
  counts = [
    int(s.count)
    for s in jax.tree.leaves(fresh, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
    if isinstance(s, optax.ScaleByScheduleState)
  ]
  assert counts == [5]


def test_anneal_branch_resumes_the_next_domain_from_the_pre_anneal_state(tmp_path, monkeypatch):
  """Infinite schedule (the branch is the default): domain 1 starts from the weights saved
  before domain 0's anneal, not from the annealed ones, which are kept as a side state whose
  validation loss is the loss-matrix row (Ibrahim et al. 2024 §7)."""
  overrides = {
    "schedule.name": "infinite_cosine",
    "schedule.eta_const": 1e-3,
    "schedule.cooldown_steps": 2,  # cooldown [0, 2), constant [2, 4), anneal [4, 6)
    "schedule.anneal_steps": 2,
    "train.log_every_steps": 1,
  }
  config = load_config("cpt", "smoke", **overrides)
  assert config.train.anneal_branch and config.schedule.anneal_every_domain
  starts = {}  # params at the start of each domain, as the loop hands them to the domain
  real_train_stages = loop.train_stages

  def spy(run, hooks, *args, **kwargs):
    def begin_stage(compiled, state, d):
      starts[d] = jax.tree.map(np.asarray, jax.device_get(state.params))
      return hooks.begin_stage(compiled, state, d)

    return real_train_stages(run, hooks._replace(begin_stage=begin_stage), *args, **kwargs)

  monkeypatch.setattr(loop, "train_stages", spy)
  results = lm_run.run(config, str(tmp_path))
  assert results["anneal_branches"] == [[4, 6], [10, 12]]
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  lr = {x["step"]: x["lr"] for x in lines if "lr" in x}
  # The logged lr of step s is the schedule at s - 1.
  assert lr[6] < lr[4] == pytest.approx(1e-3)  # domain 0 anneals over its last 2 steps ...
  assert lr[7] == pytest.approx(1e-3)  # ... and domain 1 starts at the constant rate
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  pre_anneal = ckpt.read_meta(ckpt.steps()[0])  # the first save: no periodic ones here
  assert pre_anneal["step"] == 4  # saved before step 5, the first annealed step of domain 0
  assert pre_anneal["progress"]["stage"] == 0 and pre_anneal["progress"]["step_in_stage"] == 4
  pre = ckpt.read_state(ckpt.steps()[0])
  ckpt.close()
  branches = checkpoint.Checkpointer(str(tmp_path / "anneal_branches"))
  annealed, branch_meta = branches.read_state(0), branches.read_meta(0)
  branches.close()
  assert int(pre["step"]) == 4 and int(annealed["step"]) == 6
  for got, want in zip(jax.tree.leaves(starts[1]), jax.tree.leaves(pre["params"]), strict=True):
    np.testing.assert_array_equal(got, want)  # domain 1 starts from the pre-anneal weights
  moved = [
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(starts[1]), jax.tree.leaves(annealed["params"]), strict=True)
  ]
  assert any(moved)  # ... which the 2 annealed steps changed
  # The branch's losses are the loss-matrix row of domain 0.
  row = [branch_meta["val_loss"][n] for n in results["domains"]]
  np.testing.assert_allclose(results["loss_matrix"][0], row, rtol=1e-6)
  assert np.isfinite(results["loss_matrix"]).all()


def test_anneal_only_after_the_last_domain_is_the_other_choice(tmp_path):
  overrides = {
    "schedule.name": "wsd",
    "schedule.decay_steps": 2,
    "schedule.anneal_every_domain": False,
    "train.log_every_steps": 1,
  }
  results = lm_run.run(load_config("cpt", "smoke", **overrides), str(tmp_path))
  assert results["anneal_branches"] == [None, [10, 12]]
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  lr = {x["step"]: x["lr"] for x in lines if "lr" in x}
  assert lr[6] == lr[7] == pytest.approx(3e-3)  # stable through the end of domain 0 ...
  assert lr[12] < lr[11] == pytest.approx(3e-3)  # ... and only the last domain decays
  assert not (tmp_path / "anneal_branches").exists()


def test_union_baseline_is_one_stage_on_every_domain_with_the_same_tokens(tmp_path):
  overrides = {"data.union": True, "replay.fraction": 0.0}
  results = lm_run.run(load_config("cpt", "smoke", **overrides), str(tmp_path))
  loss = np.asarray(results["loss_matrix"])
  assert loss.shape == (1, 2) and np.isfinite(loss).all()  # one row, every domain evaluated
  assert results["tokens_seen"] == 12 * 8 * 16  # the token budget of the two-domain sequence
  assert results["final_avg_loss"] == pytest.approx(loss[0].mean()) and results["forgetting"] == []
  assert results["train_compiles"] == 1
  # Bits per byte: byte tokens are a byte each but the EOS separators, which carry none.
  for name, nats in zip(results["domains"], loss[0], strict=True):
    per_token = results["bytes_per_token"][name]
    assert 0.9 < per_token <= 1.0
    assert results["final_bits_per_byte"][name] == pytest.approx(nats / math.log(2) / per_token)


def test_presets_default_three_domains_prose_code_and_the_union_baseline():
  default, union = load_config("cpt"), load_config("cpt", "union")
  assert len(default.data.domains.split(",")) == 3
  assert load_config("cpt", "prose_code").data.domains == "prose,code"
  assert union.data.union and not default.data.union
  assert union.data.domains == default.data.domains  # the same domains ...
  same = ("train.steps_per_domain", "data.batch_size", "data.seq_len", "model.preset")
  for key in same:  # ... and the same token budget and model
    section, field = key.split(".")
    assert union[section][field] == default[section][field], key
