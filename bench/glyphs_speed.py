"""Glyph dataset speed on one core: class inventory build time and images per second.

  python bench/glyphs_speed.py [--image_size=32] [--count=4000]

"cold" renders samples whose glyph rasters are not cached yet (the first epoch),
"warm" renders them again (later epochs: the cache holds every (char, font) raster).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _images_per_second(source, indices: np.ndarray) -> float:
  start = time.perf_counter()
  for i in indices:
    source[i]
  return len(indices) / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--count", type=int, default=4000)
  args = parser.parse_args()

  start = time.perf_counter()
  from jaxcl.data import glyphs  # noqa: PLC0415  (time the import with the inventory)

  inventory = glyphs.inventory()
  build = time.perf_counter() - start
  print(
    f"classes: {len(inventory)} ({glyphs.num_classes('pretrain')} pretrain + "
    f"{glyphs.num_classes('continual')} continual); import + inventory {build:.2f} s"
  )
  for class_set in ("continual", "pretrain"):
    source = glyphs.GlyphSource(class_set=class_set, split="train", image_size=args.image_size)
    indices = np.random.default_rng(0).choice(len(source), args.count, replace=False)
    cold = _images_per_second(source, indices)
    warm = _images_per_second(source, indices)
    print(
      f"{class_set:9s} {args.image_size}x{args.image_size}: cold {cold:,.0f} img/s, "
      f"warm {warm:,.0f} img/s"
    )


if __name__ == "__main__":
  main()
