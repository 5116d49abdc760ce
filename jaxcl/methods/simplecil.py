"""SimpleCIL: class-mean prototypes of a frozen pre-trained backbone, cosine classifier.

Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models:
Generalizability and Adaptivity are All You Need" (IJCV 2024). No gradient step:
after each task the prototype of every new class is the mean embedding of its
training images under the *test* transform (PILOT `train_dataset_for_protonet`),
and prediction is the argmax cosine similarity (PILOT `CosineLinear`, sigma=1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcl.methods import base


def make(config) -> base.Method:
  del config

  def build(config, num_classes: int, rngs: nnx.Rngs):
    return base.build_backbone(config, rngs)

  def init_extra(model, num_classes: int):
    width = model.cls.shape[-1]
    return {"sums": jnp.zeros((num_classes, width)), "counts": jnp.zeros((num_classes,))}

  def accumulate(model, extra, batch, ctx):
    del ctx
    feats = model(batch["image"])["pre_logits"].astype(jnp.float32)  # [B, D]
    onehot = jax.nn.one_hot(batch["label"], extra["counts"].shape[0]) * batch["mask"][:, None]
    return {"sums": extra["sums"] + onehot.T @ feats, "counts": extra["counts"] + onehot.sum(0)}

  def predict(model, extra, images, ctx):
    del ctx
    feats = model(images)["pre_logits"].astype(jnp.float32)  # [B, D]
    protos = extra["sums"] / jnp.maximum(extra["counts"], 1.0)[:, None]  # [C, D]
    return base.l2_normalize(feats) @ base.l2_normalize(protos).T, {}  # [B, C] cosine

  def after_task(state, env: base.TaskEnv):
    return env.feature_pass(state, accumulate)

  return base.Method(
    build=build,
    trainable=nnx.Nothing,
    predict=predict,
    loss=None,
    init_extra=init_extra,
    after_task=after_task,
  )
