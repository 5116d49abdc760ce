"""Growth vs scratch: FLOPs to reach the scratch model's final validation loss.

  python bench/growth_speedup.py [--steps_per_domain=200] [--runs=g_stack,msg,bert2bert] [--reuse]

Runs the default presets of configs/growth_stack.py (G_stack, g = 4: 2 x 128 -> 8 x 128),
configs/growth_msg.py and configs/growth_bert2bert.py (2 x 64 -> 4 x 128), and the large
models trained from scratch on the same stream and schedule (`scratch_deep` 8 x 128 for
G_stack, `scratch` 4 x 128 for the others). Every run evaluates the validation loss of both
domains every `eval_every` steps; a run's loss is their mean. For each grown run: the FLOPs at
which its curve first reaches its scratch run's final loss (linear interpolation between
evaluations, FLOPs summed over the small and the large phase; the scratch run's own count is
taken the same way), and the speedup = scratch FLOPs / grown FLOPs (Du et al. 2024 quote
speedup - 1). Writes bench/results/growth_speedup.json and .png, and every run's curve to
bench/results/growth_speedup_runs/ (`--reuse` skips runs of an unchanged config). Several
minutes per run on a 2-core CPU.
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
from jaxcl.growth import timing  # noqa: E402
from jaxcl.lm import run as lm_run  # noqa: E402

RUNS = {
  # name: (config file, overrides, the scratch run it is compared with)
  "scratch": (
    "growth_stack",
    {"model.shape.num_layers": 0, "growth.events": [], "growth.rewarm_steps": 0},
    None,
  ),
  "scratch_deep": (
    "growth_stack",
    {"model.shape.num_layers": 8, "growth.events": [], "growth.rewarm_steps": 0},
    None,
  ),
  "g_stack": ("growth_stack", {}, "scratch_deep"),
  "msg": ("growth_msg", {}, "scratch"),
  "bert2bert": ("growth_bert2bert", {}, "scratch"),
}


def mean_curve(results: dict) -> tuple[np.ndarray, np.ndarray]:
  """(FLOPs [n], mean validation loss over the domains [n]) of a run's curve."""
  flops = np.array([p["flops"] for p in results["curve"]])
  loss = np.array([np.mean(list(p["val_loss"].values())) for p in results["curve"]])
  return flops, loss


def flops_to_reach(flops: np.ndarray, loss: np.ndarray, target: float) -> float | None:
  """FLOPs where the curve first gets to `target`, interpolated; None if it never does."""
  hit = np.nonzero(loss <= target)[0]
  if not len(hit):
    return None
  i = hit[0]
  if i == 0:
    return float(flops[0])
  f0, f1, l0, l1 = flops[i - 1], flops[i], loss[i - 1], loss[i]
  return float(f0 + (f1 - f0) * (l0 - target) / (l0 - l1))


def run_one(name: str, steps: int, eval_every: int, cache_dir: str, reuse: bool) -> dict:
  """{"flops", "loss", "growth_events", "train_compiles", "wall_seconds"} of one run.

  Kept in `cache_dir/<name>.json` with the config's fingerprint; `reuse` loads a cached run of
  the same config instead of training again.
  """
  config_name, overrides, _ = RUNS[name]
  overrides = {
    **overrides,
    "train.steps_per_domain": steps,
    "eval.every_steps": eval_every,
    "checkpoint.every_steps": 0,
  }
  config = config_lib.load(os.path.join(ROOT, "configs", f"{config_name}.py"), None, **overrides)
  path = os.path.join(cache_dir, f"{name}.json")
  fingerprint = config_lib.fingerprint(config)
  if reuse and os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached["fingerprint"] == fingerprint:
      print(f"{name}: reusing {path}")
      return cached
  with tempfile.TemporaryDirectory() as tmp:
    results = lm_run.run(config, tmp)
  flops, loss = mean_curve(results)
  out = {
    "fingerprint": fingerprint,
    "flops": flops.tolist(),
    "loss": loss.tolist(),
    **{k: results[k] for k in ("growth_events", "train_compiles", "wall_seconds", "num_params")},
  }
  os.makedirs(cache_dir, exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f)
  return out


def plot(runs: dict, targets: dict, path: str) -> None:
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  baselines = [n for n in runs if RUNS[n][2] is None]
  fig, axes = plt.subplots(1, len(baselines), figsize=(6.5 * len(baselines), 4.5), squeeze=False)
  for ax, base in zip(axes[0], baselines, strict=True):
    for name in [base] + [n for n in runs if RUNS[n][2] == base]:
      ax.plot(runs[name]["flops"], runs[name]["loss"], label=name, lw=2 if name == base else 1.5)
    ax.axhline(targets[base], color="gray", ls=":", lw=1, label=f"{base} final loss")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss (mean over domains)")
    ax.set_ylim(top=targets[base] + 1.5)
    ax.set_title(f"vs {base} ({runs[base]['num_params'] / 1e6:.2f}M params), prose -> code")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps_per_domain", type=int, default=200)
  parser.add_argument("--eval_every", type=int, default=10)
  parser.add_argument("--runs", default="g_stack,msg,bert2bert")
  parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
  parser.add_argument("--reuse", action="store_true", help="reuse cached runs of the same config")
  args = parser.parse_args()
  names = [n for n in args.runs.split(",") if n]
  for n in list(names):
    if RUNS[n][2] and RUNS[n][2] not in names:
      names.insert(0, RUNS[n][2])
  cache = os.path.join(args.out, "growth_speedup_runs")
  runs = {}
  for name in names:
    runs[name] = run_one(name, args.steps_per_domain, args.eval_every, cache, args.reuse)
    print(f"{name}: final mean loss {runs[name]['loss'][-1]:.4f}", flush=True)
  targets = {n: float(r["loss"][-1]) for n, r in runs.items() if RUNS[n][2] is None}
  rows = []
  for name in names:
    base = RUNS[name][2] or name
    flops, loss = np.asarray(runs[name]["flops"]), np.asarray(runs[name]["loss"])
    reach = flops_to_reach(flops, loss, targets[base])
    base_reach = flops_to_reach(
      np.asarray(runs[base]["flops"]), np.asarray(runs[base]["loss"]), targets[base]
    )
    rows.append(
      {
        "run": name,
        "baseline": base,
        "final_loss": float(loss[-1]),
        "target_loss": targets[base],
        "total_flops": float(flops[-1]),
        "flops_to_target": reach,
        "speedup": None if reach is None else timing.speedup(base_reach, reach),
        **{k: runs[name][k] for k in ("growth_events", "train_compiles", "wall_seconds")},
      }
    )
  head = f"{'run':<13} {'baseline':<13} {'final loss':>10} {'target':>7} {'total FLOPs':>12}"
  print(f"\n{head} {'FLOPs to target':>16} {'speedup':>8}")
  for r in rows:
    reach = "never" if r["flops_to_target"] is None else f"{r['flops_to_target']:.3e}"
    speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
    print(
      f"{r['run']:<13} {r['baseline']:<13} {r['final_loss']:>10.4f} {r['target_loss']:>7.4f}"
      f" {r['total_flops']:>12.3e} {reach:>16} {speed:>8}"
    )
  os.makedirs(args.out, exist_ok=True)
  out = {"steps_per_domain": args.steps_per_domain, "rows": rows, "curves": runs}
  with open(os.path.join(args.out, "growth_speedup.json"), "w") as f:
    json.dump(out, f, indent=1)
  plot(runs, targets, os.path.join(args.out, "growth_speedup.png"))
  print(f"wrote {args.out}/growth_speedup.json and growth_speedup.png")


if __name__ == "__main__":
  main()
