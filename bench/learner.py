"""A learner state and its jitted train step for a config preset, with random weights and data.

Shared by the bench scripts: `build("l2p", "cifar100", {"model.variant": "B/16"})`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcl import config_lib, methods, optim
from jaxcl.engine import state as state_lib
from jaxcl.engine import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Learner(NamedTuple):
  config: Any
  method: Any
  graphdef: Any
  state: state_lib.LearnerState
  train_step: Any  # (state, batch) -> (state, metrics), jitted, donates the state
  batch: dict  # one random batch: image uint8 [B, H, W, 3], label int32 [B], mask bool [B]
  traces: step_lib.Traces  # traces of `train_step`


def build(
  config_name: str, preset: str | None, overrides: dict, *, batch: int, num_classes: int = 100
) -> Learner:
  """configs/<config_name>.py:<preset> with `overrides`; the first 10 classes are the task."""
  config = config_lib.load(os.path.join(ROOT, "configs", f"{config_name}.py"), preset, **overrides)
  method = methods.get(config.method.name).make(config)
  model = method.build(config, num_classes, nnx.Rngs(0))
  tx = optim.make_optimizer(config.optim, optim.make_schedule(config.optim, 1e-3, 100))
  extra = method.init_extra(model, num_classes)
  graphdef, state = state_lib.init_state(model, method.trainable, tx, extra, num_classes, 0)
  task = jnp.arange(num_classes) < 10
  state = state.replace(seen=task, current=jnp.copy(task))  # two buffers: both are donated
  size = config.data.image_size
  rng = np.random.default_rng(0)
  data = {
    "image": jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), np.uint8)),
    "label": jnp.asarray(rng.integers(0, 10, (batch,)), jnp.int32),
    "mask": jnp.ones((batch,), bool),
  }
  traces = step_lib.Traces()
  train_step = step_lib.make_train_step(
    method.loss,
    graphdef,
    tx,
    scale=config.data.scale,
    skip_nonfinite=False,
    state_sharding=None,
    batch_sharding=None,
    traces=traces,
    clip_all=config.optim.clip_norm if config.optim.clip_scope == "all" else 0.0,
  )
  return Learner(config, method, graphdef, state, train_step, data, traces)


def seconds_per_call(fn, calls: int) -> float:
  """Seconds per call of `fn` after two warm-up calls.

  The first call compiles for the freshly built state; the second compiles again because the
  state now comes back from the step with committed shardings. Neither is timed.
  """
  for _ in range(2):
    jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(calls):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def write_report(name: str, args, rows: list[dict]) -> str:
  """Writes bench/results/<name>.json: the rows, the flags, the device, the date and the load."""
  path = os.path.join(ROOT, "bench", "results", f"{name}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  report = {
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "jax": jax.__version__,
    "device": f"{jax.devices()[0].platform} x{jax.device_count()}",
    "load_average": os.getloadavg(),
    "args": vars(args),
    "rows": rows,
  }
  with open(path, "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
  print(f"wrote {path}")
  return path
