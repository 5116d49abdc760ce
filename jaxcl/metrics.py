"""Continual-learning metrics over the accuracy matrix and the loss matrix (pure numpy).

Definitions differ by lineage (research/prompt_cil.md §2.3):

* L2P / DualPrompt (Wang et al., CVPR'22 / ECCV'22) report A_N, the mean of the per-task
  accuracies after the last task (`A_last_taskmean`), and the max-based forgetting.
* PILOT, APER, EASE, RanPAC and SLCA report top-1 accuracy over all test samples of the seen
  classes (sample-weighted: `A_last`) and its mean over the incremental stages (Ā, "Inc-Acc":
  `A_avg`). On balanced test sets (CIFAR-100) the two accuracies coincide; on ImageNet-R or
  CUB-200 they differ.
* CODA-Prompt (Smith et al., CVPR'23) averages the one-step accuracy drop (`forgetting_coda`).

The writers of the run outputs (metrics.jsonl, TensorBoard, CSV, PNG, results.json) live in
`jaxcl.writers`.
"""

from __future__ import annotations

import math

import numpy as np


def _square(matrix, name: str) -> np.ndarray:
  matrix = np.asarray(matrix, dtype=np.float64)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
    raise ValueError(f"{name} must be a non-empty square [T, T] matrix, got {matrix.shape}")
  return matrix


def stage_accuracies(acc: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """Sample-weighted accuracy over all seen tasks after each stage (PILOT's top-1 curve).

  Args:
    acc: [T, T], row i = after training task i, column j = accuracy on task j's test classes.
    counts: [T] test samples per task.

  Returns:
    [T]: entry i = Σ_{j≤i} acc[i, j]·n_j / Σ_{j≤i} n_j. Only the lower triangle is read.
  """
  acc = _square(acc, "acc")
  counts = np.asarray(counts, dtype=np.float64)
  if counts.shape != (acc.shape[0],):
    raise ValueError(f"counts must have shape ({acc.shape[0]},), got {counts.shape}")
  return np.array(
    [np.dot(acc[i, : i + 1], counts[: i + 1]) / counts[: i + 1].sum() for i in range(len(acc))]
  )


def max_forgetting(acc: np.ndarray) -> float:
  """L2P / PILOT forgetting: mean over old tasks j < T-1 of max_{j≤i≤T-2} acc[i, j] − acc[T-1, j].

  The best earlier accuracy is taken over every row from the one that learned task j to the one
  before the last, not just the diagonal. 0.0 for a single task.
  """
  acc = _square(acc, "acc")
  t = len(acc)
  if t == 1:
    return 0.0
  drops = [np.max(acc[j : t - 1, j]) - acc[t - 1, j] for j in range(t - 1)]  # [T-1]
  return float(np.mean(drops))


def one_step_forgetting(acc: np.ndarray) -> float:
  """CODA-Prompt forgetting: 1/(T−1) Σ_{t=1}^{T−1} (1/t) Σ_{i<t} (acc[t−1, i] − acc[t, i]).

  The mean accuracy drop of the old tasks at each step; 0.0 for a single task.
  """
  acc = _square(acc, "acc")
  t = len(acc)
  if t == 1:
    return 0.0
  steps = [np.mean(acc[s - 1, :s] - acc[s, :s]) for s in range(1, t)]  # [T-1]
  return float(np.mean(steps))


def cil_summary(acc: np.ndarray, counts: np.ndarray, task_il_acc: np.ndarray | None = None) -> dict:
  """The class-incremental summary numbers of results.json (DESIGN.md §3).

  Units follow the input (percent in, percent out). Entries above the diagonal (NaN for a
  finished run) are never read; a stage that was not reached (a NaN row) gives NaN numbers.

  Args:
    acc: [T, T] class-incremental accuracy matrix, row i = after training task i, column j =
      accuracy on task j's test classes, NaN for j > i.
    counts: [T] test samples per task (weights of the sample-weighted accuracies).
    task_il_acc: optional [T, T] task-incremental (task id given) accuracy matrix.

  Returns:
    A dict of Python floats: `A_last`, `A_avg`, `A_last_taskmean`, `forgetting`,
    `forgetting_coda`, `A_curve` (list of T floats) and, when
    `task_il_acc` is given, `task_il_A_last`.
  """
  acc = _square(acc, "acc")
  curve = stage_accuracies(acc, counts)  # [T]
  out = {
    "A_last": float(curve[-1]),
    "A_avg": float(np.mean(curve)),
    "A_last_taskmean": float(np.mean(acc[-1])),
    "forgetting": max_forgetting(acc),
    "forgetting_coda": one_step_forgetting(acc),
    "A_curve": [float(a) for a in curve],
  }
  if task_il_acc is not None:
    task_il_acc = _square(task_il_acc, "task_il_acc")
    if task_il_acc.shape != acc.shape:
      raise ValueError(f"task_il_acc shape {task_il_acc.shape} != acc shape {acc.shape}")
    out["task_il_A_last"] = float(stage_accuracies(task_il_acc, counts)[-1])
  return out


def bits_per_byte(nats_per_token, sizes, names) -> dict:
  """Validation losses in bits per UTF-8 byte, comparable across tokenizers: nats per token x
  tokens / bytes / ln 2 per domain (`sizes[j]` = (target tokens, bytes) of its windows)."""
  bpt = [b / max(t, 1) for t, b in sizes]  # bytes per token
  bpb = [float(x) / max(r, 1e-12) / math.log(2) for x, r in zip(nats_per_token, bpt, strict=True)]
  return {
    "bytes_per_token": dict(zip(names, bpt, strict=True)),
    "final_bits_per_byte": dict(zip(names, bpb, strict=True)),
    "final_avg_bits_per_byte": float(np.mean(bpb)),
  }


def loss_summary(loss: np.ndarray) -> dict:
  """The continual-pretraining summary numbers of results.json (DESIGN.md §3).

  Args:
    loss: [D, D] validation losses, row i = after training domain i, column j = loss on domain j
      (every column is evaluated at every row).

  Returns:
    `final_avg_loss`: mean of the last row; `forgetting`: list over old domains j < D-1 of
    loss[D-1, j] − loss[j, j] (positive = the model got worse on domain j), empty for D = 1.
  """
  if np.ndim(loss) == 2 and len(loss) == 1:  # one stage over every domain: the union baseline
    return {"final_avg_loss": float(np.mean(loss[0])), "forgetting": []}
  loss = _square(loss, "loss")
  d = len(loss)
  return {
    "final_avg_loss": float(np.mean(loss[-1])),
    "forgetting": [float(loss[d - 1, j] - loss[j, j]) for j in range(d - 1)],
  }
