"""CODA-Prompt (Smith et al., "CODA-Prompt: COntinual Decomposed Attention-based Prompting for
Rehearsal-Free Continual Learning", CVPR 2023), as GT-RIPL/CODA-Prompt `models/zoo.py`
implements it (research/prompt_cil.md §1.4).

At each layer of `layers`: M prompt components P [M, Lp, D], keys K [M, D] and attention
vectors A [M, D]. With the frozen query q [B, D] (post-norm CLS of the un-prompted ViT), the
weight of component m is alpha_bm = cos(q_b * A_m, K_m) (no softmax, no top-k), the prompt is
sum_m alpha_bm P_m [B, Lp, D], and its first Lp/2 tokens are prefix keys and the last Lp/2
prefix values. Task t owns components [t*M/T, (t+1)*M/T): in training, earlier components
take part with their gradient stopped and later ones are left out; at test every component up
to the current task's takes part. Before each task the new slice of K, A and P (flattened) is
re-initialised by Gram-Schmidt: random normal vectors orthogonal to every earlier component,
unit norm. Loss: cross-entropy with non-current classes masked, plus `ortho_mu` times the
orthogonality penalty mean((X X^T - I)^2) for X = K, A, P over the components in use (official
runs use mu = 0; the paper's 0.1 hurts with per-task Gram-Schmidt, GT-RIPL/CODA-Prompt#12).

Difference from the reference, kept on purpose: its Gram-Schmidt subtracts projections onto
each earlier component separately, exact only while the trained earlier components are still
orthogonal; here the new slice is orthogonal to their span (the same thing when they are).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcl.methods import base, prompts, vor


def num_tasks(data, num_classes: int) -> int:
  """Tasks in the split: `init_classes`, then `increment` classes per task."""
  return 1 + -(-(num_classes - data.init_classes) // data.increment)


class CodaModel(nnx.Module):
  """Frozen ViT + per-layer components, keys and attention vectors + linear head."""

  def __init__(self, config, num_classes: int, rngs: nnx.Rngs):
    cfg = config.method
    self.backbone = base.build_backbone(config, rngs)
    depth = len(self.backbone.blocks)
    layers = prompts.check_layers(cfg.layers, depth, "method.layers")
    width = self.backbone.cls.shape[-1]
    init = prompts.uniform_init(*cfg.init_range)
    m = cfg.num_components
    tasks = num_tasks(config.data, num_classes)
    if m < tasks:
      raise ValueError(f"method.num_components={m} < {tasks} tasks")
    self.per_task = m // tasks  # components per task (static)
    self.components = nnx.Param(init(rngs.params(), (len(layers), m, cfg.length, width)))
    self.keys = nnx.Param(init(rngs.params(), (len(layers), m, width)))
    self.attention = nnx.Param(init(rngs.params(), (len(layers), m, width)))
    self.head = base.linear_head(width, num_classes, cfg.head_init, rngs)


def gram_schmidt(x: jax.Array, start, stop, key: jax.Array) -> jax.Array:
  """Rows [start, stop) of x [M, N] become random unit vectors orthogonal to every earlier row
  (and to each other); other rows are unchanged. `start`, `stop` may be traced."""
  x = x.astype(jnp.float32)
  noise = jax.random.normal(key, x.shape, jnp.float32)

  def body(i, carry):
    out, basis = carry  # basis: orthonormal rows spanning out[:i] (zero rows where dependent)
    new = (i >= start) & (i < stop)
    v = jnp.where(new, noise[i], x[i])
    for _ in range(2):  # re-orthogonalise once for numerical safety ("twice is enough")
      v = v - basis.T @ (basis @ v)
    norm = jnp.linalg.norm(v)
    unit = jnp.where(norm > 1e-6, v / jnp.maximum(norm, 1e-12), 0.0)
    out = out.at[i].set(jnp.where(new, unit, x[i]))
    return out, basis.at[i].set(unit)

  out, _ = jax.lax.fori_loop(0, stop, body, (x, jnp.zeros_like(x)))
  return out


def ortho_penalty(x: jax.Array, active: jax.Array) -> jax.Array:
  """mean((X X^T - I)^2) over the active rows of x [M, N] (`active` [M] bool)."""
  x = x * active[:, None]
  gram = x @ x.T - jnp.diag(active.astype(x.dtype))  # [M, M]
  n = active.sum()
  return (gram**2).sum() / jnp.maximum(n * n, 1)


def make(config) -> base.Method:
  cfg = config.method
  if cfg.length % 2:
    raise ValueError(f"method.length={cfg.length} must be even (half keys, half values)")
  layers = tuple(cfg.layers)
  m = cfg.num_components

  def build(config, num_classes: int, rngs: nnx.Rngs) -> CodaModel:
    model = CodaModel(config, num_classes, rngs)
    width = model.keys[0].shape[-1]
    if m > width:  # Gram-Schmidt cannot make more than `width` keys orthogonal
      raise ValueError(
        f"method.num_components={m} exceeds the ViT width {width}: the keys and attention "
        f"vectors of the later tasks would be zero; use at most {width}"
      )
    return model

  def slices(task, per_task: int):
    ids = jnp.arange(m)
    return ids < task * per_task, ids < (task + 1) * per_task  # old [M], in use [M]

  def embed(model, images, ctx, *, train: bool):
    """The CLS features [B, D] the head reads and the orthogonality penalty."""
    q = prompts.query(model.backbone, images)  # [B, D]
    old, active = slices(ctx.task, model.per_task)
    heads = model.backbone.blocks[0].attn.query.kernel.shape[1]
    half = cfg.length // 2
    prefix, penalty = {}, 0.0
    for i, layer in enumerate(layers):
      p, k, a = model.components[i], model.keys[i], model.attention[i]  # [M,Lp,D], [M,D], [M,D]
      if train:  # earlier tasks' components take part frozen
        p = jnp.where(old[:, None, None], jax.lax.stop_gradient(p), p)
        k = jnp.where(old[:, None], jax.lax.stop_gradient(k), k)
        a = jnp.where(old[:, None], jax.lax.stop_gradient(a), a)
      aq = q[:, None, :] * a[None]  # [B, M, D]
      alpha = jnp.einsum("bmd,md->bm", base.l2_normalize(aq), base.l2_normalize(k))  # [B, M]
      alpha = jnp.where(active[None], alpha, 0.0)
      px = jnp.einsum("bm,mld->bld", alpha, p)  # [B, Lp, D]
      ek, ev = prompts.split_heads(px[:, :half], heads), prompts.split_heads(px[:, half:], heads)
      prompts.add_prefix(prefix, layer, ek, ev)  # [B, Lp/2, H, Dh] each
      if train and cfg.ortho_mu > 0:
        flat = p.reshape(m, -1)
        penalty += sum(ortho_penalty(x, active) for x in (k, a, flat))
    feats = model.backbone(images, prefix=prefix)["cls"]  # [B, D]
    return feats.astype(jnp.float32), penalty

  def forward(model, images, ctx, *, train: bool):
    feats, penalty = embed(model, images, ctx, train=train)
    return model.head(feats), penalty

  def predict(model, extra, images, ctx):
    del extra
    logits, _ = forward(model, images, ctx, train=False)
    return logits, {}

  def loss(model, extra, batch, ctx):
    del extra
    logits, penalty = forward(model, batch["image"], ctx, train=True)
    logits = base.mask_for_training(logits, ctx, cfg.train_mask)
    ce = base.cross_entropy(logits, batch["label"])
    return ce + cfg.ortho_mu * penalty, {"ce": ce}

  def reinit_slice(model, extra, ctx):
    start, stop = ctx.task * model.per_task, (ctx.task + 1) * model.per_task
    keys = jax.random.split(ctx.rng, 3 * len(layers)).reshape(len(layers), 3, -1)
    for name, j in (("components", 0), ("keys", 1), ("attention", 2)):
      var = getattr(model, name)
      x = var[...]  # [layers, M, ...]
      rows = [
        gram_schmidt(x[i].reshape(m, -1), start, stop, keys[i, j]).reshape(x.shape[1:])
        for i in range(len(layers))
      ]
      var[...] = jnp.stack(rows).astype(x.dtype)
    return extra

  def before_task(state, env: base.TaskEnv):
    return env.edit(state, reinit_slice)

  method = base.Method(
    build=build,
    trainable=nnx.Not(nnx.PathContains("backbone")),
    predict=predict,
    loss=loss,
    before_task=before_task,
  )
  return vor.regularized(method, config, lambda m, x, ctx: embed(m, x, ctx, train=False)[0])
