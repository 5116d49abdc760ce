"""Replay mixing for continual pretraining: every batch holds an exact share of earlier domains.

Ibrahim et al. 2024 (arXiv 2403.08763) replay x% of every batch from earlier data and
shrink the new data by as much ("compute-equivalent", mode `carve`); Abbes et al. 2025
(arXiv 2508.01908) concatenate the replay rows onto a full batch (mode `add`). See
research/cpt_and_throughput.md §A8.

Composition of the global batch of a step, with B = `data.batch_size` and t the index of
the current domain:

- r = floor(fraction * B + 0.5) replay rows (round half up): 0.25 * 64 -> 16, 0.05 * 64 -> 3.
- `carve`: B - r current rows + r replay rows (B rows). `add`: B current + r replay
  (B + r rows, on every domain, so one compiled shape serves the whole run; B + r must
  divide over the data devices). On the first domain there is nothing to replay and all
  rows (B in carve, B + r in add) are current.
- The r replay rows are spread over the earlier domains 0..t-1: each gets r // t, and the
  r % t extra rows go to domains (s * (r % t) + i) mod t, i < r % t, at step s, so counts
  are exact in every batch and equal over every t consecutive steps.
- Rows are listed current first, then domain 0, 1, ...; the list is dealt to the JAX
  processes like cards (process p takes entries p, p + P, p + 2P, ...), and each process
  reads its rows from its own shard of every domain's stream.

Each domain's stream is the image pipeline's order (a seeded shuffle per epoch, then the
process's interleaved shard), read by position, so the iterator state is just the step:
the same on every process, as jaxcl/checkpoint.py requires.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import grain
import jax
import ml_collections
import numpy as np

from jaxcl.data import pipeline

MODES = ("carve", "add")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.fraction = 0.0  # share of every batch from earlier domains: 0.05 weak, 0.25 strong shift
  c.mode = "carve"  # carve (compute-equivalent, batch B) | add (batch B + replay rows)
  return c


def replay_rows(fraction: float, global_batch: int) -> int:
  """r = floor(fraction * B + 0.5)."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"replay.fraction={fraction} must be in [0, 1)")
  return int(math.floor(fraction * global_batch + 0.5))


@dataclasses.dataclass(frozen=True)
class Plan:
  """The exact row counts of every step while training domain `current`."""

  current: int
  fraction: float
  mode: str
  global_batch: int

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"replay.mode={self.mode!r}: use carve | add")
    if self.mode == "carve" and self.replay >= self.global_batch:
      raise ValueError(f"replay.fraction={self.fraction} leaves no current row in a batch")

  @property
  def replay(self) -> int:
    """r: replay rows per batch on domains after the first."""
    return replay_rows(self.fraction, self.global_batch)

  @property
  def rows(self) -> int:
    """Global rows per step: B (carve) or B + r (add), the same on every domain."""
    return self.global_batch + (self.replay if self.mode == "add" else 0)

  def counts(self, step: int) -> np.ndarray:
    """int64 [t + 1]: global rows of step `step` from domains 0..t-1 and (last) the current."""
    t, r = self.current, self.replay if self.current else 0
    out = np.zeros(t + 1, np.int64)
    if t:
      q, extra = divmod(r, t)
      out[:t] = q
      out[(step * extra + np.arange(extra)) % t] += 1
    out[t] = self.rows - r
    return out

  def local_counts(self, step: int, process_count: int) -> np.ndarray:
    """int64 [P, t + 1]: rows each process reads from each domain at `step`."""
    counts = self.counts(step)
    order = np.roll(np.arange(self.current + 1), 1)  # current first, then 0, 1, ...
    rows = np.repeat(order, counts[order])  # the global row list [rows]
    process = np.arange(len(rows)) % process_count
    flat = np.bincount(process * (self.current + 1) + rows, minlength=process_count * len(counts))
    return flat.reshape(process_count, len(counts))

  def consumed(self, step: int, process_count: int) -> np.ndarray:
    """int64 [P, t + 1]: rows read from each domain's stream before `step` (period t)."""
    period = max(self.current, 1)
    full, part = divmod(step, period)
    per = [self.local_counts(s, process_count) for s in range(period)]
    return full * sum(per) + sum(per[:part], np.zeros_like(per[0]))


def _stream(source, seed: int, process_index: int, process_count: int) -> grain.MapDataset:
  """Random access to a process's shard of `source` reshuffled every epoch, as in
  `pipeline.TrainIterator` (same seed -> same order)."""
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  return ds[process_index::process_count]


def replay_seed(seed: int, domain: int) -> int:
  """Seed of earlier domain `domain`'s replay stream, derived from the current stream's."""
  return int(np.random.SeedSequence([seed, 1 + domain]).generate_state(1)[0])


class ReplayIterator:
  """Global batches of domain `current` mixed with replay from domains 0..current-1.

  Args:
    sources: the training sources of all domains, in order (at least current + 1); e.g.
      `[d.train for d in text.load_domains(...)]`.
    current: index of the domain being trained.
    fraction, mode: `replay.fraction`, `replay.mode` (see the module docstring).
    global_batch: B, `data.batch_size`.
    seed: the current domain's stream seed (the loop's seed * 1000 + domain); replay
      streams use `replay_seed(seed, j)`.
    sharding: the batch sharding (leading axis over `data`).
    process_index, process_count: default to JAX's; given only to simulate processes.

  Batches are {"tokens": int32 [R, L+1] (or a source's other keys), "domain": int32 [R]}
  with R = `plan.rows`; `domain` is the domain index each row came from.
  """

  def __init__(
    self,
    sources: Sequence,
    current: int,
    *,
    fraction: float,
    mode: str,
    global_batch: int,
    seed: int,
    sharding,
    process_index: int | None = None,
    process_count: int | None = None,
  ):
    self.plan = Plan(current, fraction, mode, global_batch)
    self.sharding = sharding
    self._pi = jax.process_index() if process_index is None else process_index
    self._pc = jax.process_count() if process_count is None else process_count
    if self.plan.rows % self._pc:
      raise ValueError(
        f"{self.plan.rows} rows per batch (data.batch_size {global_batch}, replay "
        f"{self.plan.replay} in mode {mode}) do not split over {self._pc} processes"
      )
    seeds = [replay_seed(seed, j) for j in range(current)] + [seed]
    self._streams = [_stream(sources[j], seeds[j], self._pi, self._pc) for j in range(current + 1)]
    self._step = 0
    self._pos = np.zeros(current + 1, np.int64)

  def __iter__(self):
    return self

  def next_local(self) -> dict[str, np.ndarray]:
    """This process's rows of the next batch, as numpy (current rows first)."""
    counts = self.plan.local_counts(self._step, self._pc)[self._pi]
    t = self.plan.current
    rows, domains = [], []
    for j in [t, *range(t)]:
      start = int(self._pos[j])
      rows += [self._streams[j][k] for k in range(start, start + int(counts[j]))]
      domains += [j] * int(counts[j])
      self._pos[j] += counts[j]
    self._step += 1
    batch = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
    batch["domain"] = np.asarray(domains, np.int32)  # [R / P]
    return batch

  def __next__(self) -> dict[str, jax.Array]:
    return pipeline.to_global(self.next_local(), self.sharding)

  def get_state(self) -> dict[str, int]:
    return {"domain": self.plan.current, "step": self._step}

  def set_state(self, state: dict[str, int]) -> None:
    if state["domain"] != self.plan.current:
      raise ValueError(f"iterator state of domain {state['domain']}, not {self.plan.current}")
    self._step = int(state["step"])
    self._pos = self.plan.consumed(self._step, self._pc)[self._pi].copy()


def from_config(
  config, sources: Sequence, current: int, *, sharding, process_index=None, process_count=None
) -> ReplayIterator:
  """The iterator of domain `current` from `config.replay`, `config.data.batch_size` and
  `config.seed` (stream seed `config.seed * 1000 + current`, as the CIL loop's)."""
  return ReplayIterator(
    sources,
    current,
    fraction=config.replay.fraction,
    mode=config.replay.mode,
    global_batch=config.data.batch_size,
    seed=config.seed * 1000 + current,
    sharding=sharding,
    process_index=process_index,
    process_count=process_count,
  )
