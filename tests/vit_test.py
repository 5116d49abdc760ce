"""The NNX ViT against an independent numpy forward, both prompt layouts and prefix attention."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxcl.models import layers, loading, vit

WIDTH, HEADS, PATCH, IMAGE = 32, 2, 4, 8


def tiny(seed=0):
  return vit.ViT(
    width=WIDTH,
    depth=2,
    mlp_dim=64,
    num_heads=HEADS,
    patch=PATCH,
    image_size=IMAGE,
    rngs=nnx.Rngs(seed),
  )


def weights(model, tmp_path):
  path = str(tmp_path / "w.npz")
  loading.save_vit_npz(model, path)
  return dict(np.load(path))


def ln(x, scale, bias):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * scale + bias


def gelu(x):
  from scipy.special import erf  # noqa: PLC0415

  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def attention(x, w, prefix=None):
  q, k, v = (
    np.einsum("bnd,dhk->bnhk", x, w[f"{n}/kernel"]) + w[f"{n}/bias"]
    for n in ("query", "key", "value")
  )
  if prefix is not None:
    k, v = np.concatenate([prefix[0], k], 1), np.concatenate([prefix[1], v], 1)
  s = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
  a = np.exp(s - s.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  return (
    np.einsum("bqhk,hkd->bqd", np.einsum("bhqs,bshk->bqhk", a, v), w["out/kernel"]) + w["out/bias"]
  )


def numpy_forward(w, images, prompts=None, layout="prepend_after_pos", prefix=None):
  b = images.shape[0]
  g = IMAGE // PATCH
  patches = (
    images.reshape(b, g, PATCH, g, PATCH, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
  )
  x = patches @ w["embedding/kernel"].reshape(-1, WIDTH) + w["embedding/bias"]
  cls = np.broadcast_to(w["cls"], (b, 1, WIDTH))
  pos = w["Transformer/posembed_input/pos_embedding"]
  if prompts is None:
    x = np.concatenate([cls, x], 1) + pos
  elif layout == "prepend_after_pos":
    x = np.concatenate([prompts, np.concatenate([cls, x], 1) + pos], 1)
  else:
    p = prompts.shape[1]
    pos = np.concatenate([pos[:, :1], np.repeat(pos[:, :1], p, 1), pos[:, 1:]], 1)
    x = np.concatenate([cls, prompts, x], 1) + pos
  for i in range(2):
    blk = {k.split(f"encoderblock_{i}/")[1]: v for k, v in w.items() if f"encoderblock_{i}/" in k}
    att = {
      k.split("MultiHeadDotProductAttention_1/")[1]: v
      for k, v in blk.items()
      if k.startswith("MultiHeadDotProductAttention_1/")
    }
    x = x + attention(
      ln(x, blk["LayerNorm_0/scale"], blk["LayerNorm_0/bias"]), att, (prefix or {}).get(i)
    )
    h = ln(x, blk["LayerNorm_2/scale"], blk["LayerNorm_2/bias"])
    h = gelu(h @ blk["MlpBlock_3/Dense_0/kernel"] + blk["MlpBlock_3/Dense_0/bias"])
    x = x + h @ blk["MlpBlock_3/Dense_1/kernel"] + blk["MlpBlock_3/Dense_1/bias"]
  return ln(x, w["Transformer/encoder_norm/scale"], w["Transformer/encoder_norm/bias"])


@pytest.mark.parametrize("layout", [None, "prepend_after_pos", "after_cls_before_pos"])
def test_forward_matches_numpy(layout, tmp_path):
  model = tiny()
  w = weights(model, tmp_path)
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(2, IMAGE, IMAGE, 3)).astype(np.float32)
  prompts = None if layout is None else rng.normal(size=(2, 3, WIDTH)).astype(np.float32)
  out = model(images, prompts=prompts, prompt_layout=layout or "prepend_after_pos")
  ref = numpy_forward(w, images, prompts, layout or "prepend_after_pos")
  np.testing.assert_allclose(out["tokens"], ref, atol=1e-4)
  cls_index = 3 if layout == "prepend_after_pos" else 0
  np.testing.assert_allclose(out["cls"], ref[:, cls_index], atol=1e-4)
  if layout == "prepend_after_pos":
    np.testing.assert_allclose(out["prompt_mean"], ref[:, :3].mean(1), atol=1e-4)
  elif layout == "after_cls_before_pos":
    np.testing.assert_allclose(out["prompt_mean"], ref[:, 1:4].mean(1), atol=1e-4)
  else:
    assert out["prompt_mean"] is None


def test_prefix_in_one_layer_matches_numpy(tmp_path):
  model = tiny(1)
  w = weights(model, tmp_path)
  rng = np.random.default_rng(1)
  images = rng.uniform(size=(2, IMAGE, IMAGE, 3)).astype(np.float32)
  pk, pv = (rng.normal(size=(2, 5, HEADS, WIDTH // HEADS)).astype(np.float32) for _ in range(2))
  out = model(images, prefix={1: (pk, pv)})
  np.testing.assert_allclose(
    out["tokens"], numpy_forward(w, images, prefix={1: (pk, pv)}), atol=1e-4
  )
  plain = model(images)
  assert np.abs(plain["tokens"] - out["tokens"]).max() > 1e-3  # the prefix did something


def test_prefix_keys_values_are_not_projected():
  attn = layers.MultiHeadAttention(WIDTH, HEADS, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, WIDTH))
  pk = jax.random.normal(jax.random.PRNGKey(1), (1, 2, HEADS, WIDTH // HEADS))
  pv = jax.random.normal(jax.random.PRNGKey(2), (1, 2, HEADS, WIDTH // HEADS))
  w = {
    f"{n}/{p}": np.asarray(getattr(getattr(attn, n), p)[...])
    for n in ("query", "key", "value", "out")
    for p in ("kernel", "bias")
  }
  np.testing.assert_allclose(
    attn(x, prefix_k=pk, prefix_v=pv),
    attention(np.asarray(x), w, (np.asarray(pk), np.asarray(pv))),
    atol=1e-5,
  )
  assert attn(x, prefix_k=pk, prefix_v=pv).shape == x.shape


def test_variants_parse():
  assert vit.parse_variant("B/16") == (vit.VARIANTS["B"], 16)
  with pytest.raises(ValueError, match="B/16"):
    vit.parse_variant("Z/3")
