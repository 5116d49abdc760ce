"""Evaluation after a task: accuracy on the test data of every seen task (sums, then ratios)."""

from __future__ import annotations

import jax
import numpy as np

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
