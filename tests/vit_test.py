"""The NNX ViT against an independent float64 numpy forward: prompts (both layouts), prefixes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from jaxcl.models import layers, loading, vit

WIDTH, DEPTH, MLP, HEADS, PATCH, IMAGE = 32, 2, 64, 2, 4, 8
GRID = IMAGE // PATCH
HEAD_DIM = WIDTH // HEADS
NUM_PROMPTS = 3
LAYOUTS = [None, "prepend_after_pos", "after_cls_before_pos"]


def tiny_vit(seed=0, num_classes=0, dtype=jnp.float32):
  """A tiny ViT with every parameter random (LayerNorm scales around 1) so no swap goes unseen."""
  model = vit.ViT(
    width=WIDTH,
    depth=DEPTH,
    mlp_dim=MLP,
    num_heads=HEADS,
    patch=PATCH,
    image_size=IMAGE,
    num_classes=num_classes,
    rngs=nnx.Rngs(seed),
    dtype=dtype,
  )
  rng = np.random.default_rng(seed + 100)
  for key, param in loading.vit_params(model).items():
    value = 0.2 * rng.normal(size=param.shape) + (1.0 if key.endswith("/scale") else 0.0)
    param[...] = jnp.asarray(value, jnp.float32)
  return model


def npz_weights(model, tmp_path):
  path = tmp_path / "w.npz"
  loading.save_vit_npz(model, str(path))
  return {k: v.astype(np.float64) for k, v in np.load(path).items()}


def images_and_prompts(seed=0, batch=2):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, IMAGE, IMAGE, 3)).astype(np.float32)
  prompts = rng.normal(size=(batch, NUM_PROMPTS, WIDTH)).astype(np.float32)
  return images, prompts


def np_layer_norm(x, scale, bias):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * scale + bias


def np_attention(x, w, prefix=None, mask=None):
  """Textbook attention; w holds `{query,key,value,out}/{kernel,bias}` in the google shapes."""
  q, k, v = (
    np.einsum("bnd,dhk->bnhk", x, w[f"{n}/kernel"]) + w[f"{n}/bias"]
    for n in ("query", "key", "value")
  )
  if prefix is not None:  # projected prefix K/V go in front of the projected K/V
    k, v = np.concatenate([prefix[0], k], 1), np.concatenate([prefix[1], v], 1)
  scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    scores = np.where(mask, scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  context = np.einsum("bhqs,bshk->bqhk", probs, v)
  return np.einsum("bqhk,hkd->bqd", context, w["out/kernel"]) + w["out/bias"]


def np_vit_tokens(w, images, prompts=None, layout="prepend_after_pos", prefix=None):
  """Post-norm token outputs of a google-format ViT, computed from the npz dict alone."""
  b = images.shape[0]
  patches = images.reshape(b, GRID, PATCH, GRID, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
  x = patches.reshape(b, GRID * GRID, -1) @ w["embedding/kernel"].reshape(-1, WIDTH)
  x = x + w["embedding/bias"]
  cls = np.broadcast_to(w["cls"], (b, 1, WIDTH))
  pos = w["Transformer/posembed_input/pos_embedding"]
  if prompts is None:
    x = np.concatenate([cls, x], 1) + pos
  elif layout == "prepend_after_pos":
    x = np.concatenate([prompts, np.concatenate([cls, x], 1) + pos], 1)
  else:  # after_cls_before_pos: each prompt gets the CLS position embedding
    pos_prompts = np.repeat(pos[:, :1], prompts.shape[1], 1)
    x = np.concatenate([cls, prompts, x], 1) + np.concatenate(
      [pos[:, :1], pos_prompts, pos[:, 1:]], 1
    )
  for i in range(DEPTH):
    blk = f"Transformer/encoderblock_{i}/"
    mha = blk + "MultiHeadDotProductAttention_1/"
    att = {k[len(mha) :]: v for k, v in w.items() if k.startswith(mha)}
    h = np_layer_norm(x, w[blk + "LayerNorm_0/scale"], w[blk + "LayerNorm_0/bias"])
    x = x + np_attention(h, att, (prefix or {}).get(i))
    h = np_layer_norm(x, w[blk + "LayerNorm_2/scale"], w[blk + "LayerNorm_2/bias"])
    h = h @ w[blk + "MlpBlock_3/Dense_0/kernel"] + w[blk + "MlpBlock_3/Dense_0/bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # exact GELU
    x = x + h @ w[blk + "MlpBlock_3/Dense_1/kernel"] + w[blk + "MlpBlock_3/Dense_1/bias"]
  return np_layer_norm(x, w["Transformer/encoder_norm/scale"], w["Transformer/encoder_norm/bias"])


def cls_and_prompt_positions(layout):
  if layout is None:
    return 0, []
  if layout == "prepend_after_pos":
    return NUM_PROMPTS, list(range(NUM_PROMPTS))
  return 0, list(range(1, 1 + NUM_PROMPTS))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_output_shapes(layout):
  model = tiny_vit(num_classes=5)
  images, prompts = images_and_prompts()
  out = model(
    images,
    prompts=None if layout is None else prompts,
    prompt_layout=layout or "prepend_after_pos",
  )
  num_tokens = 1 + GRID * GRID + (0 if layout is None else NUM_PROMPTS)
  assert out["tokens"].shape == (2, num_tokens, WIDTH)
  assert out["cls"].shape == out["pre_logits"].shape == (2, WIDTH)
  assert out["logits"].shape == (2, 5)
  head = out["pre_logits"] @ model.head.kernel[...] + model.head.bias[...]
  np.testing.assert_allclose(out["logits"], head, atol=1e-5)
  if layout is None:
    assert out["prompt_mean"] is None
  else:
    assert out["prompt_mean"].shape == (2, WIDTH)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_matches_numpy(layout, tmp_path):
  model = tiny_vit()
  w = npz_weights(model, tmp_path)
  images, prompts = images_and_prompts()
  prompts = None if layout is None else prompts
  out = model(images, prompts=prompts, prompt_layout=layout or "prepend_after_pos")
  ref = np_vit_tokens(w, images, prompts, layout)
  np.testing.assert_allclose(out["tokens"], ref, atol=1e-4)
  cls_index, prompt_positions = cls_and_prompt_positions(layout)
  np.testing.assert_allclose(out["cls"], ref[:, cls_index], atol=1e-4)
  np.testing.assert_array_equal(out["pre_logits"], out["cls"])
  if prompt_positions:
    np.testing.assert_allclose(out["prompt_mean"], ref[:, prompt_positions].mean(1), atol=1e-4)


def test_layouts_differ_and_prompts_change_the_cls_output():
  model = tiny_vit()
  images, prompts = images_and_prompts()
  plain = model(images)["cls"]
  l2p = model(images, prompts=prompts, prompt_layout="prepend_after_pos")
  ports = model(images, prompts=prompts, prompt_layout="after_cls_before_pos")
  assert np.abs(l2p["cls"] - plain).max() > 1e-3
  assert np.abs(l2p["prompt_mean"] - ports["prompt_mean"]).max() > 1e-3


def test_prefix_at_layer_1_matches_numpy(tmp_path):
  model = tiny_vit(seed=1)
  w = npz_weights(model, tmp_path)
  images, _ = images_and_prompts(1)
  rng = np.random.default_rng(2)
  pk, pv = (rng.normal(size=(2, 5, HEADS, HEAD_DIM)).astype(np.float32) for _ in range(2))
  out = model(images, prefix={1: (pk, pv)})
  ref = np_vit_tokens(w, images, prefix={1: (pk, pv)})
  np.testing.assert_allclose(out["tokens"], ref, atol=1e-4)
  assert out["tokens"].shape == (2, 1 + GRID * GRID, WIDTH)  # prefixes add no output tokens
  assert np.abs(model(images)["tokens"] - out["tokens"]).max() > 1e-3


def attention_weights(attn):
  return {
    f"{name}/{leaf}": np.asarray(getattr(getattr(attn, name), leaf)[...], np.float64)
    for name in ("query", "key", "value", "out")
    for leaf in ("kernel", "bias")
  }


def test_prefix_keys_values_join_after_projection():
  attn = layers.Attention(WIDTH, HEADS, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)
  for dense in (attn.query, attn.key, attn.value, attn.out):
    dense.bias[...] = jnp.asarray(rng.normal(size=dense.bias.shape), jnp.float32)
  x = rng.normal(size=(2, 4, WIDTH)).astype(np.float32)
  pk, pv = (rng.normal(size=(2, 3, HEADS, HEAD_DIM)).astype(np.float32) for _ in range(2))
  got = attn(x, prefix=(pk, pv))
  assert got.shape == x.shape
  np.testing.assert_allclose(got, np_attention(x, attention_weights(attn), (pk, pv)), atol=1e-5)


def test_attention_mask_blocks_masked_positions():
  attn = layers.Attention(WIDTH, HEADS, rngs=nnx.Rngs(1))
  x = np.random.default_rng(4).normal(size=(2, 5, WIDTH)).astype(np.float32)
  causal = np.tril(np.ones((5, 5), bool))[None, None]  # [1, 1, N, N]
  got = attn(x, mask=causal[0])  # [1, N, N]: no head axis
  np.testing.assert_allclose(got, np_attention(x, attention_weights(attn), mask=causal), atol=1e-5)
  assert np.abs(got - attn(x)).max() > 1e-4


def test_jit_and_grad_through_prompts_and_prefix():
  model = tiny_vit()
  images, prompts = images_and_prompts()
  pk = np.ones((2, 2, HEADS, HEAD_DIM), np.float32)

  def prompt_loss(model, prompts, pk):
    out = model(images, prompts=prompts, prefix={0: (pk, pk)})
    return jnp.sum(out["prompt_mean"] ** 2)

  @nnx.jit
  def loss_and_grads(model, prompts, pk):
    return jax.value_and_grad(lambda p, k: prompt_loss(model, p, k), argnums=(0, 1))(prompts, pk)

  loss, grads = loss_and_grads(model, prompts, pk)
  np.testing.assert_allclose(loss, prompt_loss(model, prompts, pk), rtol=1e-5)
  for g in grads:
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


def test_bfloat16_compute_keeps_float32_params():
  f32, bf16 = tiny_vit(dtype=jnp.float32), tiny_vit(dtype=jnp.bfloat16)
  images, prompts = images_and_prompts()
  assert bf16.blocks[0].attn.query.kernel[...].dtype == jnp.float32
  out = bf16(images, prompts=prompts)
  assert out["tokens"].dtype == jnp.bfloat16
  np.testing.assert_allclose(
    out["tokens"].astype(np.float32), f32(images, prompts=prompts)["tokens"], atol=0.15
  )


def test_bad_arguments_are_refused():
  model = tiny_vit()
  images, prompts = images_and_prompts()
  with pytest.raises(ValueError, match="prefix layers"):
    model(images, prefix={DEPTH: (np.zeros((2, 1, HEADS, HEAD_DIM)),) * 2})
  with pytest.raises(ValueError, match="prompt_layout"):
    model(images, prompts=prompts, prompt_layout="append")


def test_variants():
  assert vit.parse_variant("B/16") == (vit.VARIANTS["B"], 16)
  assert vit.parse_variant("Ti/4") == (dict(width=192, depth=12, mlp_dim=768, num_heads=3), 4)
  assert vit.parse_variant("mu/4") == (dict(width=96, depth=4, mlp_dim=384, num_heads=3), 4)
  for bad in ("Z/3", "B", "B/x", "B/0"):
    with pytest.raises(ValueError, match="B/16"):
      vit.parse_variant(bad)
  model = vit.from_variant("mu/4", image_size=8, num_classes=7, rngs=nnx.Rngs(0))
  assert model.pos_embedding.shape == (1, 5, 96) and len(model.blocks) == 4
  assert model.embedding.kernel.shape == (4, 4, 3, 96) and model.head.kernel.shape == (96, 7)
  np.testing.assert_array_equal(model(np.ones((1, 8, 8, 3)))["logits"], 0.0)  # zero-init head
  assert not hasattr(vit.from_variant("mu/4", image_size=8, rngs=nnx.Rngs(0)), "head")
  with pytest.raises(ValueError, match="multiple of the patch"):
    vit.from_variant("mu/4", image_size=10, rngs=nnx.Rngs(0))
