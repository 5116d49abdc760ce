"""Transformer layers shared by the ViT, the GPT and the BERT, with one attention: `Attention`
(projections, prefixes, head masks, RoPE) around `dot_product_attention` (q, k, v, mask).

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

from jaxcl.models import attention_kernels, target

xavier_uniform = nnx.initializers.xavier_uniform()


def flat_init(init, fan_in_axes: int):
  """`init` applied to a structured kernel, e.g. [D, H, Dh], as the 2-D matrix
  [prod(shape[:fan_in_axes]), prod(rest)] and reshaped: flax `DenseGeneral`'s xavier fans."""

  def apply(key, shape, dtype=jnp.float32):
    fan_in, fan_out = math.prod(shape[:fan_in_axes]), math.prod(shape[fan_in_axes:])
    return init(key, (fan_in, fan_out), dtype).reshape(shape)

  return apply


xavier_heads_in = flat_init(xavier_uniform, 1)  # [D, H, Dh] as [D, H Dh]
xavier_heads_out = flat_init(xavier_uniform, 2)  # [H, Dh, D] as [H Dh, D]


def compute_dtype(name: str) -> str:
  """`model.dtype`: a dtype name, or "auto": bfloat16 where the matrix units have it (TPU, GPU),
  float32 on CPU (the fidelity tests compare CPU runs with float64 references)."""
  if name != "auto":
    return name
  return "float32" if target.platform() == "cpu" else "bfloat16"


class HeadDense(nnx.Module):
  """A dense map with a structured kernel: `einsum(equation, x, kernel) + bias` in `dtype`,
  e.g. "btd,dhk->bthk" with a kernel [D, H, Dh] (per-head in) or "bthk,hkd->btd" with [H, Dh, D]
  (out). Parameters are float32.

  `bias_init=None` gives a zero bias drawn without a key (the google ViT); an initializer draws
  its own key after the kernel's (flax `nnx.Einsum`, the GPT/BERT). `bias_shape=None`: no bias.
  """

  def __init__(
    self,
    equation: str,
    kernel_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    *,
    kernel_init,
    bias_init=None,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.equation, self.dtype = equation, dtype
    self.kernel = nnx.Param(kernel_init(rngs.params(), kernel_shape, jnp.float32))
    if bias_shape is None:
      self.bias = nnx.data(None)
    elif bias_init is None:
      self.bias = nnx.Param(jnp.zeros(bias_shape, jnp.float32))
    else:
      self.bias = nnx.Param(bias_init(rngs.params(), bias_shape, jnp.float32))

  def __call__(self, x):
    y = jnp.einsum(self.equation, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


def dot_product_attention(
  q, k, v, mask=None, *, causal: bool = False, grouped: bool = True, implementation: str = "xla"
):
  """softmax(q k^T / sqrt(Dh)) v per head (Vaswani et al., 2017), grouped K/V heads (GQA,
  Ainslie et al., 2023: query head h reads K/V head h // (H / K), HF `repeat_kv`).

  Args:
    q: queries [B, T, H, Dh].
    k, v: keys and values [B, S, K, Dh], K dividing H.
    mask: boolean, True = may attend, broadcastable to [B, T, S] (e.g. a padding mask
      [B, 1, S]), or None.
    causal: query t attends only to keys s <= t + (S - T) (and the mask): a lower triangle
      without a prefix; fused kernels skip the masked blocks instead of computing them.
    grouped: logits laid out [B, K, G, T, S] (G = H / K; needed when K < H) rather than
      [B, H, T, S]. The same math, rounded differently in the last bit: the language models
      use the first, the ViT the second, each keeping the results it was measured with.
    implementation: "xla" (this einsum), or a fused kernel of jaxcl/models/attention_kernels.py:
      "jax" (jax.nn.dot_product_attention), "cudnn" (GPU), "splash" (Pallas, TPU), or "auto"
      (the best of these for the backend and inputs).

  Returns:
    [B, T, H, Dh] in v's dtype; logits and softmax are float32.
  """
  b, t, h, dh = q.shape
  s, kv = k.shape[1], k.shape[2]
  implementation = attention_kernels.resolve(implementation, q, k, mask)
  if implementation in ("jax", "cudnn"):
    cudnn = implementation == "cudnn"
    return attention_kernels.jax_nn(q, k, v, mask, causal=causal, scale=dh**-0.5, cudnn=cudnn)
  if implementation == "splash":
    return attention_kernels.splash(q, k, v, mask, causal=causal, scale=dh**-0.5)
  if causal:
    full = attention_kernels.causal_mask(t, s)  # [T, S]
    mask = full if mask is None else jnp.logical_and(mask, full)
  neg, scale = jnp.finfo(jnp.float32).min, jnp.asarray(dh**-0.5, q.dtype)
  if not grouped and kv == h:
    logits = jnp.einsum("bthd,bshd->bhts", q * scale, k, preferred_element_type=jnp.float32)
    if mask is not None:  # [B, H, T, S]
      logits = jnp.where(jnp.expand_dims(mask, -3), logits, neg)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # [B, H, T, S]
    return jnp.einsum("bhts,bshd->bthd", weights, v)  # [B, T, H, Dh]
  q = q.reshape(b, t, kv, h // kv, dh) * scale  # [B, T, K, G, Dh]
  logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  if mask is not None:  # [B, K, G, T, S]
    logits = jnp.where(jnp.expand_dims(mask, (-3, -4)), logits, neg)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # [B, K, G, T, S]
  return jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(b, t, h, dh)  # [B, T, H, Dh]


class Attention(nnx.Module):
  """Self-attention of the ViT, the GPT and the BERT: `dot_product_attention` between
  projections of x, with the optional pieces each model needs.

  - Prefix-tuning (Li & Liang, 2021; DualPrompt, CODA-Prompt): extra keys and values
    concatenated to the *already projected* K and V along the sequence axis; they do not pass
    through W_k / W_v, queries are unchanged, so the output keeps the input length.
  - Head masks (MSG, Yao et al., ICLR 2024; jaxcl/growth/msg.py): q scaled per query head,
    k and v per K/V head, before RoPE.
  - GQA (`num_kv_heads` < `num_heads`), RoPE tables, `causal` (the language models), and a
    mask (padding).
  - `implementation`: which kernel computes the attention ("xla", "jax", "cudnn", "splash",
    "auto"; see `dot_product_attention`), the config's `model.attention`.

  Kernels keep the head axis (google vision_transformer layout): `query.kernel` [D, H, Dh],
  `key.kernel`/`value.kernel` [D, K, Dh], `out.kernel` [H, Dh, D]. The defaults are the google
  ViT's (xavier kernels with DenseGeneral's fans, zero biases, no `num_kv_heads`: logits
  [B, H, T, S]); the language models give `num_kv_heads` (grouped logits), their initializers
  and `logical_axes=True` (axis names for jaxcl/sharding.py).
  """

  def __init__(
    self,
    width: int,
    num_heads: int,
    *,
    num_kv_heads: int = 0,
    head_dim: int = 0,
    use_bias: bool = True,
    init=xavier_heads_in,
    out_init=xavier_heads_out,
    bias_init=None,
    logical_axes: bool = False,
    causal: bool = False,
    implementation: str = "xla",
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if implementation not in attention_kernels.IMPLEMENTATIONS:
      raise ValueError(
        f"attention implementation {implementation!r}: use one of "
        f"{attention_kernels.IMPLEMENTATIONS}"
      )
    self.grouped = bool(num_kv_heads)
    self.causal, self.implementation = causal, implementation
    num_kv_heads = num_kv_heads or num_heads
    if not head_dim and width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    head_dim = head_dim or width // num_heads
    axes = with_axes if logical_axes else lambda init, *names: init

    def dense(equation, kernel_shape, bias_shape, kernel_init, names):
      return HeadDense(
        equation,
        kernel_shape,
        bias_shape if use_bias else None,
        kernel_init=axes(kernel_init, *names),
        bias_init=None if bias_init is None else axes(bias_init, *names[-len(bias_shape) :]),
        dtype=dtype,
        rngs=rngs,
      )

    def project(heads, heads_axis):  # x [B, T, D] -> [B, T, heads, Dh]
      shape, names = (width, heads, head_dim), ("embed", heads_axis, "kv")
      return dense("btd,dhk->bthk", shape, (heads, head_dim), init, names)

    self.query = project(num_heads, "heads")
    self.key = project(num_kv_heads, "kv_heads")
    self.value = project(num_kv_heads, "kv_heads")
    shape, names = (num_heads, head_dim, width), ("heads", "kv", "embed")
    self.out = dense("bthk,hkd->btd", shape, (width,), out_init, names)

  def __call__(self, x, *, mask=None, rope=None, prefix=None, head_mask=None, kv_head_mask=None):
    """x [B, T, D] -> [B, T, D].

    Args:
      x: input [B, T, D].
      mask: boolean, True = may attend, broadcastable to [B, T, S] (S = P + T, prefix columns
        first), or None.
      rope: (sin, cos) from `rope_tables`, applied to queries and keys, or None.
      prefix: (k, v), projected prefix keys and values [B, P, K, Dh] each, or None.
      head_mask: [H] scales of the query heads, or None; kv_head_mask: [K] of the K/V heads.
    """
    q = self.query(x)  # [B, T, H, Dh]
    k = self.key(x)  # [B, T, K, Dh]
    v = self.value(x)  # [B, T, K, Dh]
    if head_mask is not None:
      q = q * head_mask.astype(x.dtype)[:, None]
    if kv_head_mask is not None:
      k, v = k * kv_head_mask.astype(x.dtype)[:, None], v * kv_head_mask.astype(x.dtype)[:, None]
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if prefix is not None:
      k = jnp.concatenate([prefix[0].astype(k.dtype), k], axis=1)  # [B, P + T, K, Dh]
      v = jnp.concatenate([prefix[1].astype(v.dtype), v], axis=1)  # [B, P + T, K, Dh]
    out = dot_product_attention(
      q,
      k,
      v,
      mask,
      causal=self.causal,
      grouped=self.grouped,
      implementation=self.implementation,
    )  # [B, T, H, Dh]
    return self.out(out)


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


def apply_layers(layers: nnx.Module, x, *args, per_layer=None, depth=None, remat: str = "none"):
  """x -> layer_L(... layer_1(x, *args) ..., *args), for either layout of `make_layers`.

  A stacked module runs under `jax.lax.scan`, so compile time does not grow with depth. `args`
  (masks, RoPE tables) are the same for every layer; `per_layer` [L, ...], if given, passes
  row l to layer l after them (MSG's layer masks). `remat` is a key of REMAT_POLICIES.

  `depth` (int32 [], may be traced), if given, runs only the bottom `depth` layers: layer l >=
  depth hands x on unchanged under `jax.lax.cond`, so it costs no compute and one compiled step
  serves every depth (bert2BERT's sub-models, jaxcl/lm/two_stage.py).
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}: use one of {sorted(REMAT_POLICIES)}")
  scan = not isinstance(layers, nnx.List)
  rows = () if per_layer is None else (per_layer,)

  def layer_fn(graphdef):
    def call(x, state, *row):
      return nnx.merge(graphdef, state)(x, *args, *row)

    if remat != "none":
      call = jax.checkpoint(call, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
    if depth is None:
      return lambda x, index, state, *row: call(x, state, *row)

    def call_below_depth(x, index, state, *row):
      return jax.lax.cond(index < depth, lambda x: call(x, state, *row), lambda x: x, x)

    return call_below_depth

  if scan:
    graphdef, state = nnx.split(layers)
    call = layer_fn(graphdef)
    index = jnp.arange(jax.tree.leaves(state)[0].shape[0])  # [L]
    x, _ = jax.lax.scan(lambda x, xs: (call(x, *xs), None), x, (index, state, *rows))
    return x
  for i, layer in enumerate(layers):
    graphdef, state = nnx.split(layer)
    x = layer_fn(graphdef)(x, i, state, *(r[i] for r in rows))
  return x
