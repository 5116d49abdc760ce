"""Masked Structural Growth (Yao, Zhang, Li, Wang; arXiv 2305.02869, ICLR 2024), and G_random.

The large model holds the old weights in the leading corner of every tensor, new weights
anywhere else (random from its own initialisation, or for new layers copies of old layers in
StackBERT order, MSG's default `--new_block_init_strategy copy`). The forward multiplies new
units by masks (jaxcl/models/gpt.py `growth_masks`): the residual stream by m_D (norm
statistics taken under m_D), q by m_H, k and v by m_K, the FFN units' pre-activations by m_F
(act((x W_1 + b_1) m_F), the reference's BertIntermediateEx), and a new layer computes
x + c (block(x) - x). At c = 0 the new coordinates of the residual stream are exactly
0, new heads, units and layers add nothing, and the old coordinates see the old computation:
EXACTLY function preserving, whatever the new weights are. The masks then ramp linearly from
0 to 1 over `ramp_steps` (MSG `grow_time`; `c(t) = (t - t_grow) / T`, clipped); during the
ramp the function changes by design, and at c = 1 the model is the plain large model.
MSG grows one dimension per event (L, D, heads or F; the reference's `available_to_grow`) and
rewinds the learning rate at each (jaxcl/lm/growth_events.py checks the first and does the
second with `growth.lr_after=rewind`).

"G_random" of Du et al. 2024 is this operator with random new layers (`new_layers="random"`).
MSG needs model support; it is implemented for GPT (both styles), not for BERT.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.growth import base, depth
from jaxcl.models import gpt

MASK_NAMES = {"hidden": "D", "heads": "H", "kv_heads": "K", "mlp": "F", "layers": "L"}


def make(new_layers: str = "copy") -> base.GrowthOp:
  """MSG for any of L, D, H/K, F; new layers are `copy` (old layer l mod L) or `random`."""
  if new_layers not in ("copy", "random"):
    raise ValueError(f"msg new_layers={new_layers!r}: use copy | random")

  def grow(src, init, src_cfg, dst_cfg, key=None):
    del key
    if not isinstance(dst_cfg, gpt.Config):
      raise ValueError("MSG needs masks in the forward: GPT models only")
    base.check_same_except(src_cfg, dst_cfg, "LDHKF")
    out = base.leaf_map(lambda k, r, s, i: base.embed_into(i, s), src, init)
    if new_layers == "copy" and dst_cfg.num_layers > src_cfg.num_layers:
      out = depth.take_layers(out, depth.stack_sources(src_cfg.num_layers, dst_cfg.num_layers))
    return out

  def sources(num_old, num_new):
    return np.where(np.arange(num_new) < num_old, np.arange(num_new), -1)

  name = "msg" if new_layers == "copy" else "g_random"
  return base.GrowthOp(
    name,
    grow,
    exact="yes at mask 0, for any new weights; the ramp changes the function by design",
    layer_sources=sources,
    adjust=lambda s, d: _with_masks(d),
    masked=True,
  )


def _with_masks(cfg):
  if not isinstance(cfg, gpt.Config):
    raise ValueError("MSG needs masks in the forward: GPT models only (not BERT)")
  return dataclasses.replace(cfg, growth_masks=True)


def initial_masks(src_cfg, dst_cfg, src_masks: dict | None = None) -> dict:
  """The masks right after growth: old units 1 (or their current value), new units 0."""
  old, new = base.dims(src_cfg), base.dims(dst_cfg)
  out = {}
  for name, axis in MASK_NAMES.items():
    prev = jnp.ones((old[axis],), jnp.float32) if src_masks is None else src_masks[name]
    out[name] = base.embed_into(jnp.zeros((new[axis],), jnp.float32), prev)
  return out


def ramp(step, start: int, ramp_steps: int):
  """c(step) = clip((step - start) / ramp_steps, 0, 1): 0 at the growth step, 1 after T."""
  t = (jnp.asarray(step, jnp.float32) - start) / max(ramp_steps, 1)
  return jnp.clip(t, 0.0, 1.0)


def set_ramp(masks, c):
  """Masks (any pytree) with every entry below 1 set to c: new units follow the ramp."""
  return jax.tree.map(lambda m: jnp.where(m < 1.0, jnp.asarray(c, m.dtype), m), masks)


msg = make("copy")
g_random = make("random")
