"""Pretrained ViT weights: google vision_transformer `.npz` and timm / HF safetensors.

The google format (research/prompt_cil.md §4.2) keys parameters like
`Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel` [D, H, Dh].
jaxcl's ViT uses those names, so loading is a rename of the flattened state; Linen
checkpoints renumber block children (`LayerNorm_1`, `MultiHeadDotProductAttention_0`,
`MlpBlock_0`) and are mapped back. A position embedding of another grid is resized
bilinearly (CLS row kept), as google-research/l2p's loader does.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from absl import logging
from etils import epath
from flax import nnx, traverse_util

_LINEN_TO_PRE_LINEN = {
  "LayerNorm_1": "LayerNorm_2",
  "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
  "MlpBlock_0": "MlpBlock_3",
}
HOW_TO_GET = (
  "get ViT-B/16 from gs://vit_models/imagenet21k/ViT-B_16.npz (original IN-21k) or "
  "gs://vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz"
)


def npz_key(path: str) -> str:
  """jaxcl state path (e.g. `encoderblock/0/LayerNorm_0/scale`) -> google npz key."""
  parts = path.split("/")
  if parts[0] == "encoderblock":
    return "/".join(["Transformer", f"encoderblock_{parts[1]}", *parts[2:]])
  if parts[0] == "pos_embedding":
    return "Transformer/posembed_input/pos_embedding"
  if parts[0] == "encoder_norm":
    return "Transformer/" + path
  return path


def read_npz(path: str) -> dict[str, np.ndarray]:
  """A google `.npz` as {key: array}, `opt/target/` stripped, Linen block names mapped back."""
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"pretrained weights {path} not found; {HOW_TO_GET}")
  with p.open("rb") as f:
    raw = dict(np.load(f, allow_pickle=False))
  out = {}
  for k, v in raw.items():
    k = k.removeprefix("opt/target/")
    k = re.sub(r"[A-Za-z]+_\d+", lambda m: _LINEN_TO_PRE_LINEN.get(m.group(0), m.group(0)), k)
    out[k] = v
  return out


def read_safetensors(path: str, width: int, num_heads: int) -> dict[str, np.ndarray]:
  """timm (`blocks.0.attn.qkv.weight`) or HF (`vit.encoder.layer.0...`) ViT -> google keys."""
  from safetensors.numpy import load_file  # noqa: PLC0415

  if not epath.Path(path).exists():
    raise FileNotFoundError(f"pretrained weights {path} not found; {HOW_TO_GET}")
  t = {k.removeprefix("vit."): v for k, v in load_file(path).items()}
  hd = width // num_heads
  out = {}

  def heads_in(w, b):  # torch Linear [out, in] -> [D, H, Dh], [H, Dh]
    return w.T.reshape(width, num_heads, hd), b.reshape(num_heads, hd)

  timm = "cls_token" in t
  if timm:
    out["cls"], out["Transformer/posembed_input/pos_embedding"] = t["cls_token"], t["pos_embed"]
    conv_w, conv_b = t["patch_embed.proj.weight"], t["patch_embed.proj.bias"]
    norm = "norm"
  else:
    out["cls"] = t["embeddings.cls_token"]
    out["Transformer/posembed_input/pos_embedding"] = t["embeddings.position_embeddings"]
    conv_w = t["embeddings.patch_embeddings.projection.weight"]
    conv_b = t["embeddings.patch_embeddings.projection.bias"]
    norm = "layernorm"
  out["embedding/kernel"], out["embedding/bias"] = conv_w.transpose(2, 3, 1, 0), conv_b
  out["Transformer/encoder_norm/scale"] = t[f"{norm}.weight"]
  out["Transformer/encoder_norm/bias"] = t[f"{norm}.bias"]
  i = 0
  while (f"blocks.{i}.norm1.weight" if timm else f"encoder.layer.{i}.layernorm_before.weight") in t:
    b, a = (
      f"Transformer/encoderblock_{i}",
      f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1",
    )
    if timm:
      s = f"blocks.{i}."
      qkv_w, qkv_b = np.split(t[s + "attn.qkv.weight"], 3), np.split(t[s + "attn.qkv.bias"], 3)
      names = dict(ln0="norm1", ln2="norm2", proj="attn.proj", fc1="mlp.fc1", fc2="mlp.fc2")
    else:
      s = f"encoder.layer.{i}."
      qkv_w = [t[s + f"attention.attention.{n}.weight"] for n in ("query", "key", "value")]
      qkv_b = [t[s + f"attention.attention.{n}.bias"] for n in ("query", "key", "value")]
      names = dict(
        ln0="layernorm_before",
        ln2="layernorm_after",
        proj="attention.output.dense",
        fc1="intermediate.dense",
        fc2="output.dense",
      )
    for n, w, bias in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True):
      out[f"{a}/{n}/kernel"], out[f"{a}/{n}/bias"] = heads_in(w, bias)
    out[f"{a}/out/kernel"] = t[s + names["proj"] + ".weight"].T.reshape(num_heads, hd, width)
    out[f"{a}/out/bias"] = t[s + names["proj"] + ".bias"]
    for ln, name in (("LayerNorm_0", names["ln0"]), ("LayerNorm_2", names["ln2"])):
      out[f"{b}/{ln}/scale"], out[f"{b}/{ln}/bias"] = t[s + name + ".weight"], t[s + name + ".bias"]
    for dense, name in (("Dense_0", names["fc1"]), ("Dense_1", names["fc2"])):
      out[f"{b}/MlpBlock_3/{dense}/kernel"] = t[s + name + ".weight"].T
      out[f"{b}/MlpBlock_3/{dense}/bias"] = t[s + name + ".bias"]
    i += 1
  head = "head" if timm else "classifier"
  if f"{head}.weight" in t:
    out["head/kernel"], out["head/bias"] = t[f"{head}.weight"].T, t[f"{head}.bias"]
  return out


def resize_posemb(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
  """[1, 1 + g*g, D] -> [1, num_tokens, D]: CLS row kept, the grid resized bilinearly."""
  cls, grid = posemb[:, :1], posemb[0, 1:]
  g_old, g_new = int(round(np.sqrt(len(grid)))), int(round(np.sqrt(num_tokens - 1)))
  grid = grid.reshape(g_old, g_old, -1)
  resized = jax.image.resize(grid, (g_new, g_new, grid.shape[-1]), "bilinear", antialias=False)
  return np.concatenate([cls, np.asarray(resized).reshape(1, g_new * g_new, -1)], axis=1)


def _flat(state) -> dict[str, np.ndarray]:
  """nnx state -> {"encoderblock/0/LayerNorm_0/scale": array} (list indices as strings)."""
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
  return {"/".join(map(str, k)): v for k, v in flat.items()}


def _unflat(flat: dict[str, np.ndarray]) -> dict:
  keys = {k: tuple(int(p) if p.isdigit() else p for p in k.split("/")) for k in flat}
  return traverse_util.unflatten_dict({keys[k]: v for k, v in flat.items()})


def load_vit(model, path: str, *, keep_head: bool = False) -> list[str]:
  """Loads weights into `model` (a jaxcl ViT) in place; returns the checkpoint keys not used."""
  state = nnx.state(model)
  flat = _flat(state)
  if str(path).endswith(".safetensors"):
    width = flat["cls"].shape[-1]
    heads = flat["encoderblock/0/MultiHeadDotProductAttention_1/query/kernel"].shape[1]
    weights = read_safetensors(path, width, heads)
  else:
    weights = read_npz(path)
  used = set()
  for key, old in flat.items():
    name = npz_key(key)
    if name.startswith("head/") and not keep_head:
      continue
    if name not in weights:
      raise KeyError(f"{path} has no {name!r} (needed for {key})")
    new = np.asarray(weights[name], np.float32)
    if name.endswith("pos_embedding") and new.shape != old.shape:
      new = resize_posemb(new, old.shape[1])
    if new.shape != old.shape:
      raise ValueError(f"{path}: {name!r} has shape {new.shape}, the model expects {old.shape}")
    flat[key] = new.astype(old.dtype)
    used.add(name)
  nnx.replace_by_pure_dict(state, _unflat(flat))
  nnx.update(model, state)
  unused = sorted(set(weights) - used)
  if unused:
    logging.info("load_vit(%s): %d checkpoint keys unused: %s", path, len(unused), unused[:8])
  return unused


def save_vit_npz(model, path: str, *, dtype=np.float32) -> None:
  """Writes the ViT in the google pre-Linen `.npz` format (float16 allowed for compact files)."""
  flat = _flat(nnx.state(model))
  arrays = {npz_key(k): np.asarray(v).astype(dtype) for k, v in flat.items()}
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  with p.open("wb") as f:
    np.savez(f, **arrays)
