"""The fused attention kernels behind `layers.dot_product_attention(implementation=...)`.

- "jax": `jax.nn.dot_product_attention` with JAX's own choice of backend (XLA today).
- "cudnn": the same function forced onto cuDNN's fused flash attention (GPU, 16-bit inputs;
  jax raises for anything else).
- "splash": Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention, the
  kernel MaxText uses on TPU; Dao et al., 2022 flash attention with block-sparse masks). Off
  TPU it runs in Pallas interpret mode: exact but slow, for tests only.
- "auto": splash on TPU when both sequence lengths are multiples of 128 (its tiles; a ViT's 197
  tokens are not), cuDNN on GPU for 16-bit inputs, otherwise "xla" (the einsum in layers.py).

Masks: every kernel takes `causal` (query t sees key s <= t + S - T: a prefix stays visible)
and a key-padding mask [B, 1, S]; "jax"/"cudnn" also take any boolean mask broadcastable to
[B, T, S]; splash raises for one, since its masks are static block patterns.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxcl.models import target

IMPLEMENTATIONS = ("xla", "jax", "cudnn", "splash", "auto")
SPLASH_BLOCK = 128  # MaxText's default splash tile (BlockSizes.get_default)


def resolve(implementation: str, q, k, mask) -> str:
  """The implementation `auto` stands for on this backend for these inputs, else the given one."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r}: use one of {IMPLEMENTATIONS}")
  if implementation != "auto":
    return implementation
  backend = target.platform()
  t, s = q.shape[1], k.shape[1]
  if backend == "tpu" and t % SPLASH_BLOCK == 0 and s % SPLASH_BLOCK == 0:
    if mask is None or is_key_padding(mask):
      return "splash"
  if backend == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "xla"


def is_key_padding(mask) -> bool:
  """Whether a boolean mask (broadcastable to [B, T, S]) is per key only: [B, 1, S] or [1, S]."""
  return mask.ndim >= 2 and mask.shape[-2] == 1


def causal_mask(t: int, s: int) -> jax.Array:
  """[T, S] boolean, True where query t may attend to key s: s <= t + (S - T), so the first
  S - T keys (a prefix) are visible to every query; the lower triangle when S == T."""
  return jnp.arange(s)[None, :] <= jnp.arange(t)[:, None] + (s - t)


def jax_nn(q, k, v, mask, *, causal: bool, scale: float, cudnn: bool):
  """`jax.nn.dot_product_attention` on q [B, T, H, Dh], k, v [B, S, K, Dh] (GQA native)."""
  t, s = q.shape[1], k.shape[1]
  if causal and t != s:  # jax aligns its causal mask top-left; ours keeps the prefix visible
    full = causal_mask(t, s)
    mask, causal = full if mask is None else jnp.logical_and(mask, full), False
  if mask is not None:  # broadcastable to [B, T, S] -> [B or 1, 1, T or 1, S]
    mask = mask.reshape((1,) * (3 - mask.ndim) + mask.shape)[:, None]
  return jax.nn.dot_product_attention(
    q,
    k,
    v,
    mask=mask,
    scale=scale,
    is_causal=causal,
    implementation="cudnn" if cudnn else None,
  )


def splash(q, k, v, mask, *, causal: bool, scale: float):
  """Pallas splash attention on q [B, T, H, Dh], k, v [B, S, K, Dh] -> [B, T, H, Dh]: the MHA
  kernel when K == H, else the MQA kernel per K/V head (MaxText's GQA layout)."""
  b, t, h, dh = q.shape
  s, kv = k.shape[1], k.shape[2]
  if mask is not None and not is_key_padding(mask):
    raise ValueError(
      "splash attention takes `causal` and key-padding masks [B, 1, S] only; use "
      "model.attention=xla or jax for a general mask"
    )
  if t % SPLASH_BLOCK or s % SPLASH_BLOCK:
    raise ValueError(
      f"splash attention tiles sequences into blocks of {SPLASH_BLOCK} (TPU lanes): lengths {t} "
      f"(queries) and {s} (keys) must be multiples of it; use model.attention=xla or auto"
    )
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
    splash_attention_kernel as sk,
  )

  kernel = _splash_kernel(t, s, h // kv, causal, mha=kv == h, interpret=target.platform() != "tpu")
  keys = jnp.ones((b, s), jnp.int32)
  if mask is not None:  # padding keys get segment 0, every query segment 1
    keys = jnp.broadcast_to(mask, (b, 1, s))[:, 0].astype(jnp.int32)  # [B, S]

  def attend(q, k, v, keys):  # one shard of the batch
    n = q.shape[0]
    q = (q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3)  # [n, H, T, Dh]
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [n, K, S, Dh]
    segments = sk.SegmentIds(q=jnp.ones((n, t), jnp.int32), kv=keys)
    if kv == h:
      out = jax.vmap(kernel)(q, k, v, segments)  # [n, H, T, Dh]
    else:
      q = q.reshape(n, kv, h // kv, t, dh)  # [n, K, G, T, Dh]
      per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over K
      out = jax.vmap(per_head)(q, k, v, segments).reshape(n, h, t, dh)  # [n, H, T, Dh]
    return out.transpose(0, 2, 1, 3)  # [n, T, H, Dh]

  # A Pallas call is opaque to the SPMD partitioner: under a mesh, run it per batch shard (as
  # MaxText does), or XLA would gather the whole batch onto every device.
  mesh = jax.sharding.get_abstract_mesh()
  axes = tuple(a for a in ("data", "fsdp") if not mesh.empty and a in mesh.axis_names)
  if not axes or b % math.prod(mesh.shape[a] for a in axes):
    return attend(q, k, v, keys)
  spec = jax.sharding.PartitionSpec(axes)
  return jax.shard_map(attend, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec, check_vma=False)(
    q, k, v, keys
  )


@functools.lru_cache(maxsize=64)
def _splash_kernel(t: int, s: int, heads: int, causal: bool, *, mha: bool, interpret: bool):
  """A splash kernel for `heads` query heads over [T, S] (built once per shape)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
    splash_attention_kernel as sk,
  )
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
    splash_attention_mask as sm,
  )

  one = sm.CausalMask((t, s), offset=s - t) if causal else sm.FullMask((t, s))
  make = sk.make_splash_mha if mha else sk.make_splash_mqa
  mask = sm.MultiHeadMask([one] * heads)
  blocks = sk.BlockSizes.get_default()  # 128 x 128 tiles, forward and backward
  with jax.ensure_compile_time_eval():  # the block tables are constants, not tracers of a jit
    return make(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)
