"""Continual pretraining over a sequence of domains: steps, per-domain validation, checkpoints.

`run(config, workdir)` is what `python -m jaxcl.main --config=configs/cpt.py` calls. The domains
of `data.domains` are trained in order (Gupta et al. 2023; Ibrahim et al. 2024): one global
learning-rate schedule over the whole sequence (re-warmed per domain or infinite, see
jaxcl/cpt/schedules.py), optionally a replay fraction of every batch from earlier domains
(jaxcl/cpt/replay.py), the validation loss of *every* domain evaluated every
`eval.every_steps` and densely over the first `eval.dense_steps` of each domain (the stability
gap of Guo et al. 2024), and the loss matrix after each domain. The train step compiles once
for the whole sequence (the domain index is a traced array); checkpoints and resume work as
for class-incremental runs (jaxcl/checkpoint.py).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from jaxcl import checkpoint, config_lib, metrics, sharding, writers
from jaxcl.cpt import models, objectives, replay, schedules
from jaxcl.data import text
from jaxcl.growth import events as growth_events
from jaxcl.train import loop, optim, report, throughput
from jaxcl.train import state as state_lib
from jaxcl.train import step as step_lib


def eval_due(step_in_domain: int, num_steps: int, ev) -> bool:
  """Whether to evaluate all domains after `step_in_domain` (1-based) steps of a domain."""
  if step_in_domain == num_steps:
    return True
  if ev.dense_steps and step_in_domain <= ev.dense_steps:
    return step_in_domain % max(ev.dense_every, 1) == 0
  return bool(ev.every_steps) and step_in_domain % ev.every_steps == 0


def _keep_schedule_count(fresh, old):
  """A fresh optimizer state whose schedule counters carry on from `old` (a global schedule)."""
  is_count = lambda x: isinstance(x, optax.ScaleByScheduleState)
  olds = [x for x in jax.tree.leaves(old, is_leaf=is_count) if is_count(x)]
  it = iter(olds)
  return jax.tree.map(lambda x: next(it) if is_count(x) else x, fresh, is_leaf=is_count)


def run(config, workdir: str) -> dict:
  """Trains the domain sequence; returns the results.json dict (DESIGN.md §3)."""
  setup = loop.prepare_run(config, workdir)
  workdir, mesh, batch_sh = setup.workdir, setup.mesh, setup.batch_sh
  main_process = setup.main_process

  tokenizer = text.make_tokenizer(config.data.tokenizer)
  domains = text.load_domains(config.data, tokenizer)
  names = [d.name for d in domains]
  sharding.assert_same_on_all_processes("the domains", names)
  train_sources, valid_sources = [d.train for d in domains], [d.valid for d in domains]
  if config.train.objective == "mlm":
    prob = config.data.mlm_probability or 0.15  # BERT's 15%
    wrap = lambda src, i: text.MaskedSource(src, tokenizer, seed=config.seed * 1000 + i, prob=prob)
    train_sources = [wrap(s, i) for i, s in enumerate(train_sources)]
    valid_sources = [wrap(s, 500 + i) for i, s in enumerate(valid_sources)]  # other masks
  steps = [int(config.train.steps_per_domain)] * len(names)
  schedule = growth_events.rewarm(config.growth, schedules.make(config, steps))
  tx = optim.make_optimizer(config.optim, schedule)
  objective = objectives.make(config.train.objective, models.build)
  model = objective.method.build(config, tokenizer.vocab_size, nnx.Rngs(config.seed))
  grower = growth_events.Grower(config, model.config, objective.method, tx, len(names))
  model_flops = models.train_flops_per_token(config, tokenizer.vocab_size)
  # `seen` / `current` mark domains here (trained so far / being trained).
  graphdef, state = state_lib.init_state(model, nnx.Param, tx, {}, len(names), config.seed)
  num_params = state_lib.count_params(state.params)
  del model
  reset = config.optim.reset_per_task

  def begin(state, domain):
    opt = _keep_schedule_count(tx.init(state.params), state.opt) if reset else state.opt
    ids = jnp.arange(state.seen.shape[0])
    return state.replace(task=domain, seen=ids <= domain, current=ids == domain, opt=opt)

  def jit_steps(graphdef, state):
    """Shardings and jitted steps of one model shape (built again after a growth event)."""
    state_sh = sharding.state_shardings(state, mesh, replicate_frozen=False)  # FSDP / tensor
    train_step = step_lib.make_train_step(
      objective.method,
      graphdef,
      tx,
      scale="none",
      skip_nonfinite=config.train.nan_policy == "skip",
      state_sharding=state_sh,
      batch_sharding=batch_sh,
    )
    loss_step = step_lib.make_loss_step(
      objective.loss_sums, graphdef, state_sharding=state_sh, batch_sharding=batch_sh
    )
    begin_domain = step_lib.make_state_fn(begin, state_sharding=state_sh)
    return state_sh, train_step, loss_step, begin_domain

  state_sh, train_step, loss_step, begin_domain = jit_steps(graphdef, state)
  state = jax.device_put(state, state_sh)

  rows = replay.from_config(config, train_sources, 0, sharding=batch_sh).plan.rows
  sharding.check_batch(rows, mesh, "data.batch_size plus replay rows")
  tokens_per_step = rows * config.data.seq_len
  progress = {
    "task": 0,
    "step_in_task": 0,
    "phase": "start",
    "loss_rows": [],
    "curve": [],
    "tokens": 0,
    "flops": 0.0,  # summed per step: a growth event changes the FLOPs per token
    "growth_events": [],
    "train_seconds": 0.0,
    "skipped_steps": 0,
    "pre_anneal": None,  # checkpoint id of the state before the current domain's anneal
  }
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
  data_state = None
  abstract = sharding.abstract(state, state_sh)

  grown = {}  # (graphdef, state) of the shape of the last checkpoint tried

  def restore_target(meta):
    """The abstract state of a checkpoint: the model shape its growth events made."""
    if not grower.events or not grower.resume_count(meta):
      grown.clear()
      return abstract
    grown["model"] = grower.init_state()
    shape = grown["model"][1]
    return sharding.abstract(shape, sharding.state_shardings(shape, mesh, replicate_frozen=False))

  restored = ckpt.restore(restore_target) if config.resume else None
  if restored is not None and grown:  # the checkpoint holds a grown shape
    graphdef, state = grown.pop("model")
    state_sh, train_step, loss_step, begin_domain = jit_steps(graphdef, state)
    abstract, model_flops = sharding.abstract(state, state_sh), grower.flops_per_token()
  if restored is not None:
    state, data_state, progress = restored.state, restored.data_state, restored.meta["progress"]
    progress.setdefault("flops", progress["tokens"] * model_flops)
    progress.setdefault("growth_events", [])
    logging.info(
      "resumed from step %d (domain %d, step %d in domain, phase %s)",
      restored.step,
      progress["task"],
      progress["step_in_task"],
      progress["phase"],
    )

  def validate(state) -> list[float]:
    """Mean token loss on the fixed validation windows of every domain."""
    out = []
    for source in valid_sources:
      batches = text.valid_batches(
        source,
        num_sequences=config.data.valid_sequences,
        global_batch=config.data.eval_batch_size,
        sharding=batch_sh,
        num_threads=config.data.num_threads,
      )
      sums = jax.device_get([loss_step(state, b) for b in batches])
      total = sum(float(x["loss_sum"]) for x in sums)
      out.append(total / max(sum(float(x["tokens"]) for x in sums), 1.0))
    return out

  writer = writers.MetricWriter(workdir, enabled=main_process)
  preempted = loop.PreemptionWatch(ckpt)

  def save(state, data_state, *, keep_forever: bool, wait: bool = False, pre_anneal=False):
    meta = {
      "progress": progress,
      "config_hash": config_lib.fingerprint(config),
      "domains": names,
      "jaxcl_version": report.version(),
    }
    # Even ids for the run's checkpoints (as in the CIL loop, doubled), odd ones for the
    # pre-anneal branch points, so the two never collide.
    ckpt_id = 2 * (int(state.step) + progress["task"] + int(keep_forever)) + int(pre_anneal)
    ckpt.save(
      ckpt_id, state, data_state=data_state, meta=meta, keep_forever=keep_forever, wait=wait
    )
    return ckpt_id

  # Infinite / WSD schedules with `train.anneal_branch`: the anneal of a domain is a branch
  # (evaluated, then dropped); the next domain resumes the state from before it (Ibrahim et
  # al. 2024 §7; Singh et al. 2025).
  branch = (
    schedules.anneal_windows(config, steps) if config.train.anneal_branch else [None] * len(steps)
  )

  def skip(state, end):
    """The step counters (the learner's and the schedule's) moved to `end`."""
    is_count = lambda x: isinstance(x, optax.ScaleByScheduleState)
    opt = jax.tree.map(
      lambda x: x._replace(count=jnp.asarray(end, x.count.dtype)) if is_count(x) else x,
      state.opt,
      is_leaf=is_count,
    )
    return state.replace(step=end, opt=opt)

  skip_to = step_lib.make_state_fn(skip, state_sharding=state_sh)
  peak = throughput.peak_flops(config.train.peak_tflops, jax.device_count())
  first = progress["task"] + (1 if progress["phase"] == "done" else 0)
  try:
    for d in range(first, len(names)):
      if progress["phase"] != "train" or progress["task"] != d:
        state = begin_domain(state, jnp.int32(d))
        progress.update(task=d, step_in_task=0, phase="train")
        data_state = None
      it = replay.from_config(config, train_sources, d, sharding=batch_sh)
      if data_state is not None:
        it.set_state(data_state)
      pending, tick, tick_step = [], time.time(), progress["step_in_task"]
      global_step = int(state.step)
      while progress["step_in_task"] < steps[d]:
        if grower.due(global_step):  # a new model shape: new state, jitted steps, FLOPs
          graphdef, state, event = grower.grow(graphdef, state, global_step, it, valid_sources)
          state_sh, train_step, loss_step, begin_domain = jit_steps(graphdef, state)
          state = jax.device_put(state, state_sh)
          skip_to = step_lib.make_state_fn(skip, state_sharding=state_sh)
          abstract, model_flops = sharding.abstract(state, state_sh), grower.flops_per_token()
          num_params = state_lib.count_params(state.params)
          progress["growth_events"].append(event)
          progress["tokens"] += event["extra_tokens"]  # read by a trained operator (LiGO)
          progress["flops"] += event["extra_tokens"] * model_flops
        state = grower.ramp(state, global_step, state_sh)  # MSG masks
        if branch[d] and global_step == branch[d][0] and progress["pre_anneal"] is None:
          # Keep the pre-anneal state: later domains continue from it at the constant rate.
          progress["pre_anneal"] = save(state, it.get_state(), keep_forever=True, pre_anneal=True)
        state, m = train_step(state, next(it))
        pending.append((m["loss"], m["update_norm"], m["finite"]))
        progress["step_in_task"] += 1
        progress["tokens"] += tokens_per_step
        progress["flops"] += tokens_per_step * model_flops
        global_step += 1
        s = progress["step_in_task"]
        stopping = preempted(global_step)
        every = config.checkpoint.every_steps
        saving = stopping or bool(every and global_step % every == 0)
        evaluating = eval_due(s, steps[d], config.eval)
        if s % config.train.log_every_steps == 0 or evaluating or saving:
          losses, finite = loop.check_finite(pending, global_step, d, config.train.nan_policy)
          progress["skipped_steps"] += int((~finite).sum())
          now = time.time()
          seconds = now - tick
          progress["train_seconds"] += seconds
          tok_s = (s - tick_step) * tokens_per_step / max(seconds, 1e-9)
          writer.write(
            global_step,
            {
              "domain": d,
              "loss": float(np.mean(losses[finite])) if finite.any() else float("nan"),
              "lr": float(schedule(global_step - 1)),
              "tokens_per_sec": tok_s,
              "mfu": model_flops * tok_s / peak,
            },
          )
          pending = []
          if evaluating:
            val = validate(state)
            progress["curve"].append(
              {
                "step": global_step,
                "tokens": progress["tokens"],
                "flops": progress["flops"],
                "domain": d,
                "val_loss": dict(zip(names, val, strict=True)),
              }
            )
            writer.write(global_step, {f"val_loss/{n}": v for n, v in zip(names, val, strict=True)})
          tick, tick_step = time.time(), s
        if saving:
          save(state, it.get_state(), keep_forever=False, wait=stopping)
          if stopping:
            logging.warning(loop.PREEMPTED_MESSAGE, global_step)
            raise loop.Preempted()
      if steps[d]:  # the last step of a domain always evaluates
        final = progress["curve"][-1]["val_loss"]
      else:
        final = dict(zip(names, validate(state), strict=True))
      progress["loss_rows"].append([final[n] for n in names])
      if progress["pre_anneal"] is not None and d + 1 < len(names):
        end = branch[d][1]
        ckpt.wait()
        state = ckpt.restore(abstract, step=progress["pre_anneal"]).state
        state = skip_to(state, jnp.int32(end))
        logging.info("domain %d: continuing from the pre-anneal state at step %d", d, end)
      progress["pre_anneal"] = None
      progress["phase"] = "done"
      logging.info("domain %d/%d (%s): validation loss %s", d + 1, len(names), names[d], final)
      if main_process:
        writers.write_matrix_csv(
          os.path.join(workdir, "loss_matrix.csv"),
          np.asarray(progress["loss_rows"]),
          "after_domain",
          "loss_",
        )
        writers.write_loss_curves(workdir, progress["curve"], names)
      save(state, None, keep_forever=True)
      loop.stop_if_preempted(preempted, ckpt, int(state.step), more_to_do=d + 1 < len(names))
  finally:
    preempted.close()
    ckpt.wait()
    writer.close()

  loss = np.asarray(progress["loss_rows"])
  results = {
    "domains": names,
    "objective": config.train.objective,
    "loss_matrix": loss.round(6).tolist(),
    **metrics.loss_summary(loss),
    "tokens_seen": progress["tokens"],
    "flops_seen": progress["flops"],
    "curve": progress["curve"],
    "growth_events": progress["growth_events"],
    "num_params": num_params,
    "train_seconds": round(progress["train_seconds"], 2),
    "tokens_per_sec": round(progress["tokens"] / max(progress["train_seconds"], 1e-9), 1),
    "skipped_steps": progress["skipped_steps"],
  }
  results["mfu"] = model_flops * results["tokens_per_sec"] / peak
  loop.write_results(results, config, setup)
  ckpt.close()
  return results
