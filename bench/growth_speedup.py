"""Growth vs scratch over seeds: FLOPs and tokens to reach a robust scratch target.

  python bench/growth_speedup.py [--seeds=0,1,2] [--steps_per_domain=200] [--eval_every=10]
      [--valid_sequences=512] [--runs=g_stack,msg,bert2bert,aki,ligo] [--reuse]
      (bert2bert_one_stage: bert2BERT without its two-stage training)

Runs the default presets of configs/growth_stack.py (G_stack, g = 4: 2 x 128 -> 8 x 128, the
prts recipe), configs/growth_msg.py (one dimension per event, lr rewinds),
configs/growth_bert2bert.py (FPI with the paper's two-stage training, `bert2bert_one_stage`
without it, and `aki` with its operator swapped in) and
configs/growth_ligo.py (2 x 64 -> 4 x 128), each with every seed of `--seeds`, and the large
models trained from scratch on the same stream, schedule and optimizer (`scratch_deep`
8 x 128 from the G_stack config, `scratch` 4 x 128 from the MSG config, whose optimizer the
bert2BERT and LiGO configs share). A shorter `--steps_per_domain` scales the events' steps
(and MSG's ramps, bert2BERT's stage 1) with it. Validation: `--valid_sequences` windows per
domain, every `--eval_every` steps; a run's loss is the mean over the domains.

Target (robust): the scratch run's loss averaged over its last 10 % of evaluations and over
seeds. A curve reaches it where its trailing mean over `--smooth` evaluations first gets there
(linear interpolation). Per seed, speedup = scratch cost / grown cost in FLOPs (summed over
the small and the large phase, LiGO's operator steps included) and in tokens; the table gives
mean +- std over seeds, the range, and whether the grown run beat scratch at every seed.
Writes bench/results/growth_speedup.json and .png (mean curves with min-max bands), every
run's curve to bench/results/growth_speedup_runs/ (`--reuse` skips runs of an unchanged
config). Several minutes per run on a 2-core CPU: the full default is 7 x 3 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxcl import config_lib  # noqa: E402
from jaxcl.lm import run as lm_run  # noqa: E402

PRESET_STEPS = 200  # steps_per_domain of the growth presets (their events' time base)
TARGET = {f"model.shape.{k}": 0 for k in ("num_layers", "width", "num_heads", "mlp_dim")}
RUNS = {
  # name: (config file, overrides, the scratch run it is compared with)
  "scratch": ("growth_msg", {**TARGET, "growth.events": []}, None),
  "scratch_deep": ("growth_stack", {"model.shape.num_layers": 8, "growth.events": []}, None),
  "g_stack": ("growth_stack", {}, "scratch_deep"),
  "msg": ("growth_msg", {}, "scratch"),
  "bert2bert": ("growth_bert2bert", {}, "scratch"),
  "bert2bert_one_stage": ("growth_bert2bert", {"growth.two_stage_steps": 0}, "scratch"),
  "aki": ("growth_bert2bert", {"operator": "aki"}, "scratch"),
  "ligo": ("growth_ligo", {}, "scratch"),
}


def load(name: str, steps: int, eval_every: int, valid: int, seed: int):
  """The config of run `name` at `seed`, its events scaled to `steps` per domain."""
  config_name, overrides, _ = RUNS[name]
  overrides = dict(overrides)
  operator = overrides.pop("operator", None)
  config = config_lib.load(
    os.path.join(ROOT, "configs", f"{config_name}.py"),
    None,
    **overrides,
    **{
      "seed": seed,
      "train.steps_per_domain": steps,
      "eval.every_steps": eval_every,
      "data.valid_sequences": valid,
      "checkpoint.every_steps": 0,
    },
  )
  scale = steps / PRESET_STEPS
  events = []
  for e in config.growth.events:
    e = dict(e, step=max(1, round(e["step"] * scale)))
    if operator:
      e["operator"] = operator
    events.append(e)
  config.growth.events = events
  config.growth.ramp_steps = max(1, round(config.growth.ramp_steps * scale))
  if config.growth.two_stage_steps:
    config.growth.two_stage_steps = max(1, round(config.growth.two_stage_steps * scale))
  return config


def run_one(name: str, seed: int, args) -> dict:
  """{"flops", "tokens", "loss", ...} of one run (cached by config fingerprint)."""
  config = load(name, args.steps_per_domain, args.eval_every, args.valid_sequences, seed)
  path = os.path.join(args.out, "growth_speedup_runs", f"{name}_seed{seed}.json")
  fingerprint = config_lib.fingerprint(config)
  if args.reuse and os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached["fingerprint"] == fingerprint:
      print(f"{name} seed {seed}: reusing {path}")
      return cached
  with tempfile.TemporaryDirectory() as tmp:
    results = lm_run.run(config, tmp)
  curve = results["curve"]
  out = {
    "fingerprint": fingerprint,
    "flops": [p["flops"] for p in curve],
    "tokens": [p["tokens"] for p in curve],
    "loss": [float(np.mean(list(p["val_loss"].values()))) for p in curve],
    **{k: results[k] for k in ("growth_events", "train_compiles", "wall_seconds", "num_params")},
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f)
  return out


def smoothed(loss, window: int) -> np.ndarray:
  """Trailing mean over `window` evaluations (shorter at the start)."""
  loss = np.asarray(loss, np.float64)
  csum = np.cumsum(np.r_[0.0, loss])
  lo = np.maximum(np.arange(1, len(loss) + 1) - window, 0)
  return (csum[1:] - csum[lo]) / (np.arange(1, len(loss) + 1) - lo)


def tail_mean(loss, fraction: float = 0.1) -> float:
  """Mean of the last `fraction` of the evaluations (at least one)."""
  n = max(1, int(round(len(loss) * fraction)))
  return float(np.mean(loss[-n:]))


def cost_to_reach(cost, loss, target: float) -> float | None:
  """`cost` (FLOPs or tokens) where `loss` first gets to `target`, interpolated; None: never."""
  cost, loss = np.asarray(cost, np.float64), np.asarray(loss)
  hit = np.nonzero(loss <= target)[0]
  if not len(hit):
    return None
  i = hit[0]
  if i == 0:
    return float(cost[0])
  c0, c1, l0, l1 = cost[i - 1], cost[i], loss[i - 1], loss[i]
  return float(c0 + (c1 - c0) * (l0 - target) / (l0 - l1))


def summary(values: list[float | None]) -> dict:
  """Mean, std and range of per-seed speedups; a seed that never reaches counts as 0x."""
  x = np.asarray([0.0 if v is None else v for v in values])
  return {
    "per_seed": [None if v is None else round(v, 4) for v in values],
    "mean": float(x.mean()),
    "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
    "min": float(x.min()),
    "max": float(x.max()),
    "beats_scratch_every_seed": bool((x > 1.0).all()),
  }


def speedups(runs: dict, names: list[str], seeds: list[int], smooth: int) -> list[dict]:
  """One row per grown run: its speedups over seeds in FLOPs and tokens."""
  targets = {
    n: float(np.mean([tail_mean(runs[n, s]["loss"]) for s in seeds]))
    for n in names
    if RUNS[n][2] is None
  }
  rows = []
  for name in names:
    base = RUNS[name][2]
    if base is None:
      continue
    row = {"run": name, "baseline": base, "target_loss": targets[base]}
    for unit in ("flops", "tokens"):
      per_seed = []
      for s in seeds:
        grown, ref = runs[name, s], runs[base, s]
        reach = cost_to_reach(grown[unit], smoothed(grown["loss"], smooth), targets[base])
        ref_reach = cost_to_reach(ref[unit], smoothed(ref["loss"], smooth), targets[base])
        per_seed.append(None if reach is None or ref_reach is None else ref_reach / reach)
      row[unit] = summary(per_seed)
    row["final_loss"] = [runs[name, s]["loss"][-1] for s in seeds]
    row["train_compiles"] = [runs[name, s]["train_compiles"] for s in seeds]
    row["events"] = len(runs[name, seeds[0]]["growth_events"])
    rows.append(row)
  return rows


def plot(runs: dict, names: list[str], seeds: list[int], rows: list[dict], path: str) -> None:
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  targets = {r["baseline"]: r["target_loss"] for r in rows}
  baselines = [n for n in names if RUNS[n][2] is None]
  fig, axes = plt.subplots(1, len(baselines), figsize=(6.5 * len(baselines), 4.5), squeeze=False)
  for ax, base in zip(axes[0], baselines, strict=True):
    for name in [base] + [n for n in names if RUNS[n][2] == base]:
      flops = np.asarray(runs[name, seeds[0]]["flops"])
      loss = np.asarray([runs[name, s]["loss"] for s in seeds])  # [seeds, evals]
      (line,) = ax.plot(flops, loss.mean(0), label=name, lw=2 if name == base else 1.5)
      ax.fill_between(flops, loss.min(0), loss.max(0), color=line.get_color(), alpha=0.2)
    if base in targets:
      ax.axhline(targets[base], color="gray", ls=":", lw=1, label="target (scratch, last 10%)")
      ax.set_ylim(top=targets[base] + 1.5)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss (mean over domains)")
    ax.set_title(f"vs {base}, {len(seeds)} seeds (bands: min-max)")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def fmt(s: dict) -> str:
  return f"{s['mean']:.2f}x +- {s['std']:.2f} [{s['min']:.2f}, {s['max']:.2f}]"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps_per_domain", type=int, default=PRESET_STEPS)
  parser.add_argument("--eval_every", type=int, default=10)
  parser.add_argument("--valid_sequences", type=int, default=512)
  parser.add_argument("--smooth", type=int, default=3, help="evaluations in the trailing mean")
  parser.add_argument("--runs", default="g_stack,msg,bert2bert,aki,ligo")
  parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
  parser.add_argument("--reuse", action="store_true", help="reuse cached runs of the same config")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",") if s]
  names = [n for n in args.runs.split(",") if n]
  for n in list(names):
    if RUNS[n][2] and RUNS[n][2] not in names:
      names.insert(0, RUNS[n][2])
  runs = {}
  for name in names:
    for seed in seeds:
      runs[name, seed] = run_one(name, seed, args)
      print(f"{name} seed {seed}: final mean loss {runs[name, seed]['loss'][-1]:.4f}", flush=True)
  rows = speedups(runs, names, seeds, args.smooth)
  print(
    f"\n{'run':<10} {'target':>7} {'speedup in FLOPs':>30} {'speedup in tokens':>30} every seed"
  )
  for r in rows:
    every = "yes" if r["flops"]["beats_scratch_every_seed"] else "no"
    print(
      f"{r['run']:<10} {r['target_loss']:>7.4f} {fmt(r['flops']):>30}",
      f"{fmt(r['tokens']):>30} {every}",
    )
  os.makedirs(args.out, exist_ok=True)
  out = {
    "args": vars(args),
    "rows": rows,
    "curves": {f"{n}/seed{s}": r for (n, s), r in runs.items()},
  }
  with open(os.path.join(args.out, "growth_speedup.json"), "w") as f:
    json.dump(out, f, indent=1)
  plot(runs, names, seeds, rows, os.path.join(args.out, "growth_speedup.png"))
  print(f"wrote {args.out}/growth_speedup.json and growth_speedup.png")


if __name__ == "__main__":
  main()
