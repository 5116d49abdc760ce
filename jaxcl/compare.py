"""Runs side by side: `python -m jaxcl.compare WORKDIR [WORKDIR ...]`.

Reads each workdir's `config.json` and `results.json` (DESIGN.md §3) and prints one markdown
table: class-incremental runs get A_last / A_avg / forgetting / task-IL A_last, continual
pretraining and growth runs the final average loss and the forgetting per domain; every row
names the method and preset and gives the wall time and train-step compilations. The same table
is written as CSV, and one PNG draws every run on shared axes: accuracy on the seen classes
after each task (CIL), or the validation loss of each domain against tokens seen (CPT).
Arguments may be globs (`'runs/*-fmnist'`); a directory without results.json is reported and
skipped.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Sequence

from absl import app, flags
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxcl import writers

_OUT = flags.DEFINE_string("out", ".", "Directory for compare.csv and compare.png.")

CIL_COLUMNS = ("A_last", "A_avg", "forgetting", "task_il_A_last")


class Run(dict):
  """One workdir: `name`, `preset`, `method`, `kind` ("cil" | "cpt") and its results.json."""


def read_run(workdir: str) -> Run:
  """The workdir's config.json and results.json as one `Run` (FileNotFoundError if absent)."""
  root = epath.Path(workdir)
  results = json.loads((root / "results.json").read_text())
  config = json.loads((root / "config.json").read_text())
  kind = "cpt" if "loss_matrix" in results else "cil"
  method = config.get("method", {}).get("name") or results.get("method") or config.get("name")
  return Run(
    workdir=str(workdir),
    name=config.get("name", os.path.basename(str(workdir))),
    preset=config.get("preset", ""),
    method=method,
    kind=kind,
    results=results,
  )


def expand(patterns: Sequence[str]) -> list[str]:
  """Workdir arguments with globs expanded (remote paths are taken as they are), in order."""
  out = []
  for p in patterns:
    matches = [p] if writers.is_remote(p) else sorted(glob.glob(p)) or [p]
    out.extend(m for m in matches if m not in out)
  return out


def _fmt(x, digits: int = 2) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "—"
  if isinstance(x, bool | int):
    return str(x)
  if isinstance(x, float):
    return f"{x:.{digits}f}"
  return str(x)


def table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
  """(header, rows) for `runs`; CIL and CPT columns side by side, blank where they do not apply."""
  max_domains = max([len(r["results"].get("domains", [])) for r in runs] + [0])
  header = ["run", "method", *CIL_COLUMNS]
  if max_domains:
    header += ["final_avg_loss", *[f"forgetting_d{d}" for d in range(max_domains - 1)]]
  header += ["wall_min", "train_compiles"]
  rows = []
  for r in runs:
    res = r["results"]
    row = [f"{r['name']}:{r['preset']}", str(r["method"])]
    row += [_fmt(res.get(k)) if r["kind"] == "cil" else "—" for k in CIL_COLUMNS]
    if max_domains:
      forgetting = res.get("forgetting") if r["kind"] == "cpt" else None
      forgetting = list(forgetting or [])
      forgetting += [None] * (max_domains - 1 - len(forgetting))
      row += [_fmt(res.get("final_avg_loss"), 4) if r["kind"] == "cpt" else "—"]
      row += [_fmt(f, 4) for f in forgetting]
    wall = res.get("wall_seconds")
    row += [_fmt(wall / 60 if wall is not None else None, 1), _fmt(res.get("train_compiles"))]
    rows.append(row)
  return header, rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  cell = lambda s: "" if s == "—" else s
  return "\n".join(",".join(cell(c) for c in line) for line in [header, *rows]) + "\n"


def plot(runs: Sequence[Run], path: str) -> None:
  """One PNG: CIL runs' accuracy after each task (left), CPT runs' per-domain loss (right)."""
  cil = [r for r in runs if r["kind"] == "cil" and r["results"].get("A_curve")]
  cpt = [r for r in runs if r["kind"] == "cpt" and r["results"].get("curve")]
  panels = [p for p in (cil, cpt) if p] or [[]]
  fig = Figure(figsize=(6.5 * len(panels), 4.2), layout="constrained")
  FigureCanvasAgg(fig)
  for ax, group in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
    for r in group:
      res, label = r["results"], f"{r['name']}:{r['preset']}"
      if r["kind"] == "cil":
        ax.plot(range(1, len(res["A_curve"]) + 1), res["A_curve"], marker="o", label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("after task")
        ax.set_ylabel("accuracy on seen classes (%)")
        ax.set_title("class-incremental: accuracy after each task")
      else:
        writers.draw_loss_curves(ax, res["curve"], res.get("domains", []), f"{label} ")
        ax.set_title("continual pretraining: validation loss per domain")
    ax.grid(alpha=0.3)
    if group:
      ax.legend(fontsize=7)
  writers.save_figure(fig, path)


def compare(workdirs: Sequence[str], out: str) -> str:
  """Reads `workdirs`, writes `out`/compare.csv and `out`/compare.png, returns the table."""
  runs, missing = [], []
  for w in expand(workdirs):
    try:
      runs.append(read_run(w))
    except FileNotFoundError:
      missing.append(w)
  if not runs:
    raise FileNotFoundError(
      f"no results.json in {', '.join(workdirs)}: pass the --workdir of finished runs"
    )
  header, rows = table(runs)
  epath.Path(out).mkdir(parents=True, exist_ok=True)
  writers.write_text(os.path.join(out, "compare.csv"), csv(header, rows))
  plot(runs, os.path.join(out, "compare.png"))
  text = markdown(header, rows)
  if missing:
    text += "\n\nskipped (no results.json yet): " + ", ".join(missing)
  return text


def main(argv) -> None:
  if len(argv) < 2:
    raise app.UsageError("usage: python -m jaxcl.compare WORKDIR [WORKDIR ...] [--out=DIR]")
  try:
    print(compare(argv[1:], _OUT.value))
  except FileNotFoundError as e:
    raise SystemExit(f"jaxcl.compare: {e}") from None
  print(f"\nwrote {os.path.join(_OUT.value, 'compare.csv')} and compare.png")


if __name__ == "__main__":
  app.run(main)
