"""Checkpointer: round trip, resharded restore, retention, fallback past corrupted checkpoints."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcl import checkpoint, sharding


def tree(mesh):
  x = jnp.arange(64.0).reshape(16, 4)
  return {
    "w": jax.device_put(x, NamedSharding(mesh, P("data"))),
    "step": jax.device_put(jnp.int32(7), NamedSharding(mesh, P())),
  }


def abstract(t, mesh, spec):
  return {
    "w": jax.ShapeDtypeStruct(t["w"].shape, t["w"].dtype, sharding=NamedSharding(mesh, spec)),
    "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P())),
  }


def test_round_trip_and_reshard(tmp_path):
  mesh8 = sharding.make_mesh(8)
  t = tree(mesh8)
  ck = checkpoint.Checkpointer(str(tmp_path), keep=2)
  ck.save(5, t, data_state={"next_index": 3}, meta={"task": 1}, wait=True)
  for n, spec in ((8, P("data")), (4, P("data")), (1, P())):
    r = ck.restore(abstract(t, sharding.make_mesh(n), spec))
    assert r.step == 5 and r.data_state == {"next_index": 3} and r.meta["task"] == 1
    np.testing.assert_array_equal(r.state["w"], t["w"])
    assert len(r.state["w"].sharding.device_set) == n
  ck.close()


def test_retention_keeps_task_boundaries_and_latest(tmp_path):
  mesh = sharding.make_mesh(1)
  ck = checkpoint.Checkpointer(str(tmp_path), keep=2)
  for s in range(1, 7):
    ck.save(s, tree(mesh), data_state=None, meta={}, keep_forever=s in (2, 4))
  ck.wait()
  assert ck.steps() == [2, 4, 5, 6]
  ck.close()
  again = checkpoint.Checkpointer(str(tmp_path), keep=2)
  again.save(7, tree(mesh), data_state=None, meta={}, wait=True)
  assert again.steps() == [2, 4, 6, 7]
  again.close()


def _corrupt_arrays(step_dir):
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for f in files:
      if "manifest" in f or f.startswith("d") or "ocdbt" in root:
        path = os.path.join(root, f)
        with open(path, "r+b") as fh:
          fh.truncate(max(os.path.getsize(path) // 3, 1))


def test_fallback_past_a_corrupted_latest_checkpoint(tmp_path, caplog):
  mesh = sharding.make_mesh(1)
  ck = checkpoint.Checkpointer(str(tmp_path), keep=3)
  t = tree(mesh)
  ck.save(1, t, data_state=None, meta={"n": 1}, wait=True)
  ck.save(2, jax.tree.map(lambda x: x + 1, t), data_state=None, meta={"n": 2}, wait=True)
  _corrupt_arrays(str(tmp_path / "2"))
  os.makedirs(tmp_path / "9.orbax-checkpoint-tmp" / "state")  # a half-written save
  ck.close()
  ck = checkpoint.Checkpointer(str(tmp_path), keep=3)
  assert ck.steps() == [1, 2]
  r = ck.restore(abstract(t, mesh, P()))
  assert r.step == 1 and r.skipped == [2] and r.meta == {"n": 1, "keep_forever": False}
  np.testing.assert_array_equal(r.state["w"], t["w"])
  _corrupt_arrays(str(tmp_path / "1"))
  with pytest.raises(checkpoint.CheckpointError, match="nothing was deleted"):
    ck.restore(abstract(t, mesh, P()))
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "9.orbax-checkpoint-tmp"]
