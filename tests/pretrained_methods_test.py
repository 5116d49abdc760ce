"""PETL modules (adapter, SSF, VPT) and the methods built on them: APER, RanPAC, EASE."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import THREE_TASKS, load_config, shared_run

from jaxcl import checkpoint, methods
from jaxcl.methods import aper, base, ease, ranpac
from jaxcl.models import petl, vit

WIDTH, DEPTH, HEADS, IMAGE = 16, 2, 2, 8


def tiny_vit(seed=0) -> vit.ViT:
  model = vit.ViT(
    width=WIDTH, depth=DEPTH, mlp_dim=32, num_heads=HEADS, patch=4, image_size=IMAGE,
    rngs=nnx.Rngs(seed),
  )  # fmt: skip
  model.cls[...] = jax.random.normal(jax.random.PRNGKey(seed + 1), model.cls.shape)
  return model


def images(seed=0, batch=3):
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch, IMAGE, IMAGE, 3))


def random_adapters(seed, depth=DEPTH, bottleneck=4) -> petl.AdapterWeights:
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  shapes = [(depth, WIDTH, bottleneck), (depth, bottleneck), (depth, bottleneck, WIDTH)]
  shapes.append((depth, WIDTH))
  return petl.AdapterWeights(
    *(0.3 * jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True))
  )


# --- PETL modules ---------------------------------------------------------------------------


def test_zero_initialised_adapter_leaves_the_vit_unchanged_and_a_trained_one_does_not():
  model, x = tiny_vit(), images()
  plain = model(x)["tokens"]
  fresh = petl.Adapters(DEPTH, WIDTH, 4, rngs=nnx.Rngs(1)).weights()  # up = 0
  np.testing.assert_array_equal(
    model(x, adapter=petl.adapter_hook(fresh, scale=0.1))["tokens"], plain
  )
  moved = model(x, adapter=petl.adapter_hook(random_adapters(2), scale=0.1))["tokens"]
  assert np.abs(np.asarray(moved - plain)).max() > 1e-3


def test_adapter_is_parallel_to_the_mlp_and_reads_the_post_attention_stream():
  block = tiny_vit().blocks[0]
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 5, WIDTH))
  w = random_adapters(4)
  got = block(x, adapter=functools.partial(petl.adapter_hook(w, scale=0.1), 0))
  mid = np.asarray(x + block.attn(block.ln_0(x)), np.float64)  # residual stream after attention
  mlp = np.asarray(block.mlp(block.ln_2(jnp.asarray(mid, jnp.float32))), np.float64)
  down = np.maximum(mid @ np.asarray(w.down[0]) + np.asarray(w.down_bias[0]), 0.0)
  adapt = 0.1 * (down @ np.asarray(w.up[0]) + np.asarray(w.up_bias[0]))
  np.testing.assert_allclose(np.asarray(got), mid + mlp + adapt, atol=1e-5)


def test_adapter_dropout_only_with_an_rng():
  model, x, w = tiny_vit(), images(), random_adapters(5)
  a = model(x, adapter=petl.adapter_hook(w, scale=0.1, dropout=0.5))["cls"]
  b = model(x, adapter=petl.adapter_hook(w, scale=0.1))["cls"]
  c = model(x, adapter=petl.adapter_hook(w, scale=0.1, dropout=0.5, rng=jax.random.PRNGKey(0)))
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(c["cls"] - b)).max() > 1e-4


def test_ssf_identity_changes_nothing_and_the_output_site_is_an_affine_map():
  model, x = tiny_vit(), images()
  ssf = petl.SSF(model, nnx.Rngs(0))
  for _, site in nnx.iter_graph(ssf):
    if isinstance(site, petl.ScaleShift):  # identity: scale 1, shift 0
      site.scale[...], site.shift[...] = jnp.ones(site.scale.shape), jnp.zeros(site.shift.shape)
  plain = model(x)["cls"]
  np.testing.assert_allclose(petl.ssf_fold(model, ssf)(x)["cls"], plain, atol=1e-6)
  s, t = 1.0 + jnp.arange(WIDTH) / 10, jnp.arange(WIDTH) / 7
  ssf.encoder_norm.scale[...], ssf.encoder_norm.shift[...] = s, t
  np.testing.assert_allclose(petl.ssf_fold(model, ssf)(x)["cls"], plain * s + t, atol=1e-5)


def test_ssf_reaches_every_site_and_leaves_the_vit_untouched():
  model, x = tiny_vit(), images()
  before = jax.tree.map(np.asarray, nnx.state(model))
  graphdef, state = nnx.split(petl.SSF(model, nnx.Rngs(0)))
  fold = lambda st: petl.ssf_fold(model, nnx.merge(graphdef, st))(x)["cls"].sum()
  grads = jax.jit(jax.grad(fold))(state)  # one compile, not one per eager op
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(model)))


def reference_vpt(model: vit.ViT, x, tokens, deep: bool):
  """PILOT vpt.py: prompts appended after the patches (no position embedding); deep prompts
  are concatenated before every block and stripped after it."""
  b = x.shape[0]
  h = model.embedding(x).reshape(b, -1, WIDTH)
  h = jnp.concatenate([jnp.broadcast_to(model.cls[...], (b, 1, WIDTH)), h], 1) + model.pos_embedding
  p = tokens.shape[1]
  if not deep:
    h = jnp.concatenate([h, jnp.broadcast_to(tokens[0], (b, *tokens.shape[1:]))], 1)
  for i, block in enumerate(model.blocks):
    if deep:
      h = block(jnp.concatenate([h, jnp.broadcast_to(tokens[i], (b, *tokens.shape[1:]))], 1))
      h = h[:, :-p]
    else:
      h = block(h)
  return model.encoder_norm(h)[:, 0]


@pytest.mark.parametrize("kind", ["vpt_shallow", "vpt_deep"])
def test_vpt_matches_the_token_concatenation_of_the_reference(kind):
  model, x = tiny_vit(), images()
  tuning = petl.Tuning(
    kind, model, adapter_dim=4, adapter_scale=0.1, adapter_dropout=0.0, vpt_length=3,
    rngs=nnx.Rngs(0),
  )  # fmt: skip
  tuning.tokens[...] = jax.random.normal(jax.random.PRNGKey(7), tuning.tokens.shape)
  want = reference_vpt(model, x, tuning.tokens[...], deep=kind == "vpt_deep")
  np.testing.assert_allclose(tuning(model, x)["cls"], want, atol=2e-5)
  assert np.abs(np.asarray(want - model(x)["cls"])).max() > 1e-3


def test_finetune_tuning_is_an_independent_copy():
  model, x = tiny_vit(), images()
  tuning = petl.Tuning(
    "finetune", model, adapter_dim=4, adapter_scale=0.1, adapter_dropout=0.0, vpt_length=3,
    rngs=nnx.Rngs(0),
  )  # fmt: skip
  np.testing.assert_array_equal(tuning(model, x)["cls"], model(x)["cls"])
  tuning.vit.encoder_norm.bias[...] += 1.0
  assert np.abs(np.asarray(tuning(model, x)["cls"] - model(x)["cls"])).max() > 0.5


# --- methods on smoke configs ---------------------------------------------------------------

NUM_CLASSES = 6


def smoke_model(name, **overrides):
  config = load_config(name, "smoke", **{"data.image_size": 8, **overrides})
  method = methods.get(name).make(config)
  model = method.build(config, NUM_CLASSES, nnx.Rngs(0))
  return config, method, model


def test_aper_features_are_the_frozen_then_the_adapted_cls():
  _, _, model = smoke_model("aper")
  model.tuning.adapter.up[...] = jax.random.normal(
    jax.random.PRNGKey(0), model.tuning.adapter.up.shape
  )
  x = images()
  feats = aper.features(model, x)
  width = model.backbone.cls.shape[-1]
  np.testing.assert_array_equal(feats[:, :width], model.backbone(x)["cls"])
  np.testing.assert_array_equal(feats[:, width:], aper.adapted(model, x))
  assert np.abs(np.asarray(feats[:, :width] - feats[:, width:])).max() > 1e-3


def random_stats(seed, n, m, c):
  rng = np.random.default_rng(seed)
  h = np.maximum(rng.normal(size=(n, m)), 0.0)
  y = np.eye(c)[rng.integers(0, c, n)]
  return h, y


def held_out_errors(h_fit, y_fit, h_hold, y_hold, ridges):
  """The reference's loop: one solve per lambda, squared error on the held-out rows."""
  g, q = h_fit.T @ h_fit, h_fit.T @ y_fit
  out = []
  for lam in ridges:
    w = np.linalg.solve(g + lam * np.eye(len(g)), q)
    out.append(((h_hold @ w - y_hold) ** 2).sum())
  return np.array(out)


def test_ridge_errors_from_one_eigendecomposition_match_per_lambda_solves():
  h_fit, y_fit = random_stats(0, 80, 24, 5)
  h_hold, y_hold = random_stats(1, 30, 24, 5)
  ridges = 10.0 ** np.arange(-2, 5)
  want = held_out_errors(h_fit, y_fit, h_hold, y_hold, ridges)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got = ranpac.ridge_errors(
    f32(h_fit.T @ h_fit), f32(h_fit.T @ y_fit), f32(h_hold.T @ h_hold), f32(h_hold.T @ y_hold),
    len(h_hold), f32(ridges),
  )  # fmt: skip
  np.testing.assert_allclose(got, want, rtol=2e-3)


def test_solve_picks_the_ridge_with_the_lowest_held_out_error_and_solves_for_it():
  # Few fit rows in many dimensions with noisy targets: tiny ridges overfit, huge ones underfit.
  rng = np.random.default_rng(3)
  m, c = 40, 4
  h = np.maximum(rng.normal(size=(60, m)), 0.0)
  y = np.eye(c)[np.argmax(h[:, :c] + 0.8 * rng.normal(size=(60, c)), 1)]
  h_fit, y_fit, h_hold, y_hold = h[:30], y[:30], h[30:], y[30:]
  powers = np.arange(-8, 9)
  ridges = 10.0**powers
  want = int(np.argmin(held_out_errors(h_fit, y_fit, h_hold, y_hold, ridges)))
  assert 0 < want < len(ridges) - 1  # an interior optimum: the selection really selects
  h_old, y_old = random_stats(4, 20, m, c)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  extra = {
    "G": f32(h_old.T @ h_old), "Q": f32(h_old.T @ y_old),
    "G_fit": f32(h_fit.T @ h_fit), "Q_fit": f32(h_fit.T @ y_fit),
    "G_hold": f32(h_hold.T @ h_hold), "Q_hold": f32(h_hold.T @ y_hold),
    "n_hold": jnp.float32(len(h_hold)), "W": jnp.zeros((m, c)), "ridge": jnp.float32(0),
    "batches": jnp.int32(0),
  }  # fmt: skip
  out = jax.jit(ranpac.solve)(extra, f32(ridges))
  assert float(out["ridge"]) == pytest.approx(ridges[want], rel=1e-6)
  h_all, y_all = np.concatenate([h_old, h]), np.concatenate([y_old, y])
  np.testing.assert_allclose(out["G"], h_all.T @ h_all, rtol=1e-5, atol=1e-4)
  w = np.linalg.solve(h_all.T @ h_all + ridges[want] * np.eye(m), h_all.T @ y_all)
  np.testing.assert_allclose(out["W"], w, rtol=2e-3, atol=2e-5)
  assert float(np.abs(out["G_fit"]).max()) == 0.0 and float(out["n_hold"]) == 0.0


def test_ranpac_accumulates_every_real_row_once_and_holds_out_some():
  config, method, model = smoke_model("ranpac")
  extra = method.init_extra(model, NUM_CLASSES)
  x = images(batch=64)
  labels = jnp.arange(64) % NUM_CLASSES
  mask = jnp.arange(64) < 60  # 4 padded rows
  ctx = base.Ctx(
    jnp.int32(0), jnp.ones(NUM_CLASSES, bool), jnp.ones(NUM_CLASSES, bool), jax.random.PRNGKey(0)
  )
  out = ranpac.accumulate(
    model, extra, {"image": x, "label": labels, "mask": mask}, ctx, holdout=0.2
  )
  h = np.asarray(ranpac.project(model, x), np.float64)[:60]
  assert h.shape[1] == config.method.rp_dim
  np.testing.assert_allclose(out["G_fit"] + out["G_hold"], h.T @ h, rtol=1e-5, atol=1e-3)
  y = np.eye(NUM_CLASSES)[np.asarray(labels)[:60]]
  np.testing.assert_allclose(out["Q_fit"] + out["Q_hold"], h.T @ y, rtol=1e-5, atol=1e-3)
  assert 2 <= float(out["n_hold"]) <= 25


def test_ease_trains_only_the_working_adapter_and_head():
  _, method, model = smoke_model("ease")
  graphdef, params, frozen = nnx.split(model, method.trainable, ...)
  assert "bank" not in params and "backbone" not in params and "bank" in frozen
  batch = {"image": images(), "label": jnp.array([2, 3, 2]), "mask": jnp.ones(3, bool)}
  ctx = base.Ctx(
    jnp.int32(1),
    jnp.ones(NUM_CLASSES, bool),
    (jnp.arange(NUM_CLASSES) // 2) == 1,
    jax.random.PRNGKey(0),
  )
  loss = lambda p, f: method.loss(nnx.merge(graphdef, p, f), {}, batch, ctx)[0]
  g_params, g_frozen = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, frozen)
  for leaf in jax.tree.leaves(g_frozen["bank"]):
    assert float(jnp.abs(leaf).max()) == 0.0  # old subspaces take no part in training
  assert float(jnp.abs(g_params["adapter"]["up"][...]).max()) > 0
  assert float(jnp.abs(g_params["head"]["kernel"][...]).max()) > 0


def test_prototype_complement_follows_the_formula():
  rng = np.random.default_rng(0)
  class_task = np.array([0, 0, 1, 1, 2, 2])
  num_tasks, d = 3, 4
  real = rng.normal(size=(num_tasks, 6, d))
  real[np.arange(num_tasks)[:, None] > class_task[None, :]] = 0.0  # no data-based prototype
  seen = np.ones(6, bool)
  got = np.asarray(ease.complement(jnp.asarray(real), jnp.asarray(class_task), seen, 2))
  want = real.copy()
  cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  for c in range(6):
    i = class_task[c]
    for j in range(i + 1, 3):  # the newer subspaces of an old class
      newer = [e for e in range(6) if class_task[e] >= j]
      sim = np.array([cos(real[i, c], real[i, e]) for e in newer])
      w = np.exp(sim) / np.exp(sim).sum()
      want[j, c] = sum(wk * real[j, e] for wk, e in zip(w, newer, strict=True))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # After task 1 with tasks 0-1 seen: subspace 2 does not exist yet, task 0 in 1 uses classes 2-3.
  seen1 = class_task <= 1
  got1 = np.asarray(ease.complement(jnp.asarray(real), jnp.asarray(class_task), seen1, 1))
  np.testing.assert_allclose(got1[2], real[2])
  sim = np.array([cos(real[0, 0], real[0, e]) for e in (2, 3)])
  w = np.exp(sim) / np.exp(sim).sum()
  np.testing.assert_allclose(got1[1, 0], w[0] * real[1, 2] + w[1] * real[1, 3], rtol=1e-5)


def test_subspace_weights_are_one_on_the_own_subspace_and_alpha_over_task_elsewhere():
  w = np.asarray(ease.reweight(4, jnp.array([0, 1, 2, 2, 4]), jnp.int32(2), 0.1))
  want = np.array(
    [[1, 0.05, 0.05, 0.05, 0.05], [0.05, 1, 0.05, 0.05, 0.05], [0.05, 0.05, 1, 1, 0.05], [0] * 5]
  )
  np.testing.assert_allclose(w, want, rtol=1e-6)
  np.testing.assert_allclose(
    np.asarray(ease.reweight(3, jnp.array([0, 0]), jnp.int32(0), 0.1)), [[1, 1], [0, 0], [0, 0]]
  )


# --- whole task sequences -------------------------------------------------------------------


def run_three_tasks(name):
  results, workdir = shared_run(name, **THREE_TASKS)
  assert results["num_tasks"] == 3
  assert results["train_compiles"] == 1 and results["traces"]["train"] == 1
  ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  states = [ck.read_state(s) for s in ck.steps()]  # one per task boundary
  ck.close()
  assert len(states) == 3
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(x) for x in f.read().splitlines()]
  return load_config(name, "smoke", **THREE_TASKS), results, states, logged


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def check_trained_in_task_0_only(config, results, states, logged):
  assert {x["task"] for x in logged} == {0}
  assert [int(s["step"]) for s in states] == [config.train.steps_per_task] * 3
  for a, b in zip(leaves(states[0]["params"]), leaves(states[2]["params"]), strict=True):
    np.testing.assert_array_equal(a, b)
  assert results["A_last"] > 100 / 6


def test_aper_trains_in_task_0_only():
  config, results, states, logged = run_three_tasks("aper")
  check_trained_in_task_0_only(config, results, states, logged)
  counts = [s["extra"]["counts"] for s in states]  # prototypes: 2 new classes per task
  assert [int((c > 0).sum()) for c in counts] == [2, 4, 6]


def test_ranpac_trains_in_task_0_only_and_its_gram_grows_with_every_task():
  config, results, states, logged = run_three_tasks("ranpac")
  check_trained_in_task_0_only(config, results, states, logged)
  traces = [float(np.trace(s["extra"]["G"])) for s in states]
  assert traces[0] > 0 and traces[0] < traces[1] < traces[2]
  for s in states:
    g, q = (np.asarray(s["extra"][k], np.float64) for k in ("G", "Q"))
    lam = float(s["extra"]["ridge"])
    w = np.linalg.solve(g + lam * np.eye(len(g)), q)
    np.testing.assert_allclose(s["extra"]["W"], w, rtol=1e-2, atol=1e-4)


def test_ease_freezes_each_task_adapter_into_its_own_bank_slot():
  _, results, states, logged = run_three_tasks("ease")
  assert {x["task"] for x in logged} == {0, 1, 2}
  bank = [s["frozen"]["bank"]["down"]["value"] for s in states]  # [T, L, D, r] after each task
  np.testing.assert_array_equal(bank[0][0], bank[2][0])
  np.testing.assert_array_equal(bank[1][1], bank[2][1])
  up = [s["frozen"]["bank"]["up"]["value"] for s in states]
  assert np.abs(up[0][1]).max() == 0 and np.abs(up[1][2]).max() == 0  # slots not filled yet
  assert np.abs(up[2][0]).max() > 0 and np.abs(up[2][2]).max() > 0  # filled by training
  assert np.abs(bank[2][0] - bank[2][1]).max() > 1e-3  # every task starts a fresh set
  for t, s in enumerate(states):
    np.testing.assert_array_equal(s["params"]["adapter"]["down"]["value"], bank[t][t])
  assert results["A_last"] > 100 / 6
