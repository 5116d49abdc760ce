"""Sequential fine-tuning and linear probing: lower-bound baselines of class-incremental learning.

`method.head_only=False` trains the whole ViT (full fine-tuning, the usual
"catastrophic forgetting" baseline); `head_only=True` freezes the backbone and
trains the linear head (linear probe). Train-time logit masking
(`method.train_mask="current"`) restricts the softmax to the current task's
classes, as google-research/l2p (`train_mask=True`) and PILOT do.
"""

from __future__ import annotations

from flax import nnx

from jaxcl.methods import base


def make(config) -> base.Method:
  cfg = config.method

  def build(config, num_classes: int, rngs: nnx.Rngs) -> base.Learner:
    return base.Learner(
      base.build_backbone(config, rngs), num_classes, rngs=rngs, zero_head=cfg.zero_head
    )

  def features(model, images):
    return model.backbone(images)["pre_logits"]  # [B, D]

  def predict(model, extra, images, ctx):
    del extra, ctx
    return model.head(features(model, images)), {}

  def loss(model, extra, batch, ctx):
    logits, _ = predict(model, extra, batch["image"], ctx)
    logits = base.mask_for_training(logits, ctx, cfg.train_mask)
    return base.cross_entropy(logits, batch["label"]), {}

  trainable = nnx.PathContains("head") if cfg.head_only else nnx.Param
  return base.Method(build=build, trainable=trainable, predict=predict, loss=loss)
