"""The method contract, checked for every file in jaxcl/methods automatically."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import config_names, load_config

from jaxcl import methods
from jaxcl.engine import optim
from jaxcl.engine import state as state_lib
from jaxcl.methods import base

NUM_CLASSES = 6


def _config_for(method_name):
  for cfg in config_names():
    config = load_config(cfg, "smoke", **{"data.image_size": 8})
    if config.method.name == method_name:
      return config
  raise AssertionError(f"no configs/*.py uses method {method_name!r}")


def _setup(name):
  config = _config_for(name)
  method = methods.get(name).make(config)
  model = method.build(config, NUM_CLASSES, nnx.Rngs(0))
  tx = optim.make_optimizer(config.optim, optim.make_schedule(config.optim, 1e-3, 2))
  graphdef, state = state_lib.init_state(
    model, method.trainable, tx, method.init_extra(model, NUM_CLASSES), NUM_CLASSES, 0
  )
  return config, method, graphdef, state


def _ctx(state):
  seen = jnp.arange(NUM_CLASSES) < 4
  current = (jnp.arange(NUM_CLASSES) >= 2) & seen
  return base.Ctx(jnp.int32(1), seen, current, jax.random.PRNGKey(0))


@pytest.mark.parametrize("name", methods.names())
def test_method_contract(name):
  config, method, graphdef, state = _setup(name)
  images = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 8, 3))
  labels = jnp.array([2, 3, 2])
  model = nnx.merge(graphdef, state.params, state.frozen)
  logits, aux = method.predict(model, state.extra, images, _ctx(state))
  assert logits.shape == (3, NUM_CLASSES)
  assert isinstance(aux, dict)
  # Frozen leaves are really absent from the trainable params.
  n_params, n_frozen = state_lib.count_params(state.params), state_lib.count_params(state.frozen)
  assert n_params + n_frozen == state_lib.count_params(nnx.state(model))
  if method.loss is None:
    return
  batch = {"image": images, "label": labels, "mask": jnp.ones(3, bool)}

  def loss_fn(params):
    return method.loss(nnx.merge(graphdef, params, state.frozen), state.extra, batch, _ctx(state))

  (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  assert np.isfinite(float(loss))
  assert jax.tree.structure(grads) == jax.tree.structure(state.params)
  assert n_params > 0


@pytest.mark.parametrize("name", methods.names())
def test_predict_is_pure(name):
  _, method, graphdef, state = _setup(name)
  images = jax.random.uniform(jax.random.PRNGKey(2), (2, 8, 8, 3))
  model = nnx.merge(graphdef, state.params, state.frozen)
  a, _ = method.predict(model, state.extra, images, _ctx(state))
  b, _ = method.predict(model, state.extra, images, _ctx(state))
  np.testing.assert_array_equal(a, b)


def test_linear_probe_trains_only_the_head():
  config = load_config("linear_probe", "smoke")
  method = methods.get("finetune").make(config)
  model = method.build(config, NUM_CLASSES, nnx.Rngs(0))
  _, params, _ = nnx.split(model, method.trainable, ...)
  paths = {"/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert paths and all("head" in p for p in paths)


def test_mask_logits_and_masked_cross_entropy():
  logits = jnp.array([[1.0, 2.0, 3.0]])
  masked = base.mask_logits(logits, jnp.array([True, True, False]))
  assert int(jnp.argmax(masked)) == 1
  ce = base.cross_entropy(masked, jnp.array([1]))
  expected = -np.log(np.exp(2) / (np.exp(1) + np.exp(2)))
  np.testing.assert_allclose(float(ce), expected, rtol=1e-5)
