"""Optimizer state across a growth event (optax states mirror the parameter pytree).

- `carry` (MSG, `cofe-ai/MSG` utils_ex_v2.transfer_states): every moment tensor (Adam's mu and
  nu, SGD's trace) of the large model starts as zeros; block leaves take the moments of the
  old layer each new layer came from (`GrowthOp.layer_sources`, -1 = none), and the old units
  of every axis keep theirs (the leading corner, where all operators put the old units).
  Step counts (Adam's bias correction, the schedule) carry on.
- `reset` (G_stack's recipe, `tongxuluo/prts`): a fresh optimizer state; only the schedule's
  count carries on, since the learning-rate schedule is global (jaxcl/lm/growth_events.py
  re-warms it when asked).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl.growth import base

MODES = ("carry", "reset")


def _is_schedule(x) -> bool:
  return isinstance(x, optax.ScaleByScheduleState)


def keep_schedule_count(fresh, old):
  """`fresh` with the schedule counters of `old`."""
  olds = iter([x for x in jax.tree.leaves(old, is_leaf=_is_schedule) if _is_schedule(x)])
  return jax.tree.map(lambda x: next(olds) if _is_schedule(x) else x, fresh, is_leaf=_is_schedule)


def _under_blocks(path) -> bool:
  return any(getattr(p, "key", None) == "blocks" for p in path)


def grow_opt_state(
  tx: optax.GradientTransformation,
  old_opt,
  new_params,
  layer_sources: np.ndarray,
  mode: str = "carry",
):
  """The optimizer state for `new_params` (scanned layout) after growth; see the module doc."""
  if mode not in MODES:
    raise ValueError(f"growth.opt_state={mode!r}: use {' | '.join(MODES)}")
  fresh = tx.init(new_params)
  if mode == "reset":
    return keep_schedule_count(fresh, old_opt)
  src = jnp.asarray(np.maximum(layer_sources, 0))
  keep = jnp.asarray(np.asarray(layer_sources) >= 0)

  def transfer(path, old, new):
    if old.shape == new.shape:
      return old  # counts, and tensors the growth did not touch
    if _under_blocks(path):
      old = jnp.take(old, src, axis=0)
      old = jnp.where(keep.reshape((-1,) + (1,) * (old.ndim - 1)), old, 0)
    return base.embed_into(jnp.zeros_like(new), old[tuple(slice(0, n) for n in new.shape)])

  return jax.tree_util.tree_map_with_path(transfer, old_opt, fresh)
