"""OVOR: OnePrompt with Virtual Outlier Regularization (Huang et al., ICLR 2024).

As jpmorganchase/ovor implements it (`models/zoo.py` OnePrompt, `learners/default.py`,
`learners/ood.py` NPOS):

- **OnePrompt.** A frozen ViT with a single prefix prompt and no pool, keys or query pass (one
  forward per step): a G-prompt [g_length, D] at each of `g_layers` and an E-prompt
  [e_length, D] at each of `e_layers`, U[0, 1) init; the first half of each prompt's tokens
  are prefix keys, the second half prefix values (E before G where both reach a layer). The
  head (torch nn.Linear init) reads the CLS output; cross-entropy with non-current classes
  masked.
- **Virtual outlier regularisation** (`ood_epochs` > 0; 0 is plain OnePrompt): after the
  task's regular epochs the head alone is trained on the task's cached features plus virtual
  outliers with an energy regulariser (jaxcl/methods/vor.py, shared with DualPrompt, CODA-P and
  L2P as in the reference code).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxcl.methods import base, prompts, vor


class OnePromptModel(nnx.Module):
  """Frozen ViT + one G-prompt and one E-prompt per prompted layer + linear head."""

  def __init__(self, config, num_classes: int, rngs: nnx.Rngs):
    cfg = config.method
    self.backbone = base.build_backbone(config, rngs)
    depth = len(self.backbone.blocks)
    g_layers = prompts.check_layers(cfg.g_layers, depth, "method.g_layers")
    e_layers = prompts.check_layers(cfg.e_layers, depth, "method.e_layers")
    width = self.backbone.cls.shape[-1]
    init = prompts.uniform_init(*cfg.init_range)
    self.g_prompt = nnx.Param(init(rngs.params(), (len(g_layers), cfg.g_length, width)))
    self.e_prompt = nnx.Param(init(rngs.params(), (len(e_layers), cfg.e_length, width)))
    self.head = base.linear_head(width, num_classes, cfg.head_init, rngs)


def prefixes(model: OnePromptModel, batch: int, g_layers, e_layers) -> dict:
  """{layer: (k, v)} with k, v [B, L/2, H, Dh]: E-prompts first, then G-prompts."""
  heads = model.backbone.blocks[0].attn.query.kernel.shape[1]
  out = {}
  for prompt, layers in ((model.e_prompt[...], e_layers), (model.g_prompt[...], g_layers)):
    for i, layer in enumerate(layers):
      p = jnp.broadcast_to(prompt[i], (batch, *prompt.shape[1:]))  # [B, L, D]
      half = p.shape[1] // 2
      k, v = prompts.split_heads(p[:, :half], heads), prompts.split_heads(p[:, half:], heads)
      prompts.add_prefix(out, layer, k, v)
  return out


def make(config) -> base.Method:
  cfg = config.method
  g_layers, e_layers = tuple(cfg.g_layers), tuple(cfg.e_layers)
  if cfg.g_length % 2 or cfg.e_length % 2:
    raise ValueError("method.g_length and method.e_length must be even (half keys, half values)")

  def build(config, num_classes: int, rngs: nnx.Rngs) -> OnePromptModel:
    return OnePromptModel(config, num_classes, rngs)

  def features(model, images, ctx=None):
    del ctx
    prefix = prefixes(model, images.shape[0], g_layers, e_layers)
    return model.backbone(images, prefix=prefix)["cls"].astype(jnp.float32)  # [B, D]

  def predict(model, extra, images, ctx):
    del extra, ctx
    return model.head(features(model, images)), {}

  def loss(model, extra, batch, ctx):
    logits, _ = predict(model, extra, batch["image"], ctx)
    return base.cross_entropy(base.mask_logits(logits, ctx.current), batch["label"]), {}

  one_prompt = base.Method(
    build=build,
    trainable=nnx.Not(nnx.PathContains("backbone")),
    predict=predict,
    loss=loss,
  )
  return vor.regularized(one_prompt, config, features)
