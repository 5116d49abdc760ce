"""Depth growth: L -> L' layers at a fixed width (Du et al. 2024, "Stacking Your Transformers").

- `g_stack`: whole-model stacking, new layer l <- old layer l mod L (g = L'/L copies of the
  model on top of each other; StackBERT's order; `tongxuluo/prts` stackingpt.py). NOT function
  preserving: the grown net applies the small one's blocks g times.
- `g_stack_interp`: the layer-interpolation variant, new layer l <- old layer floor(l L / L')
  ([0, 0, 1, 1, ...]). NOT function preserving.
- `g_zero_depth`: interpolated copies whose residual-writing projections (attention output and
  FFN down, with biases) are zero, so every copy adds nothing. EXACTLY function preserving, for
  pre-norm GPTs and, with the norm rewiring described at `g_zero_depth`, for post-norm BERT.

The masked variant (G_random / MSG depth, new layers behind a mask ramping 0 -> 1) lives in
jaxcl/growth/msg.py.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxcl.growth import base


def stack_sources(num_old: int, num_new: int) -> np.ndarray:
  """[L'] source layer of each new layer under whole-model stacking: l mod L."""
  return np.arange(num_new) % num_old


def interp_sources(num_old: int, num_new: int) -> np.ndarray:
  """[L'] source layer of each new layer under interpolation: floor(l L / L')."""
  return np.arange(num_new) * num_old // num_new


def take_layers(params: base.Params, sources: np.ndarray) -> base.Params:
  """Block leaves [L, ...] -> [L', ...], new layer l = old layer sources[l] (new arrays)."""
  idx = jnp.asarray(sources)
  return base.with_layers(params, lambda x: jnp.take(x, idx, axis=0))


def _stack(src, init, src_cfg, dst_cfg, key=None):
  del init, key
  base.check_same_except(src_cfg, dst_cfg, "L")
  return take_layers(src, stack_sources(src_cfg.num_layers, dst_cfg.num_layers))


def _interp(src, init, src_cfg, dst_cfg, key=None):
  del init, key
  base.check_same_except(src_cfg, dst_cfg, "L")
  return take_layers(src, interp_sources(src_cfg.num_layers, dst_cfg.num_layers))


def zero_copies(params: base.Params, sources: np.ndarray, post_norm: bool) -> base.Params:
  """Makes every layer that repeats its predecessor's source an identity (G_zero depth).

  Pre-norm (x + f(norm(x))): zero the copy's `attn.out` and `mlp.down` (kernels and biases).
  Post-norm (BERT, x = norm(x + f(x))): zeroing the branches leaves norm(x), not x. But the
  input of a layer is the previous layer's `mlp_norm` output n * g + b, with n of mean 0 and
  variance 1 (up to epsilon), and a LayerNorm maps such an n to itself. So within a group of
  copies of one old layer every member but the last gets `mlp_norm` = (1, 0) and passes n on;
  copies also get `attn_norm` = (1, 0); the last member carries the old (g, b) and outputs
  n * g + b as the old layer did. Exact up to the epsilon of the norms (1e-12 in BERT).
  """
  n = len(sources)
  copy = np.array([i > 0 and sources[i] == sources[i - 1] for i in range(n)])
  last = np.array([i == n - 1 or sources[i + 1] != sources[i] for i in range(n)])
  blocks = dict(params["blocks"])

  def set_layers(tree, rows, fn):
    rows = jnp.asarray(rows)
    return {
      k: jnp.where(rows.reshape((-1,) + (1,) * (v.ndim - 1)), fn(k, v), v) for k, v in tree.items()
    }

  for name in ("attn", "mlp"):
    part = "out" if name == "attn" else "down"
    sub = dict(blocks[name])
    sub[part] = set_layers(sub[part], copy, lambda k, v: jnp.zeros_like(v))
    blocks[name] = sub
  if post_norm:
    unit = lambda k, v: jnp.ones_like(v) if k == "scale" else jnp.zeros_like(v)
    blocks["attn_norm"] = set_layers(blocks["attn_norm"], copy, unit)
    blocks["mlp_norm"] = set_layers(blocks["mlp_norm"], ~last, unit)
  return {**params, "blocks": blocks}


def _zero(src, init, src_cfg, dst_cfg, key=None):
  del init, key
  base.check_same_except(src_cfg, dst_cfg, "L")
  sources = interp_sources(src_cfg.num_layers, dst_cfg.num_layers)
  return zero_copies(take_layers(src, sources), sources, base.is_post_norm(src_cfg))


def _zero_sources(num_old: int, num_new: int) -> np.ndarray:
  """Originals keep their moments; the zeroed copies start from zero moments."""
  sources = interp_sources(num_old, num_new)
  first = np.r_[True, sources[1:] != sources[:-1]]
  return np.where(first, sources, -1)


g_stack = base.GrowthOp(
  "g_stack", _stack, exact="no: the small model's blocks run g times", layer_sources=stack_sources
)
g_stack_interp = base.GrowthOp(
  "g_stack_interp",
  _interp,
  exact="no: every block runs twice in a row",
  layer_sources=interp_sources,
)
g_zero_depth = base.GrowthOp(
  "g_zero_depth",
  _zero,
  exact="yes (pre- and post-norm; post-norm up to the norms' epsilon)",
  layer_sources=_zero_sources,
)
