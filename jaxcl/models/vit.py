"""Vision Transformer (Dosovitskiy et al., ICLR 2021) in Flax NNX, with prompt and prefix hooks.

Names follow the google vision_transformer checkpoints so `.npz` files load as they
are (jaxcl/models/loading.py). Two prompt layouts exist in the reference code:

- `prepend_after_pos` (google-research/l2p, the official L2P): position embeddings
  are added to [CLS, patches], then prompts are prepended: [prompts, CLS, patches].
- `after_cls_before_pos` (the PyTorch ports, PILOT): [CLS, prompts, patches], and
  the prompts receive a copy of the CLS position embedding.

Prefix-tuning (DualPrompt, CODA-Prompt) passes `prefix={layer: (k, v)}`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxcl.models.layers import MlpBlock, MultiHeadAttention

VARIANTS = {
  "mu": dict(width=96, depth=4, mlp_dim=384, num_heads=3),
  "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
  "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
  "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
  "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
}


def parse_variant(variant: str) -> tuple[dict, int]:
  """ "B/16" -> (widths of ViT-B, patch 16)."""
  name, _, patch = variant.partition("/")
  if name not in VARIANTS or not patch.isdigit():
    raise ValueError(f"model.variant={variant!r}: use <{'|'.join(VARIANTS)}>/<patch>, e.g. B/16")
  return VARIANTS[name], int(patch)


class EncoderBlock(nnx.Module):
  def __init__(self, width, mlp_dim, num_heads, *, dtype, rngs):
    self.LayerNorm_0 = nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.MultiHeadDotProductAttention_1 = MultiHeadAttention(width, num_heads, rngs=rngs)
    self.LayerNorm_2 = nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.MlpBlock_3 = MlpBlock(width, mlp_dim, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x, prefix=None):
    pk, pv = prefix if prefix is not None else (None, None)
    y = self.MultiHeadDotProductAttention_1(
      self.LayerNorm_0(x), prefix_k=pk, prefix_v=pv, dtype=self.dtype
    )
    x = x + y
    return x + self.MlpBlock_3(self.LayerNorm_2(x))


class ViT(nnx.Module):
  def __init__(
    self,
    *,
    width: int,
    depth: int,
    mlp_dim: int,
    num_heads: int,
    patch: int,
    image_size: int,
    channels: int = 3,
    num_classes: int = 0,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
  ):
    grid = image_size // patch
    self.patch, self.dtype = patch, dtype
    self.embedding = nnx.Conv(
      channels,
      width,
      (patch, patch),
      strides=(patch, patch),
      padding="VALID",
      dtype=dtype,
      rngs=rngs,
    )
    self.cls = nnx.Param(jnp.zeros((1, 1, width)))
    self.pos_embedding = nnx.Param(
      nnx.initializers.normal(0.02)(rngs.params(), (1, 1 + grid * grid, width))
    )
    self.encoderblock = nnx.List(
      [EncoderBlock(width, mlp_dim, num_heads, dtype=dtype, rngs=rngs) for _ in range(depth)]
    )
    self.encoder_norm = nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, rngs=rngs)
    if num_classes:
      self.head = nnx.Linear(
        width, num_classes, kernel_init=nnx.initializers.zeros_init(), rngs=rngs
      )

  def __call__(
    self,
    images,
    *,
    prompts=None,
    prompt_layout: str = "prepend_after_pos",
    prefix: dict | None = None,
  ) -> dict:
    """images [B, H, W, C] (already scaled) -> dict of features (see module docstring)."""
    x = self.embedding(images.astype(self.dtype))  # [B, h, w, D]
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (b, 1, d))
    pos = self.pos_embedding[...].astype(x.dtype)  # [1, 1 + N, D]
    num_prompts = 0 if prompts is None else prompts.shape[1]
    if prompts is None:
      x = jnp.concatenate([cls, x], axis=1) + pos
      cls_index = 0
    elif prompt_layout == "prepend_after_pos":
      x = jnp.concatenate([prompts.astype(x.dtype), jnp.concatenate([cls, x], axis=1) + pos], 1)
      cls_index, prompt_slice = num_prompts, slice(0, num_prompts)
    elif prompt_layout == "after_cls_before_pos":
      pos = jnp.concatenate([pos[:, :1], jnp.repeat(pos[:, :1], num_prompts, 1), pos[:, 1:]], 1)
      x = jnp.concatenate([cls, prompts.astype(x.dtype), x], axis=1) + pos
      cls_index, prompt_slice = 0, slice(1, 1 + num_prompts)
    else:
      raise ValueError(f"prompt_layout={prompt_layout!r}: prepend_after_pos | after_cls_before_pos")
    prefix = prefix or {}
    for i, block in enumerate(self.encoderblock):
      x = block(x, prefix.get(i))
    tokens = self.encoder_norm(x)  # [B, T, D]
    out = {
      "cls": tokens[:, cls_index],
      "pre_logits": tokens[:, cls_index],
      "tokens": tokens,
      "prompt_mean": tokens[:, prompt_slice].mean(1) if num_prompts else None,
    }
    if hasattr(self, "head"):
      out["logits"] = self.head(out["pre_logits"])
    return out


def from_variant(
  variant: str,
  *,
  image_size: int,
  channels: int = 3,
  num_classes: int = 0,
  rngs: nnx.Rngs,
  dtype=jnp.float32,
) -> ViT:
  dims, patch = parse_variant(variant)
  if image_size % patch:
    raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
  return ViT(
    **dims,
    patch=patch,
    image_size=image_size,
    channels=channels,
    num_classes=num_classes,
    rngs=rngs,
    dtype=dtype,
  )
