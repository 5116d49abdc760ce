"""The chunked next-token cross-entropy equals the one over whole logits, value and gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import load_config

from jaxcl.lm import chunked_loss, models, objectives


def _whole(hidden, w, targets):
  logits = jnp.einsum("btd,dv->btv", hidden, w.astype(hidden.dtype), preferred_element_type=float)
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def test_chunked_losses_and_gradients_equal_the_whole_ones():
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(2, 12, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 40)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 40, (2, 12)), jnp.int32)
  weights = jnp.asarray(rng.uniform(size=(2, 12)), jnp.float32)
  for chunk in (1, 4, 12):
    got = chunked_loss.token_losses(hidden, w, targets, chunk)
    np.testing.assert_allclose(got, _whole(hidden, w, targets), rtol=1e-5)
  f = lambda fn: lambda h, w: (fn(h, w) * weights).sum()
  grads = jax.grad(f(lambda h, w: chunked_loss.token_losses(h, w, targets, 4)), (0, 1))(hidden, w)
  want = jax.grad(f(lambda h, w: _whole(h, w, targets)), (0, 1))(hidden, w)
  for g, r in zip(grads, want, strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="loss_chunk=5"):
    chunked_loss.token_losses(hidden, w, targets, 5)


@pytest.mark.parametrize("preset", ["tiny", "tiny_llama"])  # tied and untied unembedding
def test_lm_objective_with_chunks_matches_whole_logits(preset):
  config = load_config("cpt", "smoke", **{"model.preset": preset, "data.seq_len": 16})
  model = models.build(config, 64, nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tokens = np.random.default_rng(1).integers(0, 64, (3, 17)).astype(np.int32)
  batch = {"tokens": tokens, "mask": np.array([True, True, False])}

  def loss(chunk):
    objective = objectives.make("lm", chunk=chunk)
    fn = lambda p: objective.loss(nnx.merge(graphdef, p), {}, batch, None)
    return jax.value_and_grad(fn, has_aux=True)(params)

  (l0, aux0), g0 = loss(0)
  (l4, aux4), g4 = loss(4)
  np.testing.assert_allclose(l4, l0, rtol=1e-6)
  assert float(aux4["loss_weight"]) == float(aux0["loss_weight"]) == 32.0  # 2 rows x 16 tokens
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g4, g0)
