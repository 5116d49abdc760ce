"""Optimizer and per-task learning-rate schedule from `config.optim` (small optax factories)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def learning_rate(optim, global_batch: int) -> float:
  """Base LR, scaled by batch / `lr_base_batch` when set (L2P/DualPrompt: lr * batch / 256)."""
  if optim.lr_base_batch > 0:
    return optim.lr * global_batch / optim.lr_base_batch
  return optim.lr


def make_schedule(optim, base_lr: float, steps_per_task: int) -> optax.Schedule:
  """Schedule over the optimizer's step count (which restarts each task when reset_per_task)."""
  steps = max(steps_per_task, 1)
  if optim.schedule == "constant":
    main = optax.constant_schedule(base_lr)
  elif optim.schedule == "cosine":
    main = optax.cosine_decay_schedule(base_lr, max(steps - optim.warmup_steps, 1))
  elif optim.schedule == "coda_cosine":
    # CODA-Prompt utils/schedulers.py: lr * cos(99*pi*s / (200*(S-1))), ends near 1.6% of lr.
    main = lambda s: base_lr * jnp.cos(99 * math.pi * s / (200 * max(steps - 1, 1)))
  else:
    raise ValueError(f"optim.schedule={optim.schedule!r}: use constant | cosine | coda_cosine")
  if optim.warmup_steps > 0:
    warm = optax.linear_schedule(0.0, base_lr, optim.warmup_steps)
    return optax.join_schedules([warm, main], [optim.warmup_steps])
  return main


def make_optimizer(optim, schedule: optax.Schedule) -> optax.GradientTransformation:
  parts = []
  if optim.clip_norm > 0 and optim.clip_scope == "trainable":  # "all": the train step clips
    parts.append(optax.clip_by_global_norm(optim.clip_norm))
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
  if optim.clip_scope not in ("trainable", "all"):
    raise ValueError(f"optim.clip_scope={optim.clip_scope!r}: use trainable | all")
  return optax.chain(*parts)
