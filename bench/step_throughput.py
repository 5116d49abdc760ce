"""Train-step and eval throughput of every CIL method and of the GPT: FLOP/s, MFU, compiles.

  python bench/step_throughput.py                  # the default plan below (~22 min, 2-core CPU)
  python bench/step_throughput.py --quick          # every method on a tiny ViT + tiny GPT (~2 min)
  python bench/step_throughput.py --methods=l2p,dualprompt --sizes=B/16 --big_methods=all

For each class-incremental method (its `cifar100` preset: the paper's prompt sizes, layers,
optimizer and clipping; random weights and random 224 x 224 images) at each ViT size, and for
the GPT at two sizes (random tokens; the byte-level `mini` model of configs/cpt.py at 16 x 128
tokens, and nanoGPT's 6 x 384 character model at 8 x 256, the DESIGN.md §8 target), it
reports:

- train: examples/s (tokens/s for the GPT) and seconds per step of the jitted train step,
  called back to back as jaxcl/engine/loop.py calls it (the host reads nothing between steps),
  the faster of two blocks of `--steps` steps;
- eval: examples/s (tokens/s) of the jitted evaluation step (all heads, task masks, sums);
- GFLOP/step from XLA's cost analysis of the compiled train step (`compiled.cost_analysis()`:
  the FLOPs the program executes, e.g. L2P's extra query pass and, with `clip_scope=all`, the
  frozen backbone's weight gradients), the achieved FLOP/s and MFU = achieved / peak, where
  the peak is the FLOP/s of a 2048² float32 matmul chain measured on the same device just
  before and after the row (jaxcl.engine.throughput.measured_peak_flops; the better of the two,
  so that MFU follows the load of a shared machine). For the GPT, `mfu_model` also gives MaxText's
  model-FLOPs MFU (6 N + causal attention per token, jaxcl/models/gpt.py);
- compiles: how often the train step was traced over warm-up, the timed steps, a task switch
  (new task index and class masks, as `begin_task` makes them) and the steps after it; 1 means
  a whole task sequence runs on one compilation;
- host%: the share of a step's wall time spent outside the device computation, i.e.
  1 - device / wall, where `device` is the time per step of `--steps` steps run inside one
  jitted `fori_loop` (no Python, no dispatch; step i gets the batch rolled by i rows, so XLA
  cannot hoist a frozen backbone's forward out of the loop) and `wall` the back-to-back time
  above. It is the difference of two timings: a few % is noise, and it reads 0 below 0.

Methods that take no gradient step (SimpleCIL: class means, closed form) have no train
columns; APER and RanPAC train in the first task only (their later tasks cost one forward pass
over the task's data, about the eval rate). ViT-B/16 at 224 takes ~7 s per fine-tuning step
on this 2-core CPU, so by default only `--big_methods` (finetune, l2p) run at sizes other than
Ti/16, with `--big_steps` timed steps. Figures move with machine load: compare ratios within
one run. Writes `--out` (bench/results/step_throughput.json) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import learner
import numpy as np
from flax import nnx

from jaxcl import config_lib, optim
from jaxcl.data import text
from jaxcl.engine import state as state_lib
from jaxcl.engine import step as step_lib
from jaxcl.engine import throughput
from jaxcl.lm import models, objectives, schedules
from jaxcl.models import gpt

# configs/<name>.py of every class-incremental method (joint is finetune on one task).
METHODS = (
  "finetune",
  "linear_probe",
  "simplecil",
  "l2p",
  "dualprompt",
  "coda_prompt",
  "aper",
  "ranpac",
  "ease",
  "slca",
  "ovor",
)
FIRST_TASK_ONLY = ("aper", "ranpac")
# GPT preset -> (batch, sequence length) of its benchmark row.
GPT_SHAPES = {"tiny": (8, 16), "mini": (16, 128), "nanogpt_6x384": (8, 256)}
RESULTS = os.path.join(learner.ROOT, "bench", "results", "step_throughput.json")


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _device() -> dict:
  d = jax.devices()[0]
  return {
    "platform": d.platform,
    "device_kind": d.device_kind,
    "num_devices": jax.device_count(),
    "host_cpu": _cpu_name(),
    "host_cores": os.cpu_count(),
  }


def _commit(tree):
  """Places every leaf on the first device, committed, as the loop's `device_put` does: the
  state then comes back from the step with the same placement and nothing recompiles."""
  return jax.device_put(tree, jax.devices()[0])


REPEATS = 2  # timed blocks per measurement; the fastest counts (the machine may be shared)


def time_train(train_step, traces, state, batch, steps: int, switch) -> tuple[dict, object]:
  """Compiles, warms up and times `steps` back-to-back steps (best of REPEATS blocks), then
  switches task and steps on. Returns (timings, state); `switch(state)` makes the next task's
  state; `traces` is the step's trace counter."""
  before = traces["train"]
  t0 = time.perf_counter()
  state, m = train_step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  state, m = train_step(state, batch)  # warm-up: allocations, caches
  jax.block_until_ready(m)
  best = (float("inf"), 0.0)
  for _ in range(REPEATS):
    dispatch = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
      t1 = time.perf_counter()
      state, m = train_step(state, batch)
      dispatch += time.perf_counter() - t1
    jax.block_until_ready(m)
    best = min(best, ((time.perf_counter() - t0) / steps, dispatch / steps))
  state = switch(state)
  state, m = train_step(state, batch)
  jax.block_until_ready(m)
  out = {
    "compile_s": compile_s,
    "step_s": best[0],
    "dispatch_s": best[1],
    "compiles": traces["train"] - before,
  }
  return out, state


def device_seconds(train_step, traces, state, batch, steps: int) -> tuple[float, object]:
  """Seconds per step of `steps` steps inside one jitted fori_loop (the device computation
  alone, no Python or dispatch between steps; best of REPEATS), and the state after them.

  Step i sees the batch rolled by i rows, so that XLA cannot hoist work that does not depend
  on the state (a frozen backbone's forward on a fixed batch) out of the loop.
  """

  def run(state, batch):
    def body(i, s):
      rolled = jax.tree.map(lambda x: jnp.roll(x, i, axis=0), batch)
      return train_step(s, rolled)[0]

    return jax.lax.fori_loop(0, steps, body, state)

  loop = jax.jit(run, donate_argnums=0)
  before = traces["train"]
  state = jax.block_until_ready(loop(state, batch))  # compile
  best = float("inf")
  for _ in range(REPEATS):
    t0 = time.perf_counter()
    state = jax.block_until_ready(loop(state, batch))
    best = min(best, (time.perf_counter() - t0) / steps)
  traces["train"] = before  # the fori_loop's trace is not a train-step compile
  return best, state


def xla_flops(jitted, *args) -> float:
  return throughput.compiled_flops(jitted.lower(*args).compile())


def _train_columns(train, device_s: float, flops: float, units: int) -> dict:
  step_s = train["step_s"]
  return {
    **train,
    "train_per_s": units / step_s,
    "device_s": device_s,
    "host_share": max(0.0, 1.0 - device_s / step_s),
    "gflop_per_step": flops / 1e9,
    "achieved_gflop_s": flops / step_s / 1e9,
  }


def bench_cil(name: str, preset: str, variant: str, image_size: int, batch: int, steps: int):
  """One method at one ViT size: 100 classes, task 0 = classes 0..9 (--quick: 20 classes)."""
  overrides = {"model.variant": variant, "model.init": "", "data.image_size": image_size}
  num_classes = 100
  if preset == "smoke":  # two tasks of 10 classes (CODA-P needs a component per task)
    overrides.update({"data.init_classes": 10, "data.increment": 10})
    num_classes = 20
  lrn = learner.build(name, preset, overrides, batch=batch, num_classes=num_classes)
  state, data = _commit(lrn.state), _commit(lrn.batch)
  row = {"workload": name, "model": f"ViT-{variant}", "image_size": image_size}
  row.update(batch=batch, unit="examples")

  def switch(state):  # task 1: classes 10..19 current, 0..19 seen
    ids = np.arange(num_classes)
    task = {"task": np.int32(1), "seen": ids < 20, "current": (ids >= 10) & (ids < 20)}
    return state.replace(**_commit(task))

  if lrn.method.loss is None:
    row["train"] = "closed form (class means from one forward pass per task)"
  else:
    train, state = time_train(lrn.train_step, lrn.traces, state, data, steps, switch)
    device_s, state = device_seconds(lrn.train_step, lrn.traces, state, data, steps)
    flops = xla_flops(lrn.train_step, state, data)
    row.update(_train_columns(train, device_s, flops, batch))
    if name in FIRST_TASK_ONLY:
      row["train"] = "first task only"
  eval_step = step_lib.make_eval_step(
    lrn.method.predict,
    lrn.graphdef,
    scale=lrn.config.data.scale,
    mask_unseen=lrn.config.eval.mask_unseen,
    state_sharding=None,
    batch_sharding=_batch_sharding(),
    traces=lrn.traces,
  )
  eval_s = learner.seconds_per_call(lambda: eval_step(state, data, state.current), steps)
  row["eval_per_s"] = batch / eval_s
  return row


def _batch_sharding():
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _gpt(preset: str, batch: int, seq_len: int, scan_layers: bool):
  """(config, vocab, objective, graphdef, state, train_step, traces) of configs/cpt.py on a GPT
  preset (AdamW, re-warmed cosine over two domains)."""
  path = os.path.join(learner.ROOT, "configs", "cpt.py")
  overrides = {
    "model.preset": preset,
    "model.scan_layers": scan_layers,
    "data.seq_len": seq_len,
    "data.batch_size": batch,
  }
  config = config_lib.load(path, "default", **overrides)
  vocab = text.make_tokenizer(config.data.tokenizer).vocab_size
  objective = objectives.make("lm")
  model = models.build(config, vocab, nnx.Rngs(0))
  tx = optim.make_optimizer(config.optim, schedules.make(config, [1000, 1000]))
  graphdef, state = state_lib.init_state(model, nnx.Param, tx, {}, 2, 0)
  traces = step_lib.Traces()
  train_step = step_lib.make_train_step(
    objective.loss,
    graphdef,
    tx,
    scale="none",
    skip_nonfinite=False,
    state_sharding=None,
    batch_sharding=None,
    traces=traces,
  )
  return config, vocab, objective, graphdef, state, train_step, traces


def bench_gpt(preset: str, batch: int, seq_len: int, steps: int) -> dict:
  """The GPT as configs/cpt.py runs it (layers under `scan`). XLA's cost analysis counts a
  loop body once, so the FLOPs come from the same step with the layers unrolled."""
  config, vocab, objective, graphdef, state, train_step, traces = _gpt(preset, batch, seq_len, True)
  num_params = state_lib.count_params(state.params)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (batch, seq_len + 1), np.int32)
  state, data = _commit(state), _commit({"tokens": tokens})

  def switch(state):  # domain 1
    task = {"task": np.int32(1), "seen": np.array([True, True]), "current": np.array([0, 1], bool)}
    return state.replace(**_commit(task))

  train, state = time_train(train_step, traces, state, data, steps, switch)
  device_s, state = device_seconds(train_step, traces, state, data, steps)
  *_, unrolled_state, unrolled_step, _ = _gpt(preset, batch, seq_len, False)
  flops = xla_flops(unrolled_step, unrolled_state, data)
  units = batch * seq_len
  row = {
    "workload": "gpt",
    "model": f"GPT {preset}",
    "batch": batch,
    "seq_len": seq_len,
    "unit": "tokens",
    "params": num_params,
    **_train_columns(train, device_s, flops, units),
  }
  model_flops = models.train_flops_per_token(config, vocab) * units
  row["model_gflop_per_step"] = model_flops / 1e9
  loss_step = step_lib.make_loss_step(
    objective.loss_sums,
    graphdef,
    state_sharding=None,
    batch_sharding=_batch_sharding(),
    traces=traces,
  )
  eval_s = learner.seconds_per_call(lambda: loss_step(state, data), steps)
  row["eval_per_s"] = units / eval_s
  return row


def _fmt(x, spec: str) -> str:
  """`x` formatted, or a dash of the same width when missing."""
  width = int(spec.split(".")[0].rstrip("d"))
  return f"{'—':>{width}}" if x is None else format(x, spec)


def print_table(rows: list[dict]) -> None:
  head = (
    f"{'model':14} {'workload':13} {'batch':>5} {'train/s':>9} {'s/step':>7} {'eval/s':>9}"
    f" {'GFLOP/st':>9} {'GFLOP/s':>8} {'MFU%':>6} {'comp':>4} {'host%':>6}  note"
  )
  print(head)
  print("-" * len(head))
  for r in rows:
    unit = "tok" if r["unit"] == "tokens" else "ex"
    trained = "train_per_s" in r
    mfu = _fmt(100 * r["mfu"] if trained else None, "6.1f")
    host = _fmt(100 * r["host_share"] if trained else None, "6.1f")
    note = r.get("train", "")
    if "mfu_model" in r:
      note = f"model-FLOPs MFU {100 * r['mfu_model']:.1f}%"
    print(
      f"{r['model']:14} {r['workload']:13} {r['batch']:5d}"
      f" {_fmt(r.get('train_per_s'), '9.1f')} {_fmt(r.get('step_s'), '7.3f')}"
      f" {_fmt(r.get('eval_per_s'), '9.1f')} {_fmt(r.get('gflop_per_step'), '9.2f')}"
      f" {_fmt(r.get('achieved_gflop_s'), '8.1f')} {mfu} {_fmt(r.get('compiles'), '4d')}"
      f" {host}  {unit}/s{'; ' + note if note else ''}"
    )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", default=",".join(METHODS), help="comma list, or 'none'")
  parser.add_argument("--sizes", default="Ti/16,B/16", help="ViT variants")
  parser.add_argument("--big_methods", default="finetune,l2p", help="run at non-Ti sizes; all")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=8, help="ViT batch")
  parser.add_argument("--steps", type=int, default=5, help="timed steps (and eval calls)")
  parser.add_argument("--big_steps", type=int, default=2, help="timed steps at non-Ti sizes")
  parser.add_argument("--gpt", default="mini,nanogpt_6x384", help="GPT presets, or 'none'")
  parser.add_argument("--quick", action="store_true", help="tiny ViT at 32 px + tiny GPT")
  parser.add_argument("--peak_tflops", type=float, default=0.0, help="0 = measure a matmul")
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()
  preset = "cifar100"  # the paper's method settings (prompt layers need a 12-layer ViT)
  if args.quick:  # the `smoke` method settings fit the 4-layer test ViT
    args.sizes, args.image_size, args.gpt, args.big_methods = "mu/4", 32, "tiny", "all"
    args.steps, preset = min(args.steps, 3), "smoke"
  methods = [] if args.methods == "none" else args.methods.split(",")
  gpts = [] if args.gpt == "none" else args.gpt.split(",")
  big = METHODS if args.big_methods == "all" else args.big_methods.split(",")

  def peak() -> float:
    """Peak FLOP/s of one device: given, or a matmul chain measured now (best of 5)."""
    return throughput.peak_flops(args.peak_tflops, 1)

  def measured(bench, *a) -> dict:
    """`bench(*a)` with MFU against the better of two peaks measured just before and after
    it: on a shared machine the load drifts, and the nearest measurement tracks it best."""
    before = peak()
    row = bench(*a)
    row["peak_gflop_s"] = max(before, peak()) / 1e9
    if "achieved_gflop_s" in row:
      row["mfu"] = row["achieved_gflop_s"] / row["peak_gflop_s"]
    if "model_gflop_per_step" in row:
      row["mfu_model"] = row["model_gflop_per_step"] / row["step_s"] / row["peak_gflop_s"]
    print(f"  done {row['model']} {row['workload']}", file=sys.stderr, flush=True)
    return row

  load_start = os.getloadavg()
  device = _device()
  print(
    f"jax {jax.__version__} on {device['platform']} ({device['device_kind']}, "
    f"{device['host_cpu']}, {device['host_cores']} cores), float32; load average "
    f"{load_start[0]:.2f}"
  )
  rows = []
  for size in args.sizes.split(","):
    small = size.startswith(("Ti/", "mu/"))
    steps = args.steps if small else args.big_steps
    for name in methods:
      if small or name in big:
        rows.append(measured(bench_cil, name, preset, size, args.image_size, args.batch, steps))
  for preset in gpts:
    batch, seq_len = GPT_SHAPES.get(preset, (args.batch, 0))
    seq_len = seq_len or gpt.config_for(preset).seq_len
    rows.append(measured(bench_gpt, preset, batch, seq_len, args.steps))
  print_table(rows)
  peaks = [r["peak_gflop_s"] for r in rows]
  print(f"matmul peak measured around each row: {min(peaks):.1f}-{max(peaks):.1f} GFLOP/s")
  report = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "command": "python bench/step_throughput.py " + " ".join(sys.argv[1:]),
    "jax": jax.__version__,
    "device": device,
    "dtype": "float32",
    "load_average_start": load_start,
    "load_average_end": os.getloadavg(),
    "rows": rows,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
