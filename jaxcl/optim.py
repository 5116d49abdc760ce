"""Optimizer and per-task learning-rate schedule from `config.optim` (small optax factories)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


def learning_rate(optim, global_batch: int) -> float:
  """Base LR, scaled by batch / `lr_base_batch` when set (L2P/DualPrompt: lr * batch / 256)."""
  if optim.lr_base_batch > 0:
    return optim.lr * global_batch / optim.lr_base_batch
  return optim.lr


def make_schedule(optim, base_lr: float, steps_per_task: int) -> optax.Schedule:
  """Schedule over the optimizer's step count (which restarts each task when reset_per_task).

  The schedule spans `horizon_scale` x the task's steps: > 1 when a method goes on training
  after the loop's steps with the rest of the same schedule (OVOR's outlier epochs).
  `multistep` multiplies the lr by `decay_factor` at each of `decay_milestones`, given as
  fractions of the task's steps (torch MultiStepLR at epochs 18 of 20 = 0.9).
  """
  steps = max(round(steps_per_task * optim.horizon_scale), 1)
  if optim.schedule == "constant":
    main = optax.constant_schedule(base_lr)
  elif optim.schedule == "cosine":
    main = optax.cosine_decay_schedule(base_lr, max(steps - optim.warmup_steps, 1))
  elif optim.schedule == "coda_cosine":
    # CODA-Prompt utils/schedulers.py: lr * cos(99*pi*s / (200*(S-1))), ends near 1.6% of lr.
    main = lambda s: base_lr * jnp.cos(99 * math.pi * s / (200 * max(steps - 1, 1)))
  elif optim.schedule == "multistep":
    bounds = {round(f * steps): optim.decay_factor for f in optim.decay_milestones}
    main = optax.piecewise_constant_schedule(base_lr, bounds)
  else:
    raise ValueError(
      f"optim.schedule={optim.schedule!r}: use constant | cosine | coda_cosine | multistep"
    )
  if optim.warmup_steps > 0:
    warm = optax.linear_schedule(0.0, base_lr, optim.warmup_steps)
    return optax.join_schedules([warm, main], [optim.warmup_steps])
  return main


def param_groups(params):
  """ "backbone" for every leaf under a `backbone` attribute, "other" for the rest (head,
  prompts): the labels of `optax.multi_transform`."""

  def label(path, _):
    return "backbone" if any(getattr(k, "key", None) == "backbone" for k in path) else "other"

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(optim, schedule: optax.Schedule) -> optax.GradientTransformation:
  """`optim.name` with `schedule`; the backbone's lr is `backbone_lr_scale` x the schedule (a
  separate torch param group: SLCA's slow learner uses 0.01; 0 freezes the backbone)."""
  if optim.clip_scope not in ("trainable", "all"):
    raise ValueError(f"optim.clip_scope={optim.clip_scope!r}: use trainable | all")
  parts = []
  if optim.clip_norm > 0 and optim.clip_scope == "trainable":  # "all": the train step clips
    parts.append(optax.clip_by_global_norm(optim.clip_norm))
  scale = optim.backbone_lr_scale
  if scale == 1.0:
    parts += _base_parts(optim, schedule)
  else:
    if scale < 0:
      raise ValueError(f"optim.backbone_lr_scale={scale} must be >= 0")
    slow = (
      optax.set_to_zero()
      if scale == 0
      else optax.chain(*_base_parts(optim, lambda step: scale * schedule(step)))
    )
    groups = {"backbone": slow, "other": optax.chain(*_base_parts(optim, schedule))}
    parts.append(optax.multi_transform(groups, param_groups))
  return optax.chain(*parts)


def _base_parts(optim, schedule: optax.Schedule) -> list[optax.GradientTransformation]:
  parts = []
  if optim.name == "adam":
    parts.append(optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps))
    if optim.weight_decay:  # L2 added to the gradient before Adam would differ; this is decoupled
      raise ValueError("optim.weight_decay with adam: use optim.name='adamw'")
  elif optim.name == "adamw":
    parts.append(
      optax.adamw(
        schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay
      )
    )
  elif optim.name == "sgd":
    if optim.weight_decay:
      parts.append(optax.add_decayed_weights(optim.weight_decay))
    parts.append(optax.sgd(schedule, momentum=optim.momentum or None))
  else:
    raise ValueError(f"optim.name={optim.name!r}: use adam | adamw | sgd")
  return parts
