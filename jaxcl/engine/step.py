"""The only jit site: train, eval, task-transition and feature-pass steps.

Each step is a pure function of the learner state, jitted once with the state
donated and explicit shardings. Every factory takes the run's `traces` counter and counts
there how often its step was traced; for fixed shapes a trace is a compilation, and a run
reports `traces["train"]` as `train_compiles` (1 for a whole task sequence, +1 per growth
event).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxcl.data.transforms import scale_images
from jaxcl.engine import microbatch
from jaxcl.engine.state import LearnerState
from jaxcl.methods.base import Ctx, mask_logits

Traces = collections.Counter  # step name -> number of traces, one counter per run
_AUGMENT_STREAM = 0x41554721  # folded into the step key: augmentation draws its own numbers


def _ctx(state: LearnerState, rng: jax.Array) -> Ctx:
  return Ctx(state.task, state.seen, state.current, rng, state.step)


def _on_mesh(batch_sharding):
  """The batch's mesh as the tracing context: models constrain activations to its batch axes
  (`gpt.batch_sharded`); nothing without a sharding."""
  if batch_sharding is None:
    return contextlib.nullcontext()
  return jax.sharding.use_abstract_mesh(batch_sharding.mesh.abstract_mesh)


def _scaled(batch: dict, scale: str) -> dict:
  """Images scaled on device; batches without images (token batches) pass unchanged."""
  if scale == "none" or "image" not in batch:
    return batch
  return {**batch, "image": scale_images(batch["image"], scale)}


def make_train_step(
  loss_fn: Callable,
  graphdef,
  tx: optax.GradientTransformation,
  *,
  scale: str,
  skip_nonfinite: bool,
  state_sharding,
  batch_sharding,
  traces: Traces,
  clip_all: float = 0.0,
  microbatches: int = 1,
  augment: Callable | None = None,
  update_mask: Callable | None = None,
) -> Callable:
  """`train_step(state, batch) -> (state, metrics)`; metrics stay on device.

  `augment(images uint8 [B, h, w, C], key) -> [B, S, S, C]` in [0, 255], if given, augments the
  images on device before scaling (jaxcl/data/device_augment.py), with a key of its own per step.

  `microbatches > 1` accumulates the gradient over that many pieces of the batch inside the
  step (jaxcl/engine/microbatch.py) before the one optimizer update.

  `loss_fn(model, extra, batch, ctx) -> (loss [], aux dict)` is a method's loss or a pretraining
  objective's; the gradient is taken with respect to `state.params` (the trainable filter
  split them off when the state was built).

  `clip_all > 0` clips the trainable gradients by the global norm of the gradients of *all*
  parameters, frozen ones included, as google-research/l2p does (its frozen backbone gets
  gradients that only an lr of 0 keeps from being applied); this costs the backbone's weight
  gradients. The optimizer must then not clip again.

  `update_mask(params, ctx) -> bool pytree` (one leaf per parameter leaf, broadcastable to it),
  if given, applies the step only where True: elsewhere the parameters and their optimizer
  moments keep their values, as a PyTorch parameter without a gradient does (a freeze that
  changes per step without a recompilation: bert2BERT's stage 1, jaxcl/lm/two_stage.py).
  """

  def train_step(state: LearnerState, batch: dict):
    traces["train"] += 1
    ctx = _ctx(state, jax.random.fold_in(state.rng, state.step))
    if augment is not None:
      key = jax.random.fold_in(ctx.rng, _AUGMENT_STREAM)
      batch = {**batch, "image": augment(batch["image"], key)}
    batch = _scaled(batch, scale)

    def params_loss(params, frozen, batch):
      model = nnx.merge(graphdef, params, frozen)
      return loss_fn(model, state.extra, batch, ctx)

    grad_fn = jax.value_and_grad(params_loss, argnums=(0, 1) if clip_all > 0 else 0, has_aux=True)
    with _on_mesh(batch_sharding):
      (loss, aux), grads = microbatch.accumulate(
        lambda both, b: grad_fn(*both, b),
        (state.params, state.frozen),
        batch,
        microbatches,
        batch_sharding,
      )
    aux.pop(microbatch.WEIGHT, None)
    if clip_all > 0:
      grads, frozen_grads = grads
      norm = optax.tree.norm((grads, frozen_grads))
      factor = jnp.minimum(1.0, clip_all / (norm + 1e-6))  # l2 train_continual.py
      grads = jax.tree.map(lambda g: g * factor, grads)
    extra = aux.pop("extra", state.extra)
    updates, opt = tx.update(grads, state.opt, state.params)
    params = optax.apply_updates(state.params, updates)
    if update_mask is not None:
      params, opt = _only_where(update_mask(state.params, ctx), params, opt, state)
    new = state.replace(step=state.step + 1, params=params, opt=opt, extra=extra)
    update_norm = optax.tree.norm(updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(update_norm)
    if skip_nonfinite:  # keep the old state, but still count the step
      new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state.replace(step=new.step))
    metrics = {"loss": loss, "update_norm": update_norm, "finite": finite, **aux}
    return new, metrics

  return jax.jit(
    train_step,
    donate_argnums=0,
    in_shardings=(state_sharding, batch_sharding),
    out_shardings=(state_sharding, None),
  )


def _only_where(mask, params, opt, old: LearnerState):
  """(params, opt) where `mask` holds, the old values elsewhere: every subtree of the optimizer
  state shaped like the parameters (Adam's mu and nu, a momentum trace) is masked; counts are
  not."""
  select = lambda new, before: jax.tree.map(jnp.where, mask, new, before)
  shape = jax.tree.structure(old.params)
  like_params = lambda x: jax.tree.structure(x) == shape
  opt = jax.tree.map(
    lambda new, before: select(new, before) if like_params(new) else new,
    opt,
    old.opt,
    is_leaf=like_params,
  )
  return select(params, old.params), opt


def make_eval_step(
  predict: Callable,
  graphdef,
  *,
  scale: str,
  mask_unseen: bool,
  state_sharding,
  batch_sharding,
  traces: Traces,
) -> Callable:
  """`eval_step(state, batch, task_mask [C]) -> sums` (sums, so padded rows stay exact), with
  `predict(model, extra, images, ctx) -> (logits [B, C], aux)` a method's."""

  def eval_step(state: LearnerState, batch: dict, task_mask: jax.Array):
    traces["eval"] += 1
    model = nnx.merge(graphdef, state.params, state.frozen)
    logits, aux = predict(
      model, state.extra, _scaled(batch, scale)["image"], _ctx(state, state.rng)
    )
    valid = batch["mask"]
    cil_logits = mask_logits(logits, state.seen) if mask_unseen else logits
    correct = (jnp.argmax(cil_logits, -1) == batch["label"]) & valid
    task_il = (jnp.argmax(mask_logits(logits, task_mask), -1) == batch["label"]) & valid
    out = {"correct": correct.sum(), "task_il_correct": task_il.sum(), "count": valid.sum()}
    if "prompt_counts" in aux:  # [B, pool] selections per example
      out["prompt_counts"] = (aux["prompt_counts"] * valid[:, None]).sum(0)
    return out

  repl = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
  return jax.jit(eval_step, in_shardings=(state_sharding, batch_sharding, repl), out_shardings=repl)


def make_feature_step(
  fn: Callable, graphdef, *, scale: str, state_sharding, batch_sharding, traces: Traces
) -> Callable:
  """`feature_step(state, batch) -> state` with `extra = fn(model, extra, batch, ctx)`."""

  def feature_step(state: LearnerState, batch: dict):
    traces["feature"] += 1
    model = nnx.merge(graphdef, state.params, state.frozen)
    extra = fn(model, state.extra, _scaled(batch, scale), _ctx(state, state.rng))
    return state.replace(extra=extra)

  return jax.jit(
    feature_step,
    donate_argnums=0,
    in_shardings=(state_sharding, batch_sharding),
    out_shardings=state_sharding,
  )


def make_edit_step(
  fn: Callable, graphdef, trainable, *, state_sharding, traces: Traces
) -> Callable:
  """`edit_step(state) -> state`: `extra = fn(model, extra, ctx)`, where `fn` may also assign
  to the model's variables; the edited model is split back into params and frozen."""

  def edit_step(state: LearnerState):
    traces["edit"] += 1
    model = nnx.merge(graphdef, state.params, state.frozen)
    extra = fn(model, state.extra, _ctx(state, jax.random.fold_in(state.rng, state.task)))
    _, params, frozen = nnx.split(model, trainable, ...)
    return state.replace(params=params, frozen=frozen, extra=extra)

  return jax.jit(edit_step, donate_argnums=0, out_shardings=state_sharding)


def make_begin_task(
  tx: optax.GradientTransformation, *, reset_opt: bool, state_sharding, traces: Traces
) -> Callable:
  """`begin_task(state, task, seen, current) -> state`: new masks, optionally a fresh optimizer."""

  def begin_task(state: LearnerState, task, seen, current):
    traces["begin_task"] += 1
    opt = tx.init(state.params) if reset_opt else state.opt
    return state.replace(task=task, seen=seen, current=current, opt=opt)

  return jax.jit(begin_task, donate_argnums=0, out_shardings=state_sharding)


def make_state_fn(fn: Callable, *, state_sharding) -> Callable:
  """Jits a host-side hook's pure `fn(state) -> state` (Gram-Schmidt re-init, prototypes...)."""
  return jax.jit(fn, donate_argnums=0, out_shardings=state_sharding)


def make_loss_step(
  fn: Callable, graphdef, *, state_sharding, batch_sharding, traces: Traces
) -> Callable:
  """`loss_step(state, batch) -> fn(model, batch)`: evaluation sums (e.g. token loss, count)."""

  def loss_step(state: LearnerState, batch: dict):
    traces["loss_eval"] += 1
    with _on_mesh(batch_sharding):
      return fn(nnx.merge(graphdef, state.params, state.frozen), batch)

  repl = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
  return jax.jit(loss_step, in_shardings=(state_sharding, batch_sharding), out_shardings=repl)
