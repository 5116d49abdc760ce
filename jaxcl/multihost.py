"""Agreement between the processes of a multi-host job: small host values reduced over all
processes (no-ops on one process).

Every process must call these in the same order: each is a collective (`process_allgather`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def gather(value: int) -> np.ndarray:
  """`value` (an int32) of every process, indexed by process: int [process_count]."""
  if jax.process_count() == 1:
    return np.asarray([value])
  return np.asarray(multihost_utils.process_allgather(np.int32(value))).reshape(-1)


def all_min(value: int) -> int:
  """The smallest `value` any process passed."""
  return int(gather(value).min())


def all_max(value: int) -> int:
  """The largest `value` any process passed."""
  return int(gather(value).max())


def all_true(flag: bool) -> bool:
  """Whether every process passed True."""
  return bool(gather(int(flag)).all())


def to_host(tree):
  """`tree` with every array as a whole host numpy array, on every process.

  An array sharded across processes is gathered (a collective: all processes call this); one
  each process can read whole (replicated, or on this process's devices) is copied locally.
  """

  def one(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(one, tree)
