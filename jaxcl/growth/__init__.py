"""Model growth: turn a trained small transformer into a larger one (DESIGN.md §1.2).

One file per operator family, each operator a `base.GrowthOp` (a pure function on parameter
pytrees, documented as exactly function preserving or not):

  depth.py      g_stack, g_stack_interp (Du et al. 2024), g_zero_depth (exact)
  width.py      bert2bert FPI (exact for integer ratios, tiled; or random maps), aki,
                g_zero_width (exact, RMSNorm)
  msg.py        msg / g_random: masked growth of L, D, H, F (exact at mask 0)
  ligo.py       ligo: the learned linear growth operator (Wang et al. 2023; per-layer width)
  optimizer.py  moments across growth (carry / reset)
  timing.py     G_stack's growth-timing guideline and the speedup measure

Nothing here knows about runs: growth events inside a language-model run are
jaxcl/lm/growth_events.py.

    big = growth.grow_model(growth.get("g_zero_depth"), small, dict(num_layers=12))
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxcl.growth import base, depth, msg, width
from jaxcl.models import bert, gpt

OPERATORS = {
  op.name: op
  for op in (
    depth.g_stack,
    depth.g_stack_interp,
    depth.g_zero_depth,
    width.bert2bert,
    width.aki,
    width.g_zero_width,
    msg.msg,
    msg.g_random,
  )
}


def get(name: str, index_map: str | None = None) -> base.GrowthOp:
  """The operator `name` (see OPERATORS; "ligo" is trained, see jaxcl/growth/ligo.py); bert2BERT's
  operators take an `index_map` (tiled | random, jaxcl/growth/width.py)."""
  if name not in OPERATORS:
    raise ValueError(f"unknown growth operator {name!r}: use one of {sorted(OPERATORS)}")
  if index_map is None:
    return OPERATORS[name]
  if name not in width.INDEX_MAPPED:
    raise ValueError(
      f"growth operator {name!r} takes no index_map: only {sorted(width.INDEX_MAPPED)}"
    )
  return width.INDEX_MAPPED[name](index_map)


def build_model(cfg: base.ModelConfig, seed: int = 0) -> nnx.Module:
  """A freshly initialised GPT or BERT of shape `cfg`."""
  rngs = nnx.Rngs(seed)
  return bert.BERT(cfg, rngs=rngs) if isinstance(cfg, bert.Config) else gpt.GPT(cfg, rngs=rngs)


def target(op: base.GrowthOp, cfg: base.ModelConfig, shape: dict) -> base.ModelConfig:
  """The config of the grown model: `cfg` with the new `shape`, adjusted by the operator."""
  return op.adjust(cfg, base.target_config(cfg, **shape))


def params_of(model: nnx.Module) -> base.Params:
  """The model's parameters as a scanned pure dict."""
  return base.stack_layers(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def grow_params(op, params, src_cfg, dst_cfg, init_params, seed: int = 0) -> base.Params:
  """`op` on scanned pure dicts; the result has the layout of `init_params`."""
  out = op.grow(
    base.stack_layers(params),
    base.stack_layers(init_params),
    src_cfg,
    dst_cfg,
    jax.random.PRNGKey(seed),
  )
  return base.unstack_layers(out) if base.is_list_layout(init_params) else out


def grow_model(op: base.GrowthOp, model: nnx.Module, shape: dict, seed: int = 0) -> nnx.Module:
  """A new model of the grown shape whose parameters are `op` of `model`'s (MSG masks at 0)."""
  src_cfg = model.config
  dst_cfg = target(op, src_cfg, shape)
  big = build_model(dst_cfg, seed)
  state = nnx.state(big, nnx.Param)
  new = grow_params(
    op,
    nnx.to_pure_dict(nnx.state(model, nnx.Param)),
    src_cfg,
    dst_cfg,
    nnx.to_pure_dict(state),
    seed,
  )
  nnx.replace_by_pure_dict(state, new)
  nnx.update(big, state)
  if op.masked:
    old = model.masks.values() if src_cfg.growth_masks else None
    set_masks(big, msg.initial_masks(src_cfg, dst_cfg, old))
  return big


def set_masks(model: nnx.Module, values: dict) -> None:
  """Writes MSG mask values (names as `gpt.Masks`) into a GPT with `growth_masks`."""
  for name, value in values.items():
    getattr(model.masks, name)[...] = value
