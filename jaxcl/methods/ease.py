"""EASE: one adapter subspace per task, prototype complement, re-weighted subspace logits.

Zhou et al., "Expandable Subspace Ensemble for Pre-Trained Model-Based Class-Incremental
Learning" (CVPR 2024), as sun-hailong/CVPR24-Ease (= PILOT `models/ease.py`) implements it
(research/prompt_cil.md §1.7):

- Task t trains a fresh set of AdaptFormer adapters (jaxcl/models/petl.py) on the frozen ViT
  with a fresh cosine head over the task's classes (sigma reset to 1). Then the set is frozen
  into slot t of a bank of T sets allocated up front, so shapes never change and the train
  step compiles once; only the working set `adapter` is trainable.
- After task t, the new classes get a prototype (mean CLS feature, test transform) in every
  subspace j <= t, each subspace being the ViT with adapter set j. An old class c of task
  i < j has none in subspace j: it is synthesised ("semantic-guided prototype complement",
  `solve_sim_reset`, recomputed after every task) from the classes e of tasks >= j:
  P_j[c] = sum_e softmax_e(cos(P_i[c], P_i[e])) P_j[e].
- Prediction runs the ViT once per subspace j <= t (a loop with a traced trip count) and
  scores class c of task i as sum_j w_ij cos(f_j, P_j[c]), w_ii = 1 and w_ij = alpha / t
  (`forward_reweight`).

Not implemented: `use_init_ptm` / `beta` (an extra subspace for the plain ViT; off in every
shipped config but CUB IN-1k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcl.methods import base
from jaxcl.models import petl


class EaseModel(nnx.Module):
  """Frozen ViT, the working adapter set, the bank of T frozen sets, a cosine head."""

  def __init__(self, config, num_classes: int, rngs: nnx.Rngs):
    cfg, data = config.method, config.data
    self.backbone = base.build_backbone(config, rngs)
    depth, width = len(self.backbone.blocks), self.backbone.cls.shape[-1]
    self.num_tasks = 1 + (num_classes - data.init_classes) // data.increment  # static
    self.adapter = petl.Adapters(depth, width, cfg.adapter_dim, rngs=rngs)
    self.bank = petl.Adapters(depth, width, cfg.adapter_dim, rngs=rngs, sets=self.num_tasks)
    self.head = base.CosineHead(width, num_classes, rngs)


def subspace_features(model: EaseModel, images: jax.Array, count, scale: float) -> jax.Array:
  """CLS features [T, B, D] under adapter sets 0 .. count - 1 of the bank; zeros after."""
  bank = model.bank.weights()
  out = jnp.zeros((model.num_tasks, images.shape[0], model.backbone.cls.shape[-1]))

  def body(j, out):
    hook = petl.adapter_hook(bank.take(j), scale=scale)
    return out.at[j].set(model.backbone(images, adapter=hook)["cls"].astype(jnp.float32))

  return jax.lax.fori_loop(0, count, body, out)


def complement(real, class_task, seen, task) -> jax.Array:
  """Prototypes [T, C, D]: `real` where class c has one in subspace j (j <= its task), and
  for old classes in newer subspaces j <= `task` the similarity-weighted mix of the real
  prototypes in j of the classes of tasks >= j (CVPR24-Ease `solve_sim_reset`)."""
  num_tasks = real.shape[0]
  unit = base.l2_normalize(real)  # [T, C, D]
  sims = jnp.einsum("icd,ied->ice", unit, unit)  # [T, C, C]: cosines within subspace i
  own = jnp.take_along_axis(sims, jnp.clip(class_task, 0, num_tasks - 1)[None, :, None], 0)[0]
  j = jnp.arange(num_tasks)[:, None]  # [T, 1]
  cols = (class_task[None, :] >= j) & seen[None, :]  # [T, C]: classes e of tasks >= j
  logits = jnp.where(cols[:, None, :], own[None], -jnp.inf)  # [T, C, C]
  weights = jax.nn.softmax(logits, axis=-1)
  synth = jnp.einsum("jce,jed->jcd", jnp.where(cols[:, None, :], weights, 0.0), real)
  target = (class_task[None, :] < j) & (j <= task) & seen[None, :]  # [T, C]
  return jnp.where(target[..., None], synth, real)


def reweight(num_tasks: int, class_task, task, alpha: float) -> jax.Array:
  """Subspace weights [T, C]: 1 in the class's own subspace, alpha / task in the others up to
  `task` (CVPR24-Ease `forward_reweight`), 0 beyond."""
  j = jnp.arange(num_tasks)[:, None]
  other = alpha / jnp.maximum(task, 1).astype(jnp.float32)
  return jnp.where(j == class_task[None, :], 1.0, other) * (j <= task)


def make(config) -> base.Method:
  cfg = config.method

  def build(config, num_classes: int, rngs: nnx.Rngs) -> EaseModel:
    return EaseModel(config, num_classes, rngs)

  def init_extra(model, num_classes: int):
    shape = (model.num_tasks, num_classes, model.backbone.cls.shape[-1])
    return {
      "sums": jnp.zeros(shape),  # [T, C, D] feature sums in the class's own subspaces
      "counts": jnp.zeros((num_classes,)),
      "class_task": jnp.full((num_classes,), model.num_tasks, jnp.int32),  # T = not seen yet
      "protos": jnp.zeros(shape),  # [T, C, D] real and complemented prototypes
    }

  def loss(model, extra, batch, ctx):
    del extra
    hook = petl.adapter_hook(
      model.adapter.weights(), scale=cfg.adapter_scale, dropout=cfg.adapter_dropout, rng=ctx.rng
    )
    feats = model.backbone(batch["image"], adapter=hook)["cls"]  # [B, D]
    logits = base.mask_logits(model.head(feats), ctx.current)  # [B, C]
    ce = base.cross_entropy(logits, batch["label"])
    return ce, {"sigma": model.head.sigma[...]}

  def fresh(model, extra, ctx):  # before a task: new adapters, new head scale
    model.adapter.reset(ctx.rng)
    model.head.sigma[...] = jnp.ones_like(model.head.sigma[...])
    return extra

  def store(model, extra, ctx):  # after training: freeze the set into bank slot `task`
    for name in ("down", "down_bias", "up", "up_bias"):
      slot, bank = getattr(model.adapter, name), getattr(model.bank, name)
      bank[...] = jax.lax.dynamic_update_index_in_dim(bank[...], slot[...], ctx.task, 0)
    return extra

  def accumulate(model, extra, batch, ctx):
    feats = subspace_features(model, batch["image"], ctx.task + 1, cfg.adapter_scale)
    onehot = jax.nn.one_hot(batch["label"], extra["counts"].shape[0]) * batch["mask"][:, None]
    return dict(
      extra,
      sums=extra["sums"] + jnp.einsum("tbd,bc->tcd", feats, onehot),
      counts=extra["counts"] + onehot.sum(0),
      class_task=jnp.where(ctx.current, ctx.task, extra["class_task"]),
    )

  def prototypes(model, extra, ctx):
    del model
    real = extra["sums"] / jnp.maximum(extra["counts"], 1.0)[None, :, None]
    protos = complement(real, extra["class_task"], ctx.seen, ctx.task)
    return dict(extra, protos=protos)

  def predict(model, extra, images, ctx):
    feats = subspace_features(model, images, ctx.task + 1, cfg.adapter_scale)  # [T, B, D]
    cos = jnp.einsum(
      "jbd,jcd->jbc", base.l2_normalize(feats), base.l2_normalize(extra["protos"])
    )  # [T, B, C]
    weights = reweight(model.num_tasks, extra["class_task"], ctx.task, cfg.alpha)  # [T, C]
    return jnp.einsum("jbc,jc->bc", cos, weights), {}

  def before_task(state, env: base.TaskEnv):
    return env.edit(state, fresh)

  def after_task(state, env: base.TaskEnv):
    state = env.edit(state, store)
    return env.edit(env.feature_pass(state, accumulate), prototypes)

  return base.Method(
    build=build,
    trainable=nnx.Any(nnx.PathContains("adapter"), nnx.PathContains("head")),
    predict=predict,
    loss=loss,
    init_extra=init_extra,
    before_task=before_task,
    after_task=after_task,
  )
