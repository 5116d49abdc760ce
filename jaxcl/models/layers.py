"""Transformer layers shared by the ViT (and the GPT/BERT models).

Parameter shapes follow the google vision_transformer checkpoints (Dosovitskiy et al., 2021):
attention kernels keep the head axis (`query.kernel` [D, H, Dh], `out.kernel` [H, Dh, D]), so a
`.npz` loads without reshaping (jaxcl/models/loading.py maps the names). Parameters are float32;
`dtype` is the compute dtype (bfloat16 on TPU), and attention softmax runs in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

xavier_uniform = nnx.initializers.xavier_uniform()


class HeadDense(nnx.Module):
  """A dense map with a structured kernel, e.g. [D, H, Dh] (per-head in) or [H, Dh, D] (out).

  Like flax `DenseGeneral`, the kernel is xavier-initialised as the 2-D matrix
  [prod(kernel_shape[:fan_in_axes]), prod(rest)] and then reshaped.
  """

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
    kernel = xavier_uniform(rngs.params(), (fan_in, fan_out), jnp.float32)
    self.kernel = nnx.Param(kernel.reshape(kernel_shape))
    self.bias = nnx.Param(jnp.zeros(bias_shape, jnp.float32))


class MultiHeadAttention(nnx.Module):
  """Multi-head self-attention (Vaswani et al., 2017) with optional prefix keys/values.

  Prefix-tuning (Li & Liang, 2021; used by DualPrompt and CODA-Prompt) concatenates extra keys
  and values to the *already projected* K and V along the sequence axis: prefixes do not pass
  through W_k / W_v, queries are unchanged, so the output keeps the input length.
  """

  def __init__(self, width: int, num_heads: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    head_dim = width // num_heads
    self.dtype = dtype
    in_shape, in_bias = (width, num_heads, head_dim), (num_heads, head_dim)
    self.query = HeadDense(in_shape, in_bias, fan_in_axes=1, rngs=rngs)
    self.key = HeadDense(in_shape, in_bias, fan_in_axes=1, rngs=rngs)
    self.value = HeadDense(in_shape, in_bias, fan_in_axes=1, rngs=rngs)
    self.out = HeadDense((num_heads, head_dim, width), (width,), fan_in_axes=2, rngs=rngs)

  def _project(self, x, dense: HeadDense):
    kernel, bias = dense.kernel[...].astype(self.dtype), dense.bias[...].astype(self.dtype)
    return jnp.einsum("bnd,dhk->bnhk", x, kernel) + bias  # [B, N, H, Dh]

  def __call__(self, x, *, prefix_k=None, prefix_v=None, mask=None):
    """Attends x [B, N, D] to itself (and to the prefixes); returns [B, N, D].

    Args:
      x: input tokens [B, N, D].
      prefix_k: projected prefix keys [B, P, H, Dh], or None.
      prefix_v: projected prefix values [B, P, H, Dh], or None (given iff prefix_k is).
      mask: boolean, True = may attend, broadcastable to [B, H, N, P + N] (prefix columns
        first), or None.
    """
    if (prefix_k is None) != (prefix_v is None):
      raise ValueError("prefix_k and prefix_v must be given together")
    x = x.astype(self.dtype)
    q = self._project(x, self.query)  # [B, N, H, Dh]
    k = self._project(x, self.key)  # [B, N, H, Dh]
    v = self._project(x, self.value)  # [B, N, H, Dh]
    if prefix_k is not None:
      k = jnp.concatenate([prefix_k.astype(self.dtype), k], axis=1)  # [B, P + N, H, Dh]
      v = jnp.concatenate([prefix_v.astype(self.dtype), v], axis=1)  # [B, P + N, H, Dh]
    q = q * jnp.asarray(q.shape[-1] ** -0.5, self.dtype)
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32)  # [B,H,N,S]
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # [B, H, N, S]
    context = jnp.einsum("bhqs,bshk->bqhk", weights, v)  # [B, N, H, Dh]
    out_kernel = self.out.kernel[...].astype(self.dtype)
    return jnp.einsum("bqhk,hkd->bqd", context, out_kernel) + self.out.bias[...].astype(self.dtype)


class MlpBlock(nnx.Module):
  """Dense -> exact (erf) GELU -> Dense, initialised like the google ViT's `MlpBlock`."""

  def __init__(self, width: int, mlp_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    init = dict(kernel_init=xavier_uniform, bias_init=nnx.initializers.normal(1e-6))
    self.dense_0 = nnx.Linear(width, mlp_dim, dtype=dtype, rngs=rngs, **init)
    self.dense_1 = nnx.Linear(mlp_dim, width, dtype=dtype, rngs=rngs, **init)

  def __call__(self, x):  # [B, N, D] -> [B, N, D]
    return self.dense_1(jax.nn.gelu(self.dense_0(x), approximate=False))


def layer_norm(width: int, *, dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """The ViT's LayerNorm: epsilon 1e-6 (google vision_transformer), float32 statistics."""
  return nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, rngs=rngs)
