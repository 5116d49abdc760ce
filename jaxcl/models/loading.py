"""Pretrained ViT weights: google vision_transformer `.npz`, timm and HF transformers safetensors.

Every format is first converted to the google pre-Linen key names (research/prompt_cil.md §4.2),
e.g. `Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel` [D, H, Dh], then
copied onto the jaxcl ViT (`blocks.0.attn.query.kernel`). Linen-era checkpoints renumber the
block children (`LayerNorm_1`, `MultiHeadDotProductAttention_0`, `MlpBlock_0`) and are mapped
back. A position embedding of another grid is resized as google-research/l2p and the google
vision_transformer loaders do: CLS row kept, grid zoomed with `scipy.ndimage.zoom(order=1)`.
"""

from __future__ import annotations

import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage
from absl import logging
from etils import epath
from flax import nnx

from jaxcl import user_errors
from jaxcl.models.vit import ViT

POS_EMBEDDING = "Transformer/posembed_input/pos_embedding"
HOW_TO_GET = (
  "get ViT-B/16 from gs://vit_models/imagenet21k/ViT-B_16.npz (original IN-21k, as L2P and "
  "DualPrompt) or gs://vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-"
  "sd_0.0.npz (AugReg IN-21k), e.g. `gsutil cp` or https://storage.googleapis.com/vit_models/..."
)
# jaxcl attribute -> google (pre-Linen) module name inside an encoder block.
_BLOCK_NAMES = {
  "ln_0": "LayerNorm_0",
  "attn": "MultiHeadDotProductAttention_1",
  "ln_2": "LayerNorm_2",
  "mlp": "MlpBlock_3",
  "dense_0": "Dense_0",
  "dense_1": "Dense_1",
}
_LINEN_TO_PRE_LINEN = {
  "LayerNorm_1": "LayerNorm_2",
  "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
  "MlpBlock_0": "MlpBlock_3",
}
# Torch-side names of the two safetensors layouts; `qkv` None = separate query/key/value.
_TIMM = dict(
  cls="cls_token",
  pos="pos_embed",
  patch="patch_embed.proj",
  norm="norm",
  head="head",
  block="blocks.{}.",
  ln_0="norm1",
  ln_2="norm2",
  qkv="attn.qkv",
  out="attn.proj",
  fc1="mlp.fc1",
  fc2="mlp.fc2",
)
_HF = dict(
  cls="embeddings.cls_token",
  pos="embeddings.position_embeddings",
  patch="embeddings.patch_embeddings.projection",
  norm="layernorm",
  head="classifier",
  block="encoder.layer.{}.",
  ln_0="layernorm_before",
  ln_2="layernorm_after",
  qkv=None,
  out="attention.output.dense",
  fc1="intermediate.dense",
  fc2="output.dense",
)


def google_key(path: tuple) -> str:
  """A jaxcl ViT parameter path, e.g. ("blocks", 0, "ln_0", "scale"), -> its google npz key."""
  top, *rest = (str(p) for p in path)
  if top == "blocks":
    index, *modules, leaf = rest
    names = [_BLOCK_NAMES.get(m, m) for m in modules]
    return "/".join(["Transformer", f"encoderblock_{index}", *names, leaf])
  if top == "pos_embedding":
    return POS_EMBEDDING
  if top == "encoder_norm":
    return "/".join(["Transformer", top, *rest])
  return "/".join([top, *rest])  # embedding/*, cls, head/*


def vit_params(model: ViT) -> dict[str, nnx.Param]:
  """{google npz key: parameter} for every parameter of `model`."""
  return {
    google_key(path): node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Param)
  }


def _existing(path: str) -> epath.Path:
  p = epath.Path(path)
  if not p.exists():
    raise user_errors.MissingInput(
      f"pretrained ViT weights {path} (model.init) not found; {HOW_TO_GET}"
    )
  return p


def read_npz(path: str) -> dict[str, np.ndarray]:
  """A google / big_vision `.npz` (local or any epath, e.g. gs://) as {pre-Linen key: array}.

  Strips an `opt/target/` prefix and maps Linen block names back to the pre-Linen ones.
  """
  try:
    with _existing(path).open("rb") as f, np.load(f, allow_pickle=False) as npz:
      raw = {key: npz[key] for key in npz.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, user_errors.UserError):
      raise
    raise user_errors.BadInput(
      f"pretrained ViT weights {path} (model.init) are not a readable .npz of arrays ({e}); "
      "expected a google vision_transformer checkpoint (numpy.savez of float arrays named like "
      "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel); the file may be truncated or "
      f"another format: {HOW_TO_GET}"
    ) from e
  out = {}
  for key, value in raw.items():
    parts = key.removeprefix("opt/target/").split("/")
    out["/".join(_LINEN_TO_PRE_LINEN.get(p, p) for p in parts)] = value
  return out


def read_safetensors(path: str, *, num_heads: int) -> tuple[dict[str, np.ndarray], list[str]]:
  """A timm or HF transformers ViT `.safetensors` -> ({google key: array}, unused torch keys).

  Torch Linear weights are [out, in] and are transposed; conv weights OIHW become HWIO.
  """
  from safetensors.numpy import load as load_safetensors  # noqa: PLC0415

  tensors = load_safetensors(_existing(path).read_bytes())
  if "vit.embeddings.cls_token" in tensors:  # HF ViTForImageClassification
    tensors = {k.removeprefix("vit."): v for k, v in tensors.items()}
  if "cls_token" in tensors:
    names = _TIMM
  elif "embeddings.cls_token" in tensors:
    names = _HF
  else:
    raise ValueError(f"{path}: neither a timm (`cls_token`) nor an HF (`embeddings.cls_token`) ViT")

  def take(name: str) -> np.ndarray:
    if name not in tensors:
      raise KeyError(f"{path} has no {name!r}")
    return tensors.pop(name)

  out = {"cls": take(names["cls"]), POS_EMBEDDING: take(names["pos"])}
  width = out["cls"].shape[-1]
  if width % num_heads:
    raise ValueError(f"{path}: width {width} is not divisible by the model's {num_heads} heads")
  head_dim = width // num_heads
  out["embedding/kernel"] = take(names["patch"] + ".weight").transpose(2, 3, 1, 0)  # OIHW->HWIO
  out["embedding/bias"] = take(names["patch"] + ".bias")
  out["Transformer/encoder_norm/scale"] = take(names["norm"] + ".weight")
  out["Transformer/encoder_norm/bias"] = take(names["norm"] + ".bias")
  i = 0
  while (src := names["block"].format(i)) + names["ln_0"] + ".weight" in tensors:
    dst = f"Transformer/encoderblock_{i}/"
    attn = dst + "MultiHeadDotProductAttention_1/"
    if names["qkv"]:  # fused [3D, D]: rows are [query; key; value]
      weights = np.split(take(src + names["qkv"] + ".weight"), 3)
      biases = np.split(take(src + names["qkv"] + ".bias"), 3)
    else:
      qkv = [f"{src}attention.attention.{n}" for n in ("query", "key", "value")]
      weights = [take(n + ".weight") for n in qkv]
      biases = [take(n + ".bias") for n in qkv]
    for name, weight, bias in zip(("query", "key", "value"), weights, biases, strict=True):
      out[f"{attn}{name}/kernel"] = weight.T.reshape(width, num_heads, head_dim)
      out[f"{attn}{name}/bias"] = bias.reshape(num_heads, head_dim)
    out[attn + "out/kernel"] = take(src + names["out"] + ".weight").T.reshape(
      num_heads, head_dim, width
    )
    out[attn + "out/bias"] = take(src + names["out"] + ".bias")
    for google, torch in (("LayerNorm_0", "ln_0"), ("LayerNorm_2", "ln_2")):
      out[f"{dst}{google}/scale"] = take(src + names[torch] + ".weight")
      out[f"{dst}{google}/bias"] = take(src + names[torch] + ".bias")
    for google, torch in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
      out[f"{dst}MlpBlock_3/{google}/kernel"] = take(src + names[torch] + ".weight").T
      out[f"{dst}MlpBlock_3/{google}/bias"] = take(src + names[torch] + ".bias")
    i += 1
  if names["head"] + ".weight" in tensors:
    out["head/kernel"] = take(names["head"] + ".weight").T
    out["head/bias"] = take(names["head"] + ".bias")
  return out, sorted(tensors)


def resize_pos_embedding(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
  """[1, 1 + g*g, D] -> [1, num_tokens, D]: CLS row kept, the g x g grid zoomed bilinearly."""
  cls, grid = posemb[:, :1], posemb[0, 1:]  # [1, 1, D], [g*g, D]
  old, new = int(round(np.sqrt(len(grid)))), int(round(np.sqrt(num_tokens - 1)))
  if old * old != len(grid) or new * new != num_tokens - 1:
    raise ValueError(f"cannot resize a position embedding of {posemb.shape} to {num_tokens} tokens")
  zoom = new / old
  grid = scipy.ndimage.zoom(grid.reshape(old, old, -1), (zoom, zoom, 1), order=1)  # [new, new, D]
  return np.concatenate([cls, grid.reshape(1, new * new, -1)], axis=1)


def _assign(param: nnx.Param, array: np.ndarray) -> None:
  """Writes `array` into `param`, keeping its dtype and (if any) its sharding."""
  old = param[...]
  array = np.asarray(array, old.dtype)
  sharding = getattr(old, "sharding", None)
  param[...] = jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array)


def load_vit(model: ViT, path: str, *, keep_head: bool = False) -> list[str]:
  """Loads pretrained weights into `model` in place (`.npz`: google; `.safetensors`: timm / HF).

  `pre_logits` (representation layer) is never used. The head is loaded only when `keep_head` and
  its shapes match; otherwise it stays as initialised (zeros). A position embedding of another
  grid is resized; any other shape mismatch or missing backbone weight is an error.

  Returns:
    The keys not transferred, sorted: checkpoint keys left unused (google names; unconverted torch
    names for safetensors) and model keys left as initialised (only ever `head/*`).
  """
  suffix = epath.Path(path).suffix
  params = vit_params(model)
  if suffix == ".npz":
    weights, skipped = read_npz(path), []
  elif suffix == ".safetensors":
    num_heads = model.blocks[0].attn.query.kernel.shape[1]
    weights, skipped = read_safetensors(path, num_heads=num_heads)
  else:
    raise user_errors.BadInput(
      f"{path} (model.init): expected a .npz (google) or .safetensors (timm/HF) ViT checkpoint"
    )
  for key, param in params.items():
    if key.startswith("head/"):
      continue
    if key not in weights:
      raise user_errors.BadInput(
        f"{path} (model.init) has no {key!r}, which the model needs (the weights are of another "
        f"model: check model.variant); {HOW_TO_GET}"
      )
    array = np.asarray(weights.pop(key), np.float32)
    if key == POS_EMBEDDING and array.shape != param.shape and array.shape[-1] == param.shape[-1]:
      logging.info("load_vit: resizing %s from %s to %s", key, array.shape, param.shape)
      array = resize_pos_embedding(array, param.shape[1])
    if array.shape != param.shape:
      raise user_errors.BadInput(
        f"{path} (model.init): {key!r} has shape {array.shape}, the model expects {param.shape}; "
        "set model.variant to the checkpoint's (e.g. B/16) or use weights of this model"
      )
    _assign(param, array)
  head = sorted(k for k in params if k.startswith("head/"))
  head_fits = all(k in weights and weights[k].shape == params[k].shape for k in head)
  if head and keep_head and head_fits:
    for key in head:
      _assign(params[key], weights.pop(key))
  else:
    skipped += head
    if head and keep_head:
      got = {k: weights[k].shape if k in weights else None for k in head}
      logging.warning("load_vit(%s): head not loaded (checkpoint has %s)", path, got)
  skipped = sorted(set(skipped) | set(weights))
  if skipped:
    logging.info("load_vit(%s): %d keys not transferred: %s", path, len(skipped), skipped)
  return skipped


def save_vit_npz(model: ViT, path: str, *, dtype=np.float32) -> None:
  """Writes `model` as a google pre-Linen `.npz` that `load_vit` reads back.

  `dtype=np.float16` halves the file (the loader casts back to float32). The file is written
  under a temporary name and then renamed, so a crash never leaves a truncated checkpoint.
  """
  arrays = {key: np.asarray(jax.device_get(p[...]), dtype) for key, p in vit_params(model).items()}
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / (target.name + ".tmp")
  with tmp.open("wb") as f:
    np.savez(f, **arrays)
  tmp.replace(target)
