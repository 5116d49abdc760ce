"""Vision Transformer (Dosovitskiy et al., ICLR 2021) in Flax NNX, with prompt and prefix hooks.

Pre-LN encoder, CLS token, learned position embeddings, as the google vision_transformer code;
jaxcl/models/loading.py maps its `.npz` names onto these attributes. Two prompt layouts exist in
the reference code (research/prompt_cil.md §0, "Prompt vs prefix"):

- `prepend_after_pos` (google-research/l2p, official L2P): position embeddings are added to
  [CLS, patches], then prompts are prepended: [prompts, CLS, patches]; prompts get no pos-emb.
- `after_cls_before_pos` (the PyTorch ports, PILOT): [CLS, prompts, patches], and the prompts
  receive a copy of the CLS position embedding.

Prefix-tuning (DualPrompt, CODA-Prompt) passes `prefix={layer: (k, v)}`: projected keys and
values prepended inside that block's attention (jaxcl/models/layers.py). AdaptFormer-style
adapters (APER, EASE, RanPAC) pass `adapter(layer, x)`: a branch in parallel with each block's
MLP (jaxcl/models/petl.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcl.models.layers import Attention, MlpBlock, layer_norm

VARIANTS = {
  "mu": dict(width=96, depth=4, mlp_dim=384, num_heads=3),
  "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
  "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
  "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
  "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
}
PROMPT_LAYOUTS = ("prepend_after_pos", "after_cls_before_pos")

# Logical axis names of the ViT's parameters, by the end of their path (jaxcl/sharding.py maps
# them onto the mesh). Shapes as in the google checkpoints.
AXES = {
  ("embedding", "kernel"): ("patch", "patch", None, "embed"),  # [P, P, C, D]
  ("embedding", "bias"): ("embed",),
  ("cls",): (None, None, "embed"),  # [1, 1, D]
  ("pos_embedding",): (None, None, "embed"),  # [1, T, D]
  ("scale",): ("embed",),  # LayerNorms
  ("ln_0", "bias"): ("embed",),
  ("ln_2", "bias"): ("embed",),
  ("encoder_norm", "bias"): ("embed",),
  ("query", "kernel"): ("embed", "heads", "kv"),  # [D, H, Dh]
  ("key", "kernel"): ("embed", "heads", "kv"),
  ("value", "kernel"): ("embed", "heads", "kv"),
  ("query", "bias"): ("heads", "kv"),
  ("key", "bias"): ("heads", "kv"),
  ("value", "bias"): ("heads", "kv"),
  ("out", "kernel"): ("heads", "kv", "embed"),  # [H, Dh, D]
  ("out", "bias"): ("embed",),
  ("dense_0", "kernel"): ("embed", "mlp"),  # [D, F]
  ("dense_0", "bias"): ("mlp",),
  ("dense_1", "kernel"): ("mlp", "embed"),  # [F, D]
  ("dense_1", "bias"): ("embed",),
  ("head", "kernel"): ("embed", "classes"),  # [D, classes]
  ("head", "bias"): ("classes",),
}


def annotate(module: nnx.Module, axes: dict = AXES) -> None:
  """Attaches logical axis names (metadata only) to the parameters whose path ends as a key
  of `axes`; the values and the module's behaviour are unchanged."""
  for path, node in nnx.iter_graph(module):
    if not isinstance(node, nnx.Param):
      continue
    for n in (2, 1):
      names = axes.get(tuple(str(p) for p in path[-n:]))
      if names is not None and len(names) == node[...].ndim:
        node.set_metadata(out_sharding=names)
        break


def parse_variant(variant: str) -> tuple[dict, int]:
  """`"B/16"` -> (dimensions of ViT-B, patch size 16); also `"Ti/4"`, `"mu/4"`, ..."""
  name, _, patch = variant.partition("/")
  if name not in VARIANTS or not patch.isdigit() or int(patch) == 0:
    raise ValueError(f"model variant {variant!r}: use <{'|'.join(VARIANTS)}>/<patch>, e.g. B/16")
  return dict(VARIANTS[name]), int(patch)


class EncoderBlock(nnx.Module):
  """Pre-LN transformer block: x + attn(ln_0(x)), then x + mlp(ln_2(x))."""

  def __init__(
    self, width: int, mlp_dim: int, num_heads: int, *, attention: str, dtype, rngs: nnx.Rngs
  ):
    self.ln_0 = layer_norm(width, dtype=dtype, rngs=rngs)
    self.attn = Attention(width, num_heads, implementation=attention, dtype=dtype, rngs=rngs)
    self.ln_2 = layer_norm(width, dtype=dtype, rngs=rngs)
    self.mlp = MlpBlock(width, mlp_dim, dtype=dtype, rngs=rngs)

  def __call__(self, x, prefix=None, adapter=None):  # [B, T, D] -> [B, T, D]
    """`adapter(x) -> [B, T, D]`, if given, reads the post-attention stream and is added to the
    MLP output (AdaptFormer's parallel adapter)."""
    x = x + self.attn(self.ln_0(x), prefix=prefix)
    if adapter is None:
      return x + self.mlp(self.ln_2(x))
    return x + (self.mlp(self.ln_2(x)) + adapter(x))


class ViT(nnx.Module):
  """ViT backbone (+ optional zero-initialised linear head); parameters stay float32."""

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
    attention: str = "xla",
  ):
    """`attention`: the kernel of every block's attention (layers.dot_product_attention)."""
    if image_size % patch:
      raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
    num_patches = (image_size // patch) ** 2
    self.dtype = dtype
    self.embedding = nnx.Conv(
      channels, width, (patch, patch), strides=patch, padding="VALID", dtype=dtype, rngs=rngs
    )  # kernel [P, P, C, D]
    self.cls = nnx.Param(jnp.zeros((1, 1, width), jnp.float32))
    pos_init = nnx.initializers.normal(0.02)
    self.pos_embedding = nnx.Param(pos_init(rngs.params(), (1, 1 + num_patches, width)))
    self.blocks = nnx.List(
      [
        EncoderBlock(width, mlp_dim, num_heads, attention=attention, dtype=dtype, rngs=rngs)
        for _ in range(depth)
      ]
    )
    self.encoder_norm = layer_norm(width, dtype=dtype, rngs=rngs)
    if num_classes > 0:  # logits in float32: the head is small and feeds the loss.
      zeros = nnx.initializers.zeros_init()
      self.head = nnx.Linear(width, num_classes, kernel_init=zeros, rngs=rngs)
    annotate(self)

  def __call__(
    self,
    images,
    *,
    prompts=None,
    prompt_layout: str = "prepend_after_pos",
    prefix: dict | None = None,
    adapter: Callable[[int, jax.Array], jax.Array] | None = None,
  ) -> dict:
    """Encodes images [B, H, W, C] (already scaled) into a dict of features.

    Args:
      images: [B, H, W, C] float.
      prompts: [B, P, D] prompt tokens, or None.
      prompt_layout: where prompts go, one of PROMPT_LAYOUTS (see the module docstring).
      prefix: {layer_index: (k [B, P', H, Dh], v [B, P', H, Dh])}, or None.
      adapter: `adapter(layer_index, x [B, T, D]) -> [B, T, D]`, added in parallel with the MLP
        of every block, or None.

    Returns:
      "cls" [B, D]: post-`encoder_norm` CLS output; "pre_logits": the same (no representation
      layer); "prompt_mean" [B, D]: mean post-norm output over the prompt positions (None without
      prompts); "tokens" [B, T, D]: all post-norm outputs; "logits" [B, classes] if there is a head.
    """
    if prompt_layout not in PROMPT_LAYOUTS:
      raise ValueError(f"prompt_layout={prompt_layout!r}: use one of {PROMPT_LAYOUTS}")
    prefix = prefix or {}
    if set(prefix) - set(range(len(self.blocks))):
      raise ValueError(f"prefix layers {sorted(prefix)} outside 0..{len(self.blocks) - 1}")
    x = self.embedding(images.astype(self.dtype))  # [B, h, w, D]
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)  # [B, N, D]
    cls = jnp.broadcast_to(self.cls[...].astype(self.dtype), (b, 1, d))  # [B, 1, D]
    pos = self.pos_embedding[...].astype(self.dtype)  # [1, 1 + N, D]
    num_prompts = 0 if prompts is None else prompts.shape[1]
    cls_index, prompt_start = 0, 0
    if num_prompts == 0:
      x = jnp.concatenate([cls, x], axis=1) + pos  # [B, 1 + N, D]
    elif prompt_layout == "prepend_after_pos":
      x = jnp.concatenate([cls, x], axis=1) + pos  # [B, 1 + N, D]
      x = jnp.concatenate([prompts.astype(self.dtype), x], axis=1)  # [B, P + 1 + N, D]
      cls_index, prompt_start = num_prompts, 0
    else:  # after_cls_before_pos
      pos_cls = pos[:, :1]  # [1, 1, D]
      pos = jnp.concatenate([pos_cls, jnp.repeat(pos_cls, num_prompts, axis=1), pos[:, 1:]], 1)
      x = jnp.concatenate([cls, prompts.astype(self.dtype), x], axis=1) + pos  # [B, 1 + P + N, D]
      cls_index, prompt_start = 0, 1
    for i, block in enumerate(self.blocks):
      x = block(x, prefix.get(i), None if adapter is None else functools.partial(adapter, i))
    tokens = self.encoder_norm(x)  # [B, T, D]
    prompt_tokens = tokens[:, prompt_start : prompt_start + num_prompts]  # [B, P, D]
    out = {
      "cls": tokens[:, cls_index],
      "pre_logits": tokens[:, cls_index],
      "prompt_mean": prompt_tokens.mean(axis=1) if num_prompts else None,
      "tokens": tokens,
    }
    if hasattr(self, "head"):
      out["logits"] = self.head(out["pre_logits"].astype(jnp.float32))  # [B, classes]
    return out


def from_variant(
  variant: str,
  *,
  image_size: int,
  channels: int = 3,
  num_classes: int = 0,
  rngs: nnx.Rngs,
  dtype=jnp.float32,
  attention: str = "xla",
) -> ViT:
  """A ViT of a named variant, e.g. `from_variant("B/16", image_size=224, rngs=nnx.Rngs(0))`."""
  dims, patch = parse_variant(variant)
  return ViT(
    **dims,
    patch=patch,
    image_size=image_size,
    channels=channels,
    num_classes=num_classes,
    rngs=rngs,
    dtype=dtype,
    attention=attention,
  )
