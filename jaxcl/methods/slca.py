"""SLCA: Slow Learner with Classifier Alignment (Zhang et al., ICCV 2023).

As GengDavid/SLCA `models/slca.py` implements it (research/prompt_cil.md §1.8):

- **Slow learner.** The whole pre-trained ViT is fine-tuned with SGD, the backbone at a
  learning rate 100x below the head's (`optim.backbone_lr_scale=0.01`: 1e-4 vs 1e-2), with
  cross-entropy on the current task's logits only. The backbone's final LayerNorm is replaced
  by a fresh one (`reset_norm`; the reference deletes and re-creates `model.norm`). The head is
  one linear map over all classes, N(0, 0.02) init; the reference's per-task heads freeze old
  ones, so the coupled (torch SGD) weight decay is applied here in the loss, to the backbone and
  to the head columns of the current task only.
- **Class statistics.** After each task, the mean and covariance (unbiased, + `cov_ridge` I) of
  the features of every new class, over its training images with the *eval* transform, in two
  passes (means, then centred second moments). Older classes keep the statistics of their own
  task. `extra` holds sums [C, D], counts [C] and covariances [C, D, D] over all classes.
- **Classifier alignment** (tasks > 0): for `ca_epochs` epochs, draw `ca_samples` features per
  seen class from N(mu_c * ((1 - s) + s (t_c + 1) / (t + 1)), Sigma_c) (s = `ca_mean_scale`,
  t_c the class's task), shuffle, and train the head on batches of `ca_samples` with SGD
  (`ca_lr`, momentum, weight decay, cosine over epochs) on logit-normalised cross-entropy:
  logits / mean over seen tasks of the L2 norm of each task's logit block / `ca_tau`.
  The pre-alignment head is kept and restored before the next task (`restore_head`: the
  reference's `fc.backup()` / `fc.recall()`), so alignment only shapes predictions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcl.methods import base
from jaxcl.models import layers


class SLCAModel(nnx.Module):
  """A ViT (fine-tuned) with a linear head over all classes."""

  def __init__(self, config, num_classes: int, rngs: nnx.Rngs):
    cfg = config.method
    self.backbone = base.build_backbone(config, rngs)
    width = self.backbone.cls.shape[-1]
    if cfg.reset_norm:  # a fresh torch nn.LayerNorm(768): eps 1e-5, scale 1, bias 0
      dtype = jnp.dtype(layers.compute_dtype(config.model.dtype))
      self.backbone.encoder_norm = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs)
    init = nnx.initializers.normal(0.02)  # timm trunc_normal_(std=.02) cuts at +-2, i.e. 100 std
    self.head = nnx.Linear(width, num_classes, kernel_init=init, rngs=rngs)


def squared_norm(model: SLCAModel, cols) -> jax.Array:
  """||backbone||^2 + ||head columns in `cols` [C]||^2: the coupled weight decay's L2."""
  leaves = jax.tree.leaves(nnx.state(model.backbone, nnx.Param))
  head = (model.head.kernel[...] ** 2).sum(0) + model.head.bias[...] ** 2  # [C]
  return sum(jnp.sum(x**2) for x in leaves) + jnp.sum(head * cols)


def task_of(data, num_classes: int) -> np.ndarray:
  """Task index [C] of every (remapped) class: `init_classes`, then `increment` per task."""
  c = np.arange(num_classes)
  return np.where(c < data.init_classes, 0, 1 + (c - data.init_classes) // data.increment)


def add_sums(feats, labels, mask, sums, counts):
  """Per-class feature sums [C, D] and counts [C], plus the rows of a batch."""
  onehot = jax.nn.one_hot(labels, counts.shape[0]) * mask[:, None]  # [B, C]
  return sums + onehot.T @ feats, counts + onehot.sum(0)


def add_scatter(feats, labels, mask, means, scatter):
  """Per-class centred second moments [C, D, D], plus sum (x - mu_y)(x - mu_y)^T of a batch."""
  onehot = jax.nn.one_hot(labels, means.shape[0]) * mask[:, None]  # [B, C]
  centred = feats - means[labels]  # [B, D]
  return scatter + jnp.einsum("bcd,be->cde", onehot[:, :, None] * centred[:, None], centred)


def finish_covariance(scatter, counts, rows, ridge: float):
  """Unbiased covariance + ridge I for the classes in `rows` [C]; other rows are kept."""
  eye = jnp.eye(scatter.shape[-1], dtype=scatter.dtype)
  cov = scatter / jnp.maximum(counts - 1.0, 1.0)[:, None, None] + ridge * eye
  return jnp.where(rows[:, None, None], cov, scatter)


def normalized_logits(logits, seen, tasks, task, tau: float):
  """SLCA's logit normalisation: logits [B, C] / (mean over seen tasks of each task block's L2
  norm + 1e-7) / tau, unseen classes masked. `tasks` [C] is each class's task index."""
  num_tasks = int(np.max(tasks)) + 1
  blocks = ((logits * seen) ** 2) @ jax.nn.one_hot(tasks, num_tasks)  # [B, T]
  seen_tasks = jnp.arange(num_tasks) <= task
  positive = blocks > 0  # torch.norm's gradient at 0 is 0, not inf
  norms = jnp.where(positive, jnp.sqrt(jnp.where(positive, blocks, 1.0)), 0.0) + 1e-7
  mean = (norms * seen_tasks).sum(-1, keepdims=True) / seen_tasks.sum()
  return base.mask_logits(logits / mean / tau, seen)


def align_head(head: dict, means, covs, seen, tasks, task, key, cfg) -> dict:
  """Classifier alignment on features sampled from the class Gaussians; returns the new head
  {"kernel": [D, C], "bias": [C]}. Every shape is fixed: all C classes are sampled, unseen ones
  are shuffled to the end and never reach a batch."""
  num_classes, width = means.shape
  samples, epochs = cfg.ca_samples, cfg.ca_epochs
  shift = cfg.ca_mean_scale
  mu = means * ((1 - shift) + shift * (tasks + 1) / (task + 1))[:, None]  # [C, D]
  eye = jnp.eye(width, dtype=covs.dtype)
  # One class at a time: a batched Cholesky on the CPU splits its batch over XLA's intra-op
  # thread pool and waits, and with several (fake) CPU devices running this replicated step at
  # once every pool thread ends up waiting (a deadlock seen in CI on 8 devices).
  chol = jax.lax.map(jnp.linalg.cholesky, jnp.where(seen[:, None, None], covs, eye))  # [C, D, D]
  labels = jnp.repeat(jnp.arange(num_classes), samples)  # [C * S]
  col = seen.astype(jnp.float32)
  decay_mask = {"kernel": col[None, :], "bias": col}

  def loss_fn(params, x, y):
    logits = x @ params["kernel"] + params["bias"]  # [S, C]
    if cfg.ca_tau > 0:
      logits = normalized_logits(logits, seen, tasks, task, cfg.ca_tau)
    else:
      logits = base.mask_logits(logits, seen)
    return base.cross_entropy(logits, y)

  def epoch(e, carry):
    k_draw, k_perm = jax.random.split(jax.random.fold_in(key, e))
    z = jax.random.normal(k_draw, (num_classes, samples, width))
    x = (mu[:, None] + jnp.einsum("cde,cse->csd", chol, z)).reshape(-1, width)  # [C * S, D]
    order = jnp.argsort(jnp.where(seen[labels], jax.random.uniform(k_perm, labels.shape), 2.0))
    lr = cfg.ca_lr * 0.5 * (1 + jnp.cos(math.pi * e / epochs))  # CosineAnnealingLR per epoch

    def step(i, carry):
      params, buf = carry
      idx = jax.lax.dynamic_slice_in_dim(order, i * samples, samples)
      grads = jax.grad(loss_fn)(params, x[idx], labels[idx])
      grads = jax.tree.map(lambda g, p, m: g + cfg.weight_decay * p * m, grads, params, decay_mask)
      buf = jax.tree.map(lambda b, g: cfg.ca_momentum * b + g, buf, grads)  # torch SGD momentum
      return jax.tree.map(lambda p, b: p - lr * b, params, buf), buf

    return jax.lax.fori_loop(0, seen.sum(), step, carry)

  zeros = jax.tree.map(jnp.zeros_like, head)
  out, _ = jax.lax.fori_loop(0, epochs, epoch, (head, zeros))
  return out


def make(config) -> base.Method:
  cfg = config.method
  if cfg.train_mask not in ("current", "seen", "none"):
    raise ValueError(f"method.train_mask={cfg.train_mask!r}: use current | seen | none")

  def build(config, num_classes: int, rngs: nnx.Rngs) -> SLCAModel:
    return SLCAModel(config, num_classes, rngs)

  def init_extra(model, num_classes: int):
    width = model.backbone.cls.shape[-1]
    return {
      "sums": jnp.zeros((num_classes, width)),
      "counts": jnp.zeros((num_classes,)),
      "covs": jnp.zeros((num_classes, width, width)),
      "head": {"kernel": jnp.copy(model.head.kernel[...]), "bias": jnp.copy(model.head.bias[...])},
    }

  def features(model, images):
    return model.backbone(images)["pre_logits"].astype(jnp.float32)  # [B, D]

  def predict(model, extra, images, ctx):
    del extra, ctx
    return model.head(features(model, images)), {}

  def loss(model, extra, batch, ctx):
    logits, _ = predict(model, extra, batch["image"], ctx)
    mask = base.train_classes(ctx, cfg.train_mask)
    logits = base.mask_for_training(logits, ctx, cfg.train_mask)
    ce = base.cross_entropy(logits, batch["label"])
    cols = jnp.ones_like(ctx.current) if mask is None else mask
    return ce + 0.5 * cfg.weight_decay * squared_norm(model, cols), {"ce": ce}

  def sum_pass(model, extra, batch, ctx):
    del ctx
    feats = features(model, batch["image"])
    sums, counts = add_sums(feats, batch["label"], batch["mask"], extra["sums"], extra["counts"])
    return {**extra, "sums": sums, "counts": counts}

  def scatter_pass(model, extra, batch, ctx):
    del ctx
    means = extra["sums"] / jnp.maximum(extra["counts"], 1.0)[:, None]
    feats = features(model, batch["image"])
    covs = add_scatter(feats, batch["label"], batch["mask"], means, extra["covs"])
    return {**extra, "covs": covs}

  def align(model, extra, ctx):
    covs = finish_covariance(extra["covs"], extra["counts"], ctx.current, cfg.cov_ridge)
    head = {"kernel": model.head.kernel[...], "bias": model.head.bias[...]}
    if cfg.ca_epochs > 0:
      tasks = task_of(config.data, extra["counts"].shape[0])  # static [C]
      means = extra["sums"] / jnp.maximum(extra["counts"], 1.0)[:, None]
      aligned = jax.lax.cond(
        ctx.task > 0,
        lambda: align_head(head, means, covs, ctx.seen, tasks, ctx.task, ctx.rng, cfg),
        lambda: head,
      )
      model.head.kernel[...], model.head.bias[...] = aligned["kernel"], aligned["bias"]
    return {**extra, "covs": covs, "head": head}  # the pre-alignment head, for restore

  def restore(model, extra, ctx):
    del ctx
    model.head.kernel[...], model.head.bias[...] = extra["head"]["kernel"], extra["head"]["bias"]
    return extra

  def before_task(state, env: base.TaskEnv):
    return env.edit(state, restore) if env.index > 0 and cfg.restore_head else state

  def after_task(state, env: base.TaskEnv):
    state = env.feature_pass(state, sum_pass)
    state = env.feature_pass(state, scatter_pass)
    return env.edit(state, align)

  return base.Method(
    build=build,
    trainable=nnx.Param,
    predict=predict,
    loss=loss,
    init_extra=init_extra,
    before_task=before_task,
    after_task=after_task,
  )
