"""Input pipeline images per second per host core: augmentation on the host vs in the step.

  python bench/input_throughput.py [--source_size=32] [--image_size=224] [--batch=64]
      [--steps=20] [--threads=1,0]

- host: grain reads uint8 [source², 3], PIL random-resized-crop to image_size² + flip
  (`data.augment_on=host`, `data.train_aug=rrc_flip`), batches of `--batch`: img/s with each
  `--threads` (0 = every core), and that divided by the threads.
- device: grain only batches the source-size images (`augment_on=device`), the jitted
  `device_augment.augment` does the crop and resize: host img/s per core, and the augmentation's
  img/s on the default device (on a CPU run it competes with the host for the same cores).
  Bytes shipped per image: source² x 3 instead of image_size² x 3.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxcl.data import device_augment, pipeline, transforms


class RandomImages:
  """A random-access source of uint8 [S, S, 3] images (CIFAR-like, 100 classes)."""

  def __init__(self, size: int, count: int = 4096):
    rng = np.random.default_rng(0)
    self.images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    self.labels = rng.integers(0, 100, count)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.images[i], "label": self.labels[i]}


def host_rate(source, transform, *, batch: int, steps: int, threads: int) -> float:
  """Images per second out of a TrainIterator (numpy batches, no device transfer)."""
  it = pipeline.TrainIterator(
    source,
    np.arange(len(source)),
    transform,
    global_batch=batch,
    seed=0,
    sharding=None,
    num_threads=threads,
  )
  it.next_local()  # start the threads
  start = time.perf_counter()
  for _ in range(steps):
    it.next_local()
  return steps * batch / (time.perf_counter() - start)


def device_rate(size: int, image_size: int, *, batch: int, steps: int) -> float:
  fn = jax.jit(lambda x, k: device_augment.augment(x, k, size=image_size, aug="rrc_flip"))
  x = jax.device_put(RandomImages(size, batch).images)
  jax.block_until_ready(fn(x, jax.random.key(0)))
  start = time.perf_counter()
  for i in range(steps):
    out = fn(x, jax.random.key(i))
  jax.block_until_ready(out)
  return steps * batch / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source_size", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--threads", default="1,0")
  args = parser.parse_args()
  source = RandomImages(args.source_size)
  s, size = args.source_size, args.image_size
  host_tf = transforms.TrainTransform(image_size=size, aug="rrc_flip")
  ship_tf = transforms.TrainTransform(image_size=s, aug="none")
  print(f"{s}² uint8 -> {size}² random-resized-crop + flip, batch {args.batch}")
  print(f"bytes per image shipped: host path {size * size * 3:,}, device path {s * s * 3:,}")
  for n in (int(t) for t in args.threads.split(",")):
    threads = pipeline.host_threads(n)
    kw = dict(batch=args.batch, steps=args.steps, threads=n)
    for name, tf in (("host augment", host_tf), ("device augment (host part)", ship_tf)):
      rate = host_rate(source, tf, **kw)
      print(f"{name:28s} {threads} thread(s): {rate:9,.0f} img/s, {rate / threads:9,.0f} per core")
  rate = device_rate(s, size, batch=args.batch, steps=args.steps)
  print(f"device augment (in step) on {jax.devices()[0].platform}: {rate:9,.0f} img/s")


if __name__ == "__main__":
  main()
