"""L2P, DualPrompt and CODA-Prompt against hand-computed references (research/prompt_cil.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import THREE_TASKS, load_config, shared_run

from jaxcl import methods, optim
from jaxcl.data.transforms import scale_images
from jaxcl.engine import state as state_lib
from jaxcl.engine import step
from jaxcl.methods import base, coda_prompt, dualprompt, prompts

# Keys and queries with cosines that are easy to write down.
KEYS = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # [pool=3, D=2]
QUERIES = np.array([[3.0, 0.0], [1.0, 1.0]])  # [B=2, D=2]
S = 1 / np.sqrt(2)
SIM = np.array([[1.0, 0.0, S], [S, S, 1.0]])  # cos(q_b, key_p)


def test_cosine_matching_top_k_and_pull_loss_by_hand():
  sim = prompts.similarity(jnp.asarray(KEYS), jnp.asarray(QUERIES))
  np.testing.assert_allclose(sim, SIM, rtol=1e-6)
  idx = prompts.match(sim, 2, batchwise=False)
  # sample 0: keys 0 (1.0) then 2 (0.707); sample 1: key 2 (1.0) then the tie 0/1 -> 0
  np.testing.assert_array_equal(idx, [[0, 2], [2, 0]])
  # summed over the top-k, averaged over the batch: ((1 + s) + (1 + s)) / 2
  np.testing.assert_allclose(prompts.pull(sim, idx), 1 + S, rtol=1e-6)


def test_batchwise_vote_uses_the_most_frequent_ids_for_every_sample():
  sim = jnp.asarray([[0.9, 0.8, 0.1, 0.0], [0.1, 0.9, 0.8, 0.0], [0.0, 0.9, 0.1, 0.8]])
  idx = prompts.match(sim, 2, batchwise=True)  # per-sample top-2: {0,1}, {1,2}, {1,3}
  counts_first = np.asarray(idx)[0]
  assert counts_first[0] == 1  # chosen 3 times
  assert counts_first[1] == 0  # tie between 0, 2, 3 (once each) goes to the lowest id
  np.testing.assert_array_equal(idx, np.broadcast_to(counts_first, (3, 2)))
  np.testing.assert_allclose(prompts.pull(sim, idx), (0.8 + 0.9 + 0.9 + 0.1 + 0.9 + 0.0) / 3)


def test_prompt_mask_takes_the_task_slice_only_while_it_fits():
  matched = jnp.asarray([[7, 8], [8, 9]])
  np.testing.assert_array_equal(prompts.task_ids(jnp.int32(1), 2, 10, matched), [[2, 3], [2, 3]])
  np.testing.assert_array_equal(prompts.task_ids(jnp.int32(4), 2, 10, matched), [[8, 9], [8, 9]])
  np.testing.assert_array_equal(prompts.task_ids(jnp.int32(5), 2, 10, matched), matched)


def test_shared_pool_copies_the_previous_slice():
  x = jnp.arange(6.0)[:, None] * jnp.ones((6, 2))  # [pool=6, 2]
  np.testing.assert_array_equal(prompts.copy_previous(x, jnp.int32(0), 2, 0), x)
  moved = np.asarray(prompts.copy_previous(x, jnp.int32(1), 2, 0))[:, 0]
  np.testing.assert_array_equal(moved, [0, 1, 0, 1, 4, 5])
  np.testing.assert_array_equal(prompts.copy_previous(x, jnp.int32(3), 2, 0), x)  # 6..7 > pool


def test_dualprompt_key_value_halves_index_the_dual_axis():
  """Keys are e_prefix[l, 0, id], values e_prefix[l, 1, id] (the reference's `prefix[0]`,
  `prefix[1]` after `take(axis=2)`), not the first/second half of a reshaped length."""
  layers, pool, length, heads, hd = 2, 3, 2, 2, 4
  e = jnp.arange(layers * 2 * pool * length * heads * hd, dtype=jnp.float32)
  e = e.reshape(layers, 2, pool, length, heads, hd)
  g = -jnp.arange(1 * 2 * 3 * heads * hd, dtype=jnp.float32).reshape(1, 2, 3, heads, hd)
  idx = jnp.asarray([[2], [0]])  # [B=2, top_k=1]
  out = dualprompt.prefixes(g, e, idx, g_layers=(0,), e_layers=(0, 1))
  assert set(out) == {0, 1}
  k0, v0 = out[0]  # layer 0: G (3 tokens) then E (2 tokens)
  assert k0.shape == (2, 5, heads, hd)
  np.testing.assert_array_equal(k0[:, :3], jnp.broadcast_to(g[0, 0], (2, 3, heads, hd)))
  np.testing.assert_array_equal(v0[:, :3], jnp.broadcast_to(g[0, 1], (2, 3, heads, hd)))
  for b, p in enumerate([2, 0]):
    np.testing.assert_array_equal(k0[b, 3:], e[0, 0, p])
    np.testing.assert_array_equal(v0[b, 3:], e[0, 1, p])
    np.testing.assert_array_equal(out[1][0][b], e[1, 0, p])
    np.testing.assert_array_equal(out[1][1][b], e[1, 1, p])
  # A reshape of the length axis into halves would have given other values.
  wrong = e[0, :, 2].reshape(2 * length, heads, hd)[:length]
  assert not np.array_equal(wrong, np.asarray(v0[0, 3:]))


def _setup(name, **overrides):
  config = load_config(name, "smoke", **{"data.image_size": 8, **overrides})
  method = methods.get(name).make(config)
  model = method.build(config, 4, nnx.Rngs(0))
  tx = optax.sgd(1.0)
  graphdef, state = state_lib.init_state(model, method.trainable, tx, {}, 4, 0)
  return config, method, graphdef, state, tx


def _edit(method, graphdef, state, task):
  state = state.replace(task=jnp.int32(task))
  edits = []

  def edit(state, fn):
    edits.append(fn)
    edit_step = step.make_edit_step(
      fn, graphdef, method.trainable, state_sharding=None, traces=step.Traces()
    )
    return edit_step(state)

  env = base.TaskEnv(task, 2, np.arange(2), None, edit)
  return method.before_task(state, env), edits


def test_coda_new_slice_is_orthonormal_to_the_earlier_ones_and_they_get_no_gradient():
  config, method, graphdef, state, _ = _setup("coda_prompt", **{"method.num_components": 6})
  state, edits = _edit(method, graphdef, state, 0)
  assert edits  # Gram-Schmidt runs before every task
  before = nnx.merge(graphdef, state.params, state.frozen)
  old_keys = np.asarray(before.keys[...])
  # task 1 of 2: components 3..5 are new
  state, _ = _edit(method, graphdef, state, 1)
  model = nnx.merge(graphdef, state.params, state.frozen)
  for name in ("components", "keys", "attention"):
    x = np.asarray(getattr(model, name)[...])
    for layer in range(x.shape[0]):
      flat = x[layer].reshape(6, -1)
      np.testing.assert_allclose(flat[3:] @ flat[3:].T, np.eye(3), atol=1e-5)
      np.testing.assert_allclose(flat[3:] @ flat[:3].T, 0.0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(model.keys[...])[:, :3], old_keys[:, :3])

  seen = jnp.ones(4, bool)
  ctx = base.Ctx(jnp.int32(1), seen, jnp.arange(4) >= 2, jax.random.PRNGKey(0))
  batch = {
    "image": jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 8, 3)),
    "label": jnp.array([2, 3, 2]),
  }

  def loss_fn(params):
    return method.loss(nnx.merge(graphdef, params, state.frozen), {}, batch, ctx)[0]

  grads = nnx.merge(graphdef, jax.jit(jax.grad(loss_fn))(state.params), state.frozen)
  for name in ("components", "keys", "attention"):
    g = np.asarray(getattr(grads, name)[...])
    assert np.all(g[:, :3] == 0), name  # earlier task: frozen
    assert np.any(g[:, 3:] != 0), name  # current task: trained
  del config


def test_coda_orthogonality_penalty_by_hand():
  x = jnp.asarray([[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
  active = jnp.asarray([True, True, False])
  # X X^T - I over the two active rows: [[0, 1], [1, 1]] -> mean of squares = 3 / 4
  np.testing.assert_allclose(coda_prompt.ortho_penalty(x, active), 0.75)


def test_clip_over_all_parameters_scales_by_the_global_norm_with_frozen_ones():
  config, method, graphdef, state, tx = _setup("l2p", **{"method.zero_head": False})
  images = jax.random.randint(jax.random.PRNGKey(3), (2, 8, 8, 3), 0, 256).astype(jnp.uint8)
  batch = {"image": images, "label": jnp.array([0, 1]), "mask": jnp.ones(2, bool)}
  state = state.replace(seen=jnp.ones(4, bool), current=jnp.arange(4) < 2)
  ctx = base.Ctx(state.task, state.seen, state.current, jax.random.fold_in(state.rng, state.step))
  scaled = {**batch, "image": scale_images(images, "01")}

  def loss_fn(params, frozen):
    return method.loss(nnx.merge(graphdef, params, frozen), {}, scaled, ctx)[0]

  g, gf = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(state.params, state.frozen)  # one compile
  norm_all = float(optax.tree.norm((g, gf)))
  assert norm_all > float(optax.tree.norm(g))  # the frozen backbone has gradients too
  clip = norm_all / 4
  train = step.make_train_step(
    method.loss,
    graphdef,
    tx,
    scale="01",
    skip_nonfinite=False,
    state_sharding=None,
    batch_sharding=None,
    traces=step.Traces(),
    clip_all=clip,
  )
  old = jax.tree.map(np.asarray, state.params)
  new, _ = train(state, batch)
  moved = jax.tree.map(lambda a, b: a - np.asarray(b), old, new.params)  # = lr * factor * g
  expected = jax.tree.map(lambda x: np.asarray(x) * clip / (norm_all + 1e-6), g)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-7), moved, expected)
  del config


def test_optimizer_does_not_clip_twice_when_the_step_clips():
  overrides = {"optim.name": "sgd", "optim.momentum": 0.0, "optim.clip_norm": 1.0}
  huge = {"w": jnp.full((4,), 100.0)}  # norm 200
  for scope, norm in (("trainable", 1.0), ("all", 200.0)):
    config = load_config("l2p", "smoke", **overrides, **{"optim.clip_scope": scope})
    tx = optim.make_optimizer(config.optim, optax.constant_schedule(1.0))
    updates, _ = tx.update(huge, tx.init(huge), huge)
    np.testing.assert_allclose(float(optax.tree.norm(updates)), norm, rtol=1e-5)
  with pytest.raises(ValueError, match="clip_scope"):
    config = load_config("l2p", "smoke", **{"optim.clip_scope": "both"})
    optim.make_optimizer(config.optim, optax.constant_schedule(1e-3))


@pytest.mark.parametrize("name,top_k", [("l2p", 2), ("dualprompt", 1), ("coda_prompt", 0)])
def test_three_tasks_compile_once_and_prompt_usage_counts_selections(name, top_k):
  results, _ = shared_run(name, **THREE_TASKS)
  assert results["train_compiles"] == 1
  assert results["traces"]["train"] == 1
  if not top_k:  # CODA weights every component: no selection to count
    assert "prompt_usage" not in results
    return
  final = np.asarray(results["prompt_usage"][-1])  # [seen tasks, pool]
  assert final.shape == (3, load_config(name, "smoke").method.pool_size)
  np.testing.assert_array_equal(final.sum(1), np.asarray(results["test_counts"]) * top_k)


def test_l2_normalize_maps_a_zero_row_to_zero_with_a_finite_gradient():
  x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(base.l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
  grad = jax.grad(lambda v: base.l2_normalize(v).sum())(x)
  assert np.isfinite(np.asarray(grad)).all()


def test_coda_refuses_more_components_than_the_vit_width():
  config = load_config("coda_prompt", "smoke", **{"method.num_components": 200})
  with pytest.raises(ValueError, match="num_components=200 exceeds the ViT width"):
    methods.get("coda_prompt").make(config).build(config, 4, nnx.Rngs(0))
