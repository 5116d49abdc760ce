"""Class orders and class-incremental task splits.

Class orders of the reference code (research/prompt_cil.md §2.4): identity
(google-research/l2p), `np.random.seed(1993); np.random.permutation(n)` (PILOT, APER,
EASE, RanPAC, SLCA) and CODA-Prompt's `random.seed(s); random.shuffle(order)` for
s > 0. Labels are remapped by the order (PILOT's `order.index(y)`), so task t owns a
contiguous range of remapped labels.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

CLASS_ORDERS = ("identity", "seeded", "coda")


def class_order(num_classes: int, mode: str, seed: int) -> np.ndarray:
  """The dataset labels in the order the tasks will see them, int [num_classes].

  `identity`: 0..n-1. `seeded`: `np.random.RandomState(seed).permutation(n)`, identical
  to PILOT's `np.random.seed(seed); np.random.permutation(n)`. `coda`: Python's
  `random.Random(seed).shuffle` of 0..n-1 when seed > 0, identity when seed == 0.
  """
  if mode == "identity":
    return np.arange(num_classes)
  if mode == "seeded":
    return np.random.RandomState(seed).permutation(num_classes)
  if mode == "coda":
    order = list(range(num_classes))
    if seed > 0:
      random.Random(seed).shuffle(order)
    return np.asarray(order)
  raise ValueError(f"unknown class order {mode!r}: use one of {' | '.join(CLASS_ORDERS)}")


def remap_labels(labels, order) -> np.ndarray:
  """New label = position of the old label in `order`; -1 for labels absent from `order`.

  The vectorised form of PILOT's `order.index(y)`; int32, same shape as `labels`.
  """
  labels, order = np.asarray(labels, np.int64), np.asarray(order, np.int64)
  if len(np.unique(order)) != len(order) or (order < 0).any():
    raise ValueError("a class order must hold distinct non-negative labels")
  size = int(max(order.max(initial=-1), labels.max(initial=-1))) + 1
  lookup = np.full((size,), -1, np.int32)  # old label -> new label
  lookup[order] = np.arange(len(order), dtype=np.int32)
  return np.where(labels >= 0, lookup[np.maximum(labels, 0)], -1).astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """One task: its remapped classes and the indices of its examples in the sources."""

  index: int
  classes: np.ndarray  # [K] remapped class ids, the contiguous range [start, stop)
  train_idx: np.ndarray  # [N_train] indices into the train source, ascending
  test_idx: np.ndarray  # [N_test] indices into the test source, ascending


def _select(labels: np.ndarray, classes: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Ascending indices of the examples of `classes`, at most `per_class` each (0: all).

  The kept examples are the first `per_class` of each class in index order, or, when
  `seed` is non-zero, a seeded random choice of them.
  """
  idx = np.flatnonzero(np.isin(labels, classes))
  if per_class <= 0:
    return idx
  if seed:
    idx = np.random.default_rng(seed).permutation(idx)
  by_class = np.argsort(labels[idx], kind="stable")  # groups classes, keeps order within
  sorted_labels = labels[idx][by_class]
  rank = np.arange(len(idx)) - np.searchsorted(sorted_labels, sorted_labels, side="left")
  return np.sort(idx[by_class[rank < per_class]])


def make_tasks(
  train_labels_remapped,
  test_labels_remapped,
  *,
  num_classes: int,
  init_classes: int,
  increment: int,
  max_train_per_class: int = 0,
  max_test_per_class: int = 0,
  seed: int = 0,
) -> list[Task]:
  """A first task of `init_classes` classes, then tasks of `increment` classes.

  B0Inc10 on CIFAR-100 is `init_classes=increment=10` (10 equal tasks); B50Inc10 is
  `init_classes=50, increment=10` (6 tasks). Labels outside [0, num_classes) (e.g. -1
  for classes left out of the order) belong to no task. `max_*_per_class` > 0 keeps the
  first N examples of each class in index order (a seeded random N when `seed` != 0).
  """
  if init_classes < 1 or increment < 1 or not init_classes <= num_classes:
    raise ValueError(
      f"need 1 <= init_classes <= num_classes and increment >= 1, got "
      f"init_classes={init_classes} increment={increment} num_classes={num_classes}"
    )
  if (num_classes - init_classes) % increment:
    raise ValueError(
      f"a first task of {init_classes} classes and tasks of {increment} do not tile "
      f"{num_classes} classes"
    )
  train_labels = np.asarray(train_labels_remapped)
  test_labels = np.asarray(test_labels_remapped)
  bounds = [0, *range(init_classes, num_classes + 1, increment)]
  tasks = []
  for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
    classes = np.arange(start, stop)
    train_idx = _select(train_labels, classes, max_train_per_class, seed)
    test_idx = _select(test_labels, classes, max_test_per_class, seed)
    tasks.append(Task(i, classes, train_idx, test_idx))
  return tasks


def joint(tasks: list[Task]) -> list[Task]:
  """One task holding every class and example of `tasks` (the joint-training upper bound)."""
  cat = lambda arrays: np.sort(np.concatenate(arrays))
  return [
    Task(
      0,
      cat([t.classes for t in tasks]),
      cat([t.train_idx for t in tasks]),
      cat([t.test_idx for t in tasks]),
    )
  ]
