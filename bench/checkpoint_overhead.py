"""Cost of checkpointing: async-save overhead per step, and save / restore times of big states.

  python bench/checkpoint_overhead.py [--steps=30] [--saves=3] [--big=B/16]

Part 1, overhead at the default interval: the default (embedded glyph) preset of each config,
its jitted train step timed over `steps` steps without saving, then over the same number of
steps with `saves` asynchronous saves spread among them (as the loop does them). The extra time
per save, divided by `checkpoint.every_steps` (default 1000) steps of training, is the share of
training time that checkpointing costs.

Part 2: the learner state of ViT-`big` at 224 (finetune: params + Adam moments; L2P: frozen
ViT + prompts and their moments): a blocking save, the time an async save blocks the caller,
and a restore into the same shardings, with the size on disk. Figures are for this machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import jax
import learner

from jaxcl import checkpoint, config_lib


def _dir_mb(path: str) -> float:
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
  return total / 2**20


def _steps(lrn: learner.Learner, state, n: int, save_at=(), ckpt=None):
  """Runs `n` train steps, saving asynchronously after the steps in `save_at`.

  Returns (state, total seconds, seconds the save calls blocked the loop).
  """
  start, blocked = time.perf_counter(), 0.0
  for i in range(1, n + 1):
    state, m = lrn.train_step(state, lrn.batch)
    if i in save_at:
      jax.block_until_ready(m["loss"])  # the loop reads the metrics before every save
      t0 = time.perf_counter()
      ckpt.save(i, state, data_state=None, meta={"step": i})
      blocked += time.perf_counter() - t0
  jax.block_until_ready(state)
  if ckpt is not None:
    ckpt.wait()
  return state, time.perf_counter() - start, blocked


def overhead(name: str, steps: int, saves: int) -> dict:
  config = config_lib.load(os.path.join(learner.ROOT, "configs", f"{name}.py"))
  lrn = learner.build(name, None, {}, batch=config.data.batch_size)
  state, _, _ = _steps(lrn, lrn.state, 2)  # compile
  state, plain, _ = _steps(lrn, state, steps)
  at = {round((k + 1) * steps / (saves + 1)) for k in range(saves)}
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = checkpoint.Checkpointer(tmp, keep=saves)
    state, saving, blocked = _steps(lrn, state, steps, at, ckpt)
    ckpt.close()
  step_s = plain / steps
  # The loop pays for a save in two ways: the call blocks (device->host copy, dispatch), and
  # the background write competes with training for the cores. The difference of the two
  # timed runs holds both but is noisy under load; the blocked time is a lower bound.
  extra = max(saving - plain, blocked) / len(at)
  interval = config.checkpoint.every_steps
  return {
    "step_s": step_s,
    "blocked_s": blocked / len(at),
    "extra_s": extra,
    "interval": interval,
    "share": extra / (interval * step_s),
  }


def save_restore(name: str, variant: str) -> dict:
  overrides = {"model.variant": variant, "model.init": "", "data.image_size": 224}
  state = learner.build(name, "cifar100", overrides, batch=2).state
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
  )
  tmp = tempfile.mkdtemp()
  try:
    ckpt = checkpoint.Checkpointer(tmp)
    t0 = time.perf_counter()
    ckpt.save(1, state, data_state=None, meta={}, wait=True)
    blocking = time.perf_counter() - t0
    t0 = time.perf_counter()
    ckpt.save(2, state, data_state=None, meta={})
    async_block = time.perf_counter() - t0
    ckpt.wait()
    t0 = time.perf_counter()
    restored = ckpt.restore(abstract)
    jax.block_until_ready(restored.state)
    restore = time.perf_counter() - t0
    size = _dir_mb(os.path.join(tmp, "2"))
    ckpt.close()
  finally:
    shutil.rmtree(tmp)
  return {"save_s": blocking, "async_block_s": async_block, "restore_s": restore, "mb": size}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="finetune,l2p")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--saves", type=int, default=3)
  parser.add_argument("--big", default="B/16")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}")
  print("Part 1: async checkpointing at the default interval (default glyph presets)")
  print(f"{'config':12} {'s/step':>8} {'blocked':>8} {'s/save':>8} {'every':>6} {'overhead':>9}")
  rows = []
  for name in args.configs.split(","):
    r = overhead(name, args.steps, args.saves)
    rows.append({"part": "overhead", "config": name, **r})
    print(
      f"{name:12} {r['step_s']:8.3f} {r['blocked_s']:8.3f} {r['extra_s']:8.3f} {r['interval']:6d}"
      f" {100 * r['share']:8.3f}%"
    )
  print(f"Part 2: ViT-{args.big} at 224, learner state save / restore")
  print(f"{'config':12} {'MB':>8} {'save s':>8} {'async s':>8} {'restore s':>9}")
  for name in args.configs.split(","):
    r = save_restore(name, args.big)
    rows.append({"part": "save_restore", "config": name, "variant": args.big, **r})
    print(
      f"{name:12} {r['mb']:8.0f} {r['save_s']:8.2f} {r['async_block_s']:8.2f} {r['restore_s']:9.2f}"
    )
  learner.write_report("checkpoint_overhead", args, rows)


if __name__ == "__main__":
  main()
