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


# Language-model layers (jaxcl/models/gpt.py, jaxcl/models/bert.py).
# ------------------------------------------------------------------------------------------------
# Parameters carry logical axis names ("vocab", "embed", "heads", "kv_heads", "kv", "mlp", and
# "layers" for scanned stacks); jaxcl/sharding.py maps them onto mesh axes.

ACTIVATIONS = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact (erf): BERT, HF "gelu"
  "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2, HF "gelu_new"
  "silu": jax.nn.silu,  # SwiGLU gate: Llama
}
REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def with_axes(init, *names):
  """`init` whose parameter is annotated with logical axis names, e.g. ("embed", "mlp").

  The annotation is metadata only (`eager_sharding=False`): models build without a mesh, and the
  caller shards the state with `nnx.get_partition_spec` under `nnx.logical_axis_rules`.
  """
  return nnx.with_partitioning(init, names, eager_sharding=False)


def norm(kind: str, width: int, *, eps: float, dtype, rngs: nnx.Rngs) -> nnx.Module:
  """LayerNorm (Ba et al., 2016; scale and bias) or RMSNorm (Zhang & Sennrich, 2019; scale only).

  Statistics are computed in float32 (two-pass variance for LayerNorm, as torch does).
  """
  scale_init = with_axes(nnx.initializers.ones, "embed")
  if kind == "rms":
    return nnx.RMSNorm(width, epsilon=eps, dtype=dtype, scale_init=scale_init, rngs=rngs)
  if kind == "layer":
    bias_init = with_axes(nnx.initializers.zeros, "embed")
    return nnx.LayerNorm(
      width,
      epsilon=eps,
      dtype=dtype,
      use_fast_variance=False,
      scale_init=scale_init,
      bias_init=bias_init,
      rngs=rngs,
    )
  raise ValueError(f"norm kind {kind!r}: use 'layer' or 'rms'")


def causal_mask(length: int) -> jax.Array:
  """[T, T] boolean, True where query t may attend to key s (s <= t)."""
  return jnp.tril(jnp.ones((length, length), bool))


def rope_tables(positions, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """Rotary position embedding tables (Su et al., 2021), HF `rotate_half` layout.

  Frequency i (of head_dim/2) is theta^(-2i/head_dim); it rotates the pair of features
  (i, i + head_dim/2), so both halves of the tables repeat the same angles.

  Returns:
    (sin, cos), each [T, Dh] float32.
  """
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
  inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)  # [Dh/2]
  angles = jnp.asarray(positions, jnp.float32)[:, None] * inv_freq  # [T, Dh/2]
  angles = jnp.concatenate([angles, angles], axis=-1)  # [T, Dh]
  return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x, sin, cos):
  """Rotates x [B, T, H, Dh] by the angles of its positions; sin, cos [T, Dh]."""
  half = x.shape[-1] // 2
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)  # rotate_half(x)
  return (x32 * cos[:, None] + rotated * sin[:, None]).astype(x.dtype)


class Attention(nnx.Module):
  """Self-attention (Vaswani et al., 2017) with grouped K/V heads (GQA, Ainslie et al., 2023).

  Kernels keep the head axis, like `MultiHeadAttention`: `query.kernel` [D, H, Dh],
  `key.kernel`/`value.kernel` [D, K, Dh], `out.kernel` [H, Dh, D]; query head h reads K/V head
  h // (H / K) (HF `repeat_kv`). Logits and softmax are float32.
  """

  def __init__(
    self,
    width: int,
    num_heads: int,
    *,
    num_kv_heads: int,
    head_dim: int,
    use_bias: bool,
    init,
    out_init,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    zeros = nnx.initializers.zeros

    def project(heads, heads_axis):
      return nnx.Einsum(
        "btd,dhk->bthk",
        (width, heads, head_dim),
        (heads, head_dim) if use_bias else None,
        kernel_init=with_axes(init, "embed", heads_axis, "kv"),
        bias_init=with_axes(zeros, heads_axis, "kv"),
        dtype=dtype,
        rngs=rngs,
      )

    self.query = project(num_heads, "heads")
    self.key = project(num_kv_heads, "kv_heads")
    self.value = project(num_kv_heads, "kv_heads")
    self.out = nnx.Einsum(
      "bthk,hkd->btd",
      (num_heads, head_dim, width),
      (width,) if use_bias else None,
      kernel_init=with_axes(out_init, "heads", "kv", "embed"),
      bias_init=with_axes(zeros, "embed"),
      dtype=dtype,
      rngs=rngs,
    )

  def __call__(self, x, *, mask=None, rope=None):
    """x [B, T, D] -> [B, T, D].

    Args:
      x: input [B, T, D].
      mask: boolean, True = may attend, broadcastable to [B, T, S] (e.g. `causal_mask(T)` or a
        padding mask [B, 1, S]), or None.
      rope: (sin, cos) from `rope_tables`, applied to queries and keys, or None.
    """
    q = self.query(x)  # [B, T, H, Dh]
    k = self.key(x)  # [B, T, K, Dh]
    v = self.value(x)  # [B, T, K, Dh]
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    b, t, h, dh = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, dh) * jnp.asarray(dh**-0.5, q.dtype)  # [B, T, K, G, Dh]
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    if mask is not None:  # [B, K, G, T, S]
      logits = jnp.where(jnp.expand_dims(mask, (-3, -4)), logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # [B, K, G, T, S]
    context = jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(b, t, h, dh)  # [B, T, H, Dh]
    return self.out(context)


class FeedForward(nnx.Module):
  """Position-wise MLP: down(act(up(x))), or down(act(gate(x)) * up(x)) when gated (SwiGLU,
  Shazeer, 2020). `up`/`gate` kernels are [D, F], `down` is [F, D]; `activation` is a key of
  ACTIVATIONS."""

  def __init__(
    self,
    width: int,
    mlp_dim: int,
    *,
    activation: str,
    gated: bool,
    use_bias: bool,
    init,
    out_init,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if activation not in ACTIVATIONS:
      raise ValueError(f"activation={activation!r}: use one of {sorted(ACTIVATIONS)}")
    self.activation = activation
    zeros = nnx.initializers.zeros

    def dense(n_in, n_out, kernel_init, axes):
      return nnx.Linear(
        n_in,
        n_out,
        use_bias=use_bias,
        kernel_init=with_axes(kernel_init, *axes),
        bias_init=with_axes(zeros, axes[1]),
        dtype=dtype,
        rngs=rngs,
      )

    if gated:
      self.gate = dense(width, mlp_dim, init, ("embed", "mlp"))
    self.up = dense(width, mlp_dim, init, ("embed", "mlp"))
    self.down = dense(mlp_dim, width, out_init, ("mlp", "embed"))

  def __call__(self, x):  # [B, T, D] -> [B, T, D]
    act = ACTIVATIONS[self.activation]
    h = self.up(x)  # [B, T, F]
    h = act(self.gate(x)) * h if hasattr(self, "gate") else act(h)
    return self.down(h)


def make_layers(make_layer, num_layers: int, *, scan: bool, rngs: nnx.Rngs) -> nnx.Module:
  """`num_layers` layers built by `make_layer(rngs)`: a `nnx.List`, or (scan) one module whose
  parameters are stacked on a leading "layers" axis, e.g. `attn.query.kernel` [L, D, H, Dh]."""
  if not scan:
    return nnx.List([make_layer(rngs) for _ in range(num_layers)])

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make_stack(rngs):
    return make_layer(rngs)

  return make_stack(rngs)


def apply_layers(layers: nnx.Module, x, *args, remat: str = "none"):
  """x -> layer_L(... layer_1(x, *args) ..., *args), for either layout of `make_layers`.

  A stacked module runs under `jax.lax.scan`, so compile time does not grow with depth. `args`
  (masks, RoPE tables) are the same for every layer. `remat` is a key of REMAT_POLICIES.
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}: use one of {sorted(REMAT_POLICIES)}")
  scan = not isinstance(layers, nnx.List)

  def layer_fn(graphdef):
    def call(x, state):
      return nnx.merge(graphdef, state)(x, *args)

    if remat == "none":
      return call
    return jax.checkpoint(call, policy=REMAT_POLICIES[remat], prevent_cse=not scan)

  if scan:
    graphdef, state = nnx.split(layers)
    call = layer_fn(graphdef)
    x, _ = jax.lax.scan(lambda x, s: (call(x, s), None), x, state)
    return x
  for layer in layers:
    graphdef, state = nnx.split(layer)
    x = layer_fn(graphdef)(x, state)
  return x
