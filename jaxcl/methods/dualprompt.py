"""DualPrompt (Wang et al., "DualPrompt: Complementary Prompting for Rehearsal-free Continual
Learning", ECCV 2022), as google-research/l2p implements it (research/prompt_cil.md §1.3).

Prefix-tuning of a frozen ViT: at each layer of `g_layers` a task-shared G-prefix, at each layer
of `e_layers` the E-prefix of one prompt of a pool with keys. Prefixes are extra keys and values
concatenated to the already-projected K and V of the attention. Parameter layouts are the
reference's: G `[layers, 2, g_length, H, Dh]`, E `[layers, 2, pool, e_length, H, Dh]`, where
index 0 / 1 of the `2` axis is the key / value half (selected by indexing that axis, never by
reshaping the length). The head reads the CLS output.

Training uses task t's E-prompt and key (`prompt_mask`, the "task-identity bootstrap"), with E
prompt t initialised from prompt t-1 (`shared_pool`); the pull constraint draws key t to the
task's queries. At test time the `top_k`(=1) closest key picks the E-prompt per sample
(`batchwise_eval` would vote per batch: a task-identity leak, google-research/l2p#28).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxcl.methods import base, prompts, vor


class DualPromptModel(nnx.Module):
  """Frozen ViT + G-prefixes + E-prefix pool with keys + linear head."""

  def __init__(self, config, num_classes: int, rngs: nnx.Rngs):
    cfg = config.method
    self.backbone = base.build_backbone(config, rngs)
    depth = len(self.backbone.blocks)
    prompts.check_layers(cfg.g_layers, depth, "method.g_layers")
    prompts.check_layers(cfg.e_layers, depth, "method.e_layers")
    width, heads, head_dim = self.backbone.blocks[0].attn.query.kernel.shape
    init = prompts.uniform_init(*cfg.init_range)
    g_shape = (len(cfg.g_layers), 2, cfg.g_length, heads, head_dim)
    e_shape = (len(cfg.e_layers), 2, cfg.pool_size, cfg.e_length, heads, head_dim)
    self.g_prefix = nnx.Param(init(rngs.params(), g_shape))
    self.e_prefix = nnx.Param(init(rngs.params(), e_shape))
    self.keys = nnx.Param(init(rngs.params(), (cfg.pool_size, width)))
    self.head = base.linear_head(width, num_classes, "zeros" if cfg.zero_head else "lecun", rngs)


def prefixes(g_prefix, e_prefix, idx, g_layers, e_layers) -> dict:
  """{layer: (k, v)} with k, v [B, P, H, Dh] from G `[Lg, 2, Pg, H, Dh]`, E `[Le, 2, pool, Pe,
  H, Dh]` and the selected ids [B, k]; G before E where both reach a layer."""
  b = idx.shape[0]
  out = {}
  for i, layer in enumerate(g_layers):
    g = jnp.broadcast_to(g_prefix[i][:, None], (2, b, *g_prefix.shape[2:]))  # [2, B, Pg, H, Dh]
    prompts.add_prefix(out, layer, g[0], g[1])
  for i, layer in enumerate(e_layers):
    e = jnp.take(e_prefix[i], idx, axis=1)  # [2, B, k, Pe, H, Dh]
    e = e.reshape(2, b, -1, *e.shape[-2:])  # [2, B, k * Pe, H, Dh]
    prompts.add_prefix(out, layer, e[0], e[1])
  return out


def make(config) -> base.Method:
  cfg = config.method
  g_layers, e_layers = tuple(cfg.g_layers), tuple(cfg.e_layers)

  def build(config, num_classes: int, rngs: nnx.Rngs) -> DualPromptModel:
    return DualPromptModel(config, num_classes, rngs)

  def embed(model, images, ctx, *, train: bool):
    """The CLS features [B, D] the head reads, the key similarities and the chosen ids."""
    sim, idx = prompts.select(model.keys[...], model.backbone, images, ctx, cfg, train=train)
    prefix = prefixes(model.g_prefix[...], model.e_prefix[...], idx, g_layers, e_layers)
    feats = model.backbone(images, prefix=prefix)["cls"]  # [B, D]
    return feats.astype(jnp.float32), sim, idx

  def forward(model, images, ctx, *, train: bool):
    feats, sim, idx = embed(model, images, ctx, train=train)
    return model.head(feats), sim, idx

  def predict(model, extra, images, ctx):
    del extra
    logits, _, idx = forward(model, images, ctx, train=False)
    return logits, {"prompt_counts": prompts.usage(idx, cfg.pool_size)}

  def loss(model, extra, batch, ctx):
    del extra
    logits, sim, idx = forward(model, batch["image"], ctx, train=True)
    return prompts.pool_loss(logits, sim, idx, batch["label"], ctx, cfg)

  def share_pool(model, extra, ctx):
    e = model.e_prefix[...]
    model.e_prefix[...] = prompts.copy_previous(e, ctx.task, cfg.top_k, axis=2)
    return extra

  def before_task(state, env: base.TaskEnv):
    return env.edit(state, share_pool) if cfg.shared_pool else state

  method = base.Method(
    build=build,
    trainable=nnx.Not(nnx.PathContains("backbone")),
    predict=predict,
    loss=loss,
    before_task=before_task,
  )
  return vor.regularized(method, config, lambda m, x, ctx: embed(m, x, ctx, train=False)[0])
