"""Class orders and class-incremental task splits.

Class orders of the reference code (research/prompt_cil.md §2.4): identity
(google-research/l2p), `np.random.seed(1993); np.random.permutation(n)` (PILOT, APER,
EASE, RanPAC, SLCA) and CODA-Prompt's `random.seed(s); random.shuffle` for s > 0.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np


def class_order(num_classes: int, mode: str, seed: int) -> np.ndarray:
  if mode == "identity":
    return np.arange(num_classes)
  if mode == "seeded":
    return np.random.RandomState(seed).permutation(num_classes)
  if mode == "coda":
    order = list(range(num_classes))
    if seed > 0:
      random.Random(seed).shuffle(order)
    return np.asarray(order)
  raise ValueError(f"data.class_order={mode!r}: identity | seeded | coda")


@dataclasses.dataclass(frozen=True)
class Task:
  index: int
  classes: np.ndarray  # remapped class ids, a contiguous range
  train_idx: np.ndarray  # indices into the train source, ascending
  test_idx: np.ndarray


def _select(labels: np.ndarray, classes: np.ndarray, per_class: int) -> np.ndarray:
  idx = np.flatnonzero(np.isin(labels, classes))
  if per_class > 0:
    keep = np.concatenate([idx[labels[idx] == c][:per_class] for c in classes])
    idx = np.sort(keep)
  return idx


def make_tasks(
  train_labels,
  test_labels,
  *,
  num_classes: int,
  init_classes: int,
  increment: int,
  max_train_per_class: int = 0,
  max_test_per_class: int = 0,
) -> list[Task]:
  """Base task of `init_classes`, then tasks of `increment` classes (B0Inc10: 10, 10)."""
  if init_classes < 1 or increment < 1 or (num_classes - init_classes) % increment:
    raise ValueError(
      f"{init_classes} initial classes + tasks of {increment} do not tile {num_classes} classes"
    )
  bounds = [0, *range(init_classes, num_classes + 1, increment)]
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  tasks = []
  for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
    classes = np.arange(lo, hi)
    tasks.append(
      Task(
        i,
        classes,
        _select(train_labels, classes, max_train_per_class),
        _select(test_labels, classes, max_test_per_class),
      )
    )
  return tasks
