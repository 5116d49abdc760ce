"""Pretraining objectives: next-token prediction and masked LM.

Each objective is a `loss(model, extra, batch, ctx)` that the engine's train step
(jaxcl/engine/step.py) differentiates with respect to every `nnx.Param`, plus
`loss_sums(model, batch)` for evaluation: summed token losses and token counts, so padded
evaluation rows and uneven batches stay exact.

- `lm`: causal language modelling (Radford et al. 2019): batch `tokens` int32 [B, T+1]; the
  model reads tokens[:, :-1] and predicts tokens[:, 1:]. With `chunk` > 0 the cross-entropy
  runs over chunks of that many positions and the full logits never materialise
  (jaxcl/lm/chunked_loss.py).
- `mlm`: masked language modelling (Devlin et al. 2019): batch `tokens` [B, T] with the
  masked input, `targets` [B, T] and `target_mask` bool [B, T] (the 15% chosen positions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcl.engine import microbatch
from jaxcl.lm import chunked_loss


class Objective(NamedTuple):
  loss: Callable  # (model, extra, batch, ctx, depth=None) -> (loss [], aux dict): train step
  loss_sums: Callable  # (model, batch) -> {"loss_sum": [], "tokens": []}


def _row_mask(batch: dict, shape: tuple[int, ...]) -> jax.Array:
  """[B, T] weights: padded evaluation rows (batch["mask"] False) count for nothing."""
  rows = batch.get("mask")
  ones = jnp.ones(shape, jnp.float32)
  return ones if rows is None else ones * rows[:, None].astype(jnp.float32)


def lm_token_losses(model, batch: dict, chunk: int = 0, depth=None) -> tuple[jax.Array, jax.Array]:
  """Per-token cross-entropy [B, T] and weights [B, T] for next-token prediction."""
  tokens = batch["tokens"]  # [B, T+1]
  targets = tokens[:, 1:]  # [B, T]
  if chunk:
    hidden = model.hidden(tokens[:, :-1], depth)  # [B, T, D]
    losses = chunked_loss.token_losses(hidden, model.unembedding(), targets, chunk)
    return losses, _row_mask(batch, targets.shape)
  logits = model(tokens[:, :-1], depth)  # [B, T, V]
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return losses, _row_mask(batch, targets.shape)


def mlm_token_losses(model, batch: dict, chunk: int = 0, depth=None) -> tuple[jax.Array, jax.Array]:
  """Per-token cross-entropy [B, T] on the masked positions only (weights 0 elsewhere)."""
  del chunk  # the BERT head is computed whole
  _, logits = model(batch["tokens"], depth=depth)  # hidden [B, T, D], logits [B, T, V]
  losses = optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), batch["targets"]
  )
  weights = _row_mask(batch, batch["targets"].shape) * batch["target_mask"].astype(jnp.float32)
  return losses, weights


def make(name: str, *, chunk: int = 0) -> Objective:
  """The objective `name`: lm | mlm; `chunk` positions per cross-entropy chunk (lm; 0 = all
  logits at once). The loss reports its token count as the microbatch weight; its `depth`
  (int32 [], None = all) trains the sub-model of the bottom layers (jaxcl/lm/two_stage.py)."""
  token_losses = {"lm": lm_token_losses, "mlm": mlm_token_losses}.get(name)
  if token_losses is None:
    raise ValueError(f"train.objective={name!r}: use lm | mlm")

  def loss(model, extra, batch, ctx, depth=None):
    del extra, ctx
    losses, weights = token_losses(model, batch, chunk, depth)
    total = weights.sum()
    return (losses * weights).sum() / jnp.maximum(total, 1.0), {microbatch.WEIGHT: total}

  def loss_sums(model, batch):
    losses, weights = token_losses(model, batch, chunk)
    return {"loss_sum": (losses * weights).sum(), "tokens": weights.sum()}

  return Objective(loss, loss_sums)
