"""L2P: Learning to Prompt for Continual Learning (Wang et al., CVPR 2022).

As google-research/l2p implements it (research/prompt_cil.md §1.2): a frozen pre-trained ViT,
a pool of prompts [pool, length, D] with one key each, both U[0, 0.01). A frozen un-prompted
pass gives the query (post-norm CLS); the `top_k` keys closest in cosine pick prompts that are
concatenated ([B, top_k * length, D]) into the token sequence at layer 0 (prompt-tuning, not
prefix). The head reads the mean of the prompt-token outputs. Loss: cross-entropy with the
logits of classes outside the current task masked, minus `pull_coeff` times the summed cosine
of the selected keys with their query (averaged over the batch).

Config (`method.*`): pool_size, length, top_k, pull_coeff, batchwise_train (official: the batch's
most frequent ids for every sample), batchwise_eval (the same at test time: leaks task
identity with task-pure test batches, google-research/l2p#28; off unless asked for),
prompt_mask (task t trains ids [t*k, (t+1)*k), `use_prompt_mask`), shared_pool (task t's ids
start from task t-1's, `shared_prompt_pool`), prompt_layout (`prepend_after_pos` official,
`after_cls_before_pos` the PyTorch ports), head_input (`prompt_mean` official `classifier=
"prompt"`, or `cls`), init_range (U[0, 0.01) official, (-1, 1) the ports), train_mask.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxcl.methods import base, prompts, vor


class L2PModel(nnx.Module):
  """Frozen ViT + prompt pool with keys + linear head over all classes."""

  def __init__(self, config, num_classes: int, rngs: nnx.Rngs):
    cfg = config.method
    self.backbone = base.build_backbone(config, rngs)
    width = self.backbone.cls.shape[-1]
    init = prompts.uniform_init(*cfg.init_range)
    self.prompts = nnx.Param(init(rngs.params(), (cfg.pool_size, cfg.length, width)))
    self.keys = nnx.Param(init(rngs.params(), (cfg.pool_size, width)))
    self.head = base.linear_head(width, num_classes, "zeros" if cfg.zero_head else "lecun", rngs)


def make(config) -> base.Method:
  cfg = config.method
  if cfg.top_k > cfg.pool_size:
    raise ValueError(f"method.top_k={cfg.top_k} > method.pool_size={cfg.pool_size}")
  if cfg.head_input not in ("prompt_mean", "cls"):
    raise ValueError(f"method.head_input={cfg.head_input!r}: use prompt_mean | cls")

  def build(config, num_classes: int, rngs: nnx.Rngs) -> L2PModel:
    return L2PModel(config, num_classes, rngs)

  def embed(model, images, ctx, *, train: bool):
    """The features [B, D] the head reads, the key similarities and the chosen ids."""
    sim, idx = prompts.select(model.keys[...], model.backbone, images, ctx, cfg, train=train)
    chosen = jnp.take(model.prompts[...], idx, axis=0)  # [B, k, length, D]
    chosen = chosen.reshape(images.shape[0], -1, chosen.shape[-1])  # [B, k * length, D]
    out = model.backbone(images, prompts=chosen, prompt_layout=cfg.prompt_layout)
    feats = out["prompt_mean"] if cfg.head_input == "prompt_mean" else out["cls"]  # [B, D]
    return feats.astype(jnp.float32), sim, idx

  def forward(model, images, ctx, *, train: bool):
    feats, sim, idx = embed(model, images, ctx, train=train)
    return model.head(feats), sim, idx  # logits [B, C]

  def predict(model, extra, images, ctx):
    del extra
    logits, _, idx = forward(model, images, ctx, train=False)
    return logits, {"prompt_counts": prompts.usage(idx, cfg.pool_size)}

  def loss(model, extra, batch, ctx):
    del extra
    logits, sim, idx = forward(model, batch["image"], ctx, train=True)
    return prompts.pool_loss(logits, sim, idx, batch["label"], ctx, cfg)

  def share_pool(model, extra, ctx):
    model.prompts[...] = prompts.copy_previous(model.prompts[...], ctx.task, cfg.top_k, axis=0)
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
