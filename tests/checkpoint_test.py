"""Checkpointer: round trip, resharded restore, retention, fallback past bad checkpoints."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcl import checkpoint, sharding


@flax.struct.dataclass
class LearnerState:
  step: jax.Array  # int32 []
  params: dict
  opt_state: optax.OptState


def _spec(x) -> P:
  return P("data") if x.ndim and x.shape[0] % 8 == 0 else P()


def learner_state(mesh, seed: int = 0) -> LearnerState:
  """Params [16, 8] / [8] / [3] sharded over `data` where they divide, after one adam update."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  params = {
    "w": jax.random.normal(k1, (16, 8)),
    "b": jax.random.normal(k2, (8,)),
    "head": jax.random.normal(k3, (3,)),
  }
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  _, opt_state = tx.update(jax.tree.map(jnp.sin, params), opt_state, params)
  state = LearnerState(step=jnp.int32(11), params=params, opt_state=opt_state)
  return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, _spec(x))), state)


def abstract(state, mesh, spec_fn=_spec):
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec_fn(x))),
    state,
  )


def assert_bit_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(
      np.asarray(x).reshape(-1).view(np.uint8), np.asarray(y).reshape(-1).view(np.uint8)
    )


def step_dirs(root) -> list[str]:
  return sorted(os.listdir(root))


def snapshot(root) -> dict[str, str]:
  """Every file under `root` with the sha256 of its bytes."""
  files = [f for f in glob.glob(os.path.join(root, "**"), recursive=True) if os.path.isfile(f)]
  return {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}


def truncate_largest_array_file(step_dir) -> None:
  files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)


def big_tree(mesh, value: float):
  """[256, 64] f32 of noise (incompressible, so its data file is the largest) plus `value`."""
  noise = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
  return {"w": jax.device_put(noise + value, NamedSharding(mesh, P("data")))}


def test_round_trip_of_a_learner_state(tmp_path):
  mesh = sharding.make_mesh(8)
  state = learner_state(mesh)
  meta = {"task": 2, "class_order": [3, 1, 2], "acc": [[91.5], [80.25, 77.0]], "hash": "ab12"}
  ck = checkpoint.Checkpointer(str(tmp_path), keep=2)
  ck.save(11, state, data_state={"next_index": 48, "epoch": 1}, meta=meta, wait=True)
  ck.close()
  r = checkpoint.Checkpointer(str(tmp_path)).restore(abstract(state, mesh))
  assert r.step == 11 and r.skipped == []
  assert isinstance(r.state, LearnerState)
  assert_bit_identical(r.state, state)
  assert r.meta == meta and r.data_state == {"next_index": 48, "epoch": 1}


def test_data_state_none_round_trips(tmp_path):
  mesh = sharding.make_mesh(1)
  ck = checkpoint.Checkpointer(str(tmp_path))
  ck.save(1, big_tree(mesh, 0.0), data_state=None, meta={}, wait=True)
  r = ck.restore(abstract(big_tree(mesh, 0.0), mesh, lambda x: P()))
  assert r.data_state is None and r.meta == {}


@pytest.mark.parametrize(("n", "spec"), [(4, P("data")), (4, P(None, "data")), (1, P())])
def test_restore_into_other_shardings(tmp_path, n, spec):
  mesh8 = sharding.make_mesh(8)
  state = learner_state(mesh8)
  ck = checkpoint.Checkpointer(str(tmp_path))
  ck.save(3, state, data_state=None, meta={"task": 0}, wait=True)
  ck.close()
  target_mesh = sharding.make_mesh(n)
  spec_fn = lambda x: spec if x.ndim == 2 else P()
  target = abstract(state, target_mesh, spec_fn)
  r = checkpoint.Checkpointer(str(tmp_path)).restore(target)
  assert_bit_identical(r.state, state)
  for got, want in zip(jax.tree.leaves(r.state), jax.tree.leaves(target), strict=True):
    assert got.sharding == want.sharding
  w = r.state.params["w"]  # [16, 8]
  assert len(w.sharding.device_set) == n
  shard_shape = {P("data"): (16 // n, 8), P(None, "data"): (16, 8 // n), P(): (16, 8)}[spec]
  assert {s.data.shape for s in w.addressable_shards} == {shard_shape}


def test_async_save_is_listed_after_wait(tmp_path):
  mesh = sharding.make_mesh(8)
  ck = checkpoint.Checkpointer(str(tmp_path), async_save=True)
  ck.save(7, big_tree(mesh, 0.0), data_state={"i": 1}, meta={})
  ck.wait()
  assert ck.steps() == [7]
  assert step_dirs(tmp_path) == ["7"]  # the tmp directory was renamed into place


def test_async_save_writes_meta_and_data_state_as_they_were_at_the_call(tmp_path):
  """The loops keep mutating their progress dict while orbax writes in the background."""
  mesh = sharding.make_mesh(8)
  ck = checkpoint.Checkpointer(str(tmp_path), async_save=True)
  progress = {"step_in_task": 5, "curve": [{"step": 5}]}
  data_state = {"next_index": 40, "order": [2, 0, 1]}
  ck.save(5, big_tree(mesh, 0.0), data_state=data_state, meta={"progress": progress})
  progress["step_in_task"] += 1
  progress["curve"].append({"step": 6})
  data_state["next_index"] += 8
  data_state["order"].reverse()
  ck.wait()
  r = ck.restore(abstract(big_tree(mesh, 0.0), mesh))
  assert r.meta == {"progress": {"step_in_task": 5, "curve": [{"step": 5}]}}
  assert r.data_state == {"next_index": 40, "order": [2, 0, 1]}


def test_retention_keeps_task_boundaries_and_the_latest(tmp_path):
  tree = {"w": jnp.arange(8.0)}
  ck = checkpoint.Checkpointer(str(tmp_path), keep=2)
  for s in range(1, 7):
    ck.save(s, tree, data_state=None, meta={"s": s}, keep_forever=s in (2, 4))
  ck.wait()
  assert ck.steps() == [2, 4, 5, 6]
  assert step_dirs(tmp_path) == ["2", "4", "5", "6"]
  ck.close()
  again = checkpoint.Checkpointer(str(tmp_path), keep=2)  # a restarted run
  assert again.steps() == [2, 4, 5, 6]
  again.save(7, tree, data_state=None, meta={})
  again.save(8, tree, data_state=None, meta={})
  again.save(9, tree, data_state=None, meta={}, keep_forever=True)
  again.wait()
  assert again.steps() == [2, 4, 7, 8, 9]  # the latest 2 non-permanent: 7, 8
  assert step_dirs(tmp_path) == ["2", "4", "7", "8", "9"]
  again.close()


def test_saving_an_existing_step_replaces_it_and_keeps_it_permanent(tmp_path):
  mesh = sharding.make_mesh(1)
  ck = checkpoint.Checkpointer(str(tmp_path), keep=1)
  ck.save(5, big_tree(mesh, 0.0), data_state=None, meta={"phase": "train"}, keep_forever=True)
  ck.save(5, big_tree(mesh, 1.0), data_state=None, meta={"phase": "done"})
  ck.save(6, big_tree(mesh, 2.0), data_state=None, meta={})
  ck.save(7, big_tree(mesh, 3.0), data_state=None, meta={}, wait=True)
  assert ck.steps() == [5, 7]
  r = ck.restore(abstract(big_tree(mesh, 0.0), mesh, lambda x: P()), step=5)
  assert r.meta == {"phase": "done"}
  np.testing.assert_array_equal(r.state["w"], big_tree(mesh, 1.0)["w"])


def test_truncated_array_file_falls_back_and_the_step_can_be_saved_again(tmp_path, caplog):
  mesh = sharding.make_mesh(8)
  ck = checkpoint.Checkpointer(str(tmp_path), keep=3)
  for s in (1, 2, 3):
    ck.save(s, big_tree(mesh, s), data_state={"i": s}, meta={"s": s}, wait=True)
  ck.close()
  truncate_largest_array_file(tmp_path / "3")
  ck = checkpoint.Checkpointer(str(tmp_path), keep=3)
  target = abstract(big_tree(mesh, 0.0), sharding.make_mesh(4), lambda x: P("data"))
  with caplog.at_level(logging.INFO):
    r = ck.restore(target)
  assert (r.step, r.skipped, r.meta, r.data_state) == (2, [3], {"s": 2}, {"i": 2})
  np.testing.assert_array_equal(r.state["w"], big_tree(mesh, 2.0)["w"])
  warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
  (loud,) = [m for m in warnings if "STEP 3" in m and "CANNOT BE RESTORED" in m]
  # The console gets one line of TensorStore's error, log.txt (INFO) all of it.
  assert "\n" not in loud and len(loud) < 400 + len(str(tmp_path)), loud
  full = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.INFO]
  assert any(m.startswith("checkpoint step 3: the full error:") for m in full), full
  ck.save(3, big_tree(mesh, 30.0), data_state=None, meta={"s": 30}, wait=True)  # resumed run
  r = ck.restore(target)
  assert (r.step, r.skipped, r.meta) == (3, [], {"s": 30})


def test_corrupted_meta_json_falls_back(tmp_path, caplog):
  mesh = sharding.make_mesh(1)
  ck = checkpoint.Checkpointer(str(tmp_path))
  ck.save(1, big_tree(mesh, 1.0), data_state=None, meta={"s": 1}, wait=True)
  ck.save(2, big_tree(mesh, 2.0), data_state=None, meta={"s": 2}, wait=True)
  (meta_file,) = [f for f in glob.glob(str(tmp_path / "2" / "meta" / "*")) if "commit" not in f]
  with open(meta_file, "w") as f:
    f.write('{"s": 2, "acc": [[0.5, ')
  with caplog.at_level(logging.WARNING):
    r = ck.restore(abstract(big_tree(mesh, 0.0), mesh, lambda x: P()))
  assert (r.step, r.skipped, r.meta) == (1, [2], {"s": 1})
  assert any("STEP 2" in rec.getMessage() for rec in caplog.records)


def test_half_written_checkpoints_are_never_picked(tmp_path):
  mesh = sharding.make_mesh(1)
  ck = checkpoint.Checkpointer(str(tmp_path))
  ck.save(1, big_tree(mesh, 1.0), data_state=None, meta={"s": 1}, wait=True)
  ck.close()
  # A save killed before its rename: orbax's tmp directory, with a higher step.
  shutil.copytree(tmp_path / "1", tmp_path / "9.orbax-checkpoint-tmp-1712345678")
  # A step directory written in place (the GCS way) that never got its commit marker.
  shutil.copytree(tmp_path / "1", tmp_path / "8")
  os.remove(tmp_path / "8" / "commit_success.txt")
  with open(tmp_path / "8" / "_CHECKPOINT_METADATA") as f:
    step_meta = json.load(f)
  step_meta.pop("commit_timestamp_nsecs")
  with open(tmp_path / "8" / "_CHECKPOINT_METADATA", "w") as f:
    json.dump(step_meta, f)
  os.makedirs(tmp_path / "7" / "state")  # a bare directory
  ck = checkpoint.Checkpointer(str(tmp_path), keep=1)
  assert ck.steps() == [1]
  r = ck.restore(abstract(big_tree(mesh, 0.0), mesh, lambda x: P()))
  assert (r.step, r.skipped) == (1, [])
  ck.save(2, big_tree(mesh, 2.0), data_state=None, meta={}, wait=True)
  assert ck.steps() == [2]  # garbage collection removed step 1 but left the unknown dirs alone
  assert step_dirs(tmp_path) == ["2", "7", "8", "9.orbax-checkpoint-tmp-1712345678"]


def test_no_good_checkpoint_raises_and_deletes_nothing(tmp_path):
  mesh = sharding.make_mesh(1)
  ck = checkpoint.Checkpointer(str(tmp_path))
  assert ck.restore(abstract(big_tree(mesh, 0.0), mesh, lambda x: P())) is None
  ck.save(1, big_tree(mesh, 1.0), data_state=None, meta={}, wait=True)
  ck.save(2, big_tree(mesh, 2.0), data_state=None, meta={}, wait=True)
  truncate_largest_array_file(tmp_path / "2")
  shutil.rmtree(tmp_path / "1" / "data")  # a missing item
  before = snapshot(tmp_path)
  with pytest.raises(
    checkpoint.CheckpointError, match=r"tried steps \[2, 1\].*nothing was deleted"
  ):
    ck.restore(abstract(big_tree(mesh, 0.0), mesh, lambda x: P()))
  assert snapshot(tmp_path) == before
  with pytest.raises(checkpoint.CheckpointError, match="no committed checkpoint at step 5"):
    ck.restore(abstract(big_tree(mesh, 0.0), mesh, lambda x: P()), step=5)


def test_save_next_counts_saves_and_continues_past_every_existing_step(tmp_path):
  mesh = sharding.make_mesh(1)
  ck = checkpoint.Checkpointer(str(tmp_path), keep=5)
  ids = [ck.save_next(big_tree(mesh, v), data_state=None, meta={"v": v}) for v in (0.0, 1.0)]
  ck.save(7, big_tree(mesh, 7.0), data_state=None, meta={"v": 7.0})  # e.g. a bad newer step
  assert ids == [1, 2]
  assert ck.save_next(big_tree(mesh, 8.0), data_state=None, meta={"v": 8.0}, wait=True) == 8
  ck.close()
  reopened = checkpoint.Checkpointer(str(tmp_path), keep=5)  # a resumed run
  assert reopened.save_next(big_tree(mesh, 9.0), data_state=None, meta={}, wait=True) == 9
  assert reopened.steps() == [1, 2, 7, 8, 9]
  assert reopened.read_meta(8) == {"v": 8.0}
  reopened.close()
