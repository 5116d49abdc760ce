"""A class-incremental benchmark from `config.data`: sources, class order, tasks, transforms.

Labels are remapped once, by the class order, so task t owns the contiguous label
range of its classes (PILOT's `order.index(y)` convention); `class_order` maps a
remapped label back to the dataset's own label and is stored in results.json.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcl.data import device_augment, sources, splits, transforms


@dataclasses.dataclass(frozen=True)
class Benchmark:
  train: object  # random-access source, labels already remapped
  test: object
  tasks: list[splits.Task]
  class_order: np.ndarray  # [C] dataset label of each remapped label
  num_classes: int
  train_transform: object
  eval_transform: object


class RemappedSource:
  """`source` with labels passed through `lookup` ([num_dataset_classes] -> new label or -1)."""

  def __init__(self, source, lookup: np.ndarray):
    self.source = source
    self.lookup = lookup
    self.labels = lookup[np.asarray(source.labels)]

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    ex = self.source[i]
    return {**ex, "label": np.int32(self.lookup[int(ex["label"])])}


def load_split(data, split: str):
  if data.name == "glyphs":
    from jaxcl.data import glyphs  # noqa: PLC0415  (renders on import of its font tables)

    return glyphs.load_split(split, data.dir, class_set=data.glyph_set, image_size=data.image_size)
  return sources.load_source(data.name, data_dir=data.dir, split=split)


def build(data, *, single_task: bool = False) -> Benchmark:
  train, test = load_split(data, "train"), load_split(data, "test")
  total = int(max(train.labels.max(), test.labels.max())) + 1
  order = splits.class_order(total, data.class_order, data.order_seed)
  n = data.num_classes or total
  order = order[:n]
  lookup = np.full((total,), -1, np.int64)
  lookup[order] = np.arange(n)
  train, test = RemappedSource(train, lookup), RemappedSource(test, lookup)
  init, inc = (n, n) if single_task else (data.init_classes, data.increment)
  tasks = splits.make_tasks(
    train.labels,
    test.labels,
    num_classes=n,
    init_classes=init,
    increment=inc,
    max_train_per_class=data.max_train_per_class,
    max_test_per_class=data.max_test_per_class,
  )
  if data.augment_on not in ("host", "device"):
    raise ValueError(f"data.augment_on={data.augment_on!r}: use host or device")
  if data.augment_on == "device":  # the step augments (jaxcl/data/device_augment.py)
    if data.train_aug not in device_augment.DEVICE_AUGS:
      raise ValueError(
        f"data.train_aug={data.train_aug!r} has no device version: use one of "
        f"{device_augment.DEVICE_AUGS} or data.augment_on=host"
      )
    size = data.host_image_size or data.image_size
    train_tf = transforms.TrainTransform(image_size=size, channels=data.channels, aug="none")
  else:
    train_tf = transforms.TrainTransform(
      image_size=data.image_size,
      channels=data.channels,
      aug=data.train_aug,
      scale_min=data.rrc_scale_min,
    )
  eval_tf = transforms.EvalTransform(
    image_size=data.image_size, channels=data.channels, resize_mode=data.eval_resize
  )
  return Benchmark(train, test, tasks, order, n, train_tf, eval_tf)
