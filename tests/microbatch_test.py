"""Gradient accumulation inside the step: M microbatches give the large batch's update."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import load_config

from jaxcl import methods, optim, sharding
from jaxcl.data import pipeline
from jaxcl.engine import microbatch, step
from jaxcl.engine import state as state_lib
from jaxcl.lm import models, objectives


def test_count_takes_microbatches_or_rows_per_device():
  assert microbatch.count(64, 8, microbatches=1, per_device=0) == 1
  assert microbatch.count(64, 8, microbatches=4, per_device=0) == 4
  assert microbatch.count(1104, 16, microbatches=1, per_device=3) == 23  # 1104 / (3 x 16)
  with pytest.raises(ValueError, match="per_device_microbatch"):
    microbatch.count(1104, 16, microbatches=1, per_device=5)
  with pytest.raises(ValueError, match="microbatches=3"):
    microbatch.count(64, 8, microbatches=3, per_device=0)
  with pytest.raises(ValueError, match="not both"):
    microbatch.count(64, 8, microbatches=2, per_device=2)


def test_split_interleaves_rows_so_each_device_keeps_its_own():
  x = np.arange(8)
  pieces = microbatch.split({"x": x}, 2, None)["x"]
  np.testing.assert_array_equal(pieces, [[0, 2, 4, 6], [1, 3, 5, 7]])


def _step(kind: str, microbatches: int, mesh):
  """(loss, update_norm, params as numpy, metrics) after one step of a fresh learner on a fixed
  batch, built as the recipes build it (jaxcl/cil/run.py, jaxcl/lm/run.py)."""
  rng = np.random.default_rng(0)
  overrides = {"train.microbatches": microbatches}
  if kind == "l2p":
    config = load_config("l2p", "smoke", **overrides)
    method = methods.get("l2p").make(config)
    model, loss_fn, trainable = method.build(config, 4, nnx.Rngs(0)), method.loss, method.trainable
    extra = method.init_extra(model, 4)
    size = config.data.image_size
    batch = {
      "image": rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8),
      "label": rng.integers(0, 2, (8,)).astype(np.int32),
    }
  else:
    config = load_config("cpt", "smoke", **overrides, **{"optim.name": "sgd", "data.seq_len": 8})
    model, trainable, extra = models.build(config, 64, nnx.Rngs(0)), nnx.Param, {}
    loss_fn = objectives.make("lm").loss
    tokens = rng.integers(0, 64, (8, 9)).astype(np.int32)
    # Padded rows (mask False) weigh nothing, so the microbatches hold unequal token counts: the
    # loss is a mean over tokens, not over microbatches.
    batch = {"tokens": tokens, "mask": np.array([1, 1, 1, 0, 1, 0, 1, 0], bool)}
  tx = optim.make_optimizer(config.optim, optim.make_schedule(config.optim, 0.01, 10))
  graphdef, state = state_lib.init_state(model, trainable, tx, extra, 4, config.seed)
  state = state.replace(seen=np.ones(4, bool), current=np.array([1, 1, 0, 0], bool))
  state_sh = sharding.state_shardings(state, mesh, replicate_frozen=False)
  batch_sh = sharding.batch_sharding(mesh)
  train_step = step.make_train_step(
    loss_fn,
    graphdef,
    tx,
    scale=config.data.scale if kind == "l2p" else "none",
    skip_nonfinite=False,
    state_sharding=state_sh,
    batch_sharding=batch_sh,
    traces=step.Traces(),
    microbatches=microbatches,
  )
  state = jax.device_put(state, state_sh)
  new, metrics = train_step(state, pipeline.to_global(batch, batch_sh))
  params = jax.tree.map(np.asarray, jax.device_get(nnx.to_pure_dict(new.params)))
  return float(metrics["loss"]), float(metrics["update_norm"]), params, metrics


@pytest.mark.parametrize("kind", ["l2p", "gpt"])
def test_accumulated_step_equals_the_large_batch_step(kind):
  mesh = sharding.make_mesh(2, devices=jax.devices()[:2])
  loss_1, norm_1, params_1, metrics_1 = _step(kind, 1, mesh)
  loss_4, norm_4, params_4, metrics_4 = _step(kind, 4, mesh)
  assert np.isfinite(loss_1) and norm_1 > 0
  np.testing.assert_allclose(loss_4, loss_1, rtol=1e-5)
  np.testing.assert_allclose(norm_4, norm_1, rtol=1e-4)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params_4, params_1
  )
  assert set(metrics_4) == set(metrics_1)  # aux metrics are averaged, the weight is not one
  assert microbatch.WEIGHT not in metrics_4
  for k in set(metrics_1) - {"loss", "update_norm", "finite"}:  # e.g. L2P's ce, key similarity
    np.testing.assert_allclose(metrics_4[k], metrics_1[k], rtol=1e-5)
