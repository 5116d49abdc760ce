"""Runs side by side: `python -m jaxcl.compare WORKDIR [WORKDIR ...]`.

Reads each workdir's `config.json` and `results.json` (DESIGN.md §3) and prints one markdown
table: class-incremental runs get A_last / A_avg / forgetting / task-IL A_last, continual
pretraining and growth runs the final average loss and the forgetting per domain; every row
names the method and preset and gives the wall time and train-step compilations. The same table
is written as CSV, and one PNG draws every run on shared axes: accuracy on the seen classes
after each task (CIL), or the validation loss of each domain against tokens seen (CPT).
Arguments may be globs (`'runs/*-fmnist'`); a directory without results.json is reported and
skipped. Runs of the same config and preset that differ in other settings are labelled with those
settings (`cpt:default replay.fraction=0.25`). `--over_seeds` folds runs whose configs differ only
in `seed` into one row of mean ± standard deviation (n = the number of seeds): the form of a
published table (Ibrahim et al. 2024 report their CPT rows so). `--baseline=GLOB` adds each run's
difference to the baseline run of the same seed (e.g. the union-trained model): paired by seed, it
separates recipes whose seed-to-seed spread is larger than their gap.
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

from jaxcl import config_lib, writers

_OUT = flags.DEFINE_string("out", ".", "Directory for compare.csv and compare.png.")
_BASELINE = flags.DEFINE_string(
  "baseline",
  "",
  "Workdirs (a glob) of the reference runs: adds each run's paired difference to the baseline "
  "run of the same seed (final_avg_loss, or A_last).",
)
_OVER_SEEDS = flags.DEFINE_bool(
  "over_seeds", False, "One row per config: mean ± std over runs that differ only in seed."
)

CIL_COLUMNS = ("A_last", "A_avg", "forgetting", "task_il_A_last")
# Settings of when a run measures, logs or saves, or of how it is laid out on devices, not of
# what it trains: never what tells two rows apart.
NOT_RESULTS = (
  *config_lib.RESUMABLE_KEYS,
  *("eval.every_steps", "eval.dense_steps", "eval.dense_every", "train.log_every_steps"),
  "checkpoint",
)


def _counts(key: str, ignore: Sequence[str] = ()) -> bool:
  """Whether a flat config key can change a run's results (not in NOT_RESULTS or `ignore`)."""
  return not any(key == k or key.startswith(k + ".") for k in (*NOT_RESULTS, *ignore))


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
    config=config,
  )


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = json.dumps(v)
  return out


def label_runs(runs: Sequence[Run], ignore: Sequence[str] = ()) -> list[str]:
  """`name:preset`, plus the settings that tell apart runs sharing a name and preset."""
  flat = [_flat(r["config"]) for r in runs]
  labels = []
  for r, f in zip(runs, flat, strict=True):
    same = [
      g
      for q, g in zip(runs, flat, strict=True)
      if (q["name"], q["preset"]) == (r["name"], r["preset"])
    ]
    keys = sorted(k for k in {k for g in same for k in g} if _counts(k, ignore))
    differ = [k for k in keys if len({g.get(k) for g in same}) > 1]
    shown = " ".join(f"{k}={json.loads(f[k]) if k in f else '—'}" for k in differ)
    labels.append(f"{r['name']}:{r['preset']}" + (f" {shown}" if shown else ""))
  return labels


def over_seeds(runs: Sequence[Run]) -> list[Run]:
  """Runs folded by their configs' `_counts` keys but `seed`; members in seed order."""
  groups: dict[str, list[Run]] = {}
  for r in runs:
    flat = _flat(r["config"])
    key = json.dumps({k: v for k, v in flat.items() if _counts(k, ("seed",))}, sort_keys=True)
    groups.setdefault(key, []).append(r)
  folded = []
  for group in groups.values():
    group = sorted(group, key=lambda r: r["config"].get("seed", 0))
    folded.append(Run(group[0], members=group))
  return folded


def expand(patterns: Sequence[str]) -> list[str]:
  """Workdir arguments with globs expanded (remote paths are taken as they are), in order."""
  out = []
  for p in patterns:
    # A glob names the workdirs it matches (not the log files beside them).
    matches = [p] if writers.is_remote(p) else sorted(filter(os.path.isdir, glob.glob(p))) or [p]
    out.extend(m for m in matches if m not in out)
  return out


def _fmt(x, digits: int = 2) -> str:
  if isinstance(x, list):  # one value per seed: mean ± sample standard deviation (n)
    values = [v for v in x if v is not None]
    if not values:
      return "—"
    if all(isinstance(v, int) for v in values):  # counts (compilations): the range
      return str(min(values)) if min(values) == max(values) else f"{min(values)}–{max(values)}"
    mean = sum(values) / len(values)
    if len(values) == 1:
      return _fmt(mean, digits)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({len(values)})"
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "—"
  if isinstance(x, bool | int):
    return str(x)
  if isinstance(x, float):
    return f"{x:.{digits}f}"
  return str(x)


def _value(run: Run, read):
  """`read(results)` of a run, or the list of it over the seeds of a folded run."""
  if "members" in run:
    return [read(m["results"]) for m in run["members"]]
  return read(run["results"])


def _at(values, i: int):
  return values[i] if values is not None and i < len(values) else None


def _wall_minutes(results: dict):
  wall = results.get("wall_seconds")
  return None if wall is None else wall / 60


def headline(run: Run) -> float | None:
  """The number a run is ranked by: final average loss (CPT) or A_last (CIL)."""
  return run["results"].get("final_avg_loss" if run["kind"] == "cpt" else "A_last")


def pair_with(runs: Sequence[Run], baseline: Sequence[Run]) -> None:
  """Sets results["vs_baseline"] of each run: its headline minus the same-seed baseline's."""
  by_seed = {b["config"].get("seed"): headline(b) for b in baseline}
  for r in runs:
    base, own = by_seed.get(r["config"].get("seed")), headline(r)
    r["results"]["vs_baseline"] = None if base is None or own is None else own - base


def table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
  """(header, rows) for `runs`; CIL and CPT columns side by side, blank where they do not apply."""
  max_domains = max([len(r["results"].get("domains", [])) for r in runs] + [0])
  header = ["run", "method", *CIL_COLUMNS]
  if max_domains:
    header += ["final_avg_loss", *[f"forgetting_d{d}" for d in range(max_domains - 1)]]
  paired = any("vs_baseline" in m["results"] for r in runs for m in r.get("members", [r]))
  header += ["vs_baseline"] * paired + ["wall_min", "train_compiles"]
  rows = []
  labels = label_runs(runs, ignore=_folded(runs))
  for r, label in zip(runs, labels, strict=True):
    cpt = r["kind"] == "cpt"
    row = [label, str(r["method"])]
    row += ["—" if cpt else _fmt(_value(r, lambda x, k=k: x.get(k))) for k in CIL_COLUMNS]
    if max_domains:
      row += [_fmt(_value(r, lambda x: x.get("final_avg_loss")), 4) if cpt else "—"]
      row += [
        _fmt(_value(r, lambda x, d=d: _at(x.get("forgetting"), d)), 4) if cpt else "—"
        for d in range(max_domains - 1)
      ]
    if paired:
      row += [_fmt(_value(r, lambda x: x.get("vs_baseline")), 4 if cpt else 2)]
    row += [_fmt(_value(r, _wall_minutes), 1), _fmt(_value(r, lambda x: x.get("train_compiles")))]
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
  """One PNG: CIL runs' accuracy after each task (left), CPT runs' per-domain loss (right; a
  colour per run, a line style per domain). A run folded over seeds draws its first seed."""
  labels = dict(zip(map(id, runs), label_runs(runs, ignore=_folded(runs)), strict=True))
  cil = [r for r in runs if r["kind"] == "cil" and r["results"].get("A_curve")]
  cpt = [r for r in runs if r["kind"] == "cpt" and r["results"].get("curve")]
  panels = [p for p in (cil, cpt) if p] or [[]]
  fig = Figure(figsize=(6.5 * len(panels) + 3, 4.5), layout="constrained")
  FigureCanvasAgg(fig)
  for ax, group in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
    for i, r in enumerate(group):
      res, label = r["results"], labels[id(r)]
      if "members" in r:
        label += f" (seed {r['config'].get('seed')})"
      if r["kind"] == "cil":
        ax.plot(range(1, len(res["A_curve"]) + 1), res["A_curve"], marker="o", label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("after task")
        ax.set_ylabel("accuracy on seen classes (%)")
        ax.set_title("class-incremental: accuracy after each task")
      else:
        writers.draw_loss_curves(ax, res["curve"], res.get("domains", []), label, f"C{i % 10}")
        ax.set_title("continual pretraining: validation loss per domain")
    ax.grid(alpha=0.3)
    if group is cpt:  # which line style is which domain
      domains = max((r["results"].get("domains", []) for r in cpt), key=len)
      styles = writers.DOMAIN_LINESTYLES
      for d, name in enumerate(domains):
        ax.plot([], [], color="grey", linestyle=styles[d % len(styles)], label=f"domain: {name}")
    if group:
      ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  writers.save_figure(fig, path)


def _folded(runs: Sequence[Run]) -> tuple[str, ...]:
  return ("seed",) if any("members" in r for r in runs) else ()


def read_runs(workdirs: Sequence[str]) -> tuple[list[Run], list[str]]:
  """(the runs, the workdirs without results.json) of `workdirs` and their globs."""
  runs, missing = [], []
  for w in expand(workdirs):
    try:
      runs.append(read_run(w))
    except (FileNotFoundError, NotADirectoryError):
      missing.append(w)
  if not runs:
    raise FileNotFoundError(
      f"no results.json in {', '.join(workdirs)}: pass the --workdir of finished runs"
    )
  return runs, missing


def compare(workdirs: Sequence[str], out: str, fold_seeds: bool = False, baseline: str = "") -> str:
  """Reads `workdirs`, writes `out`/compare.csv and `out`/compare.png, returns the table."""
  runs, missing = read_runs(workdirs)
  if baseline:
    pair_with(runs, read_runs([baseline])[0])
  shown = over_seeds(runs) if fold_seeds else runs
  header, rows = table(shown)
  epath.Path(out).mkdir(parents=True, exist_ok=True)
  writers.write_text(os.path.join(out, "compare.csv"), csv(header, rows))
  plot(shown, os.path.join(out, "compare.png"))
  text = markdown(header, rows)
  if missing:
    text += "\n\nskipped (no results.json yet): " + ", ".join(missing)
  return text


def main(argv) -> None:
  if len(argv) < 2:
    raise app.UsageError("usage: python -m jaxcl.compare WORKDIR [WORKDIR ...] [--out=DIR]")
  try:
    print(compare(argv[1:], _OUT.value, _OVER_SEEDS.value, _BASELINE.value))
  except FileNotFoundError as e:
    raise SystemExit(f"jaxcl.compare: {e}") from None
  print(f"\nwrote {os.path.join(_OUT.value, 'compare.csv')} and compare.png")


if __name__ == "__main__":
  app.run(main)
