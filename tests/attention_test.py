"""The attention kernels (`model.attention`) against the einsum ("xla") path: outputs and gradients
within 1e-5 on CPU, with causal masks, prefixes, GQA, padding and MSG head masks. Splash runs in
Pallas interpret mode here; cuDNN needs a GPU and is not exercised on CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcl.models import attention_kernels, bert, gpt, layers, target, vit

FUSED = ["jax", "splash"]


def qkv(b=2, t=128, s=128, h=4, kv=4, dh=8, seed=0):
  """Splash tiles sequences by 128, so the test lengths are multiples of it."""
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (b, t, h, dh))  # [B, T, H, Dh]
  k = jax.random.normal(keys[1], (b, s, kv, dh))  # [B, S, K, Dh]
  v = jax.random.normal(keys[2], (b, s, kv, dh))
  return q, k, v


def assert_close(got, want, err_msg="", scale=None):
  """Equal within 1e-5 of the largest entry of `want` (or `scale`): float32 sums in another
  order. A gradient that is zero in exact arithmetic (a key bias under softmax) is noise."""
  want = np.asarray(want)
  atol = 1e-5 * (np.abs(want).max() if scale is None else scale)
  np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=err_msg)


def value_and_grads(implementation, q, k, v, mask=None, **kw):
  def loss(q, k, v):
    out = layers.dot_product_attention(q, k, v, mask, implementation=implementation, **kw)
    return jnp.sum(jnp.sin(out)), out  # a nonlinear read-out: every output matters

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)[::-1]


def assert_same(implementation, q, k, v, mask=None, **kw):
  want, want_grads = value_and_grads("xla", q, k, v, mask, **kw)
  got, got_grads = value_and_grads(implementation, q, k, v, mask, **kw)
  assert_close(got, want)
  for g, w in zip(got_grads, want_grads, strict=True):
    assert_close(g, w)


@pytest.mark.parametrize("implementation", FUSED)
@pytest.mark.parametrize(
  "case",
  [
    dict(),
    dict(causal=True),
    dict(kv=2, causal=True),  # GQA: two query heads per K/V head
    dict(kv=1),  # MQA
    dict(s=256),  # 128 prefix keys/values (DualPrompt, CODA-Prompt)
    dict(s=256, causal=True),  # the prefix stays visible to every query
  ],
  ids=["full", "causal", "gqa_causal", "mqa", "prefix", "prefix_causal"],
)
def test_fused_kernels_match_einsum_outputs_and_gradients(implementation, case):
  causal = case.pop("causal", False)
  assert_same(implementation, *qkv(**case), causal=causal)


@pytest.mark.parametrize("implementation", FUSED)
def test_key_padding_mask(implementation):
  q, k, v = qkv()
  mask = jnp.asarray(np.arange(128)[None, None] < np.array([128, 77])[:, None, None])  # [B,1,S]
  assert_same(implementation, q, k, v, mask)
  padded = layers.dot_product_attention(q, k, v, mask, implementation=implementation)
  assert np.abs(padded - layers.dot_product_attention(q, k, v)).max() > 1e-3  # the mask is used


def test_causal_flag_is_the_lower_triangle_mask():
  q, k, v = qkv(kv=2)
  tril = jnp.tril(jnp.ones((128, 128), bool))
  got = layers.dot_product_attention(q, k, v, causal=True)
  np.testing.assert_array_equal(got, layers.dot_product_attention(q, k, v, tril))


def test_general_masks_work_in_jax_and_are_refused_by_splash():
  q, k, v = qkv()
  mask = jax.random.bernoulli(jax.random.key(5), 0.7, (2, 128, 128)).at[:, :, 0].set(True)
  assert_same("jax", q, k, v, mask)
  with pytest.raises(ValueError, match="key-padding masks"):
    layers.dot_product_attention(q, k, v, mask, implementation="splash")


def test_splash_runs_per_batch_shard_under_a_mesh():
  """Under the step's mesh, splash runs in a shard_map over the batch axes: no all-gather."""
  mesh = jax.make_mesh(
    (2,), ("data",), devices=jax.devices()[:2], axis_types=(jax.sharding.AxisType.Auto,)
  )
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  q, k, v = (jax.device_put(x, batch) for x in qkv(kv=2))

  def attend(q, k, v):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return layers.dot_product_attention(q, k, v, causal=True, implementation="splash")

  compiled = jax.jit(attend).lower(q, k, v).compile()
  assert "all-gather" not in compiled.as_text()
  assert_close(compiled(q, k, v), layers.dot_product_attention(q, k, v, causal=True))


def test_splash_refuses_lengths_that_do_not_tile():
  with pytest.raises(ValueError, match="blocks of 128"):  # a ViT-B/16 at 224: 197 tokens
    layers.dot_product_attention(*qkv(t=197, s=197, h=1, kv=1), implementation="splash")


def test_auto_is_the_einsum_on_cpu_and_unknown_names_are_refused():
  q, k, v = qkv()
  assert attention_kernels.resolve("auto", q, k, None) == "xla"
  np.testing.assert_array_equal(
    layers.dot_product_attention(q, k, v, causal=True, implementation="auto"),
    layers.dot_product_attention(q, k, v, causal=True),
  )
  with pytest.raises(ValueError, match="flash"):
    layers.dot_product_attention(q, k, v, implementation="flash")
  with pytest.raises(ValueError, match="flash"):
    layers.Attention(16, 2, implementation="flash", rngs=nnx.Rngs(0))


def model_outputs_and_grads(make, inputs, call=lambda m, x: m(x)):
  model = make()
  graphdef, state = nnx.split(model)

  def loss(state):
    out = call(nnx.merge(graphdef, state), inputs)
    return jnp.sum(jnp.sin(out)), out

  grads, out = jax.jit(jax.grad(loss, has_aux=True))(state)
  return out, grads


def assert_models_agree(make_for, inputs, call=lambda m, x: m(x), implementations=FUSED):
  want, want_grads = model_outputs_and_grads(lambda: make_for("xla"), inputs, call)
  for implementation in implementations:
    got, got_grads = model_outputs_and_grads(lambda i=implementation: make_for(i), inputs, call)
    assert_close(got, want, implementation)
    scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want_grads))
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
      assert_close(g, w, implementation, scale)


@pytest.mark.slow
def test_gpt_with_msg_head_masks():
  """A Llama (GQA + RoPE) under MSG masks with new heads half-grown."""
  tokens = jax.random.randint(jax.random.key(1), (2, 128), 0, 64)

  def make(implementation):
    cfg = gpt.config_for("tiny_llama", seq_len=128, growth_masks=True, attention=implementation)
    model = gpt.GPT(cfg, rngs=nnx.Rngs(0))
    model.masks.heads[...] = jnp.asarray([1.0, 1.0, 0.5, 0.25])
    model.masks.kv_heads[...] = jnp.linspace(1.0, 0.5, cfg.kv_heads)
    return model

  assert_models_agree(make, tokens)


@pytest.mark.slow
def test_bert_with_padding():
  tokens = jax.random.randint(jax.random.key(2), (2, 128), 0, 64)
  padding = jnp.asarray(np.arange(128)[None] < np.array([128, 90])[:, None])  # [B, T]

  def make(implementation):
    cfg = bert.config_for("tiny", seq_len=128, attention=implementation)
    return bert.BERT(cfg, rngs=nnx.Rngs(0))

  assert_models_agree(make, tokens, call=lambda m, x: m.encode(x, padding))


def test_vit_with_prefix():
  """ViT-mu with DualPrompt-style prefixes in the first block: 17 tokens + 3 prefix keys (not
  tiles of 128: splash refuses, `auto` would take the einsum)."""
  images = jax.random.uniform(jax.random.key(3), (2, 16, 16, 3))
  pk, pv = jax.random.normal(jax.random.key(4), (2, 2, 3, 3, 32))  # each [B, P, H, Dh]

  def make(implementation):
    return vit.from_variant("mu/4", image_size=16, attention=implementation, rngs=nnx.Rngs(0))

  call = lambda m, x: m(x, prefix={0: (pk, pv)})["tokens"]  # noqa: E731
  assert_models_agree(make, images, call, implementations=["jax"])
  with pytest.raises(ValueError, match="blocks of 128"):
    call(make("splash"), images)


def test_lm_config_carries_the_attention_choice():
  from jaxcl import config_lib  # noqa: PLC0415
  from jaxcl.lm import models  # noqa: PLC0415

  config = config_lib.cpt_base_config()
  config.model.attention = "splash"
  assert models.shape(config, 256).attention == "splash"
  assert models.build(config, 256, nnx.Rngs(0)).blocks.attn.implementation == "splash"


def test_auto_choices_follow_the_planned_platform_not_the_host():
  q = jnp.zeros((1, 256, 2, 8))  # [B, T, H, Dh], T a multiple of the splash tile
  assert attention_kernels.resolve("auto", q, q, None) == "xla"  # on this CPU host
  assert layers.compute_dtype("auto") == "float32"
  with target.compiling_for("tpu"):  # what jaxcl.plan does for a TPU topology
    assert attention_kernels.resolve("auto", q, q, None) == "splash"
    assert layers.compute_dtype("auto") == "bfloat16"
  with target.compiling_for("gpu"):
    assert attention_kernels.resolve("auto", q.astype(jnp.bfloat16), q, None) == "cudnn"
  assert target.platform() == "cpu"
