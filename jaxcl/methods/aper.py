"""APER (ADAM): first-session adaptation, then prototypes over [frozen, adapted] features.

Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability
and Adaptivity are All You Need" (IJCV 2024), as PILOT `models/aper_*.py` implements it
(research/prompt_cil.md §1.6):

1. Task 0 only: a PETL module (`method.petl`: adapter | ssf | vpt_shallow | vpt_deep |
   finetune, jaxcl/models/petl.py) on the frozen pre-trained ViT is trained together with a
   cosine head (`CosineLinear`, sigma learnable) by cross-entropy over the task's classes.
2. The features are then the concatenation [frozen ViT CLS, adapted ViT CLS] [2D]; the
   classifier holds, per class, the mean feature of its training images under the test
   transform, compared by cosine (SimpleCIL on the merged model).
3. Later tasks take no gradient step (`train_tasks="first"`) and only add prototypes.

The model classes and the first-session loss are shared with RanPAC (jaxcl/methods/ranpac.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcl.methods import base
from jaxcl.models import petl


class FirstSessionModel(nnx.Module):
  """Frozen ViT + its PETL module (`tuning`) + a cosine head over all classes."""

  def __init__(self, config, num_classes: int, rngs: nnx.Rngs):
    cfg = config.method
    self.backbone = base.build_backbone(config, rngs)
    self.tuning = petl.Tuning(
      cfg.petl,
      self.backbone,
      adapter_dim=cfg.adapter_dim,
      adapter_scale=cfg.adapter_scale,
      adapter_dropout=cfg.adapter_dropout,
      vpt_length=cfg.vpt_length,
      rngs=rngs,
    )
    self.head = base.CosineHead(self.backbone.cls.shape[-1], num_classes, rngs)


TRAINABLE = nnx.Any(nnx.PathContains("tuning"), nnx.PathContains("head"))


def adapted(model: FirstSessionModel, images: jax.Array, rng=None) -> jax.Array:
  """CLS features [B, D] of the tuned ViT (`rng` only in training: adapter dropout)."""
  return model.tuning(model.backbone, images, rng=rng)["cls"].astype(jnp.float32)


def features(model: FirstSessionModel, images: jax.Array) -> jax.Array:
  """APER's features [B, 2D]: [frozen ViT CLS, adapted ViT CLS]."""
  frozen = model.backbone(images)["cls"].astype(jnp.float32)  # [B, D]
  return jnp.concatenate([frozen, adapted(model, images)], axis=-1)


def first_session_loss(model: FirstSessionModel, extra, batch, ctx: base.Ctx):
  """Cross-entropy of the cosine head over the current task's classes."""
  del extra
  logits = model.head(adapted(model, batch["image"], ctx.rng))  # [B, C]
  ce = base.cross_entropy(base.mask_logits(logits, ctx.current), batch["label"])
  return ce, {"sigma": model.head.sigma[...]}


def make(config) -> base.Method:
  del config

  def build(config, num_classes: int, rngs: nnx.Rngs) -> FirstSessionModel:
    return FirstSessionModel(config, num_classes, rngs)

  def init_extra(model, num_classes: int):
    width = 2 * model.backbone.cls.shape[-1]
    return {"sums": jnp.zeros((num_classes, width)), "counts": jnp.zeros((num_classes,))}

  def accumulate(model, extra, batch, ctx):
    del ctx
    feats = features(model, batch["image"])  # [B, 2D]
    onehot = jax.nn.one_hot(batch["label"], extra["counts"].shape[0]) * batch["mask"][:, None]
    return {"sums": extra["sums"] + onehot.T @ feats, "counts": extra["counts"] + onehot.sum(0)}

  def predict(model, extra, images, ctx):
    del ctx
    protos = extra["sums"] / jnp.maximum(extra["counts"], 1.0)[:, None]  # [C, 2D]
    feats = features(model, images)
    return base.l2_normalize(feats) @ base.l2_normalize(protos).T, {}  # [B, C] cosine

  def after_task(state, env: base.TaskEnv):
    return env.feature_pass(state, accumulate)

  return base.Method(
    build=build,
    trainable=TRAINABLE,
    predict=predict,
    loss=first_session_loss,
    init_extra=init_extra,
    after_task=after_task,
    train_tasks="first",
  )
