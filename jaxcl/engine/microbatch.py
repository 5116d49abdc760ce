"""Gradient accumulation inside the jitted step: a scan over microbatches, one optimizer update.

A global batch of B rows is split into M microbatches of B / M rows; `lax.scan` runs the
loss and its gradient on one microbatch at a time and sums, so activations are held for B / M
rows only and the optimizer sees the gradient of the whole batch (up to float summation order),
as MaxText's `gradient_accumulation_steps` does.

Microbatch i takes rows i, i + M, i + 2M, ... of the batch: a device's contiguous block of rows
then holds an equal share of every microbatch, so splitting moves no data between devices.

A loss that is a mean over examples combines exactly by averaging the microbatch means. A loss
normalised by something else (a token count, the weighted rows of the LM objectives) returns
that denominator as `aux["loss_weight"]`; microbatch i's loss and gradient then count with
weight w_i / sum(w). Floating aux metrics are averaged the same way, integer ones summed;
every microbatch sees the same `ctx` (and rng). Statistics over the whole
batch (L2P's `batchwise_train` majority vote over the batch) become per-microbatch ones.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

WEIGHT = "loss_weight"  # aux key: the loss's denominator, for weighting microbatches


def count(rows: int, batch_devices: int, *, microbatches: int, per_device: int) -> int:
  """The number of microbatches: `microbatches`, or (`per_device` > 0) the rows / (per_device x
  batch_devices) that leaves `per_device` rows per device in each microbatch."""
  if per_device > 0:
    if microbatches > 1:
      raise ValueError("set train.microbatches or train.per_device_microbatch, not both")
    chunk = per_device * batch_devices
    if rows % chunk:
      raise ValueError(
        f"{rows} batch rows do not split into microbatches of {per_device} rows on each of "
        f"{batch_devices} devices (train.per_device_microbatch)"
      )
    return rows // chunk
  if microbatches < 1 or rows % (microbatches * batch_devices):
    raise ValueError(
      f"train.microbatches={microbatches}: the {rows} batch rows must split into that many "
      f"microbatches, each divisible by the {batch_devices} devices the batch is split over"
    )
  return microbatches


def split(batch: dict, microbatches: int, batch_sharding: NamedSharding | None) -> dict:
  """Leaves [B, ...] -> [M, B / M, ...]; microbatch i holds rows i, i + M, ... (no data moves)."""

  def one(x):
    x = x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)
    if batch_sharding is None:
      return x
    spec = PartitionSpec(None, *batch_sharding.spec)
    return jax.lax.with_sharding_constraint(x, NamedSharding(batch_sharding.mesh, spec))

  return jax.tree.map(one, batch)


def accumulate(
  grad_fn: Callable, params, batch: dict, microbatches: int, batch_sharding=None
) -> tuple[tuple[jax.Array, dict], object]:
  """`grad_fn(params, batch) -> ((loss, aux), grads)` over the whole batch, computed as a scan
  over `microbatches` pieces (M = 1 calls `grad_fn` once). Returns ((loss, aux), grads) with
  loss, grads and the floating aux metrics averaged (weighted by `aux["loss_weight"]`)."""
  if microbatches == 1:
    return grad_fn(params, batch)
  pieces = split(batch, microbatches, batch_sharding)
  first = jax.tree.map(lambda x: x[0], pieces)
  (loss0, aux0), grads0 = jax.eval_shape(grad_fn, params, first)
  zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), tree)

  def body(carry, piece):
    (loss, aux), grads = grad_fn(params, piece)
    w = aux.pop(WEIGHT, jnp.float32(1.0)).astype(jnp.float32)
    add = lambda acc, x: acc + w * x.astype(jnp.float32)
    sums = jax.tree.map(add, carry[0], (loss, _floats(aux), grads))
    return (sums, carry[1] + w), _others(aux)

  aux_shape = dict(aux0)
  aux_shape.pop(WEIGHT, None)
  init = (zeros((loss0, _floats(aux_shape), grads0)), jnp.float32(0.0))
  ((loss, floats, grads), total), others = jax.lax.scan(body, init, pieces)
  total = jnp.maximum(total, jnp.finfo(jnp.float32).tiny)
  loss, floats = loss / total, jax.tree.map(lambda x: x / total, floats)
  grads = jax.tree.map(lambda g, s: (g / total).astype(s.dtype), grads, grads0)
  counts = jax.tree.map(lambda x: x.sum(0), others)  # integer / boolean metrics: summed
  return (loss, {**counts, **floats}), grads


def _floats(aux: dict) -> dict:
  return {k: v for k, v in aux.items() if jnp.issubdtype(jnp.result_type(v), jnp.floating)}


def _others(aux: dict) -> dict:
  return {k: v for k, v in aux.items() if k not in _floats(aux)}
