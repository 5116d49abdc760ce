"""Transformer layers shared by the ViT (and later the GPT/BERT models).

Parameter names and shapes follow the google vision_transformer checkpoints
(`query/kernel` [D, H, Dh], `out/kernel` [H, Dh, D], `Dense_0`/`Dense_1`), so a
`.npz` loads without reshaping.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

xavier = nnx.initializers.xavier_uniform()


class Projection(nnx.Module):
  """A dense map whose kernel keeps head structure: [D, H, Dh] (in) or [H, Dh, D] (out)."""

  def __init__(
    self,
    kernel_shape: tuple[int, ...],
    bias_shape: tuple[int, ...],
    *,
    fan_in_axes: int,
    rngs: nnx.Rngs,
  ):
    fan_in = math.prod(kernel_shape[:fan_in_axes])
    fan_out = math.prod(kernel_shape[fan_in_axes:])
    self.kernel = nnx.Param(xavier(rngs.params(), (fan_in, fan_out)).reshape(kernel_shape))
    self.bias = nnx.Param(jnp.zeros(bias_shape))


class MultiHeadAttention(nnx.Module):
  """Multi-head self-attention with optional prefix keys/values (prefix-tuning).

  Prefix-tuning (DualPrompt, CODA-Prompt) concatenates extra keys/values to the
  *already projected* K and V along the sequence axis; queries are unchanged, so
  the output keeps the input length.
  """

  def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs):
    head_dim = width // num_heads
    self.num_heads = num_heads
    self.query = Projection(
      (width, num_heads, head_dim), (num_heads, head_dim), fan_in_axes=1, rngs=rngs
    )
    self.key = Projection(
      (width, num_heads, head_dim), (num_heads, head_dim), fan_in_axes=1, rngs=rngs
    )
    self.value = Projection(
      (width, num_heads, head_dim), (num_heads, head_dim), fan_in_axes=1, rngs=rngs
    )
    self.out = Projection((num_heads, head_dim, width), (width,), fan_in_axes=2, rngs=rngs)

  def __call__(self, x, *, prefix_k=None, prefix_v=None, dtype=jnp.float32):
    x = x.astype(dtype)

    def project(p):
      return jnp.einsum("bnd,dhk->bnhk", x, p.kernel[...].astype(dtype)) + p.bias[...].astype(dtype)

    q, k, v = project(self.query), project(self.key), project(self.value)  # [B, N, H, Dh]
    if prefix_k is not None:  # [B, P, H, Dh] each
      k = jnp.concatenate([prefix_k.astype(dtype), k], axis=1)
      v = jnp.concatenate([prefix_v.astype(dtype), v], axis=1)
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhk,bshk->bhqs", q * scale, k).astype(jnp.float32)  # [B, H, N, S]
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    ctx = jnp.einsum("bhqs,bshk->bqhk", weights, v)  # [B, N, H, Dh]
    out = jnp.einsum("bqhk,hkd->bqd", ctx, self.out.kernel[...].astype(dtype))
    return out + self.out.bias[...].astype(dtype)


class MlpBlock(nnx.Module):
  """Dense -> exact GELU -> Dense, as in the google ViT."""

  def __init__(self, width: int, mlp_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(kernel_init=xavier, bias_init=nnx.initializers.normal(1e-6), dtype=dtype, rngs=rngs)
    self.Dense_0 = nnx.Linear(width, mlp_dim, **kw)
    self.Dense_1 = nnx.Linear(mlp_dim, width, **kw)

  def __call__(self, x):
    return self.Dense_1(jax.nn.gelu(self.Dense_0(x), approximate=False))
