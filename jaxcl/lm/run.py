"""The language-model run: continual pretraining over domains, with growth, on the stage loop.

`run(config, workdir)` is what `python -m jaxcl.main --config=configs/cpt.py` (and the
configs/growth_*.py) call. The domains of `data.domains` are the stages of
jaxcl/engine/loop.py, trained in order (Gupta et al. 2023; Ibrahim et al. 2024): one global
learning-rate schedule over the whole sequence (re-warmed per domain or infinite, see
jaxcl/lm/schedules.py), optionally a replay fraction of every batch from earlier domains
(jaxcl/lm/replay.py), the validation loss of *every* domain evaluated every `eval.every_steps`
and densely over the first `eval.dense_steps` of each domain (the stability gap of Guo et al.
2024), and the loss matrix after each domain. The train step compiles once for the whole
sequence (the domain index is a traced array) and once more per growth event
(jaxcl/lm/growth_events.py), which plugs in as a per-step hook, as do MSG's mask ramp and the
save of the state before an anneal branch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from jaxcl import checkpoint, metrics, optim, sharding, writers
from jaxcl.data import text
from jaxcl.engine import loop, microbatch, throughput
from jaxcl.engine import state as state_lib
from jaxcl.engine import step as step_lib
from jaxcl.engine.progress import Progress
from jaxcl.lm import growth_events, models, objectives, replay, schedules, two_stage


@dataclasses.dataclass(frozen=True)
class LmProgress(Progress):
  """`Progress` (rows: the validation loss of every domain after each) and what a language-model
  run counts besides."""

  tokens: int = 0
  flops: float = 0.0  # summed per step: a growth event changes the FLOPs per token
  curve: tuple = ()  # {step, tokens, flops, domain, val_loss} per evaluation
  growth_events: tuple = ()  # one record per event applied
  pre_anneal: int | None = None  # checkpoint id of the state before this domain's anneal
  phase_starts: tuple = ()  # per growth event: {step, flops, train_seconds} when it happened


class ShapeSteps(NamedTuple):
  """The recipe's jitted steps and numbers of one model shape (`loop.Compiled.other`)."""

  loss_step: object  # (state, batch) -> {"loss_sum", "tokens"}
  begin_domain: object  # (state, domain) -> state
  skip_to: object  # (state, step) -> state with the step counters at `step`
  set_masks: object  # (state, value) -> state with MSG's masks at `value`
  abstract: object  # the state's ShapeDtypeStructs with their shardings
  flops_per_token: float
  num_params: int
  model_config: Any  # gpt.Config | bert.Config of this shape


def eval_due(step_in_domain: int, num_steps: int, ev) -> bool:
  """Whether to evaluate all domains after `step_in_domain` (1-based) steps of a domain."""
  if step_in_domain == num_steps:
    return True
  if ev.dense_steps and step_in_domain <= ev.dense_steps:
    return step_in_domain % max(ev.dense_every, 1) == 0
  return bool(ev.every_steps) and step_in_domain % ev.every_steps == 0


def _is_count(x) -> bool:
  return isinstance(x, optax.ScaleByScheduleState)


def _keep_schedule_count(fresh, old):
  """A fresh optimizer state whose schedule counters carry on from `old` (a global schedule)."""
  olds = [x for x in jax.tree.leaves(old, is_leaf=_is_count) if _is_count(x)]
  it = iter(olds)
  return jax.tree.map(lambda x: next(it) if _is_count(x) else x, fresh, is_leaf=_is_count)


def _skip(state, end):
  """The step counters (the learner's and the schedule's) moved to `end`."""
  opt = jax.tree.map(
    lambda x: x._replace(count=jnp.asarray(end, x.count.dtype)) if _is_count(x) else x,
    state.opt,
    is_leaf=_is_count,
  )
  return state.replace(step=end, opt=opt)


def mfu_phases(progress: LmProgress, last_step: int, peak: float) -> list[dict]:
  """Per model shape of a growth run ([] without events): its steps, executed FLOPs and MFU.

  Seconds are the step loops' as of the last log before each event (`train.log_every_steps`).
  """
  starts = [{"step": 0, "flops": 0.0, "train_seconds": 0.0}, *progress.phase_starts]
  if len(starts) == 1:
    return []
  end = {"step": last_step, "flops": progress.flops, "train_seconds": progress.train_seconds}
  ends = [*progress.phase_starts, end]
  out = []
  for a, b in zip(starts, ends, strict=True):
    flops, seconds = b["flops"] - a["flops"], b["train_seconds"] - a["train_seconds"]
    steps = [a["step"], b["step"]]
    out.append({"steps": steps, "flops": flops, "mfu": flops / max(seconds, 1e-9) / peak})
  return out


class Learner(NamedTuple):
  """What a run builds before it touches data (jaxcl/plan.py builds it under
  `jax.eval_shape`)."""

  steps: list[int]  # steps per domain
  schedule: Callable
  tx: optax.GradientTransformation
  objective: objectives.Objective
  model_config: Any  # gpt.Config | bert.Config
  graphdef: Any
  state: state_lib.LearnerState


def build_learner(config, vocab_size: int, num_domains: int) -> Learner:
  """The schedule over `num_domains` domains, the optimizer, the objective, the initial state."""
  steps = [int(config.train.steps_per_domain)] * num_domains
  if config.data.union:  # the union baseline: one stage over every domain's windows, same tokens
    steps = [sum(steps)]
  schedule = growth_events.lr_schedule(config.growth, schedules.make(config, steps), sum(steps))
  tx = optim.make_optimizer(config.optim, schedule)
  objective = objectives.make(config.train.objective, chunk=config.train.loss_chunk)
  model = models.build(config, vocab_size, nnx.Rngs(config.seed))
  # `seen` / `current` mark domains here (trained so far / being trained).
  graphdef, state = state_lib.init_state(model, nnx.Param, tx, {}, num_domains, config.seed)
  return Learner(steps, schedule, tx, objective, model.config, graphdef, state)


def make_steps(config, objective, tx, graphdef, state, mesh, *, rows: int, traces, sub_models=None):
  """(state shardings, train step, loss step) of one model shape on `mesh` (FSDP / tensor
  parallel) for batches of `rows` sequences; `state` may be abstract. `sub_models` (a
  two_stage.TwoStage) trains bert2BERT's sub-models in its stage-1 steps."""
  batch_sh = sharding.batch_sharding(mesh)
  state_sh = sharding.state_shardings(state, mesh, replicate_frozen=False)
  on = dict(state_sharding=state_sh, batch_sharding=batch_sh, traces=traces)
  loss, update_mask = objective.loss, None
  if sub_models is not None:
    num_layers = nnx.merge(graphdef, state.params, state.frozen).config.num_layers
    loss, update_mask = sub_models.loss(loss), sub_models.update_mask(num_layers)
  train_step = step_lib.make_train_step(
    loss,
    graphdef,
    tx,
    scale="none",
    skip_nonfinite=config.train.nan_policy == "skip",
    microbatches=microbatch.count(
      rows,
      sharding.batch_devices(mesh),
      microbatches=config.train.microbatches,
      per_device=config.train.per_device_microbatch,
    ),
    update_mask=update_mask,
    **on,
  )
  return state_sh, train_step, step_lib.make_loss_step(objective.loss_sums, graphdef, **on)


def run(config, workdir: str, traces: step_lib.Traces | None = None) -> dict:
  """Trains the domain sequence; returns the results.json dict (DESIGN.md §3)."""
  r = loop.start_run(config, workdir, traces)
  batch_sh, data = r.batch_sharding, config.data
  tokenizer = text.make_tokenizer(data.tokenizer)
  domains = text.load_domains(data, tokenizer)
  names = [d.name for d in domains]
  sharding.assert_same_on_all_processes("the domains", names)
  train_sources, valid_sources = [d.train for d in domains], [d.valid for d in domains]
  if config.train.objective == "mlm":
    prob = data.mlm_probability or 0.15  # BERT's 15%
    wrap = lambda src, i: text.MaskedSource(src, tokenizer, seed=config.seed * 1000 + i, prob=prob)
    train_sources = [wrap(s, i) for i, s in enumerate(train_sources)]
    valid_sources = [wrap(s, 500 + i) for i, s in enumerate(valid_sources)]  # other masks
  learner = build_learner(config, tokenizer.vocab_size, len(names))
  steps, schedule, tx, objective = learner.steps, learner.schedule, learner.tx, learner.objective
  graphdef, state = learner.graphdef, learner.state
  if data.union:  # the union baseline (build_learner gave it one stage of all the steps)
    train_sources = [text.Union(train_sources)]
  # Bits per byte (lm): the target tokens of each domain's validation windows and their bytes.
  sizes = [
    text.valid_bytes(s, num_sequences=data.valid_sequences, tokenizer=tokenizer)
    for s in (valid_sources if config.train.objective == "lm" else ())
  ]
  plan = growth_events.GrowthPlan(config, learner.model_config, objective.loss, tx, len(names))
  event_steps = [int(e["step"]) for e in plan.events]
  sub_models = two_stage.from_config(config, event_steps, [c.num_layers for c in plan.cfgs[1:]])
  rows = replay.Plan(0, config.replay.fraction, config.replay.mode, data.batch_size).rows
  sharding.check_batch(rows, r.mesh, "data.batch_size plus replay rows")
  tokens_per_step = rows * data.seq_len
  peak = throughput.find_peak(config.train.peak_tflops, jax.devices(), config.model.dtype)
  # Infinite / WSD schedules with `train.anneal_branch` (the default): the anneal of a domain is
  # an evaluation branch (its loss-matrix row; its weights saved in anneal_branches/), and the
  # next domain resumes the state from before it (Ibrahim et al. 2024 §7; Singh et al. 2025).
  branch = schedules.anneal_windows(config, steps) if config.train.anneal_branch else None
  branches = []  # the Checkpointer of anneal_branches/, opened by the first branch
  # Replay draws what each domain's main line trained on: not the steps of a dropped branch.
  starts, main_line = np.cumsum(steps) - steps, branch or [None] * len(steps)
  trained = [w[0] - s if w else n for w, n, s in zip(main_line, steps, starts, strict=True)]

  def begin(state, domain):
    opt = state.opt
    if config.optim.reset_per_task:
      opt = _keep_schedule_count(tx.init(state.params), state.opt)
    ids = jnp.arange(state.seen.shape[0])
    return state.replace(task=domain, seen=ids <= domain, current=ids == domain, opt=opt)

  def compile_shape(graphdef, state) -> loop.Compiled:
    """Shardings and jitted steps of one model shape (FSDP / tensor parallel)."""
    state_sh, train_step, loss_step = make_steps(
      config,
      objective,
      tx,
      graphdef,
      state,
      r.mesh,
      rows=rows,
      traces=r.traces,
      sub_models=sub_models,
    )
    model_cfg = nnx.merge(graphdef, state.params, state.frozen).config
    other = ShapeSteps(
      loss_step,
      step_lib.make_state_fn(begin, state_sharding=state_sh),
      step_lib.make_state_fn(_skip, state_sharding=state_sh),
      step_lib.make_state_fn(growth_events.set_masks, state_sharding=state_sh),
      sharding.abstract(state, state_sh),
      models.flops_per_token(model_cfg, data.seq_len),
      state_lib.count_params(state.params),
      model_cfg,
    )
    return loop.Compiled(state_sh, train_step, other)

  def valid_batches(source, batch_sharding):
    """The fixed validation windows of a domain, as global batches."""
    return text.valid_batches(
      source,
      num_sequences=data.valid_sequences,
      global_batch=data.eval_batch_size,
      sharding=batch_sharding,
      num_threads=data.num_threads,
    )

  def validate(compiled, state) -> list[float]:
    """Mean token loss on the fixed validation windows of every domain."""
    out = []
    for source in valid_sources:
      batches = valid_batches(source, batch_sh)
      sums = jax.device_get([compiled.other.loss_step(state, b) for b in batches])
      total = sum(float(x["loss_sum"]) for x in sums)
      out.append(total / max(sum(float(x["tokens"]) for x in sums), 1.0))
    return out

  def batches(d, compiled, data_state):
    del compiled
    it = replay.from_config(config, train_sources, d, trained_steps=trained, sharding=batch_sh)
    if data_state is not None:
      it.set_state(data_state)
    return it

  def grow(view: loop.StepView):
    """A growth event: the grown model's (graphdef, state), its extra tokens (LiGO) counted."""
    done = len(view.progress.growth_events)
    if not plan.due(done, view.global_step):
      return None
    sh = jax.tree.leaves(view.state.params)[0].sharding
    if isinstance(sh, jax.sharding.NamedSharding):
      sh = jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec())  # replicated
    valid_batch = next(iter(valid_batches(valid_sources[0], sh)))  # for the logit change
    graphdef, state, event = plan.grow(
      done, view.graphdef, view.state, view.global_step, view.batches, valid_batch
    )
    extra = event["extra_tokens"]
    p = view.progress
    start = {"step": view.global_step, "flops": p.flops, "train_seconds": p.train_seconds}
    p = dataclasses.replace(
      p,
      phase_starts=(*p.phase_starts, start),
      growth_events=(*p.growth_events, event),
      tokens=p.tokens + extra,  # read by a trained operator (LiGO)
      flops=p.flops + extra * models.flops_per_token(plan.cfgs[done + 1], data.seq_len),
    )
    return loop.StepChange(state, p, graphdef)

  def ramp(view: loop.StepView):
    """MSG: the new units' masks follow their ramp from 0 to 1."""
    value = plan.ramp(len(view.progress.growth_events), view.global_step)
    if value is None:
      return None
    return loop.StepChange(view.compiled.other.set_masks(view.state, value), view.progress)

  def save_pre_anneal(view: loop.StepView):
    """Keeps the state before the anneal: later domains continue from it at the constant rate."""
    window = branch[view.progress.stage] if branch else None
    if not window or view.global_step != window[0] or view.progress.pre_anneal is not None:
      return None
    ckpt_id = view.save(view.state, view.batches.get_state(), keep_forever=True)
    return loop.StepChange(view.state, dataclasses.replace(view.progress, pre_anneal=ckpt_id))

  def after_step(compiled, p):
    per_token = compiled.other.flops_per_token
    depth = sub_models.depth_at(starts[p.stage] + p.step_in_stage - 1) if sub_models else None
    if depth is not None:  # stage 1 of two-stage training: the sub-model's FLOPs
      sub_cfg = dataclasses.replace(compiled.other.model_config, num_layers=depth)
      per_token = models.flops_per_token(sub_cfg, data.seq_len)
    flops = p.flops + tokens_per_step * per_token
    return dataclasses.replace(p, tokens=p.tokens + tokens_per_step, flops=flops)

  def log_metrics(compiled, progress, global_step, loss, seconds, num_steps):
    tok_s = num_steps * tokens_per_step / max(seconds, 1e-9)
    return {
      "domain": progress.stage,
      "loss": loss,
      "lr": float(schedule(global_step - 1)),
      "tokens_per_sec": tok_s,
      "mfu": compiled.other.flops_per_token * tok_s / peak.flops,
    }

  def evaluate(compiled, state, progress, global_step, writer):
    val = dict(zip(names, validate(compiled, state), strict=True))
    point = {
      "step": global_step,
      "tokens": progress.tokens,
      "flops": progress.flops,
      "domain": progress.stage,
      "val_loss": val,
    }
    writer.write(global_step, {f"val_loss/{n}": v for n, v in val.items()})
    return dataclasses.replace(progress, curve=(*progress.curve, point))

  def save_branch(d: int, state, val_loss: dict) -> None:
    """The annealed weights of domain `d` (a deployable side state), under id `d`."""
    if not branches:
      branches.append(checkpoint.Checkpointer(os.path.join(r.workdir, "anneal_branches")))
    meta = {"domain": d, "step": int(state.step), "window": list(branch[d]), "val_loss": val_loss}
    branches[0].save(d, state, data_state=None, meta=meta, keep_forever=True)

  def end_stage(graphdef, compiled, state, p):
    del graphdef
    d = p.stage
    if steps[d]:  # the last step of a domain always evaluates
      final = p.curve[-1]["val_loss"]
    else:
      final = dict(zip(names, validate(compiled, state), strict=True))
    p = dataclasses.replace(p, rows=(*p.rows, [final[n] for n in names]))
    if p.pre_anneal is not None and d + 1 < len(steps):
      save_branch(d, state, final)
      r.ckpt.wait()
      state = r.ckpt.restore(compiled.other.abstract, step=p.pre_anneal).state
      state = compiled.other.skip_to(state, jnp.int32(branch[d][1]))
      logging.info("domain %d: continuing from the pre-anneal state at step %d", d, branch[d][1])
    p = dataclasses.replace(p, pre_anneal=None)
    logging.info("domain %d/%d (%s): validation loss %s", d + 1, len(steps), names[d], final)
    if r.main_process:
      loss_csv = os.path.join(r.workdir, "loss_matrix.csv")
      writers.write_matrix_csv(loss_csv, np.asarray(p.rows), "after_domain", "loss_")
      writers.write_loss_curves(r.workdir, list(p.curve), names)
    return state, p

  hooks = loop.Hooks(
    compile=compile_shape,
    batches=batches,
    begin_stage=lambda compiled, state, d: compiled.other.begin_domain(state, jnp.int32(d)),
    end_stage=end_stage,
    log_metrics=log_metrics,
    before_step=(grow, ramp, save_pre_anneal),
    after_step=after_step,
    eval_due=lambda d, s: eval_due(s, steps[d], config.eval),
    evaluate=evaluate,
    stage_name="domain",
  )
  targets = {}  # (graphdef, state) of the model shape of each checkpoint tried, by events done

  def restore_target(meta):
    """The abstract state of a checkpoint: the model shape its growth events made."""
    done = len(meta["progress"]["growth_events"]) if meta else 0
    if done and done not in targets:
      targets[done] = plan.init_state(done)
    shape = targets[done] if done else (graphdef, state)
    shardings = sharding.state_shardings(shape[1], r.mesh, replicate_frozen=False)
    return sharding.abstract(shape[1], shardings)

  progress, data_state = LmProgress(), None
  restored = loop.resume(r, restore_target, LmProgress)
  if restored is not None:
    state, data_state, progress = restored
    if progress.growth_events:  # the checkpoint holds a grown shape
      graphdef = targets[len(progress.growth_events)][0]
  meta = {"domains": names}
  graphdef, state, progress = loop.train_stages(
    r, hooks, steps, graphdef, state, progress, data_state, meta
  )
  for b in branches:
    b.close()
  loss = np.asarray(progress.rows)
  tokens_per_sec = progress.tokens / max(progress.train_seconds, 1e-9)
  results = {
    "domains": names,
    "objective": config.train.objective,
    "loss_matrix": loss.round(6).tolist(),
    **metrics.loss_summary(loss),
    **(metrics.bits_per_byte(loss[-1], sizes, names) if sizes else {}),
    "tokens_seen": progress.tokens,
    "flops_seen": progress.flops,
    "curve": list(progress.curve),
    "growth_events": list(progress.growth_events),
    "anneal_branches": [list(w) if w else None for w in branch] if any(branch or ()) else None,
    "num_params": state_lib.count_params(state.params),
    "train_seconds": round(progress.train_seconds, 2),
    "tokens_per_sec": round(tokens_per_sec, 1),
    "skipped_steps": progress.skipped_steps,
    # Executed model FLOPs (each step at its phase's model shape) over the devices' peak.
    "mfu": progress.flops / max(progress.train_seconds, 1e-9) / peak.flops,
    "mfu_phases": mfu_phases(progress, int(state.step), peak.flops),
    "peak": peak.to_json(),
  }
  return loop.finish(r, results)
