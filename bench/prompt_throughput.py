"""Train-step throughput of the prompt methods next to fine-tuning, and the query pass's share.

  python bench/prompt_throughput.py [--variants=Ti/16,B/16] [--image_size=224] [--batch=8]

For each method (its `cifar100` preset: the paper's prompt sizes, layers and clipping, random
weights) and ViT variant: examples/s of the jitted train step (after one compiling step), and
the time of the frozen query pass alone (the un-prompted ViT forward every prompt method runs
before its prompted pass) as a fraction of the method's step. Figures are for this machine;
compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcl import config_lib, methods
from jaxcl.data.transforms import scale_images
from jaxcl.methods import prompts
from jaxcl.train import optim
from jaxcl.train import state as state_lib
from jaxcl.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {"finetune": "finetune", "l2p": "l2p", "dualprompt": "dualprompt", "coda": "coda_prompt"}
NUM_CLASSES = 100


def _time(fn, steps: int) -> float:
  """Seconds per call after one warm-up call (which compiles)."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def bench(config_name: str, variant: str, image_size: int, batch: int, steps: int) -> dict:
  config = config_lib.load(
    os.path.join(ROOT, "configs", f"{config_name}.py"),
    "cifar100",
    **{"model.variant": variant, "model.init": "", "data.image_size": image_size},
  )
  method = methods.get(config.method.name).make(config)
  model = method.build(config, NUM_CLASSES, nnx.Rngs(0))
  schedule = optim.make_schedule(config.optim, 1e-3, 100)
  tx = optim.make_optimizer(config.optim, schedule)
  graphdef, state = state_lib.init_state(
    model, method.trainable, tx, method.init_extra(model, NUM_CLASSES), NUM_CLASSES, 0
  )
  state = state.replace(seen=jnp.arange(NUM_CLASSES) < 10, current=jnp.arange(NUM_CLASSES) < 10)
  rng = np.random.default_rng(0)
  data = {
    "image": jnp.asarray(rng.integers(0, 256, (batch, image_size, image_size, 3), np.uint8)),
    "label": jnp.asarray(rng.integers(0, 10, (batch,)), jnp.int32),
    "mask": jnp.ones((batch,), bool),
  }
  clip_all = config.optim.clip_norm if config.optim.clip_scope == "all" else 0.0
  train = step_lib.make_train_step(
    method,
    graphdef,
    tx,
    scale=config.data.scale,
    skip_nonfinite=False,
    state_sharding=None,
    batch_sharding=None,
    clip_all=clip_all,
  )
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = train(holder["state"], data)
    return metrics["loss"]

  step_s = _time(one_step, steps)
  vit = nnx.merge(graphdef, holder["state"].params, holder["state"].frozen)
  vit = vit.backbone if hasattr(vit, "backbone") else vit
  query = nnx.jit(lambda v, x: prompts.query(v, scale_images(x, config.data.scale)))
  query_s = _time(lambda: query(vit, data["image"]), steps)
  return {"ex_s": batch / step_s, "step_s": step_s, "query_s": query_s}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default="Ti/16,B/16")
  parser.add_argument("--methods", default=",".join(CONFIGS))
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch}, "
    f"{args.image_size}x{args.image_size}, {args.steps} timed steps"
  )
  print(f"{'variant':8} {'method':11} {'ex/s':>8} {'s/step':>8} {'query s':>8} {'query share':>12}")
  for variant in args.variants.split(","):
    for name in args.methods.split(","):
      r = bench(CONFIGS[name], variant, args.image_size, args.batch, args.steps)
      share = "" if name == "finetune" else f"{100 * r['query_s'] / r['step_s']:11.1f}%"
      print(
        f"{variant:8} {name:11} {r['ex_s']:8.2f} {r['step_s']:8.2f} {r['query_s']:8.2f} {share:>12}"
      )


if __name__ == "__main__":
  main()
