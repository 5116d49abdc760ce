"""Prompt machinery shared by L2P, DualPrompt and CODA-Prompt: query, key matching, prefixes.

Behaviour follows google-research/l2p `models/prompt.py` (research/prompt_cil.md §1.2-1.4):

- the *query* is the post-norm CLS feature of a frozen, un-prompted forward pass of the
  pre-trained ViT on the same batch (`query`);
- keys are matched by cosine similarity and the `top_k` best are taken per sample, or, with
  batch-wise selection, the `top_k` ids most often chosen in the batch are used for every
  sample (`match`);
- the pull constraint ("surrogate loss") is the cosine of every selected key with its query,
  summed over the `top_k` selections and averaged over the batch (`pull`);
- with a prompt mask, task t trains prompt ids [t*k, (t+1)*k) instead of the matched ones,
  unless that range leaves the pool (`task_ids`).

Everything takes the task index as a traced array, so one compiled step serves every task.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcl.methods import base
from jaxcl.methods.base import l2_normalize


def uniform_init(low: float, high: float):
  """U[low, high): flax `uniform()` is U[0, 0.01) (official L2P/DualPrompt); PyTorch ports
  use U(-1, 1) (JH-LEE-KR) and CODA-Prompt U[0, 1)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, low, high)

  return init


def query(vit, images: jax.Array) -> jax.Array:
  """Frozen query features [B, D]: the un-prompted ViT's post-norm CLS, no gradient."""
  return jax.lax.stop_gradient(vit(images)["pre_logits"].astype(jnp.float32))


def similarity(keys: jax.Array, queries: jax.Array) -> jax.Array:
  """Cosine similarity [B, pool] between queries [B, D] and keys [pool, D]."""
  return l2_normalize(queries) @ l2_normalize(keys.astype(jnp.float32)).T


def match(sim: jax.Array, top_k: int, *, batchwise: bool) -> jax.Array:
  """Prompt ids [B, top_k] with the highest similarity `sim` [B, pool].

  Batch-wise: count how often each id is among the per-sample top-k in the batch and use the
  `top_k` most frequent ids for every sample (ties go to the lower id, as `lax.top_k` over
  `jnp.unique`'s sorted ids does in the reference).
  """
  _, idx = jax.lax.top_k(sim, top_k)  # [B, k]
  if not batchwise:
    return idx
  counts = jax.nn.one_hot(idx, sim.shape[-1], dtype=jnp.int32).sum((0, 1))  # [pool]
  _, major = jax.lax.top_k(counts, top_k)  # [k]
  return jnp.broadcast_to(major, idx.shape)


def select(keys, vit, images, ctx, cfg, *, train: bool):
  """Key-query matching of L2P and DualPrompt: (cosine similarities [B, pool], chosen ids
  [B, top_k]); in training with `prompt_mask`, task t's ids instead of the matched ones."""
  sim = similarity(keys, query(vit, images))  # [B, pool]
  idx = match(sim, cfg.top_k, batchwise=cfg.batchwise_train if train else cfg.batchwise_eval)
  if train and cfg.prompt_mask:
    idx = task_ids(ctx.task, cfg.top_k, cfg.pool_size, idx)
  return sim, idx


def pool_loss(logits, sim, idx, labels, ctx, cfg):
  """Cross-entropy over the training classes minus `pull_coeff` x the summed similarity of the
  chosen keys (the surrogate loss of L2P / DualPrompt); (loss, aux)."""
  ce = base.cross_entropy(base.mask_for_training(logits, ctx, cfg.train_mask), labels)
  pulled = pull(sim, idx)
  return ce - cfg.pull_coeff * pulled, {"ce": ce, "key_similarity": pulled / cfg.top_k}


def task_ids(task: jax.Array, top_k: int, pool: int, matched: jax.Array) -> jax.Array:
  """The prompt mask: ids [t*k, (t+1)*k) for every sample of task t, or `matched` [B, k] when
  that range does not fit in the pool (google-research/l2p train_continual.py)."""
  forced = task * top_k + jnp.arange(top_k)  # [k]
  fits = (task + 1) * top_k <= pool
  return jnp.where(fits, jnp.broadcast_to(forced, matched.shape), matched)


def pull(sim: jax.Array, idx: jax.Array) -> jax.Array:
  """Surrogate loss term: sum over samples and selections of cos(q_b, key_idx) / B."""
  picked = jnp.take_along_axis(sim, idx, axis=1)  # [B, k]
  return picked.sum() / sim.shape[0]


def usage(idx: jax.Array, pool: int) -> jax.Array:
  """Per-sample selection counts [B, pool] (summed by evaluation into `prompt_usage`)."""
  return jax.nn.one_hot(idx, pool, dtype=jnp.int32).sum(1)


def copy_previous(x: jax.Array, task: jax.Array, top_k: int, axis: int) -> jax.Array:
  """Shared prompt pool: ids [t*k, (t+1)*k) of `x` start from ids [(t-1)*k, t*k) before task
  t > 0, if both ranges fit in the pool (google-research/l2p `shared_prompt_pool`)."""
  pool = x.shape[axis]
  prev = jax.lax.dynamic_slice_in_dim(x, jnp.maximum(task - 1, 0) * top_k, top_k, axis)
  moved = jax.lax.dynamic_update_slice_in_dim(x, prev, task * top_k, axis)
  ok = (task > 0) & ((task + 1) * top_k <= pool)
  return jnp.where(ok, moved, x)


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  """[B, P, D] -> [B, P, H, D / H], the layout of projected keys and values."""
  b, p, d = x.shape
  return x.reshape(b, p, num_heads, d // num_heads)


def add_prefix(prefix: dict, layer: int, k: jax.Array, v: jax.Array) -> None:
  """Adds prefix keys/values [B, P, H, Dh] at `layer`, after any prefix already there (the
  reference concatenates G- then E-prefixes along the length axis)."""
  if layer in prefix:
    k0, v0 = prefix[layer]
    k, v = jnp.concatenate([k0, k], axis=1), jnp.concatenate([v0, v], axis=1)
  prefix[layer] = (k, v)


def check_layers(layers, depth: int, what: str) -> tuple[int, ...]:
  layers = tuple(int(layer) for layer in layers)
  if any(not 0 <= layer < depth for layer in layers):
    raise ValueError(f"{what}={list(layers)}: the ViT has layers 0..{depth - 1}")
  return layers
