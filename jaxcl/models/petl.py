"""Parameter-efficient tuning of a frozen ViT: adapters, SSF, VPT (and a tuned copy).

The variants APER, EASE and RanPAC tune in their first session (research/prompt_cil.md §1.6),
written to match PILOT's `backbone/` modules:

- `adapter`: AdaptFormer's parallel adapter (Chen et al., NeurIPS 2022) in every block,
  `up(dropout(relu(down(x)))) * scale` added to the MLP output, reading the post-attention
  stream without LayerNorm; down ~ U(+-1/sqrt(D)) (kaiming_uniform(a=sqrt(5))), up and biases 0;
  PILOT's scale 0.1, dropout 0.1, bottleneck 64.
- `ssf`: Scale and Shift Features (Lian et al., NeurIPS 2022), `x * scale + shift` after the
  patch embedding, both block LayerNorms, q/k/v, the attention output, both MLP layers and the
  final LayerNorm; scale ~ N(1, 0.02), shift ~ N(0, 0.02). Every site follows a linear map, so
  SSF is applied by folding it into that map's weights (the paper's re-parameterisation).
- `vpt_shallow` / `vpt_deep`: Visual Prompt Tuning (Jia et al., ECCV 2022), zero-initialised
  tokens without position embedding. Shallow prompts join the sequence at the input; deep
  prompts are replaced at every block and their outputs dropped, which is the same as prefix
  keys/values LN_0(P_l) W_k + b_k, LN_0(P_l) W_v + b_v at block l (the prefix hook of vit.py).
- `finetune`: a full copy of the ViT is trained.

None of these parameters live inside the `ViT` module, so pretrained loading is unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcl.models.vit import ViT

KINDS = ("adapter", "ssf", "vpt_shallow", "vpt_deep", "finetune")


def _down_init(key, shape, dtype=jnp.float32):
  """torch kaiming_uniform_(a=sqrt(5)) on a Linear(D, r): U(+-1/sqrt(D)), D = shape[-2]."""
  bound = shape[-2] ** -0.5
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class AdapterWeights(NamedTuple):
  """Adapter arrays with a leading [depth] axis (or [sets, depth] for a bank of sets)."""

  down: jax.Array  # [..., L, D, r]
  down_bias: jax.Array  # [..., L, r]
  up: jax.Array  # [..., L, r, D]
  up_bias: jax.Array  # [..., L, D]

  def take(self, index) -> AdapterWeights:
    """Set `index` (may be traced) of a bank [sets, L, ...]."""
    return AdapterWeights(*(jnp.take(w, index, axis=0) for w in self))


class Adapters(nnx.Module):
  """One AdaptFormer adapter per block, stacked over layers (and `sets` copies when > 0)."""

  def __init__(self, depth: int, width: int, bottleneck: int, *, rngs: nnx.Rngs, sets: int = 0):
    lead = (sets, depth) if sets else (depth,)
    self.down = nnx.Param(_down_init(rngs.params(), (*lead, width, bottleneck)))
    self.down_bias = nnx.Param(jnp.zeros((*lead, bottleneck)))
    self.up = nnx.Param(jnp.zeros((*lead, bottleneck, width)))
    self.up_bias = nnx.Param(jnp.zeros((*lead, width)))

  def weights(self) -> AdapterWeights:
    return AdapterWeights(self.down[...], self.down_bias[...], self.up[...], self.up_bias[...])

  def reset(self, key: jax.Array) -> None:
    """Fresh adapters (EASE starts every task from a new set)."""
    self.down[...] = _down_init(key, self.down.shape)
    for var in (self.down_bias, self.up, self.up_bias):
      var[...] = jnp.zeros_like(var[...])


def adapter_hook(w: AdapterWeights, *, scale: float, dropout: float = 0.0, rng=None):
  """`hook(layer, x [B, T, D]) -> [B, T, D]` for `ViT(adapter=...)`; dropout only with `rng`."""

  def hook(layer: int, x: jax.Array) -> jax.Array:
    h = jax.nn.relu(x @ w.down[layer].astype(x.dtype) + w.down_bias[layer].astype(x.dtype))
    if dropout > 0 and rng is not None:
      keep = jax.random.bernoulli(jax.random.fold_in(rng, layer), 1.0 - dropout, h.shape)
      h = jnp.where(keep, h / (1.0 - dropout), 0.0).astype(x.dtype)
    up = h @ w.up[layer].astype(x.dtype) + w.up_bias[layer].astype(x.dtype)  # [B, T, D]
    return up * jnp.asarray(scale, x.dtype)

  return hook


class ScaleShift(nnx.Module):
  """SSF's scale ~ N(1, 0.02) and shift ~ N(0, 0.02) of one site, stacked as `shape`."""

  def __init__(self, shape: tuple[int, ...], rngs: nnx.Rngs):
    normal = nnx.initializers.normal(0.02)
    self.scale = nnx.Param(1.0 + normal(rngs.params(), shape))
    self.shift = nnx.Param(normal(rngs.params(), shape))


class SSF(nnx.Module):
  """SSF scale/shift at every site of PILOT's `vit_ssf.py` (per-layer sites stacked on [L])."""

  def __init__(self, vit: ViT, rngs: nnx.Rngs):
    depth = len(vit.blocks)
    width, heads, head_dim = vit.blocks[0].attn.query.kernel.shape
    mlp_dim = vit.blocks[0].mlp.dense_0.kernel.shape[1]
    self.embedding = ScaleShift((width,), rngs)
    self.ln_0 = ScaleShift((depth, width), rngs)
    self.qkv = ScaleShift((depth, 3, heads, head_dim), rngs)  # timm's fused qkv [3 * D]
    self.out = ScaleShift((depth, width), rngs)
    self.ln_2 = ScaleShift((depth, width), rngs)
    self.fc1 = ScaleShift((depth, mlp_dim), rngs)
    self.fc2 = ScaleShift((depth, width), rngs)
    self.encoder_norm = ScaleShift((width,), rngs)


def _fold(kernel, bias, site: ScaleShift, *index) -> None:
  """(x W + b) * s + t == x (W * s) + (b * s + t): scales the output axes of `kernel`."""
  s, t = site.scale[...][index], site.shift[...][index]
  kernel[...] = kernel[...] * s
  bias[...] = bias[...] * s + t


def ssf_fold(vit: ViT, ssf: SSF) -> ViT:
  """A copy of `vit` whose weights carry the SSF scales and shifts (same function as SSF)."""
  vit = nnx.clone(vit)
  _fold(vit.embedding.kernel, vit.embedding.bias, ssf.embedding)
  for i, block in enumerate(vit.blocks):
    _fold(block.ln_0.scale, block.ln_0.bias, ssf.ln_0, i)
    for j, dense in enumerate((block.attn.query, block.attn.key, block.attn.value)):
      _fold(dense.kernel, dense.bias, ssf.qkv, i, j)  # kernel [D, H, Dh], scale [H, Dh]
    _fold(block.attn.out.kernel, block.attn.out.bias, ssf.out, i)
    _fold(block.ln_2.scale, block.ln_2.bias, ssf.ln_2, i)
    _fold(block.mlp.dense_0.kernel, block.mlp.dense_0.bias, ssf.fc1, i)
    _fold(block.mlp.dense_1.kernel, block.mlp.dense_1.bias, ssf.fc2, i)
  _fold(vit.encoder_norm.scale, vit.encoder_norm.bias, ssf.encoder_norm)
  return vit


def vpt_prefix(vit: ViT, tokens: jax.Array, batch: int) -> dict:
  """Deep VPT prompts [L, P, D] as the prefix keys/values they amount to: {l: (k, v)}."""
  prefix = {}
  for i, block in enumerate(vit.blocks):
    p = block.ln_0(tokens[i].astype(vit.dtype))  # [P, D]
    kv = []
    for dense in (block.attn.key, block.attn.value):
      x = jnp.einsum("pd,dhk->phk", p, dense.kernel[...].astype(p.dtype)) + dense.bias[...]
      kv.append(jnp.broadcast_to(x.astype(p.dtype), (batch, *x.shape)))  # [B, P, H, Dh]
    prefix[i] = tuple(kv)
  return prefix


class Tuning(nnx.Module):
  """One of KINDS applied to a frozen ViT: `tuning(vit, images, rng=...)` -> the ViT's outputs.

  `rng` is given in training only (adapter dropout).
  """

  def __init__(
    self,
    kind: str,
    vit: ViT,
    *,
    adapter_dim: int,
    adapter_scale: float,
    adapter_dropout: float,
    vpt_length: int,
    rngs: nnx.Rngs,
  ):
    if kind not in KINDS:
      raise ValueError(f"PETL kind {kind!r}: use one of {KINDS}")
    self.kind = kind
    self.adapter_scale, self.adapter_dropout = adapter_scale, adapter_dropout
    depth, width = len(vit.blocks), vit.cls.shape[-1]
    if kind == "adapter":
      self.adapter = Adapters(depth, width, adapter_dim, rngs=rngs)
    elif kind == "ssf":
      self.ssf = SSF(vit, rngs)
    elif kind.startswith("vpt"):
      layers = depth if kind == "vpt_deep" else 1
      self.tokens = nnx.Param(jnp.zeros((layers, vpt_length, width)))  # PILOT vpt.py: zeros
    else:  # finetune: a copy with its own buffers (the state is donated as a whole)
      graphdef, state = nnx.split(vit)
      self.vit = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))

  def __call__(self, vit: ViT, images: jax.Array, *, rng=None) -> dict:
    if self.kind == "adapter":
      hook = adapter_hook(
        self.adapter.weights(), scale=self.adapter_scale, dropout=self.adapter_dropout, rng=rng
      )
      return vit(images, adapter=hook)
    if self.kind == "ssf":
      return ssf_fold(vit, self.ssf)(images)
    if self.kind == "vpt_shallow":
      prompts = jnp.broadcast_to(self.tokens[0], (images.shape[0], *self.tokens.shape[1:]))
      return vit(images, prompts=prompts, prompt_layout="prepend_after_pos")
    if self.kind == "vpt_deep":
      return vit(images, prefix=vpt_prefix(vit, self.tokens[...], images.shape[0]))
    return self.vit(images)
