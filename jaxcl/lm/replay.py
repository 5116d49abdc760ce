"""Replay mixing for continual pretraining: an exact share of every run from what earlier
domains trained on.

Ibrahim et al. 2024 (arXiv 2403.08763) replay x% of every batch from earlier data and
shrink the new data by as much ("compute-equivalent", mode `carve`); Abbes et al. 2025
(arXiv 2508.01908) concatenate the replay rows onto a full batch (mode `add`). See
research/cpt_and_throughput.md §A8.

Composition of the global batch of step s, with B = `data.batch_size`, f = `replay.fraction`
and t the index of the current domain:

- `carve`: B rows. The replay rows before step s are R(s) = floor(f B s + 0.5), so step s
  holds R(s + 1) - R(s) of them (0.05 * 16: 0 or 1 rows, 0.8 on average) and every prefix of
  the run is within half a row of the fraction: the fractional remainder is carried, not
  rounded away per batch (as GPT-NeoX's blending indices do, Ibrahim et al.'s loader).
- `add`: B current rows + r = floor(f B + 0.5) replay rows on every step (B + r rows, on every
  domain, so one compiled shape serves the whole run; B + r must divide over the data
  devices): R(s) = r s. The shape fixes r, so here the fraction is r / B.
- On the first domain there is nothing to replay and all rows are current.
- Replay row k of the run (k counts from 0 over all steps) comes from earlier domain k mod t,
  so each earlier domain's count is also exact over every prefix.
- Rows are listed current first, then domain 0, 1, ...; the list is dealt to the JAX
  processes like cards (process p takes entries p, p + P, p + 2P, ...), and each process
  reads its rows from its own shard of every domain's stream.

Replay draws only windows an earlier domain trained on (Ibrahim et al. replay D0's own index
maps): domain j's stream is the image pipeline's order (a seeded shuffle per epoch, then the
process's interleaved shard), and its main line trained the first `trained_steps[j]` steps of
it (an anneal branch's steps are not on the main line). Those windows, in a seeded order
reshuffled every epoch, are its replay stream. Every stream is read by position, so the
iterator state is just the step: the same on every process, as jaxcl/checkpoint.py requires.
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
  """r = floor(fraction * B + 0.5): the replay rows of every `add` batch."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"replay.fraction={fraction} must be in [0, 1)")
  return int(math.floor(fraction * global_batch + 0.5))


def _dealt(offsets: np.ndarray, counts: np.ndarray, processes: int) -> np.ndarray:
  """int64 [..., P]: how many of the row-list entries [offset, offset + count) process p
  takes when entry i goes to process i mod P."""
  p = np.arange(processes)
  o, n = offsets[..., None], counts[..., None]
  return (o + n - 1 - p) // processes - (o - 1 - p) // processes


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
    """The most replay rows of a batch on domains after the first."""
    r = replay_rows(self.fraction, self.global_batch)
    if self.mode == "add":
      return r
    return int(math.ceil(self.fraction * self.global_batch))

  @property
  def rows(self) -> int:
    """Global rows per step: B (carve) or B + r (add), the same on every domain."""
    return self.global_batch + (self.replay if self.mode == "add" else 0)

  def replay_before(self, steps: np.ndarray) -> np.ndarray:
    """int64 [S]: R(s), the replay rows of the steps before each of `steps` (0 on domain 0)."""
    steps = np.asarray(steps, np.int64)
    if not self.current:
      return np.zeros_like(steps)
    if self.mode == "add":
      return steps * self.replay
    return np.floor(self.fraction * self.global_batch * steps + 0.5).astype(np.int64)

  def counts_of(self, steps: np.ndarray) -> np.ndarray:
    """int64 [S, t + 1]: global rows of each step from domains 0..t-1 and (last) the current."""
    steps = np.asarray(steps, np.int64)
    t = self.current
    out = np.zeros((len(steps), t + 1), np.int64)
    a, b = self.replay_before(steps), self.replay_before(steps + 1)  # [S]
    if t:
      j = np.arange(t)  # replay row k comes from domain k mod t
      out[:, :t] = (b[:, None] - 1 - j) // t - (a[:, None] - 1 - j) // t
    out[:, t] = self.rows - (b - a)
    return out

  def counts(self, step: int) -> np.ndarray:
    """int64 [t + 1]: `counts_of` of one step."""
    return self.counts_of(np.asarray([step]))[0]

  def local_counts_of(self, steps: np.ndarray, process_count: int) -> np.ndarray:
    """int64 [S, P, t + 1]: rows each process reads from each domain at each step."""
    counts = self.counts_of(steps)  # [S, t + 1]
    order = np.roll(np.arange(self.current + 1), 1)  # current first, then 0, 1, ...
    listed = counts[:, order]
    offsets = np.cumsum(listed, axis=1) - listed  # [S, t + 1]
    dealt = _dealt(offsets, listed, process_count)  # [S, t + 1, P]
    out = np.empty_like(dealt)
    out[:, order] = dealt
    return out.transpose(0, 2, 1)

  def local_counts(self, step: int, process_count: int) -> np.ndarray:
    """int64 [P, t + 1]: rows each process reads from each domain at `step`."""
    return self.local_counts_of(np.asarray([step]), process_count)[0]

  def consumed(self, step: int, process_count: int, chunk: int = 1 << 14) -> np.ndarray:
    """int64 [P, t + 1]: rows read from each domain's stream before `step`."""
    out = np.zeros((process_count, self.current + 1), np.int64)
    for s in range(0, step, chunk):
      out += self.local_counts_of(np.arange(s, min(s + chunk, step)), process_count).sum(0)
    return out


def stream_seed(seed: int, domain: int) -> int:
  """The seed of domain `domain`'s own stream (the CIL loop's `seed * 1000 + task`)."""
  return seed * 1000 + domain


def replay_seed(seed: int, current: int, domain: int) -> int:
  """Seed of the replay order of earlier domain `domain` while training `current`."""
  return int(np.random.SeedSequence([seed, current, 1 + domain]).generate_state(1)[0])


def _ordered(source, seed: int) -> grain.MapDataset:
  """`source` reshuffled every epoch, as in `pipeline.TrainIterator` (same seed, same order)."""
  return grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)


class SeenWindows:
  """The windows of `source` that a domain's main line trained on, as a sequence.

  The domain read global positions p + P k (k < n_p) of its stream (`_ordered(source,
  seed)`), n_p = `consumed[p]`; when those cover a whole epoch, every window was seen.
  `ids()` lists the window indices (tests); item i is the source's row of the i-th one.
  """

  def __init__(self, source, seed: int, consumed: np.ndarray):
    consumed = np.asarray(consumed, np.int64)  # [P]
    self.source, processes = source, len(consumed)
    self._order = _ordered(range(len(source)), seed)  # position -> window
    low = int(consumed.min())
    extra = [p + processes * k for p in range(processes) for k in range(low, consumed[p])]
    self._block, self._extra = low * processes, np.sort(np.asarray(extra, np.int64))
    self._all = self._block >= len(source)  # a whole epoch read: every window was seen
    self._len = len(source) if self._all else self._block + len(self._extra)
    if not self._len:
      raise ValueError("replay from a domain whose main line trained on no window")

  def __len__(self) -> int:
    return self._len

  def window(self, i: int) -> int:
    if self._all:
      return int(i)
    i = int(i)
    position = i if i < self._block else int(self._extra[i - self._block])
    return self._order[position]

  def ids(self) -> np.ndarray:
    return np.asarray([self.window(i) for i in range(len(self))], np.int64)

  def __getitem__(self, i):
    return self.source[self.window(i)]


class ReplayIterator:
  """Global batches of domain `current` mixed with replay from domains 0..current-1.

  Args:
    sources: the training sources of all domains, in order (at least current + 1); e.g.
      `[d.train for d in text.load_domains(...)]`.
    current: index of the domain being trained.
    fraction, mode: `replay.fraction`, `replay.mode` (see the module docstring).
    global_batch: B, `data.batch_size`.
    seed: the run's seed; domain d's own stream uses `stream_seed(seed, d)`.
    trained_steps: per earlier domain, the steps its main line trained (at least `current`
      entries); replay draws only the windows those steps read.
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
    trained_steps: Sequence[int] = (),
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
    if self.plan.replay and len(trained_steps) < current:
      raise ValueError(f"replay on domain {current} needs the trained steps of every earlier one")
    self.seen = []  # SeenWindows of every earlier domain
    for j in range(current if self.plan.replay else 0):
      own = Plan(j, fraction, mode, global_batch).consumed(int(trained_steps[j]), self._pc)
      self.seen.append(SeenWindows(sources[j], stream_seed(seed, j), own[:, j]))
    streams = {j: _ordered(w, replay_seed(seed, current, j)) for j, w in enumerate(self.seen)}
    streams[current] = _ordered(sources[current], stream_seed(seed, current))
    self._streams = {j: ds[self._pi :: self._pc] for j, ds in streams.items()}  # by domain
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
  config,
  sources: Sequence,
  current: int,
  *,
  trained_steps: Sequence[int] = (),
  sharding,
  process_index=None,
  process_count=None,
) -> ReplayIterator:
  """The iterator of domain `current` from `config.replay`, `config.data.batch_size` and
  `config.seed`."""
  return ReplayIterator(
    sources,
    current,
    fraction=config.replay.fraction,
    mode=config.replay.mode,
    global_batch=config.data.batch_size,
    seed=config.seed,
    trained_steps=trained_steps,
    sharding=sharding,
    process_index=process_index,
    process_count=process_count,
  )
