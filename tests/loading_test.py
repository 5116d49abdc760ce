"""Google npz (pre-Linen and Linen names, opt/target prefix), timm safetensors, pos-emb resize."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxcl.models import loading, vit

DIMS = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch=4)


def model(image=8, seed=0, num_classes=0):
  return vit.ViT(**DIMS, image_size=image, num_classes=num_classes, rngs=nnx.Rngs(seed))


def google_npz(path, seed=1, *, linen=False, prefix="", num_classes=0, image=8):
  src = model(image, seed, num_classes)
  loading.save_vit_npz(src, str(path))
  w = dict(np.load(path))
  w["pre_logits/kernel"], w["pre_logits/bias"] = np.ones((32, 32)), np.ones(32)
  if linen:
    w = {
      k.replace("LayerNorm_2", "LayerNorm_1")
      .replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
      .replace("MlpBlock_3", "MlpBlock_0"): v
      for k, v in w.items()
    }
  np.savez(path, **{prefix + k: v for k, v in w.items()})
  return src


def test_google_key_set_is_exact(tmp_path):
  loading.save_vit_npz(model(), str(tmp_path / "w.npz"))
  keys = set(np.load(tmp_path / "w.npz"))
  block = {
    f"Transformer/encoderblock_0/{k}"
    for k in (
      "LayerNorm_0/scale",
      "LayerNorm_0/bias",
      "LayerNorm_2/scale",
      "LayerNorm_2/bias",
      "MlpBlock_3/Dense_0/kernel",
      "MlpBlock_3/Dense_0/bias",
      "MlpBlock_3/Dense_1/kernel",
      "MlpBlock_3/Dense_1/bias",
      *(
        f"MultiHeadDotProductAttention_1/{n}/{p}"
        for n in ("query", "key", "value", "out")
        for p in ("kernel", "bias")
      ),
    )
  }
  assert block <= keys
  assert {
    "embedding/kernel",
    "embedding/bias",
    "cls",
    "Transformer/posembed_input/pos_embedding",
    "Transformer/encoder_norm/scale",
    "Transformer/encoder_norm/bias",
  } <= keys
  assert len(keys) == 6 + 2 * 16
  assert np.load(tmp_path / "w.npz")[
    "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"
  ].shape == (32, 2, 16)


@pytest.mark.parametrize("linen,prefix", [(False, ""), (True, ""), (False, "opt/target/")])
def test_npz_loads_every_leaf(tmp_path, linen, prefix):
  src = google_npz(tmp_path / "w.npz", linen=linen, prefix=prefix)
  dst = model(seed=7)
  unused = loading.load_vit(dst, str(tmp_path / "w.npz"))
  assert unused == ["pre_logits/bias", "pre_logits/kernel"]
  x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  np.testing.assert_array_equal(src(x)["tokens"], dst(x)["tokens"])


def test_head_kept_only_when_asked(tmp_path):
  src = google_npz(tmp_path / "w.npz", num_classes=5)
  src.head.kernel[...] = np.ones((32, 5))
  loading.save_vit_npz(src, str(tmp_path / "h.npz"))
  dropped, kept = model(num_classes=5, seed=3), model(num_classes=5, seed=3)
  loading.load_vit(dropped, str(tmp_path / "h.npz"))
  loading.load_vit(kept, str(tmp_path / "h.npz"), keep_head=True)
  assert np.all(np.asarray(dropped.head.kernel[...]) == 0)
  assert np.all(np.asarray(kept.head.kernel[...]) == 1)


def test_posemb_is_resized_with_cls_row_kept(tmp_path):
  google_npz(tmp_path / "w.npz", image=8)  # 2x2 grid
  w = np.load(tmp_path / "w.npz")["Transformer/posembed_input/pos_embedding"]
  big = model(image=16)  # 4x4 grid
  loading.load_vit(big, str(tmp_path / "w.npz"))
  got = np.asarray(big.pos_embedding[...])
  np.testing.assert_array_equal(got[0, 0], w[0, 0])
  grid = got[0, 1:].reshape(4, 4, 32)
  # Corners of a half-pixel-centred bilinear upsample of a 2x2 grid equal the source corners.
  np.testing.assert_allclose(grid[0, 0], w[0, 1], atol=1e-6)
  np.testing.assert_allclose(grid[3, 3], w[0, 4], atol=1e-6)
  np.testing.assert_allclose(grid[1:3, 1:3].mean((0, 1)), w[0, 1:].mean(0), atol=1e-5)


def test_timm_safetensors_gives_the_same_forward(tmp_path):
  src = google_npz(tmp_path / "w.npz")
  w = dict(np.load(tmp_path / "w.npz"))
  t = {
    "cls_token": w["cls"],
    "pos_embed": w["Transformer/posembed_input/pos_embedding"],
    "patch_embed.proj.weight": w["embedding/kernel"].transpose(3, 2, 0, 1),
    "patch_embed.proj.bias": w["embedding/bias"],
    "norm.weight": w["Transformer/encoder_norm/scale"],
    "norm.bias": w["Transformer/encoder_norm/bias"],
  }
  for i in range(2):
    b = f"Transformer/encoderblock_{i}/"
    a = b + "MultiHeadDotProductAttention_1/"
    t[f"blocks.{i}.attn.qkv.weight"] = np.concatenate(
      [w[a + f"{n}/kernel"].reshape(32, 32).T for n in ("query", "key", "value")]
    )
    t[f"blocks.{i}.attn.qkv.bias"] = np.concatenate(
      [w[a + f"{n}/bias"].reshape(-1) for n in ("query", "key", "value")]
    )
    t[f"blocks.{i}.attn.proj.weight"] = w[a + "out/kernel"].reshape(32, 32).T
    t[f"blocks.{i}.attn.proj.bias"] = w[a + "out/bias"]
    for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
      t[f"blocks.{i}.{name}.weight"], t[f"blocks.{i}.{name}.bias"] = (
        w[b + ln + "/scale"],
        w[b + ln + "/bias"],
      )
    for dense, name in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
      t[f"blocks.{i}.mlp.{name}.weight"] = w[b + f"MlpBlock_3/{dense}/kernel"].T
      t[f"blocks.{i}.mlp.{name}.bias"] = w[b + f"MlpBlock_3/{dense}/bias"]
  save_file(
    {k: np.ascontiguousarray(v, np.float32) for k, v in t.items()}, str(tmp_path / "m.safetensors")
  )
  dst = model(seed=9)
  loading.load_vit(dst, str(tmp_path / "m.safetensors"))
  x = np.random.default_rng(1).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(src(x)["tokens"], dst(x)["tokens"], atol=1e-5)


def test_float16_round_trip(tmp_path):
  src = model(seed=2)
  loading.save_vit_npz(src, str(tmp_path / "h.npz"), dtype=np.float16)
  dst = model(seed=4)
  loading.load_vit(dst, str(tmp_path / "h.npz"))
  np.testing.assert_allclose(dst.pos_embedding[...], src.pos_embedding[...], atol=1e-3)


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="ViT-B_16.npz"):
    loading.load_vit(model(), str(tmp_path / "missing.npz"))
  google_npz(tmp_path / "w.npz")
  wide = vit.ViT(**{**DIMS, "mlp_dim": 48}, image_size=8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="Dense_0/(kernel|bias).* has shape"):
    loading.load_vit(wide, str(tmp_path / "w.npz"))
