"""The class-incremental run: a method over a task sequence, on the stage loop.

`run(config, workdir)` is what `python -m jaxcl.main` calls for class-incremental configs.
Every task is a stage of jaxcl/engine/loop.py: it begins with new class masks (and
optionally a fresh optimizer) and the method's `before_task`, takes its gradient steps (one
compiled train step for the whole sequence: per-task changes are traced arrays, see
jaxcl/engine/state.py), ends with the method's `after_task` and the accuracy on every seen
task, and is checkpointed forever.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from jaxcl import methods, multihost, optim, sharding, writers
from jaxcl.cil import evaluate
from jaxcl.data import benchmark, device_augment, pipeline
from jaxcl.engine import loop, microbatch
from jaxcl.engine import state as state_lib
from jaxcl.engine import step as step_lib
from jaxcl.engine.progress import Progress
from jaxcl.methods.base import TaskEnv
from jaxcl.models import loading


def task_steps(config, num_examples: int) -> int:
  if config.train.steps_per_task:
    return config.train.steps_per_task
  return int(config.train.epochs * num_examples) // config.data.batch_size


def trains(method, task: int) -> bool:
  """Whether `method` takes gradient steps in task `task` (`train_tasks="first"`: task 0 only)."""
  if method.train_tasks not in ("all", "first"):
    raise ValueError(f"Method.train_tasks={method.train_tasks!r}: use all | first")
  return method.loss is not None and (task == 0 or method.train_tasks == "all")


def device_augmentation(data):
  """The step's augmentation when `data.augment_on == "device"` (the host then ships uint8
  images at `data.host_image_size`, see jaxcl/data/benchmark.py), else None."""
  if data.augment_on != "device":
    return None
  aug = functools.partial(device_augment.augment, size=data.image_size, aug=data.train_aug)
  return functools.partial(aug, scale_min=data.rrc_scale_min)


class Steps(NamedTuple):
  """A learner's shardings and jitted steps on one mesh (built by `make_steps`)."""

  state_sharding: Any
  train: Callable  # (state, batch) -> (state, metrics)
  eval: Callable  # (state, batch, task_mask [C]) -> sums


def build_learner(config, method, num_classes: int, max_steps: int):
  """(schedule, optimizer, graphdef, initial learner state): what a run builds before it
  touches data (jaxcl/plan.py builds it under `jax.eval_shape`)."""
  base_lr = optim.learning_rate(config.optim, config.data.batch_size)
  schedule = optim.make_schedule(config.optim, base_lr, max_steps)
  tx = optim.make_optimizer(config.optim, schedule)
  model = method.build(config, num_classes, nnx.Rngs(config.seed))
  extra = method.init_extra(model, num_classes)
  graphdef, state = state_lib.init_state(
    model, method.trainable, tx, extra, num_classes, config.seed
  )
  return schedule, tx, graphdef, state


def make_steps(config, method, tx, graphdef, state, mesh, traces: step_lib.Traces) -> Steps:
  """The train and eval steps of `method` on `mesh`; `state` may be abstract.

  Data-parallel: the frozen backbone is replicated; trainable parameters and their optimizer
  moments follow the logical-axis rules (replicated too on a data-only mesh).
  """
  state_sh = sharding.state_shardings(state, mesh, replicate_frozen=True)
  batch_sh = sharding.batch_sharding(mesh)
  common = dict(
    scale=config.data.scale, state_sharding=state_sh, batch_sharding=batch_sh, traces=traces
  )
  clip_all = config.optim.clip_norm if config.optim.clip_scope == "all" else 0.0
  train_step = step_lib.make_train_step(
    method.loss,
    graphdef,
    tx,
    skip_nonfinite=config.train.nan_policy == "skip",
    clip_all=clip_all,
    augment=device_augmentation(config.data),
    microbatches=microbatch.count(
      config.data.batch_size,
      sharding.batch_devices(mesh),
      microbatches=config.train.microbatches,
      per_device=config.train.per_device_microbatch,
    ),
    **common,
  )
  eval_step = step_lib.make_eval_step(
    method.predict, graphdef, mask_unseen=config.eval.mask_unseen, **common
  )
  return Steps(state_sh, train_step, eval_step)


def run(config, workdir: str, traces: step_lib.Traces | None = None) -> dict:
  """Trains and evaluates a whole task sequence; returns the results.json dict."""
  r = loop.start_run(config, workdir, traces)
  batch_sh, traces, data = r.batch_sharding, r.traces, config.data
  method = methods.get(config.method.name).make(config)
  bench = benchmark.build(data, single_task=method.single_task)
  sharding.assert_same_on_all_processes("the class order", [int(c) for c in bench.class_order])
  tasks, num_classes = bench.tasks, bench.num_classes
  steps = [
    task_steps(config, len(t.train_idx)) if trains(method, i) else 0 for i, t in enumerate(tasks)
  ]
  schedule, tx, graphdef, state = build_learner(config, method, num_classes, max(steps))
  state_sh, train_step, eval_step = make_steps(config, method, tx, graphdef, state, r.mesh, traces)
  common = dict(scale=data.scale, state_sharding=state_sh, batch_sharding=batch_sh, traces=traces)
  begin_task = step_lib.make_begin_task(
    tx, reset_opt=config.optim.reset_per_task, state_sharding=state_sh, traces=traces
  )
  feature_steps, edit_steps = {}, {}

  def edit(state, fn):
    if fn not in edit_steps:
      edit_steps[fn] = step_lib.make_edit_step(
        fn, graphdef, method.trainable, state_sharding=state_sh, traces=traces
      )
    return edit_steps[fn](state)

  def feature_pass(state, fn, task):
    if fn not in feature_steps:
      feature_steps[fn] = step_lib.make_feature_step(fn, graphdef, **common)
    for batch in pipeline.eval_batches(
      bench.train,
      task.train_idx,
      bench.eval_transform,
      global_batch=data.eval_batch_size,
      sharding=batch_sh,
      num_threads=data.num_threads,
    ):
      state = feature_steps[fn](state, batch)
    return state

  def env(t: int) -> TaskEnv:
    task = tasks[t]
    return TaskEnv(t, len(tasks), task.classes, lambda s, fn: feature_pass(s, fn, task), edit)

  def begin_stage(compiled, state, t):
    del compiled
    seen = np.arange(num_classes) <= int(tasks[t].classes.max())
    current = evaluate.task_mask(tasks[t].classes, num_classes)
    state = begin_task(state, jnp.int32(t), seen, current)
    return method.before_task(state, env(t))

  def batches(t, compiled, data_state):
    del compiled
    it = pipeline.TrainIterator(
      bench.train,
      tasks[t].train_idx,
      bench.train_transform,
      global_batch=data.batch_size,
      seed=config.seed * 1000 + t,
      sharding=batch_sh,
      num_threads=data.num_threads,
    )
    if data_state is not None:
      it.set_state(data_state)
    return it

  def end_stage(graphdef, compiled, state, progress):
    del graphdef, compiled
    t = progress.stage
    state = method.after_task(state, env(t))
    row = evaluate.evaluate_seen(
      eval_step,
      state,
      bench,
      tasks[: t + 1],
      global_batch=data.eval_batch_size,
      sharding=batch_sh,
      num_threads=data.num_threads,
    )
    progress = dataclasses.replace(progress, rows=(*progress.rows, row))
    logging.info(
      "task %d/%d: accuracy per seen task %s", t + 1, len(tasks), np.round(row["acc"], 2).tolist()
    )
    if r.main_process:
      acc = evaluate.metrics_matrix([x["acc"] for x in progress.rows], len(tasks))
      writers.write_acc_matrix(r.workdir, acc)
    return state, progress

  def log_metrics(compiled, progress, global_step, loss, seconds, num_steps):
    del compiled, global_step
    eps = num_steps * data.batch_size / max(seconds, 1e-9)
    lr = float(schedule(progress.step_in_stage - 1))
    return {"task": progress.stage, "loss": loss, "lr": lr, "examples_per_sec": eps}

  hooks = loop.Hooks(
    compile=lambda graphdef, state: loop.Compiled(state_sh, train_step),
    batches=batches,
    begin_stage=begin_stage,
    end_stage=end_stage,
    log_metrics=log_metrics,
    stage_name="task",
  )
  progress, data_state = Progress(), None
  restored = loop.resume(r, sharding.abstract(state, state_sh))
  if restored is not None:
    state, data_state, progress = restored
  meta = {"class_order": [int(c) for c in bench.class_order]}
  graphdef, state, progress = loop.train_stages(
    r, hooks, steps, graphdef, state, progress, data_state, meta
  )
  if config.export_backbone:  # gathered by every process (collective), written by process 0
    model = nnx.merge(graphdef, multihost.to_host(state.params), multihost.to_host(state.frozen))
    if r.main_process:
      loading.save_vit_npz(
        getattr(model, "backbone", model), config.export_backbone, dtype=np.float16
      )
      logging.info("exported the backbone to %s", config.export_backbone)
  return loop.finish(r, evaluate.cil_results(config, bench, progress))
