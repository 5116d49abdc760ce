"""Virtual outlier regularisation (VOR; Huang et al., "OVOR", ICLR 2024) for any prompt method.

As jpmorganchase/ovor implements it (`learners/default.py` `_train_one_epoch_ood`,
`learners/ood.py` NPOS), where it is a learner-independent phase: its README runs it after
OnePrompt, CODA-P, DualPrompt and L2P alike (`--epochs 0 <regular> <ood>`).

After the task's regular epochs the prompts are frozen, the features the head reads at test
time are computed for the task's training images, and for each of `ood_epochs` epochs virtual
outliers are drawn and the head alone is trained on batches of cached features plus outliers
with cross-entropy (non-current classes masked) + `ood_weight` * [Huber(relu(E(x) - thres_id))
+ Huber(relu(thres_ood - E(o)))], where E = -logsumexp of the current task's logits (an energy:
ID pushed below `ood_thres_id`, outliers above `ood_thres_ood`). Each epoch has ceil(N / batch)
steps; a step takes floor(n_out / steps) outliers, n_out = `ood_per_class` x classes in the task.

Outliers (`ood_center`): `cov` x N(0, I) offsets (`ood_candidates` of them) are scored by their
`ood_knn`-th nearest-neighbour distance to the L2-normalised task features and the n_out
farthest are kept. The reference computes `ood_boundary` boundary features but never adds them
to the offsets (its `boundary_points` is unused), so its outliers lie around the origin, the
offsets repeated `ood_boundary` times: `origin` reproduces that. `boundary` adds the offsets to
those boundary features (NPOS, Tao et al., ICLR 2023), as the paper describes.

Differences from the reference, forced by the hook contract: features come from one pass with
the eval transform (the reference re-extracts them every outlier epoch with the train
augmentation); the head's Adam moments restart at the outlier phase (the reference continues
the task's optimizer; hooks do not see the optimizer state). The outlier epochs continue the
per-task schedule, evaluated per epoch like the reference's epoch-stepped scheduler, which is
why a decaying schedule needs `optim.horizon_scale` = (train.epochs + ood_epochs) /
train.epochs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxcl import optim as optim_lib
from jaxcl.methods import base


def method_fields(*, epochs: int = 0) -> dict:
  """The `method` fields of VOR, jpmorganchase/ovor's `learners/ood.py` defaults, for a method
  config to add with `c.method.update(vor.method_fields())` (`epochs` 0: VOR off)."""
  return dict(
    ood_epochs=epochs,  # head-only epochs with virtual outliers after train.epochs
    ood_weight=0.1,  # `lmda`
    ood_center="origin",  # origin (the released code) | boundary (NPOS as described)
    ood_cov=0.1,  # offsets cov x N(0, I)
    ood_candidates=600,  # `sample_from`
    ood_boundary=50,  # `select`
    ood_knn=50,  # `K`
    ood_per_class=40,  # `num_per_class`
    ood_thres_id=-15.0,
    ood_thres_ood=-3.0,
    max_task_examples=0,  # feature buffer rows; 0 = data.max_train_per_class x classes
  )


def kth_distance(queries, points, valid, k: int):
  """Squared L2 distance [M] from each query [M, D] to its k-th nearest valid point [N, D]."""
  d = (queries**2).sum(-1)[:, None] + (points**2).sum(-1)[None] - 2 * queries @ points.T
  d = jnp.where(valid[None], d, jnp.inf)  # [M, N]
  return -jax.lax.top_k(-d, k)[0][:, -1]


def synthesize(feats, valid, key, cfg, num_out: int):
  """Virtual outliers [num_out, D] from the task's features [N, D] (`valid` [N]), farthest
  first by k-NN distance to the normalised features (see the module docstring). `ood_knn` and
  `ood_boundary` are capped at N, as the reference caps `select` at the task's size."""
  normed = base.l2_normalize(feats)
  knn, select = min(cfg.ood_knn, feats.shape[0]), min(cfg.ood_boundary, feats.shape[0])
  offsets = cfg.ood_cov * jax.random.normal(key, (cfg.ood_candidates, feats.shape[-1]))
  if cfg.ood_center == "origin":
    dist = jnp.tile(kth_distance(offsets, normed, valid, knn), select)
    return offsets[jax.lax.top_k(dist, num_out)[1] % cfg.ood_candidates]
  self_dist = jnp.where(valid, kth_distance(normed, normed, valid, knn), -jnp.inf)
  _, ids = jax.lax.top_k(self_dist, select)  # boundary features [S]
  cands = feats[ids][:, None] + offsets[None]  # [S, candidates, D]
  dist = jax.lax.map(lambda c: kth_distance(c, normed, valid, knn), cands)
  dist = jnp.where(valid[ids][:, None], dist, -jnp.inf).reshape(-1)
  return cands.reshape(-1, feats.shape[-1])[jax.lax.top_k(dist, num_out)[1]]


def outlier_loss(id_logits, ood_logits, id_mask, ood_mask, cfg):
  """`ood_weight` x (Huber(relu(E_id - thres_id)) + Huber(relu(thres_ood - E_ood))), E the
  energy -logsumexp over the (already masked) logits [B, C], means over the masked rows."""
  id_dist = jax.nn.relu(-jax.nn.logsumexp(id_logits, -1) - cfg.ood_thres_id)
  ood_dist = jax.nn.relu(cfg.ood_thres_ood + jax.nn.logsumexp(ood_logits, -1))

  def mean_huber(x, mask):  # torch HuberLoss(delta=1), mean over the valid rows
    return (optax.huber_loss(x) * mask).sum() / jnp.maximum(mask.sum(), 1)

  return cfg.ood_weight * (mean_huber(id_dist, id_mask) + mean_huber(ood_dist, ood_mask))


def buffer_size(config) -> int:
  """Rows of the per-task feature buffer (`method.max_task_examples`, or derived)."""
  cfg, data = config.method, config.data
  if cfg.max_task_examples:
    return cfg.max_task_examples
  if data.max_train_per_class:
    return data.max_train_per_class * max(data.init_classes, data.increment)
  raise ValueError("method.max_task_examples=0 needs data.max_train_per_class > 0; set it")


def check(config) -> None:
  """Refuses outlier settings the phase cannot run with."""
  cfg = config.method
  if cfg.ood_center not in ("origin", "boundary"):
    raise ValueError(f"method.ood_center={cfg.ood_center!r}: use origin | boundary")
  regular, ood_epochs = config.train.epochs, cfg.ood_epochs
  horizon = (regular + ood_epochs) / regular
  if config.optim.schedule != "constant" and abs(config.optim.horizon_scale - horizon) > 1e-6:
    raise ValueError(
      f"method.ood_epochs={ood_epochs} after train.epochs={regular}: the per-task schedule must "
      f"span both, set optim.horizon_scale={horizon:g} (1.0 without outlier epochs)"
    )


def regularized(method: base.Method, config, features: Callable) -> base.Method:
  """`method` followed, after each task, by `method.ood_epochs` of outlier-regularised head
  training; unchanged when `ood_epochs` is 0.

  `features(model, images, ctx)` -> [B, D] float32 is what `model.head` (an nnx.Linear over all
  classes) reads at test time. The feature buffer lives in the learner's `extra` under "vor".
  """
  cfg = config.method
  check(config)
  if not cfg.ood_epochs:
    return method
  regular, ood_epochs = config.train.epochs, cfg.ood_epochs
  size = buffer_size(config)
  per_task = max(config.data.init_classes, config.data.increment)
  num_out = min(min(cfg.ood_boundary, size) * cfg.ood_candidates, cfg.ood_per_class * per_task)
  bsz = config.data.batch_size
  base_lr = optim_lib.learning_rate(config.optim, bsz)
  schedule = optim_lib.make_schedule(config.optim, base_lr, max(round(regular), 1))
  epoch_lrs = jnp.array([schedule(round(regular) + e) for e in range(ood_epochs)])

  def init_extra(model, num_classes: int):
    width = model.head.kernel.shape[0]
    buffers = {
      "feats": jnp.zeros((size, width)),
      "labels": jnp.zeros((size,), jnp.int32),
      "count": jnp.zeros((), jnp.int32),
    }
    return {**method.init_extra(model, num_classes), "vor": buffers}

  def collect(model, extra, batch, ctx):
    buf, mask = extra["vor"], batch["mask"]
    rows = jnp.where(mask, buf["count"] + jnp.cumsum(mask) - 1, size)  # size: dropped
    feats = buf["feats"].at[rows].set(features(model, batch["image"], ctx), mode="drop")
    labels = buf["labels"].at[rows].set(batch["label"], mode="drop")
    return {**extra, "vor": {"feats": feats, "labels": labels, "count": buf["count"] + mask.sum()}}

  def head_loss(head, x, y, x_mask, outliers, o_mask, current):
    logits = base.mask_logits(x @ head["kernel"] + head["bias"], current)  # [B, C]
    ood_logits = base.mask_logits(outliers @ head["kernel"] + head["bias"], current)
    ce = base.cross_entropy(logits, y, x_mask)
    return ce + outlier_loss(logits, ood_logits, x_mask, o_mask, cfg)

  def regularize(model, extra, ctx):
    buf = extra["vor"]
    feats, labels, n = buf["feats"], buf["labels"], jnp.minimum(buf["count"], size)
    valid = jnp.arange(size) < n
    steps = (n + bsz - 1) // bsz  # ID batches per epoch (the last one partial)
    n_out = jnp.minimum(num_out, cfg.ood_per_class * ctx.current.sum())
    o_bsz = n_out // jnp.maximum(steps, 1)  # outliers per step
    adam = optax.scale_by_adam(config.optim.b1, config.optim.b2, config.optim.eps)
    head = {"kernel": model.head.kernel[...], "bias": model.head.bias[...]}

    def epoch(e, carry):
      k_out, k_perm = jax.random.split(jax.random.fold_in(ctx.rng, e))
      outliers = synthesize(feats, valid, k_out, cfg, num_out)  # [num_out, D]
      order = jnp.argsort(jnp.where(valid, jax.random.uniform(k_perm, (size,)), 2.0))
      order = jnp.concatenate([order, jnp.zeros((bsz,), order.dtype)])  # room for the last slice

      def step(i, carry):
        head, opt = carry
        rows = jax.lax.dynamic_slice_in_dim(order, i * bsz, bsz)
        row_mask = i * bsz + jnp.arange(bsz) < n
        picks = jnp.minimum(i * o_bsz + jnp.arange(num_out), num_out - 1)
        o_mask = jnp.arange(num_out) < o_bsz
        grads = jax.grad(head_loss)(
          head, feats[rows], labels[rows], row_mask, outliers[picks], o_mask, ctx.current
        )
        updates, opt = adam.update(grads, opt)
        return jax.tree.map(lambda p, u: p - epoch_lrs[e] * u, head, updates), opt

      return jax.lax.fori_loop(0, steps, step, carry)

    head, _ = jax.lax.fori_loop(0, ood_epochs, epoch, (head, adam.init(head)))
    model.head.kernel[...], model.head.bias[...] = head["kernel"], head["bias"]
    return {**extra, "vor": {**buf, "count": jnp.zeros((), jnp.int32)}}

  def after_task(state, env: base.TaskEnv):
    state = env.feature_pass(method.after_task(state, env), collect)
    count = int(jax.device_get(state.extra["vor"]["count"]))
    if count > size:
      raise ValueError(
        f"task {env.index} has {count} training images: set method."
        f"max_task_examples >= {count} (now {size})"
      )
    return env.edit(state, regularize)

  return method._replace(init_extra=init_extra, after_task=after_task)
