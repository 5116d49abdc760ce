"""bert2BERT's two-stage pre-training (Chen et al., ACL 2022, §4.3 and its Algorithm 1).

After a growth event the grown model (L layers) trains in two stages:

1. for `growth.two_stage_steps` steps, sub-models: each step draws one depth k uniformly from
   {l_b, 2 l_b, ..., L} (l_b = `growth.two_stage_lb`), runs the bottom k layers under the
   shared final norm and head, and updates only the sub-model's top l_b layers [k - l_b, k)
   and what all sub-models share (embeddings, final norm, head);
2. then the whole model, the ordinary step.

Paper defaults for BERT_BASE: l_b = 3 and E_b = 5 epochs of stage 1; a stage 1 of 20 epochs
cut the saving from 45.2% to 25.4% (research/growth.md §5.3).

One compiled step serves both stages and every k: k is read from a table by the traced step
counter, the layers above k are skipped inside the layer scan (`layers.apply_layers(depth=)`),
and the step keeps the other layers' parameters and optimizer moments
(`step.make_train_step(update_mask=)`). So a run still compiles 1 + events train steps.

Where the paper is silent, this picks:
- when L is not a multiple of l_b, L joins the set {l_b, 2 l_b, ...} (the full model is always
  one of the sub-models); when L <= l_b stage 1 is the ordinary step;
- the table is drawn once per event from the run's seed, so the depth at a step is a function
  of the checkpointed step counter and a resumed run trains the same sub-models;
- "only update its top l_b layers and the shared head": the backward runs through all k layers
  (the embeddings, shared with the head, get their gradient through them too); the frozen
  layers keep their Adam moments, and optax's one step count (bias correction) still advances;
- every growth event of the run gets a stage 1 (the paper grows once);
- a stage-1 step costs the k-layer sub-model's training FLOPs (`models.flops_per_token` of it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_SEED_STREAM = 0xB2B  # the depth tables draw their own numbers from the run's seed


def depths(num_layers: int, lb: int) -> list[int]:
  """The sub-model depths {l_b, 2 l_b, ...} below `num_layers`, and `num_layers` itself."""
  return sorted({*range(lb, num_layers, lb), num_layers})


class TwoStage:
  """Stage 1 after each growth event: `steps` steps from `starts[i]` on a model of `layers[i]`
  layers (the shape after event i)."""

  def __init__(self, starts: Sequence[int], layers: Sequence[int], steps: int, lb: int, seed: int):
    if steps < 1 or lb < 1:
      raise ValueError(f"growth.two_stage_steps={steps}, two_stage_lb={lb}: both must be >= 1")
    self.starts, self.steps, self.lb = [int(s) for s in starts], int(steps), int(lb)
    rng = np.random.default_rng([seed, _SEED_STREAM])
    self.tables = [rng.choice(depths(n, lb), size=self.steps).astype(np.int32) for n in layers]

  def depth_at(self, step: int) -> int | None:
    """The sub-model depth trained at global step `step` (0-based), None: the whole model."""
    for start, table in zip(self.starts, self.tables, strict=True):
      if start <= step < start + self.steps:
        return int(table[step - start])
    return None

  def depth(self, step, num_layers: int) -> jax.Array:
    """`depth_at` traced: int32 [], `num_layers` outside stage 1."""
    return self._depth_in_stage_one(step, num_layers)[0]

  def _depth_in_stage_one(self, step, num_layers: int) -> tuple[jax.Array, jax.Array]:
    """(depth int32 [], whether `step` is in a stage 1 bool [])."""
    depth, inside = jnp.int32(num_layers), jnp.bool_(False)
    for start, table in zip(self.starts, self.tables, strict=True):
      i = step - start
      here = (i >= 0) & (i < self.steps)
      depth = jnp.where(here, jnp.asarray(table)[jnp.clip(i, 0, self.steps - 1)], depth)
      inside = inside | here
    return depth, inside

  def loss(self, loss_fn: Callable) -> Callable:
    """An objective's `loss(model, extra, batch, ctx, depth)` on the step's sub-model."""

    def sub_model_loss(model, extra, batch, ctx):
      depth = self.depth(ctx.step, model.config.num_layers)
      return loss_fn(model, extra, batch, ctx, depth=depth)

    return sub_model_loss

  def update_mask(self, num_layers: int) -> Callable:
    """`mask(params, ctx)` for `make_train_step`: per parameter leaf, True where this step
    updates it. Layer leaves (under "blocks": scanned [L, ...], or listed by index) are updated
    in the sub-model's top l_b layers, everything else always."""

    def mask(params, ctx):
      k, stage_one = self._depth_in_stage_one(ctx.step, num_layers)
      layer = jnp.arange(num_layers)
      top = ((layer >= k - self.lb) & (layer < k)) | ~stage_one  # [L]; stage 2: all

      def leaf_mask(path, x):
        keys = [getattr(p, "key", None) for p in path]
        if "blocks" not in keys:
          return jnp.bool_(True)
        index = keys[keys.index("blocks") + 1]
        if isinstance(index, int):  # a listed layer
          return top[index]
        return top.reshape((-1,) + (1,) * (x.ndim - 1))  # [L, 1, ...]

      return jax.tree_util.tree_map_with_path(leaf_mask, params)

    return mask


def from_config(config, event_steps: Sequence[int], target_layers: Sequence[int]):
  """The run's `TwoStage` (None when `growth.two_stage_steps` is 0), checked: stage 1 after an
  event ends before the next event."""
  g = config.growth
  if not g.two_stage_steps:
    return None
  if not event_steps:
    raise ValueError("growth.two_stage_steps > 0 needs growth events")
  for s, nxt in zip(event_steps, event_steps[1:], strict=False):
    if s + g.two_stage_steps > nxt:
      raise ValueError(f"stage 1 after the growth event at step {s} runs into the one at {nxt}")
  return TwoStage(event_steps, target_layers, g.two_stage_steps, g.two_stage_lb, config.seed)
