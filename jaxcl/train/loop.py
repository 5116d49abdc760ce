"""The class-incremental loop: tasks -> steps -> evaluation, checkpoints, outputs.

`run(config, workdir)` is what `python -m jaxcl.main` calls. It compiles the train
step once for the whole task sequence (per-task changes are traced arrays, see
jaxcl/train/state.py), reads the loss from the device only at log intervals,
checkpoints at task boundaries (kept forever) and every `checkpoint.every_steps`,
and resumes from the newest good checkpoint in the workdir.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from flax import nnx

from jaxcl import checkpoint, config_lib, methods, multihost, sharding, writers
from jaxcl.data import benchmark, pipeline
from jaxcl.methods.base import TaskEnv
from jaxcl.models import loading
from jaxcl.preemption import (  # noqa: F401  (loop.X: cpt/run.py, tests)
  PREEMPTED_EXIT_CODE,
  PREEMPTED_MESSAGE,
  Preempted,
  PreemptionWatch,
  stop_if_preempted,
)
from jaxcl.train import evaluate, optim, report
from jaxcl.train import state as state_lib
from jaxcl.train import step as step_lib


class NonFiniteLoss(FloatingPointError):
  pass


def task_steps(config, num_examples: int) -> int:
  if config.train.steps_per_task:
    return config.train.steps_per_task
  return int(config.train.epochs * num_examples) // config.data.batch_size


def trains(method, task: int) -> bool:
  """Whether `method` takes gradient steps in task `task` (`train_tasks="first"`: task 0 only)."""
  if method.train_tasks not in ("all", "first"):
    raise ValueError(f"Method.train_tasks={method.train_tasks!r}: use all | first")
  return method.loss is not None and (task == 0 or method.train_tasks == "all")


class RunSetup(NamedTuple):
  start: float  # time.time() at the start
  compiles_before: int  # step.TRACES["train"] at the start (a per-process counter)
  workdir: str  # absolute (or a gs:// URL)
  main_process: bool  # process 0 writes logs and outputs
  mesh: jax.sharding.Mesh
  batch_sh: jax.sharding.NamedSharding


def prepare_run(config, workdir: str) -> RunSetup:
  """What every run (class-incremental or continual pretraining) does first: check that all
  processes agree on the config, prepare the workdir, build the mesh and check the batches."""
  start = time.time()
  compiles_before = step_lib.TRACES["train"]
  workdir = writers.absolute(workdir)
  main_process = jax.process_index() == 0
  sharding.assert_same_on_all_processes("the config", config.to_dict())
  report.prepare_workdir(workdir, config, write=main_process)
  mesh = sharding.mesh_from_config(config.mesh)
  logging.info("mesh %s", sharding.describe(mesh))
  sharding.check_batch(config.data.batch_size, mesh)
  sharding.check_batch(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  return RunSetup(
    start, compiles_before, workdir, main_process, mesh, sharding.batch_sharding(mesh)
  )


def write_results(results: dict, config, setup: RunSetup) -> dict:
  """`results` plus the environment, seed, wall time and the run's train-step compilations,
  written to the workdir's results.json by the main process."""
  results.update(
    report.environment(),
    seed=config.seed,
    wall_seconds=round(time.time() - setup.start, 2),
    train_compiles=step_lib.TRACES["train"] - setup.compiles_before,
  )
  if setup.main_process:
    writers.write_json(os.path.join(setup.workdir, "results.json"), results)
  return results


def run(config, workdir: str) -> dict:
  """Trains and evaluates a whole task sequence; returns the results.json dict."""
  setup = prepare_run(config, workdir)
  workdir, mesh, batch_sh = setup.workdir, setup.mesh, setup.batch_sh
  main_process = setup.main_process

  method = methods.get(config.method.name).make(config)
  bench = benchmark.build(config.data, joint=method.joint)
  sharding.assert_same_on_all_processes("the class order", [int(c) for c in bench.class_order])
  tasks, num_classes = bench.tasks, bench.num_classes
  steps = [
    task_steps(config, len(t.train_idx)) if trains(method, i) else 0 for i, t in enumerate(tasks)
  ]
  base_lr = optim.learning_rate(config.optim, config.data.batch_size)
  schedule = optim.make_schedule(config.optim, base_lr, max(steps))
  tx = optim.make_optimizer(config.optim, schedule)

  model = method.build(config, num_classes, nnx.Rngs(config.seed))
  graphdef, state = state_lib.init_state(
    model, method.trainable, tx, method.init_extra(model, num_classes), num_classes, config.seed
  )
  del model
  # Data-parallel: the frozen backbone is replicated; trainable parameters and their optimizer
  # moments follow the logical-axis rules (replicated too on a data-only mesh).
  state_sh = sharding.state_shardings(state, mesh, replicate_frozen=True)
  state = jax.device_put(state, state_sh)
  common = dict(scale=config.data.scale, state_sharding=state_sh, batch_sharding=batch_sh)
  clip_all = config.optim.clip_norm if config.optim.clip_scope == "all" else 0.0
  train_step = step_lib.make_train_step(
    method,
    graphdef,
    tx,
    skip_nonfinite=config.train.nan_policy == "skip",
    clip_all=clip_all,
    **common,
  )
  eval_step = step_lib.make_eval_step(
    method, graphdef, mask_unseen=config.eval.mask_unseen, **common
  )
  begin_task = step_lib.make_begin_task(
    tx, reset_opt=config.optim.reset_per_task, state_sharding=state_sh
  )
  feature_steps, edit_steps = {}, {}

  def edit(state, fn):
    if fn not in edit_steps:
      edit_steps[fn] = step_lib.make_edit_step(
        fn, graphdef, method.trainable, state_sharding=state_sh
      )
    return edit_steps[fn](state)

  def scan_train(state, fn, task):
    if fn not in feature_steps:
      feature_steps[fn] = step_lib.make_feature_step(fn, graphdef, **common)
    for batch in pipeline.eval_batches(
      bench.train,
      task.train_idx,
      bench.eval_transform,
      global_batch=config.data.eval_batch_size,
      sharding=batch_sh,
      num_threads=config.data.num_threads,
    ):
      state = feature_steps[fn](state, batch)
    return state

  progress = {
    "task": 0,
    "step_in_task": 0,
    "phase": "start",
    "acc": [],
    "task_il": [],
    "counts": [],
    "prompt_usage": [],
    "train_seconds": 0.0,
    "skipped_steps": 0,
  }
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
  data_state = None
  restored = ckpt.restore(sharding.abstract(state, state_sh)) if config.resume else None
  if restored is not None:
    state, data_state, progress = restored.state, restored.data_state, restored.meta["progress"]
    logging.info(
      "resumed from step %d (task %d, step %d in task, phase %s)",
      restored.step,
      progress["task"],
      progress["step_in_task"],
      progress["phase"],
    )

  writer = writers.MetricWriter(workdir, enabled=main_process)
  preempted = PreemptionWatch(ckpt)

  def save(state, data_state, *, keep_forever: bool, wait: bool = False):
    meta = {
      "progress": progress,
      "config_hash": config_lib.fingerprint(config),
      "class_order": [int(c) for c in bench.class_order],
      "jaxcl_version": report.version(),
    }
    # Checkpoint ids grow with every save, also across tasks that take no gradient step
    # (SimpleCIL): a save inside task t is step + t, the end of task t is step + t + 1.
    ckpt_id = int(state.step) + progress["task"] + int(keep_forever)
    ckpt.save(
      ckpt_id, state, data_state=data_state, meta=meta, keep_forever=keep_forever, wait=wait
    )

  run_ctx = RunContext(config, train_step, bench, writer, schedule, batch_sh, preempted, save)
  first_task = progress["task"] + (1 if progress["phase"] == "done" else 0)
  try:
    for t in range(first_task, len(tasks)):
      task = tasks[t]
      env = TaskEnv(
        t, len(tasks), task.classes, lambda s, fn, task=task: scan_train(s, fn, task), edit
      )
      if progress["phase"] != "train" or progress["task"] != t:  # a fresh task
        seen = np.arange(num_classes) <= int(task.classes.max())
        current = evaluate.task_mask(task.classes, num_classes)
        state = begin_task(state, jnp.int32(t), seen, current)
        state = method.before_task(state, env)
        progress.update(task=t, step_in_task=0, phase="train")
        data_state = None
      if steps[t]:
        state, data_state = train_task(run_ctx, state, task, steps[t], data_state, progress)
      state = method.after_task(state, env)
      row = evaluate.evaluate_seen(
        eval_step,
        state,
        bench,
        tasks[: t + 1],
        global_batch=config.data.eval_batch_size,
        sharding=batch_sh,
        num_threads=config.data.num_threads,
      )
      progress["acc"].append(row["acc"])
      progress["task_il"].append(row["task_il"])
      progress["counts"] = row["counts"]
      progress["prompt_usage"].append(row["prompt_usage"])
      progress["phase"] = "done"
      logging.info(
        "task %d/%d: accuracy per seen task %s", t + 1, len(tasks), np.round(row["acc"], 2).tolist()
      )
      if main_process:
        writers.write_acc_matrix(workdir, report.metrics_matrix(progress["acc"], len(tasks)))
      save(state, None, keep_forever=True)
      stop_if_preempted(preempted, ckpt, int(state.step), more_to_do=t + 1 < len(tasks))
  finally:
    preempted.close()
    ckpt.wait()
    writer.close()

  results = write_results(report.cil_results(config, bench, progress), config, setup)
  if config.export_backbone:  # gathered by every process (collective), written by process 0
    model = nnx.merge(graphdef, multihost.to_host(state.params), multihost.to_host(state.frozen))
    if main_process:
      loading.save_vit_npz(
        getattr(model, "backbone", model), config.export_backbone, dtype=np.float16
      )
      logging.info("exported the backbone to %s", config.export_backbone)
  ckpt.close()
  return results


class RunContext(NamedTuple):
  """What stays fixed over a run and the step loop of every task needs."""

  config: Any
  train_step: Callable
  bench: benchmark.Benchmark
  writer: writers.MetricWriter
  schedule: Callable  # optax schedule, for logging the learning rate
  batch_sharding: Any
  preempted: Callable[[int], bool]  # preempted(global_step): save now and exit
  save: Callable  # save(state, data_state, *, keep_forever, wait)


def train_task(ctx: RunContext, state, task, num_steps: int, data_state, progress: dict):
  """Runs the steps of one task from `progress["step_in_task"]`; returns (state, data_state)."""
  config, bench = ctx.config, ctx.bench
  train_step, writer, schedule, save = ctx.train_step, ctx.writer, ctx.schedule, ctx.save
  batch_sh = ctx.batch_sharding
  t = progress["task"]
  it = pipeline.TrainIterator(
    bench.train,
    task.train_idx,
    bench.train_transform,
    global_batch=config.data.batch_size,
    seed=config.seed * 1000 + t,
    sharding=batch_sh,
    num_threads=config.data.num_threads,
  )
  if data_state is not None:
    it.set_state(data_state)
  log_every, every_ckpt = config.train.log_every_steps, config.checkpoint.every_steps
  main_process = jax.process_index() == 0
  bar = tqdm.tqdm(
    total=num_steps,
    initial=progress["step_in_task"],
    desc=f"task {t}",
    disable=not main_process,
    leave=False,
  )
  pending, tick, tick_step = [], time.time(), progress["step_in_task"]
  global_step = int(state.step)
  while progress["step_in_task"] < num_steps:
    state, m = train_step(state, next(it))
    pending.append((m["loss"], m["update_norm"], m["finite"]))
    progress["step_in_task"] += 1
    global_step += 1
    s = progress["step_in_task"]
    stopping = ctx.preempted(global_step)
    saving = stopping or bool(every_ckpt and global_step % every_ckpt == 0)
    # The host reads the device only here: at log intervals, and before every save, so that a
    # non-finite step is caught before it can reach a checkpoint.
    if s % log_every == 0 or s == num_steps or saving:
      losses, finite = check_finite(pending, global_step, t, config.train.nan_policy)
      now = time.time()
      eps = (s - tick_step) * config.data.batch_size / max(now - tick, 1e-9)
      progress["train_seconds"] += now - tick
      progress["skipped_steps"] += int((~finite).sum())
      loss = float(np.mean(losses[finite])) if finite.any() else float("nan")
      writer.write(
        global_step,
        {"task": t, "loss": loss, "lr": float(schedule(s - 1)), "examples_per_sec": eps},
      )
      bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{eps:.0f}")
      bar.update(s - tick_step)
      pending, tick, tick_step = [], now, s
    if saving:
      save(state, it.get_state(), keep_forever=False, wait=stopping)
      if stopping:
        logging.warning(PREEMPTED_MESSAGE, global_step)
        raise Preempted()
  bar.close()
  return state, it.get_state()


def check_finite(
  pending: list, global_step: int, task: int, nan_policy: str
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
      f"non-finite loss at step {global_step - len(pending) + i + 1} (task {task}): metric "
      f"'{name}' = {value}; stopped, the last good checkpoint is intact "
      f"(train.nan_policy='skip' skips such steps instead)"
    )
  return losses, finite
