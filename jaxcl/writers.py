"""What a run writes to its workdir (DESIGN.md §3): metrics.jsonl + TensorBoard, JSON, CSV, PNG.

Only one process should write; the caller decides which (`enabled=` / calling at all). Plots use
matplotlib's Agg canvas directly, so no global backend is switched and no display is needed;
TensorBoard events come from tensorboardX, so TensorFlow is not needed.

Paths may be local or remote (`gs://bucket/run`): files go through `etils.epath` (gcsfs for
gs://, `pip install jaxcl[gcs]`), TensorBoard through tensorboardX's own GCS writer. Remote
objects cannot be appended to, so a remote metrics.jsonl is rewritten whole, at most every
`REMOTE_FLUSH_SECONDS` and at flush/close.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
import time
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboardX import SummaryWriter

from jaxcl.paths import absolute, is_remote  # noqa: F401  (writers.absolute/is_remote)


def to_json_value(x):
  """numpy / jax scalars and arrays -> Python values; NaN and ±inf -> None (valid JSON)."""
  if isinstance(x, Mapping):
    return {str(k): to_json_value(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [to_json_value(v) for v in x]
  if not isinstance(x, str | bytes | np.ndarray | np.generic) and hasattr(x, "__array__"):
    x = np.asarray(x)  # jax.Array and friends
  if isinstance(x, np.ndarray):
    return to_json_value(x.tolist())
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


REMOTE_FLUSH_SECONDS = 30.0


def write_text(path: str, text: str) -> None:
  epath.Path(path).write_text(text)


def write_json(path: str, obj) -> None:
  """Writes `obj` as JSON atomically: a temporary file beside `path`, then `os.replace`.

  numpy/jax values are converted and non-finite floats become null, so the file is strict JSON.
  A reader sees either the old file or the whole new one; on error no temporary file is left.
  (A remote object is written in one piece, which object stores make atomic.)
  """
  if is_remote(path):
    write_text(path, json.dumps(to_json_value(obj), indent=1, allow_nan=False) + "\n")
    return
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(to_json_value(obj), f, indent=1, allow_nan=False)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


class MetricWriter:
  """Per-step scalars to `workdir/metrics.jsonl` (one JSON object a line) and `workdir/tb/`.

  jsonl lines are `{"step": step, **scalars}` with numpy/jax values made plain and non-finite
  floats written as null (so every line stays strict JSON). Numbers and bools also go to
  TensorBoard, non-finite ones included (TensorBoard shows NaN); strings and other values go
  only to the jsonl. With `enabled=False` nothing is created and every call is a no-op.
  The jsonl is opened for appending, so a resumed run continues the same file.
  """

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      path = epath.Path(workdir) / "metrics.jsonl"
      path.parent.mkdir(parents=True, exist_ok=True)
      self._jsonl = _RemoteLines(path) if is_remote(workdir) else open(path, "a")  # noqa: SIM115
      self._tb = SummaryWriter(logdir=os.path.join(str(workdir), "tb"))

  def write(self, step: int, scalars: Mapping) -> None:
    """Appends one line for `step` and logs the numeric values to TensorBoard."""
    if self._jsonl is None:
      return
    if "step" in scalars:
      raise ValueError("'step' is given as the argument, not as a scalar")
    step = int(step)
    values = {str(k): to_json_value(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, **values}, allow_nan=False) + "\n")
    if not isinstance(self._jsonl, _RemoteLines):  # (a remote file flushes itself, throttled)
      self._jsonl.flush()  # whole lines on disk even if the run dies
    for name, value in scalars.items():
      if not isinstance(value, numbers.Number | np.generic) and not hasattr(value, "__array__"):
        continue  # strings, None, lists: jsonl only
      array = np.asarray(value)
      if array.ndim == 0 and array.dtype.kind in "biuf":  # bool, int, float; NaN kept
        self._tb.add_scalar(str(name), float(array), step)

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes both outputs; safe to call twice."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._tb.close()
      self._jsonl = self._tb = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _RemoteLines:
  """An append-only text file on an object store: kept in memory, rewritten whole when flushed
  (by `flush`, `close`, or a `write` at least REMOTE_FLUSH_SECONDS after the last flush)."""

  def __init__(self, path: epath.Path):
    self.path = path
    self.text = path.read_text() if path.exists() else ""  # a resumed run continues the file
    self.flushed = time.time()

  def write(self, line: str) -> None:
    self.text += line
    if time.time() - self.flushed >= REMOTE_FLUSH_SECONDS:
      self.flush()

  def flush(self) -> None:
    self.path.write_text(self.text)
    self.flushed = time.time()

  def close(self) -> None:
    self.flush()


def save_figure(fig: Figure, path: str) -> None:
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png", dpi=100)


def write_matrix_csv(path: str, matrix: np.ndarray, row_label: str, col_prefix: str) -> None:
  """A [R, C] matrix as CSV: header `row_label,{col_prefix}0,...`, 2 decimals, NaN as empty."""
  matrix = np.asarray(matrix, dtype=np.float64)  # [R, C]
  lines = [",".join([row_label] + [f"{col_prefix}{j}" for j in range(matrix.shape[1])])]
  for i, row in enumerate(matrix):
    lines.append(",".join([str(i)] + ["" if np.isnan(v) else f"{v:.2f}" for v in row]))
  write_text(path, "\n".join(lines) + "\n")


def _colour_range(matrix: np.ndarray) -> tuple[float, float]:
  """0–1 for fractions, 0–100 for percents, the data range otherwise."""
  finite = matrix[np.isfinite(matrix)]
  if finite.size == 0:
    return 0.0, 1.0
  low, high = float(finite.min()), float(finite.max())
  if low >= 0 and high <= 1:
    return 0.0, 1.0
  if low >= 0 and high <= 100:
    return 0.0, 100.0
  return low, max(high, low + 1e-9)


def write_acc_matrix(
  workdir: str, acc: np.ndarray, *, name: str = "acc_matrix", title: str = "accuracy (%)"
) -> None:
  """`<name>.csv` and a `<name>.png` heatmap of an accuracy matrix.

  Args:
    workdir: output directory.
    acc: [T, T], row i = after training task i, column j = accuracy on task j (NaN: not
      evaluated, drawn blank). Cells are annotated when T ≤ 20.
    name: file stem.
    title: plot title.
  """
  acc = np.asarray(acc, dtype=np.float64)  # [T, T]
  write_matrix_csv(os.path.join(workdir, f"{name}.csv"), acc, "after_task", "task_")
  rows, cols = acc.shape
  vmin, vmax = _colour_range(acc)
  fig = Figure(figsize=(1.8 + 0.6 * cols, 1.2 + 0.5 * rows), layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  image = ax.imshow(np.ma.masked_invalid(acc), cmap="viridis", vmin=vmin, vmax=vmax)
  if max(rows, cols) <= 20:
    digits = 1 if max(rows, cols) <= 10 else 0
    for i, j in zip(*np.nonzero(np.isfinite(acc)), strict=True):
      bright = (acc[i, j] - vmin) / (vmax - vmin) > 0.6  # viridis is yellow at the top
      ax.text(
        j,
        i,
        f"{acc[i, j]:.{digits}f}",
        ha="center",
        va="center",
        fontsize=7,
        color="black" if bright else "white",
      )
  ax.set_xticks(range(cols))
  ax.set_yticks(range(rows))
  ax.set_xlabel("evaluated on task")
  ax.set_ylabel("after training task")
  ax.set_title(title)
  fig.colorbar(image, ax=ax)
  save_figure(fig, os.path.join(workdir, f"{name}.png"))


def domain_losses(val_loss, domains: Sequence[str]) -> list[float]:
  """A curve entry's `val_loss` (mapping by domain name or list in domain order) -> [D]."""
  if isinstance(val_loss, Mapping):
    return [float(val_loss.get(d, math.nan)) for d in domains]
  return [float(v) for v in val_loss]


DOMAIN_LINESTYLES = ("-", "--", ":", "-.")


def draw_loss_curves(
  ax, curve: Sequence[Mapping], domains: Sequence[str], label: str = "", color=None
) -> None:
  """Validation loss on every domain against tokens seen, on `ax` (one line per domain).

  Args:
    ax: a matplotlib Axes.
    curve: results.json's `curve`, entries `{step, tokens, flops, val_loss}` with `val_loss` a
      mapping domain -> loss or a list in domain order. The x axis is `tokens` (`step` when an
      entry has no tokens). When entries carry `domain` (the domain being trained), the
      switches between domains are drawn as dotted lines.
    domains: names of the domains, in training order.
    label: prefix of each line's legend label (the run's name when several runs share `ax`).
    color: one run among several: all its lines in this colour, a line style per domain
      (`DOMAIN_LINESTYLES`), and one legend entry, `label`.
  """
  x_key = "tokens" if all("tokens" in e for e in curve) else "step"
  x = np.array([float(e[x_key]) for e in curve])  # [N]
  losses = np.array([domain_losses(e["val_loss"], domains) for e in curve])  # [N, D]
  for d, domain in enumerate(domains):
    if not len(x):
      continue
    if color is None:
      ax.plot(x, losses[:, d], marker=".", label=f"{label}{domain}")
    else:
      style = DOMAIN_LINESTYLES[d % len(DOMAIN_LINESTYLES)]
      ax.plot(x, losses[:, d], color=color, linestyle=style, label=None if d else label)
  trained = [e.get("domain") for e in curve]
  for k in range(1, len(curve)):  # a domain's last evaluation is at its last step
    if trained[k] is not None and trained[k - 1] is not None and trained[k] != trained[k - 1]:
      ax.axvline(x[k - 1], color="grey", linestyle=":", linewidth=1)
  ax.set_xlabel("tokens seen" if x_key == "tokens" else "step")
  ax.set_ylabel("validation loss")
  ax.grid(alpha=0.3)


def write_loss_curves(workdir: str, curve: Sequence[Mapping], domains: Sequence[str]) -> None:
  """`loss_curves.png`: `draw_loss_curves` of one run."""
  fig = Figure(figsize=(7, 4), layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  draw_loss_curves(ax, curve, domains)
  ax.set_title("validation loss per domain")
  if len(domains) and len(curve):
    ax.legend(title="domain", fontsize=8)
  save_figure(fig, os.path.join(workdir, "loss_curves.png"))
