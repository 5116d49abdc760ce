"""Width growth (hidden D, heads H / K, FFN F), optionally with depth (bert2BERT's stacking).

- `bert2bert` (FPI, Chen et al. ACL 2022, "bert2BERT" §4.1; Net2Net, Chen et al. 2016): every
  new unit copies an old one through an index map g, the identity on the old units, then
  `tiled` (g(a) = a mod n) or, as the paper, `random` (uniform over the old units); a
  producer's new outputs are copies (out-dim expansion, U[:, j] = W~[:, g_out(j)]), a
  consumer's inputs are divided by the number of copies C of their unit (in-dim expansion,
  W~[i, :] = W[g_in(i), :] / C_g_in(i)), so x @ W is unchanged. Heads are copied whole (head
  size fixed). EXACT for integer ratios with the tiled map (every unit copied equally often,
  so LayerNorm / RMSNorm statistics of the tiled residual stream are the old ones;
  HyperCloning's observation). With the random map or a non-integer ratio the norm statistics
  drift: NOT exact. A tied output embedding reads the tiled stream without division, so the
  norm feeding it is divided by C instead.
- `aki` (bert2BERT §4.2, advanced knowledge initialisation): every attention and FFN weight
  of layer l is first in-dim expanded as FPI (W~^l); its old output columns stay W~^l's, its
  new output columns (new heads, new FFN units, new hidden coordinates written by the output
  projections) are those of the next layer's: U^l[:, j] = W~^(l+1)[:, g_out(j)] for j > d_out.
  The top layer has no next layer and keeps FPI. Norms and embeddings are FPI's. NOT exact.
- Depth after the widening (bert2BERT §4.1 "depth"): the widened model stacked floor(L'/L)
  times, the remaining L' mod L layers the top ones ([0..L-1] * k + [L-r..L-1]). Not exact.
- `g_zero_width` (one-sided zero, Gesmundo & Maile 2023, arXiv 2308.06103): old weights in the
  leading corner, new weights random, except the residual writers' new hidden columns and the
  new heads' / FFN units' output rows, which are zero; the old norm gains are multiplied by
  sqrt(D / D') and epsilon by D / D'. EXACT with RMSNorm (llama style); with LayerNorm the
  mean over D' zero-padded coordinates differs: NOT exact. Unlike zero-padding everything (the
  released `tongxuluo/prts` zero.py), every new weight gets a gradient at the first step.

`bert2bert` and `aki` use the tiled map; `make_bert2bert(kind)` / `make_aki(kind)` (a growth
event's `index_map`) the paper's random one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.growth import base, depth
from jaxcl.models import gpt

GROWN = "DHKF"


def index_map(n_old: int, n_new: int, kind: str = "tiled", seed: int = 0) -> np.ndarray:
  """[n_new] old unit of each new unit: the identity on the first n_old, then tiled or random."""
  if kind == "tiled":
    return np.arange(n_new) % n_old
  if kind == "random":
    rest = np.random.default_rng(seed).integers(0, n_old, n_new - n_old)
    return np.concatenate([np.arange(n_old), rest])
  raise ValueError(f"index map {kind!r}: use tiled | random")


def fpi_maps(src_cfg, dst_cfg, kind: str = "tiled", seed: int = 0) -> dict[str, np.ndarray]:
  """Index maps for D, H, F; the key/value heads follow the query heads' groups."""
  a, b = base.dims(src_cfg), base.dims(dst_cfg)
  maps = {r: index_map(a[r], b[r], kind, seed + i) for i, r in enumerate("DHF")}
  group = a["H"] // a["K"]
  # New kv head k' serves new query heads k' G .. k' G + G - 1, copies of heads maps["H"][...].
  maps["K"] = maps["H"][::group] // group
  return maps


def _expand(x, role_str: str, maps: dict, counts: dict):
  """One leaf through the FPI maps: copy along produced axes, copy and divide along read ones."""
  for axis, r in enumerate(role_str):
    if r in ".L":
      continue
    m = maps[r.upper()]
    x = jnp.take(x, jnp.asarray(m), axis=axis)
    if r.islower():
      c = counts[r.upper()][m].astype(x.dtype)
      x = x / jnp.expand_dims(c, [i for i in range(x.ndim) if i != axis])
  return x


def fpi(src: base.Params, src_cfg, dst_cfg, maps: dict) -> base.Params:
  """Width expansion of `src` (scanned) through `maps` (see `fpi_maps`)."""
  counts = {r: np.bincount(m, minlength=base.dims(src_cfg)[r]) for r, m in maps.items()}
  out = base.leaf_map(lambda k, r, x: _expand(x, r, maps, counts), src)
  tied = base.tied_output_norm(src_cfg)
  if tied:  # the tied head sums over D' copies without division: divide its input instead
    c = jnp.asarray(counts["D"][maps["D"]], jnp.float32)
    flat = base.flatten(out)
    for k in ("scale", "bias"):
      if f"{tied}.{k}" in flat:
        flat[f"{tied}.{k}"] = flat[f"{tied}.{k}"] / c
    out = base.unflatten(flat)
  return out


def stack_sources(num_old: int, num_new: int) -> np.ndarray:
  """[L'] source layer of each new layer: [0..L-1] floor(L'/L) times, then the top L' mod L."""
  rest = num_new % num_old
  return np.concatenate(
    [np.tile(np.arange(num_old), num_new // num_old), np.arange(rest) + num_old - rest]
  )


def _grow_depth(params, src_cfg, dst_cfg):
  if dst_cfg.num_layers == src_cfg.num_layers:
    return params
  return depth.take_layers(params, stack_sources(src_cfg.num_layers, dst_cfg.num_layers))


def _map_seed(key) -> int:
  return 0 if key is None else int(jax.random.randint(key, (), 0, 2**31 - 1))


def make_bert2bert(kind: str = "tiled", noise: float = 0.0) -> base.GrowthOp:
  """bert2BERT FPI with a `kind` index map; `noise` > 0 adds N(0, noise) to new units' copies
  to break their symmetry (then not exact)."""

  def grow(src, init, src_cfg, dst_cfg, key=None):
    base.check_same_except(src_cfg, dst_cfg, "L" + GROWN)
    out = fpi(src, src_cfg, dst_cfg, fpi_maps(src_cfg, dst_cfg, kind, _map_seed(key)))
    if noise > 0:
      old = base.dims(src_cfg)
      keys = iter(jax.random.split(key, 1000))

      def jitter(name, r, x):
        new = base.new_units(r, x.shape, old)
        return jnp.where(new, x + noise * jax.random.normal(next(keys), x.shape, x.dtype), x)

      out = base.leaf_map(jitter, out)
    return _grow_depth(out, src_cfg, dst_cfg)

  exact = "yes for integer width ratios with the tiled map and no depth growth; else no"
  return base.GrowthOp(
    "bert2bert",
    grow,
    exact=exact if kind == "tiled" and not noise else "no",
    layer_sources=stack_sources,
  )


def make_aki(kind: str = "tiled") -> base.GrowthOp:
  """bert2BERT's AKI (module doc) with a `kind` index map."""

  def grow(src, init, src_cfg, dst_cfg, key=None):
    base.check_same_except(src_cfg, dst_cfg, "L" + GROWN)
    out = fpi(src, src_cfg, dst_cfg, fpi_maps(src_cfg, dst_cfg, kind, _map_seed(key)))
    old = base.dims(src_cfg)
    n = src_cfg.num_layers
    upper = jnp.asarray(np.minimum(np.arange(n) + 1, n - 1))  # [L] the next layer, top: itself

    def from_next(name, r, x):
      if not name.startswith(("blocks.attn.", "blocks.mlp.")):
        return x  # norms: FPI
      produced = "".join(c if c in GROWN else "." for c in r)  # the out-dim axes
      new = base.new_units(produced, x.shape, old)
      return jnp.where(new, jnp.take(x, upper, axis=0), x)

    return _grow_depth(base.leaf_map(from_next, out), src_cfg, dst_cfg)

  return base.GrowthOp(
    "aki", grow, exact="no: new output units come from the next layer", layer_sources=stack_sources
  )


def _zero_width(src, init, src_cfg, dst_cfg, key=None):
  base.check_same_except(src_cfg, dst_cfg, GROWN)
  old, new = base.dims(src_cfg), base.dims(dst_cfg)
  gain = float(np.sqrt(old["D"] / new["D"]))

  def grow(name, r, s, i):
    x = base.embed_into(i, s)
    short = name.removeprefix("blocks.")
    if name in base.RESIDUAL_WRITERS or short in base.BLOCK_WRITERS:
      # zero where the leaf writes a new hidden coordinate or reads a new head / FFN unit
      zero_roles = "".join(c if c in "Dhf" else "." for c in r)
      x = jnp.where(base.new_units(zero_roles, x.shape, old), 0.0, x)
    if name.endswith("norm.scale"):  # old gains x sqrt(D / D'); new gains keep their init
      x = jnp.where(base.new_units(r, x.shape, old), x, x * gain)
    return x

  return base.leaf_map(grow, src, init)


def _zero_width_eps(src_cfg, dst_cfg):
  """RMSNorm's epsilon scales with the mean it is added to: eps D / D'."""
  return dataclasses.replace(dst_cfg, norm_eps=src_cfg.norm_eps * src_cfg.width / dst_cfg.width)


def _same_layers(num_old, num_new):
  return np.arange(num_new)


bert2bert = make_bert2bert()
aki = make_aki()
INDEX_MAPPED = {"bert2bert": make_bert2bert, "aki": make_aki}  # operators taking `index_map`
g_zero_width = base.GrowthOp(
  "g_zero_width",
  _zero_width,
  exact="yes with RMSNorm (llama style); no with LayerNorm",
  layer_sources=_same_layers,
  adjust=lambda s, d: _zero_width_eps(s, d) if isinstance(d, gpt.Config) else d,
)
