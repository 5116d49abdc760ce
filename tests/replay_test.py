"""Replay mixing: exact per-batch composition, determinism, process shards, resume."""

from __future__ import annotations

import numpy as np
import pytest

from jaxcl import sharding
from jaxcl.data import pipeline
from jaxcl.lm import replay


class _Domain:
  """Window i of domain d is [1000 d + i, ...]: rows name their domain and window."""

  def __init__(self, d: int, n: int = 40, width: int = 3):
    self.d, self.n, self.width = d, n, width

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"tokens": np.full(self.width, 1000 * self.d + int(i), np.int32)}


SOURCES = [_Domain(d, n=40 + 7 * d) for d in range(4)]


TRAINED = (4, 4, 4)  # steps the earlier domains trained, in the tests that do not vary them


def _make(current, fraction=0.25, mode="carve", batch=16, seed=7, trained=TRAINED, **kw):
  return replay.ReplayIterator(
    SOURCES,
    current,
    fraction=fraction,
    mode=mode,
    global_batch=batch,
    seed=seed,
    trained_steps=trained,
    sharding=None,
    **kw,
  )


def test_rounding_rule():
  assert replay.replay_rows(0.25, 64) == 16
  assert replay.replay_rows(0.05, 64) == 3  # 3.2
  assert replay.replay_rows(0.25, 10) == 3  # 2.5 rounds half up
  assert replay.replay_rows(0.0, 64) == 0
  with pytest.raises(ValueError):
    replay.replay_rows(1.0, 8)


def test_exact_counts_per_batch_carve_and_add():
  plan = replay.Plan(current=3, fraction=0.25, mode="carve", global_batch=64)
  assert (plan.replay, plan.rows) == (16, 64)
  # 16 replay rows over 3 earlier domains: 5 each, the extra row rotates 0 -> 1 -> 2.
  assert plan.counts(0).tolist() == [6, 5, 5, 48]
  assert plan.counts(1).tolist() == [5, 6, 5, 48]
  assert plan.counts(2).tolist() == [5, 5, 6, 48]
  assert plan.counts(3).tolist() == [6, 5, 5, 48]
  add = replay.Plan(current=3, fraction=0.25, mode="add", global_batch=64)
  assert add.rows == 80 and add.counts(0).tolist() == [6, 5, 5, 64]
  # r = 8 = 3 * 2 + 2: the 2 extra rows go to domains (2 s + i) mod 3 at step s.
  extra = replay.Plan(current=3, fraction=0.125, mode="carve", global_batch=64)
  got = np.asarray([extra.counts(s)[:3] for s in range(3)])
  assert got.tolist() == [[3, 3, 2], [3, 2, 3], [2, 3, 3]]
  assert got.sum(axis=0).tolist() == [8, 8, 8]  # equal over every 3 consecutive steps


def test_first_domain_has_no_replay():
  assert replay.Plan(0, 0.25, "carve", 64).counts(5).tolist() == [64]
  assert replay.Plan(0, 0.25, "add", 64).counts(5).tolist() == [80]  # same shape, all current
  batch = _make(0, mode="add").next_local()
  assert batch["tokens"].shape == (20, 3) and (batch["domain"] == 0).all()


@pytest.mark.parametrize("mode", ["carve", "add"])
def test_batches_follow_the_plan_and_rows_come_from_their_domain(mode):
  it = _make(3, mode=mode)
  for step in range(5):
    batch = it.next_local()
    rows = batch["tokens"][:, 0]
    np.testing.assert_array_equal(rows // 1000, batch["domain"])
    counts = np.bincount(batch["domain"], minlength=4)
    np.testing.assert_array_equal(counts, it.plan.counts(step)[[0, 1, 2, 3]])
    assert len(rows) == (16 if mode == "carve" else 20)
    assert batch["domain"][0] == 3  # current rows first


def test_deterministic_for_a_seed():
  a, b, c = _make(2), _make(2), _make(2, seed=8)
  for _ in range(4):
    x, y, z = a.next_local(), b.next_local(), c.next_local()
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
  assert not np.array_equal(x["tokens"], z["tokens"])


def test_without_replay_it_matches_the_plain_text_iterator():
  sh = sharding.batch_sharding(sharding.make_mesh())
  kw = dict(global_batch=16, seed=7, sharding=sh)
  plain = pipeline.TrainIterator(
    SOURCES[2], np.arange(len(SOURCES[2])), lambda x, rng: x, **dict(kw, seed=7002)
  )
  mixed = replay.ReplayIterator(
    SOURCES, 2, fraction=0.0, mode="carve", global_batch=16, seed=7, sharding=sh
  )
  for _ in range(6):  # crosses an epoch boundary (54 windows)
    np.testing.assert_array_equal(
      np.asarray(next(plain)["tokens"]), np.asarray(next(mixed)["tokens"])
    )


@pytest.mark.parametrize("mode", ["carve", "add"])
def test_state_resumes_to_the_same_next_batch(mode):
  a = _make(3, mode=mode)
  for _ in range(7):
    a.next_local()
  state = a.get_state()
  assert state == {"domain": 3, "step": 7}
  expected = [a.next_local() for _ in range(3)]
  b = _make(3, mode=mode)
  b.set_state(state)
  for want in expected:
    got = b.next_local()
    np.testing.assert_array_equal(got["tokens"], want["tokens"])
    np.testing.assert_array_equal(got["domain"], want["domain"])
  with pytest.raises(ValueError, match="domain"):
    _make(2).set_state(state)


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_process_shards_are_exact_disjoint_and_resumable(processes):
  its = [_make(3, process_index=p, process_count=processes) for p in range(processes)]
  seen = {d: [] for d in range(4)}
  for step in range(5):  # 60 current rows: within the current domain's first epoch
    parts = [it.next_local() for it in its]
    assert all(len(p["domain"]) == 16 // processes for p in parts)
    domains = np.concatenate([p["domain"] for p in parts])
    np.testing.assert_array_equal(np.bincount(domains, minlength=4), its[0].plan.counts(step))
    for p in parts:
      for d, row in zip(p["domain"], p["tokens"][:, 0], strict=True):
        seen[d].append(int(row))
  for d in range(4):  # fewer rows than an epoch: no window read twice, by any process
    assert len(seen[d]) == len(set(seen[d])) and len(seen[d]) <= len(SOURCES[d])
  states = [it.get_state() for it in its]
  assert all(s == states[0] for s in states)  # the same state on every process
  for p, it in enumerate(its):
    fresh = _make(3, process_index=p, process_count=processes)
    fresh.set_state(states[0])
    np.testing.assert_array_equal(fresh.next_local()["tokens"], it.next_local()["tokens"])


def test_global_batches_on_the_mesh():
  sh = sharding.batch_sharding(sharding.make_mesh())
  it = replay.ReplayIterator(
    SOURCES, 1, fraction=0.5, mode="add", global_batch=16, seed=0, trained_steps=(2,), sharding=sh
  )
  batch = next(it)
  assert batch["tokens"].shape == (24, 3) and batch["domain"].shape == (24,)
  assert int((np.asarray(batch["domain"]) == 0).sum()) == 8


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="carve | add"):
    _make(1, mode="mix")
  with pytest.raises(ValueError, match="no current row"):
    _make(1, fraction=0.99)
  with pytest.raises(ValueError, match="trained steps"):
    _make(2, trained=(4,))
  with pytest.raises(ValueError, match="processes"):
    _make(1, fraction=0.125, mode="add", batch=8, process_index=0, process_count=4)  # 9 rows


def test_from_config():
  import ml_collections

  config = ml_collections.ConfigDict(
    {"seed": 7, "replay": replay.default_config().to_dict(), "data": {"batch_size": 16}}
  )
  config.replay.fraction = 0.25
  a = replay.from_config(config, SOURCES, 3, trained_steps=TRAINED, sharding=None)
  b = _make(3, seed=7)
  np.testing.assert_array_equal(a.next_local()["tokens"], b.next_local()["tokens"])


def test_rows_per_process_by_hand():
  """Current-domain rows first, then domains 0, 1, ...; row k goes to process k mod P."""
  plan = replay.Plan(2, 0.25, "carve", 8)  # r = 2: one row from each earlier domain, 6 current
  np.testing.assert_array_equal(plan.counts(0), [1, 1, 6])
  np.testing.assert_array_equal(plan.local_counts(0, 2), [[1, 0, 3], [0, 1, 3]])
  # Fewer current rows than processes: the last process gets none, the shape still holds.
  small = replay.Plan(1, 0.5, "carve", 4).local_counts(0, 4)
  np.testing.assert_array_equal(small, [[0, 1], [0, 1], [1, 0], [1, 0]])


@pytest.mark.parametrize("current", [0, 1])
def test_early_domains_resume_to_the_same_next_batch(current):
  a = _make(current)
  for _ in range(3):
    a.next_local()
  b = _make(current)
  b.set_state(a.get_state())
  np.testing.assert_array_equal(a.next_local()["tokens"], b.next_local()["tokens"])


def test_default_config_replays_nothing():
  import ml_collections

  config = ml_collections.ConfigDict(
    {"seed": 7, "replay": replay.default_config().to_dict(), "data": {"batch_size": 16}}
  )
  batch = replay.from_config(config, SOURCES, 2, sharding=None).next_local()
  assert (batch["domain"] == 2).all() and len(batch["domain"]) == 16


def test_from_config_passes_the_process_and_the_sharding():
  import ml_collections

  config = ml_collections.ConfigDict(
    {"seed": 7, "replay": {"fraction": 0.25, "mode": "carve"}, "data": {"batch_size": 16}}
  )
  mesh = sharding.make_mesh(1)
  batch_sh = sharding.batch_sharding(mesh)
  kw = dict(trained_steps=TRAINED, sharding=batch_sh, process_index=1, process_count=2)
  it = replay.from_config(config, SOURCES, 2, **kw)
  direct = _make(2, seed=7, process_index=1, process_count=2)
  np.testing.assert_array_equal(it.next_local()["tokens"], direct.next_local()["tokens"])
  assert next(it)["tokens"].sharding == batch_sh


def _trained_windows(domain, steps, processes, **kw):
  """The windows domain `domain`'s own rows covered in `steps` steps, over all processes."""
  its = [_make(domain, process_index=p, process_count=processes, **kw) for p in range(processes)]
  seen = set()
  for _ in range(steps):
    for it in its:
      batch = it.next_local()
      seen |= {int(x) % 1000 for x in batch["tokens"][batch["domain"] == domain, 0]}
  return seen


@pytest.mark.parametrize("mode", ["carve", "add"])
@pytest.mark.parametrize("processes", [1, 2])
def test_replay_draws_only_windows_the_earlier_domains_trained_on(mode, processes):
  kw = dict(fraction=0.25, mode=mode, batch=8)
  trained = (3, 2)  # fewer steps than an epoch of either domain
  seen = [_trained_windows(d, trained[d], processes, trained=trained, **kw) for d in range(2)]
  assert all(0 < len(s) < len(SOURCES[d]) for d, s in enumerate(seen))
  its = [
    _make(2, process_index=p, process_count=processes, trained=trained, **kw)
    for p in range(processes)
  ]
  drawn = {0: set(), 1: set()}
  for _ in range(40):  # several epochs of each replay stream
    for it in its:
      batch = it.next_local()
      for d, row in zip(batch["domain"], batch["tokens"][:, 0], strict=True):
        if d < 2:
          assert int(row) % 1000 in seen[d], f"replayed window {row} domain {d} never trained on"
          drawn[int(d)].add(int(row) % 1000)
  if processes == 1:  # every trained window comes back (with 2, the rows of a domain can all
    assert drawn == {0: seen[0], 1: seen[1]}  # be dealt to one process: half its stream)
  assert all(len(drawn[d]) >= len(seen[d]) // 2 for d in range(2))
  for d, it in enumerate(its[0].seen):  # SeenWindows lists exactly those
    assert set(it.ids().tolist()) == seen[d]


def test_a_domain_trained_past_an_epoch_replays_all_its_windows():
  seen = replay.SeenWindows(SOURCES[0], replay.stream_seed(7, 0), np.asarray([41]))
  assert len(seen) == len(SOURCES[0]) and sorted(seen.ids().tolist()) == list(range(40))


@pytest.mark.parametrize("fraction, batch", [(0.05, 16), (0.1, 24), (0.3, 8)])
def test_long_run_replay_fraction_is_exact_within_one_row(fraction, batch):
  plan = replay.Plan(current=3, fraction=fraction, mode="carve", global_batch=batch)
  counts = plan.counts_of(np.arange(2000))  # [S, 4]
  assert (counts.sum(1) == batch).all() and (counts >= 0).all()
  steps = np.arange(1, 2001)
  replayed = np.cumsum(counts[:, :3], axis=0)  # [S, 3], after each prefix of steps
  assert np.abs(replayed.sum(1) - fraction * batch * steps).max() <= 1.0
  assert np.abs(replayed - fraction * batch * steps[:, None] / 3).max() <= 1.0
  # The iterator reads exactly those counts (the old per-batch rounding: 1 of 16 = 6.25%).
  it = _make(3, fraction=fraction, batch=batch)
  got = [np.bincount(it.next_local()["domain"], minlength=4) for _ in range(60)]
  np.testing.assert_array_equal(got, counts[:60])


@pytest.mark.parametrize("processes", [1, 3])
def test_consumed_matches_the_rows_read(processes):
  plan = replay.Plan(current=2, fraction=0.05, mode="carve", global_batch=24)
  total = sum(plan.local_counts(s, processes) for s in range(97))
  np.testing.assert_array_equal(plan.consumed(97, processes, chunk=10), total)
