"""Continual-learning metrics (numpy over the accuracy matrix) and the run-output writers.

Definitions differ by lineage (research/prompt_cil.md §2.3): L2P/DualPrompt/CODA report
the mean of per-task accuracies after the last task (`A_last_taskmean`); PILOT, APER,
EASE, RanPAC and SLCA report sample-weighted accuracy over all seen classes
(`A_last`) and its mean over stages (`A_avg`). Forgetting is the max-based formula of
L2P/PILOT; CODA-Prompt's one-step formula is `forgetting_coda`.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np


def cil_summary(acc: np.ndarray, counts: np.ndarray, task_il_acc: np.ndarray | None = None) -> dict:
  """acc [T, T] (row i after task i, NaN above the diagonal), counts [T] test samples per task."""
  acc, counts = np.asarray(acc, float), np.asarray(counts, float)
  t = acc.shape[0]
  curve = [
    float(np.dot(acc[i, : i + 1], counts[: i + 1]) / counts[: i + 1].sum()) for i in range(t)
  ]
  last = acc[-1]
  forgetting = [np.max(acc[j : t - 1, j]) - last[j] for j in range(t - 1)]
  coda = [np.mean([acc[s - 1, i] - acc[s, i] for i in range(s)]) for s in range(1, t)]
  out = {
    "A_last": curve[-1],
    "A_avg": float(np.mean(curve)),
    "A_last_taskmean": float(np.mean(last)),
    "forgetting": float(np.mean(forgetting)) if forgetting else 0.0,
    "forgetting_coda": float(np.mean(coda)) if coda else 0.0,
    "backward_transfer": float(np.mean([last[j] - acc[j, j] for j in range(t - 1)]))
    if t > 1
    else 0.0,
    "A_curve": curve,
  }
  if task_il_acc is not None:
    out["task_il_A_last"] = float(np.dot(np.asarray(task_il_acc)[-1], counts) / counts.sum())
  return out


def loss_summary(loss: np.ndarray) -> dict:
  """loss [D, D]: row i after domain i, column j validation loss on domain j."""
  loss = np.asarray(loss, float)
  d = loss.shape[0]
  return {
    "final_avg_loss": float(np.mean(loss[-1])),
    "forgetting": [float(loss[-1, j] - loss[j, j]) for j in range(d - 1)],
  }


def _plain(x):
  """numpy scalars/arrays -> Python; NaN/inf -> None (valid JSON)."""
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_plain(v) for v in x]
  if isinstance(x, np.ndarray):
    return _plain(x.tolist())
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def write_json(path: str, obj) -> None:
  """Atomic: a temporary file replaced into place."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(_plain(obj), f, indent=1)
  os.replace(tmp, path)


class MetricWriter:
  """metrics.jsonl (one object per logged step) and TensorBoard events in tb/ (no TensorFlow)."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # noqa: PLC0415

      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps(_plain({"step": step, **scalars})) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      if isinstance(v, int | float | np.number):
        self._tb.add_scalar(k, float(v), step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def write_matrix_csv(path: str, matrix: np.ndarray, row_label: str, col_prefix: str) -> None:
  matrix = np.asarray(matrix, float)
  lines = [",".join([row_label] + [f"{col_prefix}{j}" for j in range(matrix.shape[1])])]
  for i, row in enumerate(matrix):
    lines.append(",".join([str(i)] + ["" if np.isnan(v) else f"{v:.2f}" for v in row]))
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def write_acc_matrix(
  workdir: str, acc: np.ndarray, *, name: str = "acc_matrix", title: str = "accuracy (%)"
) -> None:
  """<name>.csv and a <name>.png heatmap (row = after training task i, column = task j)."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  acc = np.asarray(acc, float)
  write_matrix_csv(os.path.join(workdir, f"{name}.csv"), acc, "after_task", "task_")
  t = acc.shape[0]
  fig, ax = plt.subplots(figsize=(1.2 + 0.55 * acc.shape[1], 1 + 0.5 * t))
  im = ax.imshow(np.ma.masked_invalid(acc), cmap="viridis", vmin=0, vmax=100)
  if acc.shape[1] <= 20:
    for i in range(t):
      for j in range(acc.shape[1]):
        if not np.isnan(acc[i, j]):
          ax.text(j, i, f"{acc[i, j]:.0f}", ha="center", va="center", fontsize=7, color="w")
  ax.set_xlabel("evaluated on task")
  ax.set_ylabel("after training task")
  ax.set_title(title)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, f"{name}.png"), dpi=100)
  plt.close(fig)
