"""Plan a run for a TPU topology on any machine: per-chip memory, FLOPs, the largest batch.

  python -m jaxcl.plan --config=configs/cpt.py:pile_slimpajama_405m --topology=v5e:4x4
  python -m jaxcl.plan --config=configs/l2p.py:cifar100 --topology=v5e:2x4 \\
      --config.model.dtype=bfloat16

The run's own learner state, shardings and jitted steps (`build_learner` / `make_steps` of
jaxcl/cil/run.py and jaxcl/lm/run.py) are built under `jax.eval_shape` (no weights, no
data) on a mesh of the topology's devices, lowered and compiled ahead of time, as MaxText's
`train_compile.py` does. libtpu's compile-only client (`pip install "jaxcl[tpu]"`) gives the
TPU devices of any topology on a CPU machine; XLA's TPU memory analysis then says what one chip
holds. Without `--topology` the plan is for this machine's devices.

Printed per step (train, eval): rows per device, microbatches, the bytes per device of the
arguments (state + batch), outputs, temporaries and their total (arguments + outputs - aliased
donations + temporaries + code) against the chip's HBM, and the FLOPs XLA counts (a scanned
loop body once: with `scan_layers` that is one layer, not all). Then the largest per-device
batch of one train microbatch that fits (doubling, then bisection, one compile each, each
printed as it is tried), and the `train.per_device_microbatch` that reaches the configured
global batch with it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags
from jax.experimental import topologies
from ml_collections import config_flags

from jaxcl import methods, sharding
from jaxcl.cil import run as cil_run
from jaxcl.data import sources, text
from jaxcl.engine import microbatch
from jaxcl.engine import step as step_lib
from jaxcl.lm import models, replay
from jaxcl.lm import run as lm_run
from jaxcl.models import bert, gpt, target

# HBM per JAX device (a chip; a TensorCore on v2/v3), GiB, by `device_kind`.
HBM_GIB = {
  "TPU v2": 8,
  "TPU v3": 16,
  "TPU v4": 30.75,  # XLA's available HBM (nominal 32)
  "TPU v5 lite": 15.75,  # v5e: 16 GiB, of which XLA says 15.75 are available
  "TPU v5": 95,  # v5p
  "TPU v6 lite": 32,  # v6e (Trillium)
}
GIB = 1024**3


@dataclasses.dataclass
class StepMemory:
  """One compiled step's bytes per device (XLA's memory analysis) and FLOPs."""

  rows_per_device: int
  microbatches: int
  arguments: int
  outputs: int
  aliased: int  # outputs written into donated arguments
  temporaries: int
  code: int
  flops: float
  error: str = ""  # XLA's RESOURCE_EXHAUSTED message when the step does not fit at all

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


def step_memory(compiled, rows_per_device: int, microbatches: int) -> StepMemory:
  m = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return StepMemory(
    rows_per_device,
    microbatches,
    m.argument_size_in_bytes,
    m.output_size_in_bytes,
    m.alias_size_in_bytes,
    m.temp_size_in_bytes,
    m.generated_code_size_in_bytes,
    float((cost or {}).get("flops", 0.0)),
  )


def compile_step(step, args, rows_per_device: int, microbatches: int) -> StepMemory:
  """`step` (jitted) lowered for the abstract `args` and compiled; a compile that runs out of
  HBM (TPU) gives a StepMemory holding XLA's message instead."""
  try:
    compiled = step.lower(*args).compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    message = str(e).splitlines()[0]
    return StepMemory(rows_per_device, microbatches, 0, 0, 0, 0, 0, 0.0, error=message)
  return step_memory(compiled, rows_per_device, microbatches)


def largest_fitting(fits: Callable[[int], bool], limit: int, start: int = 1) -> int:
  """The largest n in [1, limit] with `fits(n)` for a monotone `fits` (0 if 1 does not fit):
  doubling up from `start` while it fits (halving down while it does not), then bisection;
  a start near the answer (the configured batch) skips the doublings below it."""
  lo, hi = 0, limit + 1  # lo fits (0: none known), hi does not (limit + 1: past the limit)
  n = max(1, min(start, limit))
  if fits(n):
    lo, n = n, 2 * n
    while n <= limit and fits(n):
      lo, n = n, 2 * n
    hi = min(n, limit + 1)
  else:
    hi, n = n, n // 2
    while n >= 1 and not fits(n):
      hi, n = n, n // 2
    lo = n
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def per_device_microbatch(rows: int, devices: int, largest: int) -> int:
  """The largest per-device microbatch <= `largest` whose microbatches make up `rows` exactly
  (0 when none does)."""
  return max((d for d in range(1, largest + 1) if rows % (d * devices) == 0), default=0)


def topology_devices(name: str) -> list:
  """The devices of a TPU topology such as "v5e:4x4" or "v4:2x2x4" (libtpu's compile-only
  client; v4 and v5p chips as one megacore device each, as MaxText does)."""
  generation = name.split(":")[0]
  megacore = generation in ("v4", "v5p")
  desc = topologies.get_topology_desc(
    platform="tpu",
    topology_name=name,
    chip_config_name="megacore" if megacore else "default",
    chips_per_host_bounds=(2, 2, 1),
    num_slices=1,
  )
  return list(desc.devices)


class Planner:
  """The run of `config` on `devices`: its abstract state once, its steps compiled per batch."""

  def __init__(self, config, devices):
    self.config = config = config.copy_and_resolve_references()
    config.model.init = ""  # shapes only: no weights are read
    self.mesh = sharding.mesh_from_config(config.mesh, devices)
    self.batch_devices = sharding.batch_devices(self.mesh)
    self.traces = step_lib.Traces()  # step name -> compiles so far
    self._memory = {}  # (step, rows or None) -> StepMemory
    self.device_kind = devices[0].device_kind
    box = {}

    def build():
      parts = self._build_learner()
      box.update(parts)
      return parts.pop("state")

    # "auto" dtype and attention, and Pallas kernels, for the planned chips, not this host.
    self.platform = devices[0].platform
    with target.compiling_for(self.platform):
      self.state = jax.eval_shape(build)
    self.parts = box

  def _build_learner(self) -> dict:
    config = self.config
    if config.kind == "cpt":
      domains = len(config.data.domains.split(","))
      learner = lm_run.build_learner(config, _vocab_size(config), domains)
      return dict(learner._asdict())

    method = methods.get(config.method.name).make(config)
    classes = config.data.num_classes or sources.num_classes(config.data.name, config.data.dir)
    _, tx, graphdef, state = cil_run.build_learner(config, method, classes, 1000)
    return dict(method=method, tx=tx, graphdef=graphdef, state=state, num_classes=classes)

  @property
  def train_rows(self) -> int:
    """Global rows of a train step as configured (replay rows included)."""
    return _rows(self.config)

  def compile(
    self, *, rows: int | None = None, evaluate: bool = True
  ) -> tuple[StepMemory, StepMemory | None]:
    """(train, eval) compiled for the configured batch, or for `rows` rows in one microbatch
    (eval None unless `evaluate`). Each step compiles once per batch: the search and the report
    ask again for free."""
    train = self._memory.get(("train", rows))
    evals = self._memory.get(("eval", rows)) if evaluate else None
    if train is None or (evaluate and evals is None):
      with target.compiling_for(self.platform):
        train, evals = self._compile(rows, evaluate)
      self._memory[("train", rows)] = train
      if evaluate:
        self._memory[("eval", rows)] = evals
    return train, evals

  def _compile(self, rows: int | None, evaluate: bool):
    config = self.config.copy_and_resolve_references()
    if rows is not None:
      config.data.batch_size = rows
      config.train.microbatches, config.train.per_device_microbatch = 1, 0
      if config.kind == "cpt":
        config.replay.mode = "carve"  # rows = batch_size
    train_rows, eval_rows = _rows(config), config.data.eval_batch_size
    micro = microbatch.count(
      train_rows,
      self.batch_devices,
      microbatches=config.train.microbatches,
      per_device=config.train.per_device_microbatch,
    )
    state_sh, train_step, eval_step = self._steps(config)
    per = lambda n: n // self.batch_devices
    state = sharding.abstract(self.state, state_sh)
    batch_sh = sharding.batch_sharding(self.mesh)
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, np.dtype(dtype), sharding=batch_sh)
    train = compile_step(
      train_step,
      (state, self._batch(config, train_rows, spec, train=True)),
      per(train_rows) // micro,
      micro,
    )
    if not evaluate:
      return train, None
    eval_batch = {**self._batch(config, eval_rows, spec), "mask": spec((eval_rows,), bool)}
    eval_args = (state, eval_batch)
    if config.kind != "cpt":  # the class-incremental eval step also takes the task's classes
      repl = sharding.replicated(self.mesh)
      eval_args += (jax.ShapeDtypeStruct((self.parts["num_classes"],), bool, sharding=repl),)
    return train, compile_step(eval_step, eval_args, per(eval_rows), 1)

  def _steps(self, config):
    p, traces = self.parts, self.traces
    if config.kind == "cpt":
      rows = _rows(config)
      return lm_run.make_steps(
        config,
        p["objective"],
        p["tx"],
        p["graphdef"],
        self.state,
        self.mesh,
        rows=rows,
        traces=traces,
      )
    return cil_run.make_steps(
      config, p["method"], p["tx"], p["graphdef"], self.state, self.mesh, traces
    )

  def _batch(self, config, rows: int, spec, train: bool = False) -> dict:
    """Abstract batches as the input pipelines make them (with `data.augment_on=device` the
    training images arrive at `data.host_image_size`, as jaxcl/data/benchmark.py ships them)."""
    d = config.data
    if config.kind != "cpt":
      size = d.image_size
      if train and d.augment_on == "device":
        size = d.host_image_size or d.image_size
      shape = (rows, size, size, d.channels)
      return {"image": spec(shape, "uint8"), "label": spec((rows,), "int32")}
    if config.train.objective == "mlm":
      return {
        "tokens": spec((rows, d.seq_len), "int32"),
        "targets": spec((rows, d.seq_len), "int32"),
        "target_mask": spec((rows, d.seq_len), bool),
      }
    return {"tokens": spec((rows, d.seq_len + 1), "int32")}

  def fits(self, per_device: int, hbm_bytes: float) -> bool:
    """Whether a train step of `per_device` rows per device (one microbatch) compiles within
    `hbm_bytes` per device (a TPU compile that runs out of HBM raises RESOURCE_EXHAUSTED)."""
    train, _ = self.compile(rows=per_device * self.batch_devices, evaluate=False)
    return not train.error and train.total <= hbm_bytes


def _rows(config) -> int:
  """Global rows of a train step (replay rows included)."""
  if config.kind == "cpt":
    c = config
    return replay.Plan(0, c.replay.fraction, c.replay.mode, c.data.batch_size).rows
  return config.data.batch_size


def _vocab_size(config) -> int:
  """The tokenizer's vocabulary, or the model preset's when the tokenizer file is not here."""
  name = config.data.tokenizer
  if name in ("", "byte") or os.path.exists(name):
    return text.make_tokenizer(name).vocab_size
  presets = bert.PRESETS if config.train.objective == "mlm" else gpt.PRESETS
  return presets[config.model.preset]["vocab_size"]


def format_plan(where: str, planner: Planner, train, evaluate, hbm: float) -> str:
  """The printed plan (see the module docstring)."""
  g = lambda n: f"{n / GIB:8.2f}"
  lines = [
    f"plan {planner.config.name}:{planner.config.preset} on {where}: "
    f"{planner.mesh.size} x {planner.device_kind}, {hbm / GIB:.2f} GiB HBM per device, "
    + " x ".join(f"{a}={n}" for a, n in planner.mesh.shape.items()),
    f"{'step':6} {'rows/dev':>8} {'micro':>5} {'args GiB':>8} {'out GiB':>8} {'temp GiB':>8}"
    f" {'total GiB':>9} {'of HBM':>7} {'TFLOP (XLA)':>11}",
  ]
  for name, m in (("train", train), ("eval", evaluate)):
    if m.error:
      lines.append(f"{name:6} {m.rows_per_device:8d} {m.microbatches:5d} does not fit: {m.error}")
      continue
    lines.append(
      f"{name:6} {m.rows_per_device:8d} {m.microbatches:5d} {g(m.arguments)} {g(m.outputs)}"
      f" {g(m.temporaries)} {m.total / GIB:9.2f} {100 * m.total / hbm:6.0f}% {m.flops / 1e12:11.3f}"
    )
  if planner.config.kind == "cpt":  # XLA counts a scanned body once; this is the whole step
    c = planner.config
    per_token = models.train_flops_per_token(c, _vocab_size(c))
    step = per_token * planner.train_rows * c.data.seq_len / planner.mesh.size
    lines.append(
      f"model FLOPs of a train step (MaxText's count): {step / 1e12:.1f} TFLOP per device"
    )
  return "\n".join(lines)


def format_largest(planner: Planner, largest: int) -> str:
  """The search's answer: the largest per-device batch and the accumulation that uses it."""
  rows = planner.train_rows
  best = per_device_microbatch(rows, planner.batch_devices, largest)
  pieces = rows // (best * planner.batch_devices) if best else "-"
  return (
    f"largest train batch that fits: {largest} rows per device (one microbatch); {rows} rows = "
    f"{pieces} microbatches with --config.train.per_device_microbatch={best or '-'}"
  )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  topology = _TOPOLOGY.value
  devices = topology_devices(topology) if topology else jax.devices()
  hbm = _HBM.value * GIB or HBM_GIB.get(devices[0].device_kind, 16) * GIB
  planner = Planner(_CONFIG.value, devices)
  train, evaluate = planner.compile()
  print(format_plan(topology or "this machine", planner, train, evaluate, hbm), flush=True)
  if not _SEARCH.value:
    return

  def fits(per_device: int) -> bool:
    ok = planner.fits(per_device, hbm)
    m, _ = planner.compile(rows=per_device * planner.batch_devices, evaluate=False)
    shown = m.error or f"{m.total / GIB:.2f} GiB"
    print(f"  train at {per_device} rows per device: {shown}, fits={ok}", flush=True)
    return ok

  start = planner.train_rows // planner.batch_devices // max(1, train.microbatches)
  print(format_largest(planner, largest_fitting(fits, _MAX.value, start)))


def _define_flags() -> None:
  """The command line (defined only when run as a program: jaxcl.main defines --config too)."""
  global _CONFIG, _TOPOLOGY, _HBM, _SEARCH, _MAX
  _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py[:preset]")
  _TOPOLOGY = flags.DEFINE_string("topology", "", "a TPU topology, e.g. v5e:4x4, v4:2x2x4")
  _HBM = flags.DEFINE_float("hbm_gib", 0.0, "HBM per device in GiB (0 = by device kind)")
  _SEARCH = flags.DEFINE_bool("search", True, "search the largest per-device batch")
  _MAX = flags.DEFINE_integer("max_batch", 256, "largest per-device batch tried")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  # Compile only: the default backend is the CPU, and libtpu asks no metadata server.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several planners at once
  _define_flags()
  app.run(main)
