"""What every growth operator shares: the parameter layout, the axis roles, the operator record.

Operators are pure functions on the *pure dict* of a model's parameters (`nnx.State
.to_pure_dict()` of `nnx.split(model, nnx.Param, ...)`), for jaxcl/models/gpt.py (both styles)
and jaxcl/models/bert.py. They work on the scanned layout, where every leaf under `blocks`
carries a leading layers axis (`blocks.attn.query.kernel` [L, D, H, Dh]); `stack_layers` /
`unstack_layers` convert the list layout (`blocks.0.attn...`) at the edges.

Every leaf has a *role string*, one letter per axis (`ROLES`), which is all a width operator
needs to know about it:

  L  layers            D  hidden, written by the leaf (a producer of the residual stream)
  H  query heads out   d  hidden, read by the leaf (a consumer: x @ W sums over it)
  K  key/value heads   h  query heads, read (attention output projection)
  F  FFN units out     f  FFN units, read (down projection)
  .  unchanged (vocabulary, positions, head dim)

The head dimension never changes: heads are added, not widened, so grouped-query attention
keeps its group size H / K and RoPE its frequencies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.models import bert, gpt

Params = dict  # a nested pure dict of arrays
ModelConfig = gpt.Config | bert.Config

# Roles of the non-block leaves and (under "blocks.", without the L axis) of the block leaves.
ROLES = {
  "embed.embedding": ".D",
  "pos_embed.embedding": ".D",
  "type_embed.embedding": ".D",
  "embed_norm.scale": "D",
  "embed_norm.bias": "D",
  "final_norm.scale": "D",
  "final_norm.bias": "D",
  "lm_head.kernel": "d.",
  "mlm.dense.kernel": "dD",
  "mlm.dense.bias": "D",
  "mlm.norm.scale": "D",
  "mlm.norm.bias": "D",
  "mlm.bias": ".",
  # block leaves
  "attn.query.kernel": "dH.",
  "attn.query.bias": "H.",
  "attn.key.kernel": "dK.",
  "attn.key.bias": "K.",
  "attn.value.kernel": "dK.",
  "attn.value.bias": "K.",
  "attn.out.kernel": "h.D",
  "attn.out.bias": "D",
  "attn_norm.scale": "D",
  "attn_norm.bias": "D",
  "mlp_norm.scale": "D",
  "mlp_norm.bias": "D",
  "mlp.up.kernel": "dF",
  "mlp.up.bias": "F",
  "mlp.gate.kernel": "dF",
  "mlp.gate.bias": "F",
  "mlp.down.kernel": "fD",
  "mlp.down.bias": "D",
}
# Leaves that write into the residual stream (their D axis) and the rows of new units that
# feed them: zero these and a new unit or layer adds nothing (G_zero).
RESIDUAL_WRITERS = ("embed.embedding", "pos_embed.embedding", "type_embed.embedding")
BLOCK_WRITERS = ("attn.out.kernel", "attn.out.bias", "mlp.down.kernel", "mlp.down.bias")


def dims(cfg: ModelConfig) -> dict[str, int]:
  """Sizes of the growable axes: L, D, H, K, F (lowercase roles share their letter's size)."""
  kv = cfg.kv_heads if isinstance(cfg, gpt.Config) else cfg.num_heads
  return dict(L=cfg.num_layers, D=cfg.width, H=cfg.num_heads, K=kv, F=cfg.mlp_dim)


def head_size(cfg: ModelConfig) -> int:
  return cfg.head_size if isinstance(cfg, gpt.Config) else cfg.width // cfg.num_heads


def is_post_norm(cfg: ModelConfig) -> bool:
  """BERT's layers normalise after the residual sum; GPT's before each branch."""
  return isinstance(cfg, bert.Config)


def tied_output_norm(cfg: ModelConfig) -> str | None:
  """The norm whose output is multiplied by the (tied) embedding matrix, if the head is tied."""
  if isinstance(cfg, bert.Config):
    return "mlm.norm"
  return "final_norm" if cfg.tie_embeddings else None


def target_config(cfg: ModelConfig, **shape) -> ModelConfig:
  """`cfg` with a new shape (num_layers, width, num_heads, num_kv_heads, mlp_dim).

  The head size is kept: a GPT whose head size was implied by width / heads gets it pinned,
  so growing the width alone adds no heads' worth of width to each head.
  """
  allowed = {"num_layers", "width", "num_heads", "num_kv_heads", "mlp_dim"}
  unknown = set(shape) - allowed
  if unknown:
    raise ValueError(f"unknown growth target keys {sorted(unknown)}: use {sorted(allowed)}")
  shape = {k: int(v) for k, v in shape.items() if v}
  if isinstance(cfg, gpt.Config):
    if "num_heads" in shape and "num_kv_heads" not in shape and cfg.num_kv_heads:
      shape["num_kv_heads"] = cfg.num_kv_heads * shape["num_heads"] // cfg.num_heads
    new = dataclasses.replace(cfg, **shape)
    if new.head_size != cfg.head_size:
      new = dataclasses.replace(new, head_dim=cfg.head_size)
    if new.num_heads // new.kv_heads != cfg.num_heads // cfg.kv_heads:
      raise ValueError("growth must keep the query heads per key/value head (GQA group)")
    return new
  shape.pop("num_kv_heads", None)
  new = dataclasses.replace(cfg, **shape)
  if new.width // new.num_heads != cfg.width // cfg.num_heads:
    raise ValueError(
      f"BERT head size changes ({cfg.width}/{cfg.num_heads} -> {new.width}/{new.num_heads}):"
      " grow num_heads with the width"
    )
  return new


class GrowthOp(NamedTuple):
  """A growth operator: `grow(src, init, src_cfg, dst_cfg, key) -> params`.

  `src` are the small model's parameters, `init` a freshly initialised large model's (the
  shapes, and the values any new weight that is not derived from `src` takes). `exact` says
  when the operator is function preserving. `layer_sources(L, L')` gives, per new layer, the
  old layer whose optimizer moments it inherits (-1: new, zero moments). `adjust` may change
  the target config beyond its shape (G_zero's epsilon).
  """

  name: str
  grow: Callable[..., Params]
  exact: str
  layer_sources: Callable[[int, int], np.ndarray]
  adjust: Callable[[ModelConfig, ModelConfig], ModelConfig] = lambda src, dst: dst
  masked: bool = False  # needs the MSG masks in the forward (jaxcl/growth/msg.py)


# Pytree plumbing.
# ------------------------------------------------------------------------------------------------


def stack_layers(params: Params) -> Params:
  """The list layout (`blocks` keyed 0..L-1) as the scanned one; scanned params unchanged."""
  blocks = params["blocks"]
  keys = list(blocks)
  if not keys or not all(isinstance(k, int) or str(k).isdigit() for k in keys):
    return params
  layers = [blocks[k] for k in sorted(keys, key=int)]
  return {**params, "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layers(params: Params) -> Params:
  """The scanned layout as the list layout."""
  n = jax.tree.leaves(params["blocks"])[0].shape[0]
  blocks = {i: jax.tree.map(lambda x, i=i: x[i], params["blocks"]) for i in range(n)}
  return {**params, "blocks": blocks}


def is_list_layout(params: Params) -> bool:
  return all(isinstance(k, int) or str(k).isdigit() for k in params["blocks"])


def flatten(params: Params) -> dict[str, Any]:
  """{"blocks.attn.query.kernel": array, ...} of a (scanned) pure dict."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    out[".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)] = leaf
  return out


def unflatten(flat: dict[str, Any]) -> Params:
  out: dict = {}
  for name, leaf in flat.items():
    node = out
    *parents, last = name.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return out


def role(name: str) -> str:
  """The role string of a flattened (scanned) leaf name, with "L" first for block leaves."""
  if name.startswith("blocks."):
    return "L" + ROLES[name[len("blocks.") :]]
  if name not in ROLES:
    raise KeyError(f"growth: no axis roles for parameter {name!r}")
  return ROLES[name]


def leaf_map(fn: Callable[[str, str, Any], Any], *trees: Params) -> Params:
  """`fn(name, role, *leaves)` over flattened leaves of scanned pure dicts, as a pure dict."""
  flats = [flatten(t) for t in trees]
  return unflatten({k: fn(k, role(k), *(f[k] for f in flats)) for k in flats[0]})


def embed_into(init, src):
  """`init` with `src` written into its leading corner (old units first on every axis)."""
  return init.at[tuple(slice(0, n) for n in src.shape)].set(src.astype(init.dtype))


def new_units(role_str: str, shape, old: dict[str, int]) -> jax.Array:
  """Boolean [shape]: True where any grown axis indexes a unit that is not in the old model."""
  out = jnp.zeros(shape, bool)
  for axis, r in enumerate(role_str):
    if r == ".":
      continue
    n_old = old[r.upper()]
    idx = jnp.arange(shape[axis]) >= n_old
    out = out | jnp.expand_dims(idx, [a for a in range(len(shape)) if a != axis])
  return out


def with_layers(params: Params, fn: Callable[[Any], Any]) -> Params:
  """`fn` applied to every block leaf (its leading layers axis), the rest unchanged."""
  return {**params, "blocks": jax.tree.map(fn, params["blocks"])}


def check_same_except(src_cfg: ModelConfig, dst_cfg: ModelConfig, axes: str) -> None:
  """Raises unless the two shapes differ only in `axes` (letters of `dims`) and grow there."""
  a, b = dims(src_cfg), dims(dst_cfg)
  for k in a:
    if k not in axes and a[k] != b[k]:
      raise ValueError(f"this operator does not grow {k}: {a[k]} -> {b[k]}")
    if b[k] < a[k]:
      raise ValueError(f"growth cannot shrink {k}: {a[k]} -> {b[k]}")
  if head_size(src_cfg) != head_size(dst_cfg):
    raise ValueError("growth keeps the head size")
