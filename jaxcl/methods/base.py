"""The method contract: a continual-learning method is a bag of pure functions.

Shaped like optax's `GradientTransformation`: a factory `make(config) -> Method`
closes over the hyperparameters and returns functions that never mutate anything.
The generic train step (jaxcl/engine/step.py) never names a method; per-task
changes reach a method only through traced arrays in `Ctx`, so a whole task
sequence compiles the step once. Only task-boundary hooks run on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxcl.models import layers, loading, vit


class Ctx(NamedTuple):
  """The traced view of the learner state a loss or predict function may read."""

  task: jax.Array  # int32 []
  seen: jax.Array  # bool [C]
  current: jax.Array  # bool [C]
  rng: jax.Array  # PRNG key for this step
  step: jax.Array | None = None  # int32 [], the learner's global step (None outside a step)


class TaskEnv(NamedTuple):
  """What a task-boundary hook gets besides the state.

  `feature_pass(state, fn)` runs the jitted `fn(model, extra, batch, ctx) -> extra`
  over one pass of the task's training data (with the *eval* transform, as
  prototype methods do) and returns the state with the new `extra`.
  `edit(state, fn)` runs the jitted `fn(model, extra, ctx) -> extra` once; `fn` may
  also assign to the model's variables (prompt re-initialisation, copies), and the
  state comes back with the edited parameters.
  """

  index: int
  num_tasks: int
  classes: Any  # np.ndarray of the task's (remapped) class ids
  feature_pass: Callable
  edit: Callable


def keep(state, env):
  del env
  return state


class Method(NamedTuple):
  build: Callable[[Any, int, nnx.Rngs], nnx.Module]  # (config, num_classes, rngs) -> model
  trainable: Any  # nnx filter selecting the trainable variables
  predict: Callable  # (model, extra, images, ctx) -> (logits [B, C], aux dict of [B, ...] arrays)
  loss: Callable | None = None  # (model, extra, batch, ctx) -> (loss [], aux dict); None = no SGD
  init_extra: Callable[[nnx.Module, int], Any] = lambda model, num_classes: {}
  before_task: Callable = keep  # (state, env) -> state, host side
  after_task: Callable = keep  # (state, env) -> state, host side
  single_task: bool = False  # train on all classes as one task (the joint upper bound)
  train_tasks: str = "all"  # "all" | "first": gradient steps only in task 0 (APER, RanPAC)


def linear_head(width: int, num_classes: int, init: str, rngs: nnx.Rngs) -> nnx.Linear:
  """The classifier: `zeros` (google-research/l2p), `lecun` (flax), or `torch` (nn.Linear's
  U(+-1/sqrt(fan_in)) for kernel and bias, as CODA-Prompt's head)."""
  if init == "zeros":
    return nnx.Linear(width, num_classes, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)
  if init == "lecun":
    return nnx.Linear(width, num_classes, rngs=rngs)
  if init == "torch":
    bound = width**-0.5
    bias = lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound
    )
    kernel = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    return nnx.Linear(width, num_classes, kernel_init=kernel, bias_init=bias, rngs=rngs)
  raise ValueError(f"head init {init!r}: use zeros | lecun | torch")


class CosineHead(nnx.Module):
  """`sigma * cos(x, w_c)` over all classes (PILOT `CosineLinear`): w ~ U(+-1/sqrt(D)), sigma 1
  and learnable."""

  def __init__(self, width: int, num_classes: int, rngs: nnx.Rngs):
    bound = width**-0.5
    self.kernel = nnx.Param(
      jax.random.uniform(rngs.params(), (num_classes, width), jnp.float32, -bound, bound)
    )
    self.sigma = nnx.Param(jnp.ones(()))

  def __call__(self, x: jax.Array) -> jax.Array:  # [B, D] -> [B, C]
    cos = l2_normalize(x.astype(jnp.float32)) @ l2_normalize(self.kernel[...]).T
    return self.sigma[...] * cos


class Learner(nnx.Module):
  """A backbone with a linear head over all classes of the benchmark (fixed shape)."""

  def __init__(
    self, backbone: vit.ViT, num_classes: int, *, rngs: nnx.Rngs, zero_head: bool = True
  ):
    self.backbone = backbone
    width = backbone.cls.shape[-1]
    self.head = linear_head(width, num_classes, "zeros" if zero_head else "lecun", rngs)


def build_backbone(config, rngs: nnx.Rngs) -> vit.ViT:
  """The ViT of `config.model`, loaded from `config.model.init` when set."""
  dtype = jnp.dtype(layers.compute_dtype(config.model.dtype))
  model = vit.from_variant(
    config.model.variant,
    image_size=config.data.image_size,
    channels=config.data.channels,
    rngs=rngs,
    dtype=dtype,
    attention=config.model.attention,
  )
  if config.model.init:
    loading.load_vit(model, resolve_init(config.model.init))
  return model


def resolve_init(path: str) -> str:
  """`embedded` names the ViT shipped inside jaxcl (see jaxcl/assets/README.md)."""
  if path == "embedded":
    from jaxcl import assets  # noqa: PLC0415

    return assets.embedded_vit_path()
  return path


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along the last axis (torch `F.normalize`).

  The norm is sqrt(max(sum x^2, eps^2)), so a zero row maps to zero with a zero gradient;
  `jnp.linalg.norm` would give a NaN gradient there (0/0), e.g. for a CODA component that
  Gram-Schmidt could not make orthogonal.
  """
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def mask_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Sets logits of classes outside `mask` [C] to the most negative finite value."""
  return jnp.where(mask[None, :], logits, jnp.finfo(logits.dtype).min)


def train_classes(ctx: Ctx, train_mask: str) -> jax.Array | None:
  """The classes [C] whose logits enter the training softmax: `current` (what the reference
  codes of the prompt methods do), `seen`, or None (`none`: all classes)."""
  return {"current": ctx.current, "seen": ctx.seen}.get(train_mask)


def mask_for_training(logits: jax.Array, ctx: Ctx, train_mask: str) -> jax.Array:
  """`logits` [B, C] with the classes outside `train_classes` masked."""
  mask = train_classes(ctx, train_mask)
  return logits if mask is None else mask_logits(logits, mask)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy over the rows where `mask` [B] is true."""
  per = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  if mask is None:
    return per.mean()
  mask = mask.astype(per.dtype)
  return (per * mask).sum() / jnp.maximum(mask.sum(), 1.0)
