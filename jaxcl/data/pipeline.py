"""Grain pipelines that turn a random-access source into global, sharded jax.Array batches.

Order is a pure function of (seed, task): the task's examples are shuffled globally
(a fresh permutation every epoch), every process takes a disjoint interleaved
shard, batches are assembled on each process and joined into one global array
with `jax.make_array_from_process_local_data`. Which examples make up a global batch does not
depend on the number of processes (only their row order does). The iterator state is a small dict
(`get_state`/`set_state`) stored in every checkpoint, so a resumed run sees
exactly the batches it would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np


def host_threads(num_threads: int) -> int:
  """`data.num_threads`, with 0 meaning every core this process may run on."""
  return num_threads if num_threads > 0 else len(os.sched_getaffinity(0))


class IndexedSource:
  """A view of `source` restricted to `indices` (a task's examples)."""

  def __init__(self, source, indices: np.ndarray):
    self.source = source
    self.indices = np.asarray(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict:
    return self.source[int(self.indices[i])]


class TrainIterator:
  """Infinite-epoch iterator over one task's training examples, yielding global batches.

  Args:
    source: random-access source of {"image", "label"} examples.
    indices: the task's example indices in `source`.
    transform: a `grain.transforms.RandomMap` (per-example augmentation).
    global_batch: examples per step over all processes.
    seed: base seed; the task index is folded in by the caller.
    sharding: the batch sharding (leading axis over `data` x `fsdp`).
    num_threads: grain read threads; 0 = the host's cores.
    process_index, process_count: default to JAX's; given only to simulate processes.
  """

  def __init__(
    self,
    source,
    indices,
    transform,
    *,
    global_batch: int,
    seed: int,
    sharding,
    num_threads: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
  ):
    self.sharding = sharding
    self.global_batch = global_batch
    pi, pc = _process(process_index, process_count)
    if global_batch % pc:
      raise ValueError(f"global batch {global_batch} does not split over {pc} processes")
    ds = grain.MapDataset.source(IndexedSource(source, indices)).seed(seed).shuffle()
    ds = ds.repeat(None)  # a new permutation every epoch
    # Process p reads positions p, p + P, p + 2P, ... of that endless stream: the shards are
    # disjoint, and the B/P rows of every process together are B consecutive positions.
    ds = ds[pi::pc]
    ds = ds.random_map(transform).batch(global_batch // pc, drop_remainder=True)
    threads = host_threads(num_threads)
    opts = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * global_batch)
    self._it = iter(ds.to_iter_dataset(opts))

  def __iter__(self):
    return self

  def next_local(self) -> dict[str, np.ndarray]:
    """This process's rows of the next global batch, as numpy."""
    return next(self._it)

  def __next__(self) -> dict[str, jax.Array]:
    return to_global(self.next_local(), self.sharding)

  def get_state(self) -> dict[str, Any]:
    return self._it.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._it.set_state(state)


def _process(index: int | None, count: int | None) -> tuple[int, int]:
  pi = jax.process_index() if index is None else index
  pc = jax.process_count() if count is None else count
  if not 0 <= pi < pc:
    raise ValueError(f"process index {pi} outside 0..{pc - 1}")
  return pi, pc


def eval_batches(
  source, indices, transform, *, global_batch: int, sharding, num_threads: int = 0
) -> Iterator[dict[str, jax.Array]]:
  """One pass over `indices` in order; the last batch is padded and `mask` marks real rows.

  Every process yields the same number of batches, so the collective eval step
  never waits on a process that ran out of data.
  """
  for local in eval_local_batches(
    source, indices, transform, global_batch=global_batch, num_threads=num_threads
  ):
    yield to_global(local, sharding)


def eval_local_batches(
  source,
  indices,
  transform,
  *,
  global_batch: int,
  num_threads: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of `eval_batches` as numpy: examples pi, pi + P, ... of `indices`."""
  pi, pc = _process(process_index, process_count)
  local_batch = global_batch // pc
  indices = np.asarray(indices)
  per_process = -(-len(indices) // pc)
  num_batches = -(-per_process // local_batch)
  ds = grain.MapDataset.source(IndexedSource(source, indices))[pi::pc].map(transform)
  threads = host_threads(num_threads)
  opts = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * local_batch)
  it = iter(ds.to_iter_dataset(opts))
  example = None
  for _ in range(num_batches):
    rows = [ex for _, ex in zip(range(local_batch), it, strict=False)]
    if rows:
      example = rows[0]
      local = pad_rows(rows, local_batch)
    else:  # this process's shard ran out before the others'
      local = empty_like_batch(example or transform.map(source[int(indices[0])]), local_batch)
    yield local


def pad_rows(rows: list[dict], size: int) -> dict[str, np.ndarray]:
  """Stacks examples into a batch of `size` rows, zero-padding and masking the tail."""
  n = len(rows)
  if n == 0:
    raise ValueError("pad_rows needs at least one example to know the shapes")
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  out = {
    k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()
  }
  out["mask"] = np.arange(size) < n
  return out


def empty_like_batch(example: dict, size: int) -> dict[str, np.ndarray]:
  """A fully masked batch (for processes whose shard is exhausted)."""
  out = pad_rows([example], size)
  out["mask"][:] = False
  return out


def to_global(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """Process-local numpy batch -> global jax.Array batch sharded along its leading axis."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
  }
