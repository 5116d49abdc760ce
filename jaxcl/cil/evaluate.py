"""Evaluation after a task: accuracy on the test data of every seen task (sums, then ratios),
and the class-incremental results.json of the rows it gives."""

from __future__ import annotations

import jax
import numpy as np

from jaxcl import metrics
from jaxcl.data import pipeline


def task_mask(classes: np.ndarray, num_classes: int) -> np.ndarray:
  mask = np.zeros((num_classes,), bool)
  mask[np.asarray(classes)] = True
  return mask


def evaluate_seen(
  eval_step, state, bench, tasks, *, global_batch: int, sharding, num_threads: int
) -> dict:
  """Class-IL and task-IL accuracy (percent) per seen task, counts, and prompt usage.

  `prompt_usage` is, per seen task, how often each prompt id was selected for its test
  samples (None for methods without prompt selection).
  """
  acc, task_il, counts, usage = [], [], [], []
  for task in tasks:
    repl = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    mask = jax.device_put(task_mask(task.classes, bench.num_classes), repl)
    sums = None
    for batch in pipeline.eval_batches(
      bench.test,
      task.test_idx,
      bench.eval_transform,
      global_batch=global_batch,
      sharding=sharding,
      num_threads=num_threads,
    ):
      out = eval_step(state, batch, mask)
      sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
    sums = jax.device_get(sums)
    n = int(sums["count"])
    counts.append(n)
    acc.append(100.0 * float(sums["correct"]) / max(n, 1))
    task_il.append(100.0 * float(sums["task_il_correct"]) / max(n, 1))
    if "prompt_counts" in sums:
      usage.append([int(u) for u in sums["prompt_counts"]])
  return {"acc": acc, "task_il": task_il, "counts": counts, "prompt_usage": usage or None}


def metrics_matrix(rows: list[list[float]], num_tasks: int) -> np.ndarray:
  """Lower-triangular rows -> [T, T] with NaN above the diagonal (and for tasks not reached)."""
  out = np.full((num_tasks, num_tasks), np.nan)
  for i, row in enumerate(rows):
    out[i, : len(row)] = row
  return out


def cil_results(config, bench, progress) -> dict:
  """The class-incremental results.json of DESIGN.md §3."""
  num_tasks = len(bench.tasks)
  rows = progress.rows  # one `evaluate_seen` dict per finished task
  acc = metrics_matrix([r["acc"] for r in rows], num_tasks)
  til = metrics_matrix([r["task_il"] for r in rows], num_tasks)
  counts = rows[-1]["counts"]
  summary = metrics.cil_summary(acc, np.asarray(counts, float), til)
  out = {
    "method": config.method.name,
    "dataset": config.data.name,
    "num_tasks": num_tasks,
    "class_order": [int(c) for c in bench.class_order],
    "acc_matrix": [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in acc],
    "task_il_matrix": [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in til],
    "test_counts": counts,
    **{
      k: summary[k] for k in ("A_last", "A_avg", "A_last_taskmean", "forgetting", "task_il_A_last")
    },
    "A_curve": summary["A_curve"],
    "forgetting_coda": summary["forgetting_coda"],
    "train_seconds": round(progress.train_seconds, 2),
    "skipped_steps": progress.skipped_steps,
  }
  usage = [r["prompt_usage"] for r in rows]
  if any(u is not None for u in usage):
    out["prompt_usage"] = usage
  return out
