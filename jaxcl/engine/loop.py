"""The stage loop: stages -> steps -> evaluation, checkpoints and the results epilogue.

Both recipes run on it: the class-incremental run (jaxcl/cil/run.py, stages are tasks) and the
language-model run (jaxcl/lm/run.py, stages are domains). Written once here: the resume cursor
(`Progress`), the step loop that reads the loss from the device only at log intervals and
before saves (the NaN check), periodic and stage-end checkpoints, preemption (SIGTERM or a
pod's preemption notice: save, exit 75), and results.json. A recipe says what differs through
`Hooks`: stage begin / end, periodic evaluation, what a step logs, and per-step hooks that may
hand back a rebuilt (graphdef, state) (a growth event), new masks (an MSG ramp) or a save (the
state before an anneal).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import tqdm
from absl import logging

from jaxcl import checkpoint, config_lib, sharding, user_errors, writers
from jaxcl.engine import report
from jaxcl.engine import step as step_lib
from jaxcl.engine.progress import Progress
from jaxcl.preemption import (  # noqa: F401  (loop.PREEMPTED_EXIT_CODE for callers and tests)
  PREEMPTED_EXIT_CODE,
  PREEMPTED_MESSAGE,
  Preempted,
  PreemptionWatch,
  stop_if_preempted,
)


class NonFiniteLoss(user_errors.UserError, FloatingPointError):
  """A non-finite loss with train.nan_policy='stop'."""


@dataclasses.dataclass
class Run:
  """What every run sets up first (`start_run`) and the stage loop works with."""

  config: Any
  start: float  # time.time() at the start
  workdir: str  # absolute (or a gs:// URL)
  main_process: bool  # process 0 writes logs and outputs
  mesh: jax.sharding.Mesh
  batch_sharding: jax.sharding.NamedSharding
  ckpt: checkpoint.Checkpointer
  traces: step_lib.Traces  # traces of this run's jitted steps, by step name


def start_run(config, workdir: str, traces: step_lib.Traces | None = None) -> Run:
  """Checks that all processes agree on the config, prepares the workdir (config.json), builds
  the mesh, checks the batches and opens the checkpoint directory."""
  start = time.time()
  workdir = writers.absolute(workdir)
  main_process = jax.process_index() == 0
  sharding.assert_same_on_all_processes("the config", config.to_dict())
  report.check_and_write_config(workdir, config, write=main_process)
  mesh = sharding.mesh_from_config(config.mesh)
  logging.info("mesh %s", sharding.describe(mesh))
  sharding.check_batch(config.data.batch_size, mesh)
  sharding.check_batch(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
  traces = step_lib.Traces() if traces is None else traces
  return Run(
    config, start, workdir, main_process, mesh, sharding.batch_sharding(mesh), ckpt, traces
  )


def resume(run: Run, target, progress_type: type[Progress] = Progress):
  """(state, data_state, progress) of the newest good checkpoint, or None (none, or
  `config.resume` off). `target` is the abstract state, or a function of a checkpoint's
  metadata to it (jaxcl/checkpoint.py)."""
  restored = run.ckpt.restore(target) if run.config.resume else None
  if restored is None:
    return None
  progress = progress_type.from_json(restored.meta["progress"])
  logging.info(
    "resumed from step %d (checkpoint %d, stage %d, step %d in stage, phase %s)",
    int(restored.state.step),
    restored.step,
    progress.stage,
    progress.step_in_stage,
    progress.phase,
  )
  return restored.state, restored.data_state, progress


class Compiled(NamedTuple):
  """The jitted steps of one model shape (built again after a growth event)."""

  state_sharding: Any
  train_step: Callable  # (state, batch) -> (state, metrics)
  other: Any = None  # the recipe's own steps (evaluation, stage begin, ...)


class StepView(NamedTuple):
  """What a per-step hook sees before the step after `global_step` steps."""

  graphdef: Any
  state: Any
  compiled: Compiled
  progress: Progress
  global_step: int
  batches: Any  # the stage's train iterator (get_state / set_state)
  save: Callable  # save(state, data_state, *, keep_forever) -> checkpoint id (with `progress`)


class StepChange(NamedTuple):
  """A per-step hook's answer: the new state and progress; with `graphdef`, a new model shape
  whose steps the loop jits again (`Hooks.compile`)."""

  state: Any
  progress: Progress
  graphdef: Any = None


class Hooks(NamedTuple):
  """What a recipe adds to the stage loop."""

  compile: Callable  # (graphdef, state) -> Compiled
  batches: Callable  # (stage, compiled, data_state | None) -> train iterator of the stage
  begin_stage: Callable  # (compiled, state, stage) -> state, before its first step
  end_stage: Callable  # (graphdef, compiled, state, progress) -> (state, progress) after it
  log_metrics: Callable  # (compiled, progress, global_step, loss, seconds, steps) -> dict
  before_step: Sequence[Callable] = ()  # each (StepView) -> StepChange | None, in order
  after_step: Callable = lambda compiled, progress: progress
  eval_due: Callable = lambda stage, step_in_stage: False
  evaluate: Callable = None  # (compiled, state, progress, global_step, writer) -> progress
  stage_name: str = "stage"  # what the console calls a stage: task | domain


def train_stages(
  run: Run,
  hooks: Hooks,
  stage_steps: Sequence[int],
  graphdef,
  state,
  progress: Progress,
  data_state=None,
  meta: dict | None = None,
):
  """Runs the stages from where `progress` stands; returns (graphdef, state, progress).

  `stage_steps[i]` is the number of gradient steps of stage i (0: the stage only begins and
  ends, e.g. SimpleCIL). Every save carries `meta` (what identifies the run's data).
  """
  loop = _StageLoop(run, hooks, meta or {})
  return loop.train(stage_steps, graphdef, state, progress, data_state)


class _StageLoop:
  """`train_stages` with what stays fixed over it: the run, the hooks, the writer, the watch."""

  def __init__(self, run: Run, hooks: Hooks, meta: dict):
    self.run, self.hooks, self.meta = run, hooks, meta
    self.writer = self.preempted = None
    self.num_stages = 0

  def save(self, progress, state, data_state, *, keep_forever: bool, wait: bool = False) -> int:
    """Checkpoints `state` with `progress` as the resume cursor; returns the checkpoint id."""
    meta = {
      "progress": progress.to_json(),
      "step": int(state.step),
      "config_hash": config_lib.fingerprint(self.run.config),
      "jaxcl_version": report.version(),
      **self.meta,
    }
    return self.run.ckpt.save_next(
      state, data_state=data_state, meta=meta, keep_forever=keep_forever, wait=wait
    )

  def train(self, stage_steps, graphdef, state, progress, data_state):
    r, hooks = self.run, self.hooks
    compiled = hooks.compile(graphdef, state)
    state = jax.device_put(state, compiled.state_sharding)
    self.num_stages = len(stage_steps)
    self.writer = writers.MetricWriter(r.workdir, enabled=r.main_process)
    self.preempted = PreemptionWatch(r.ckpt)
    try:
      for stage in range(progress.first_stage(), len(stage_steps)):
        if not progress.in_stage(stage):  # a fresh stage
          state = hooks.begin_stage(compiled, state, stage)
          progress = dataclasses.replace(progress, stage=stage, step_in_stage=0, phase="train")
          data_state = None
        if stage_steps[stage]:
          graphdef, state, compiled, progress = self.train_stage(
            stage_steps[stage], graphdef, state, compiled, progress, data_state
          )
        state, progress = hooks.end_stage(graphdef, compiled, state, progress)
        progress = dataclasses.replace(progress, phase="done")
        self.save(progress, state, None, keep_forever=True)
        # A notice that arrived outside the step loop (during the evaluation, say) stops here.
        stop_if_preempted(self.preempted, r.ckpt, int(state.step), stage + 1 < len(stage_steps))
    finally:
      self.preempted.close()
      r.ckpt.wait()
      self.writer.close()
    return graphdef, state, progress

  def train_stage(self, num_steps, graphdef, state, compiled, progress, data_state):
    """The steps of one stage from `progress.step_in_stage`; returns (graphdef, state,
    compiled, progress)."""
    config, hooks, stage = self.run.config, self.hooks, progress.stage
    it = hooks.batches(stage, compiled, data_state)
    log_every, every_ckpt = config.train.log_every_steps, config.checkpoint.every_steps
    bar = tqdm.tqdm(
      total=num_steps,
      initial=progress.step_in_stage,
      desc=f"{hooks.stage_name} {stage + 1}/{self.num_stages}",
      unit="step",
      disable=not self.run.main_process,
      leave=False,
    )
    pending, tick, tick_step = [], time.time(), progress.step_in_stage
    global_step = int(state.step)
    while progress.step_in_stage < num_steps:
      for hook in hooks.before_step:
        save = functools.partial(self.save, progress)
        change = hook(StepView(graphdef, state, compiled, progress, global_step, it, save))
        if change is None:
          continue
        state, progress = change.state, change.progress
        if change.graphdef is not None:  # a new model shape: its steps, jitted again
          graphdef, compiled = change.graphdef, hooks.compile(change.graphdef, state)
          state = jax.device_put(state, compiled.state_sharding)
      state, m = compiled.train_step(state, next(it))
      pending.append((m["loss"], m["update_norm"], m["finite"]))
      global_step += 1
      s = progress.step_in_stage + 1
      progress = hooks.after_step(compiled, dataclasses.replace(progress, step_in_stage=s))
      stopping = self.preempted(global_step)
      saving = stopping or bool(every_ckpt and global_step % every_ckpt == 0)
      evaluating = hooks.eval_due(stage, s)
      # The host reads the device only here: at log intervals, and before every save, so that
      # a non-finite step is caught before it can reach a checkpoint.
      if s % log_every == 0 or s == num_steps or saving or evaluating:
        losses, finite = check_finite(pending, global_step, stage, config.train.nan_policy)
        seconds = time.time() - tick
        loss = float(np.mean(losses[finite])) if finite.any() else float("nan")
        progress = dataclasses.replace(
          progress,
          train_seconds=progress.train_seconds + seconds,
          skipped_steps=progress.skipped_steps + int((~finite).sum()),
        )
        metrics = hooks.log_metrics(compiled, progress, global_step, loss, seconds, s - tick_step)
        self.writer.write(global_step, metrics)
        bar.set_postfix(loss=f"{loss:.4f}", **throughput_shown(metrics))
        bar.update(s - tick_step)
        if evaluating:
          progress = hooks.evaluate(compiled, state, progress, global_step, self.writer)
        pending, tick, tick_step = [], time.time(), s
      if saving:
        self.save(progress, state, it.get_state(), keep_forever=False, wait=stopping)
        if stopping:
          logging.warning(PREEMPTED_MESSAGE, global_step)
          raise Preempted()
    bar.close()
    return graphdef, state, compiled, progress


def throughput_shown(metrics: dict) -> dict[str, str]:
  """The progress bar's throughput, e.g. {"ex/s": "1,234"}, from a step's logged metrics."""
  units = {"examples_per_sec": "ex/s", "tokens_per_sec": "tok/s"}
  return {unit: f"{metrics[key]:,.0f}" for key, unit in units.items() if key in metrics}


def finish(run: Run, results: dict) -> dict:
  """The results epilogue: `results` plus the environment, seed, wall time and the run's
  train-step compilations, written to the workdir's results.json by the main process."""
  results.update(
    report.environment(),
    seed=run.config.seed,
    wall_seconds=round(time.time() - run.start, 2),
    train_compiles=run.traces["train"],
  )
  if run.main_process:
    writers.write_json(os.path.join(run.workdir, "results.json"), results)
  run.ckpt.close()
  return results


def check_finite(
  pending: list, global_step: int, stage: int, nan_policy: str
) -> tuple[np.ndarray, np.ndarray]:
  """Reads the pending (loss, update_norm, finite) of the steps up to `global_step`.

  Returns (losses, finite) as host arrays; raises NonFiniteLoss naming the first bad step and
  metric when a step is not finite and `nan_policy` is "stop" (then nothing is saved after it).
  """
  losses, norms, finite = zip(*jax.device_get(pending), strict=True)
  losses, norms = np.asarray(losses, np.float64), np.asarray(norms, np.float64)
  finite = np.asarray(finite, bool)
  if not finite.all() and nan_policy == "stop":
    i = int(np.argmin(finite))
    name, value = ("loss", losses[i]) if not np.isfinite(losses[i]) else ("update_norm", norms[i])
    raise NonFiniteLoss(
      f"non-finite loss at step {global_step - len(pending) + i + 1} (task {stage}): metric "
      f"'{name}' = {value}; stopped, the checkpoints before it are intact. Train again with a "
      f"lower optim.lr, with optim.clip_norm > 0, or with train.nan_policy='skip' (skips such "
      f"steps); a changed config needs a new --workdir or --config.resume=false"
    )
  return losses, finite
