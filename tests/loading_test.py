"""ViT checkpoint loading: google npz (pre-Linen, Linen, opt/target/), timm and HF safetensors."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxcl.models import loading, vit

WIDTH, DEPTH, MLP, HEADS, PATCH = 32, 2, 64, 2, 4
HEAD_DIM = WIDTH // HEADS
POS = "Transformer/posembed_input/pos_embedding"
# google pre-Linen module name -> jaxcl attribute, inside a block (research/prompt_cil.md §4.2).
BLOCK_CHILDREN = {
  "LayerNorm_0/scale": "ln_0.scale",
  "LayerNorm_0/bias": "ln_0.bias",
  **{
    f"MultiHeadDotProductAttention_1/{n}/{leaf}": f"attn.{n}.{leaf}"
    for n in ("query", "key", "value", "out")
    for leaf in ("kernel", "bias")
  },
  "LayerNorm_2/scale": "ln_2.scale",
  "LayerNorm_2/bias": "ln_2.bias",
  "MlpBlock_3/Dense_0/kernel": "mlp.dense_0.kernel",
  "MlpBlock_3/Dense_0/bias": "mlp.dense_0.bias",
  "MlpBlock_3/Dense_1/kernel": "mlp.dense_1.kernel",
  "MlpBlock_3/Dense_1/bias": "mlp.dense_1.bias",
}


def google_shapes(grid=2, num_classes=0, pre_logits=False, mlp=MLP):
  """{npz key: shape} of a google pre-Linen ViT checkpoint of the test dimensions."""
  qkv, qkv_bias = (WIDTH, HEADS, HEAD_DIM), (HEADS, HEAD_DIM)
  block = {
    "LayerNorm_0/scale": (WIDTH,),
    "LayerNorm_0/bias": (WIDTH,),
    **{f"MultiHeadDotProductAttention_1/{n}/kernel": qkv for n in ("query", "key", "value")},
    **{f"MultiHeadDotProductAttention_1/{n}/bias": qkv_bias for n in ("query", "key", "value")},
    "MultiHeadDotProductAttention_1/out/kernel": (HEADS, HEAD_DIM, WIDTH),
    "MultiHeadDotProductAttention_1/out/bias": (WIDTH,),
    "LayerNorm_2/scale": (WIDTH,),
    "LayerNorm_2/bias": (WIDTH,),
    "MlpBlock_3/Dense_0/kernel": (WIDTH, mlp),
    "MlpBlock_3/Dense_0/bias": (mlp,),
    "MlpBlock_3/Dense_1/kernel": (mlp, WIDTH),
    "MlpBlock_3/Dense_1/bias": (WIDTH,),
  }
  shapes = {
    "embedding/kernel": (PATCH, PATCH, 3, WIDTH),
    "embedding/bias": (WIDTH,),
    "cls": (1, 1, WIDTH),
    POS: (1, 1 + grid * grid, WIDTH),
    "Transformer/encoder_norm/scale": (WIDTH,),
    "Transformer/encoder_norm/bias": (WIDTH,),
  }
  for i in range(DEPTH):
    shapes.update({f"Transformer/encoderblock_{i}/{k}": s for k, s in block.items()})
  if num_classes:
    shapes.update({"head/kernel": (WIDTH, num_classes), "head/bias": (num_classes,)})
  if pre_logits:
    shapes.update({"pre_logits/kernel": (WIDTH, WIDTH), "pre_logits/bias": (WIDTH,)})
  return shapes


def arange_weights(shapes):
  """Every key gets its own exactly representable values: 10000 * key index + arange."""
  return {
    k: (10000 * i + np.arange(np.prod(s))).reshape(s).astype(np.float32)
    for i, (k, s) in enumerate(shapes.items())
  }


def random_weights(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return {
    k: (0.2 * rng.normal(size=s) + k.endswith("scale")).astype(np.float32)
    for k, s in shapes.items()
  }


def expected_attributes():
  """{npz key: jaxcl attribute path}, written out independently of jaxcl.models.loading."""
  table = {
    "embedding/kernel": "embedding.kernel",
    "embedding/bias": "embedding.bias",
    "cls": "cls",
    POS: "pos_embedding",
    "Transformer/encoder_norm/scale": "encoder_norm.scale",
    "Transformer/encoder_norm/bias": "encoder_norm.bias",
    "head/kernel": "head.kernel",
    "head/bias": "head.bias",
  }
  for i in range(DEPTH):
    for key, attr in BLOCK_CHILDREN.items():
      table[f"Transformer/encoderblock_{i}/{key}"] = f"blocks.{i}.{attr}"
  return table


def attribute(model, dotted):
  node = model
  for part in dotted.split("."):
    node = node[int(part)] if part.isdigit() else getattr(node, part)
  return np.asarray(node[...])


def new_vit(image=8, num_classes=0, seed=7, mlp=MLP):
  return vit.ViT(
    width=WIDTH,
    depth=DEPTH,
    mlp_dim=mlp,
    num_heads=HEADS,
    patch=PATCH,
    image_size=image,
    num_classes=num_classes,
    rngs=nnx.Rngs(seed),
  )


def write_npz(path, weights):
  np.savez(path, **weights)
  return str(path)


def all_params(model):
  return {k: np.asarray(p[...]) for k, p in loading.vit_params(model).items()}


def test_every_npz_leaf_lands_at_its_attribute(tmp_path):
  w = arange_weights(google_shapes(num_classes=5, pre_logits=True))
  model = new_vit(num_classes=5)
  skipped = loading.load_vit(model, write_npz(tmp_path / "w.npz", w), keep_head=True)
  assert skipped == ["pre_logits/bias", "pre_logits/kernel"]
  table = expected_attributes()
  assert len(table) == len(nnx.to_flat_state(nnx.state(model, nnx.Param)))  # nothing unchecked
  for key, attr in table.items():
    np.testing.assert_array_equal(attribute(model, attr), w[key], err_msg=f"{key} -> {attr}")


def linen_names(key):
  for old, new in (
    ("LayerNorm_2", "LayerNorm_1"),
    ("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0"),
    ("MlpBlock_3", "MlpBlock_0"),
  ):
    key = key.replace(old, new)
  return key


@pytest.mark.parametrize("rename", ["linen", "opt_target", "both"])
def test_linen_names_and_opt_target_prefix_load_identically(tmp_path, rename):
  w = arange_weights(google_shapes(pre_logits=True))
  reference = new_vit()
  loading.load_vit(reference, write_npz(tmp_path / "ref.npz", w))
  renamed = {
    ("opt/target/" if rename != "linen" else "")
    + (linen_names(k) if rename != "opt_target" else k): v
    for k, v in w.items()
  }
  assert renamed.keys() != w.keys()
  model = new_vit(seed=8)
  skipped = loading.load_vit(model, write_npz(tmp_path / "renamed.npz", renamed))
  assert skipped == ["pre_logits/bias", "pre_logits/kernel"]
  for key, value in all_params(reference).items():
    np.testing.assert_array_equal(all_params(model)[key], value, err_msg=key)


def test_head_kept_only_when_asked_and_shapes_match(tmp_path):
  path = write_npz(tmp_path / "w.npz", arange_weights(google_shapes(num_classes=5)))
  dropped, kept, other = new_vit(num_classes=5), new_vit(num_classes=5), new_vit(num_classes=7)
  assert loading.load_vit(dropped, path) == ["head/bias", "head/kernel"]
  assert loading.load_vit(kept, path, keep_head=True) == []
  assert loading.load_vit(other, path, keep_head=True) == ["head/bias", "head/kernel"]
  np.testing.assert_array_equal(dropped.head.kernel[...], 0.0)
  np.testing.assert_array_equal(other.head.kernel[...], 0.0)
  w = np.load(path)
  np.testing.assert_array_equal(kept.head.kernel[...], w["head/kernel"])
  np.testing.assert_array_equal(kept.head.bias[...], w["head/bias"])
  headless = new_vit()
  assert loading.load_vit(headless, path, keep_head=True) == ["head/bias", "head/kernel"]


def bilinear_align_corners(grid, size):
  """[g, g, D] -> [size, size, D]: separable linear interpolation, corner centres kept."""
  old = grid.shape[0]
  coords = np.linspace(0, old - 1, size)
  weights = np.stack([np.interp(coords, np.arange(old), np.eye(old)[j]) for j in range(old)], 1)
  return np.einsum("ri,cj,ijd->rcd", weights, weights, grid)  # weights [size, g]


def test_pos_embedding_grid_is_resized_bilinearly_with_cls_kept(tmp_path):
  w = random_weights(google_shapes(grid=2))
  model = new_vit(image=16)  # 4 x 4 grid
  loading.load_vit(model, write_npz(tmp_path / "w.npz", w))
  got = np.asarray(model.pos_embedding[...])
  assert got.shape == (1, 17, WIDTH)
  np.testing.assert_array_equal(got[0, 0], w[POS][0, 0])
  expected = bilinear_align_corners(w[POS][0, 1:].reshape(2, 2, WIDTH), 4)
  np.testing.assert_allclose(got[0, 1:].reshape(4, 4, WIDTH), expected, atol=1e-6)
  np.testing.assert_array_equal(
    attribute(model, "blocks.1.attn.out.kernel"),
    w["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel"],
  )


def to_torch(w, layout):
  """Google npz weights -> a timm or HF transformers state dict ([out, in] Linear weights)."""
  flat = lambda a: a.reshape(WIDTH, WIDTH)  # [D, H, Dh] or [H, Dh, D] -> [D, D]
  hf = layout.startswith("hf")
  p = "vit." if layout == "hf" else ""
  t = {
    ("embeddings.cls_token" if hf else "cls_token"): w["cls"],
    ("embeddings.position_embeddings" if hf else "pos_embed"): w[POS],
  }
  patch = "embeddings.patch_embeddings.projection" if hf else "patch_embed.proj"
  t[patch + ".weight"] = w["embedding/kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
  t[patch + ".bias"] = w["embedding/bias"]
  norm = "layernorm" if hf else "norm"
  t[norm + ".weight"] = w["Transformer/encoder_norm/scale"]
  t[norm + ".bias"] = w["Transformer/encoder_norm/bias"]
  for i in range(DEPTH):
    g = f"Transformer/encoderblock_{i}/"
    a = g + "MultiHeadDotProductAttention_1/"
    s = f"encoder.layer.{i}." if hf else f"blocks.{i}."
    q, k, v = (flat(w[f"{a}{n}/kernel"]).T for n in ("query", "key", "value"))
    qb, kb, vb = (w[f"{a}{n}/bias"].reshape(-1) for n in ("query", "key", "value"))
    if hf:
      for n, weight, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
        t[f"{s}attention.attention.{n}.weight"], t[f"{s}attention.attention.{n}.bias"] = (
          weight,
          bias,
        )
    else:
      t[s + "attn.qkv.weight"] = np.concatenate([q, k, v])  # [3D, D]
      t[s + "attn.qkv.bias"] = np.concatenate([qb, kb, vb])
    names = (
      dict(
        ln0="layernorm_before",
        ln2="layernorm_after",
        out="attention.output.dense",
        fc1="intermediate.dense",
        fc2="output.dense",
      )
      if hf
      else dict(ln0="norm1", ln2="norm2", out="attn.proj", fc1="mlp.fc1", fc2="mlp.fc2")
    )
    t[s + names["out"] + ".weight"] = flat(w[a + "out/kernel"]).T
    t[s + names["out"] + ".bias"] = w[a + "out/bias"]
    for ln, name in (("LayerNorm_0", "ln0"), ("LayerNorm_2", "ln2")):
      t[s + names[name] + ".weight"] = w[f"{g}{ln}/scale"]
      t[s + names[name] + ".bias"] = w[f"{g}{ln}/bias"]
    for dense, name in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
      t[s + names[name] + ".weight"] = w[f"{g}MlpBlock_3/{dense}/kernel"].T
      t[s + names[name] + ".bias"] = w[f"{g}MlpBlock_3/{dense}/bias"]
  head = "classifier" if hf else "head"
  t[head + ".weight"], t[head + ".bias"] = w["head/kernel"].T, w["head/bias"]
  t["pooler.dense.weight" if hf else "fc_norm.weight"] = np.ones((WIDTH, WIDTH), np.float32)
  return {p + k: np.ascontiguousarray(v) for k, v in t.items()}


@pytest.mark.parametrize("layout", ["timm", "hf", "hf_without_vit_prefix"])
def test_safetensors_give_the_same_model_as_the_npz(tmp_path, layout):
  w = random_weights(google_shapes(num_classes=5), seed=1)
  from_npz, from_torch = new_vit(num_classes=5, seed=1), new_vit(num_classes=5, seed=2)
  loading.load_vit(from_npz, write_npz(tmp_path / "w.npz", w), keep_head=True)
  save_file(to_torch(w, layout), str(tmp_path / "m.safetensors"))
  skipped = loading.load_vit(from_torch, str(tmp_path / "m.safetensors"), keep_head=True)
  assert skipped == (["pooler.dense.weight"] if layout.startswith("hf") else ["fc_norm.weight"])
  for key, value in all_params(from_npz).items():
    np.testing.assert_array_equal(all_params(from_torch)[key], value, err_msg=key)
  x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(from_torch(x)["logits"], from_npz(x)["logits"], atol=1e-6)
  np.testing.assert_allclose(from_torch(x)["tokens"], from_npz(x)["tokens"], atol=1e-6)


def test_save_then_load_round_trip(tmp_path):
  src = new_vit(num_classes=5, seed=3)
  for p in loading.vit_params(src).values():  # non-trivial values everywhere, head included
    p[...] = p[...] + np.random.default_rng(0).normal(size=p.shape).astype(np.float32)
  loading.save_vit_npz(src, str(tmp_path / "f32.npz"))
  assert dict(np.load(tmp_path / "f32.npz")).keys() == google_shapes(num_classes=5).keys()
  exact = new_vit(num_classes=5, seed=4)
  assert loading.load_vit(exact, str(tmp_path / "f32.npz"), keep_head=True) == []
  for key, value in all_params(src).items():
    np.testing.assert_array_equal(all_params(exact)[key], value, err_msg=key)
  loading.save_vit_npz(src, str(tmp_path / "sub" / "f16.npz"), dtype=np.float16)
  assert np.load(tmp_path / "sub" / "f16.npz")["cls"].dtype == np.float16
  half = new_vit(num_classes=5, seed=5)
  loading.load_vit(half, str(tmp_path / "sub" / "f16.npz"), keep_head=True)
  for key, value in all_params(src).items():
    got = all_params(half)[key]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, value, rtol=1e-3, atol=1e-4, err_msg=key)


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"missing\.npz.*ViT-B_16\.npz"):
    loading.load_vit(new_vit(), str(tmp_path / "missing.npz"))
  with pytest.raises(FileNotFoundError, match="ViT-B_16.npz"):
    loading.load_vit(new_vit(), str(tmp_path / "missing.safetensors"))
  narrow = write_npz(tmp_path / "narrow.npz", arange_weights(google_shapes(mlp=48)))
  with pytest.raises(ValueError, match=r"Dense_0/(kernel|bias)'.*\((32, )?48,?\).*\((32, )?64,?\)"):
    loading.load_vit(new_vit(), narrow)
  w = arange_weights(google_shapes())
  del w["Transformer/encoderblock_1/LayerNorm_2/scale"]
  with pytest.raises(ValueError, match="encoderblock_1/LayerNorm_2/scale"):
    loading.load_vit(new_vit(), write_npz(tmp_path / "partial.npz", w))
  with pytest.raises(ValueError, match=r"\.npz.*\.safetensors"):
    loading.load_vit(new_vit(), str(tmp_path / "weights.pth"))
