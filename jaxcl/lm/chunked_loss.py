"""Next-token cross-entropy over sequence chunks: the float32 logits [B, T, V] never exist whole.

Unchunked, a language model's loss holds the logits of every position (B x T x V float32: 0.4
GiB per 2,048-token sequence over a 50k vocabulary) and their gradient at once. Here the hidden
states are cut into T / c chunks of c positions; `lax.map` computes one chunk's logits and
losses at a time, and `jax.checkpoint` makes the backward pass recompute them instead of
saving them, so only [B, c, V] is live. The unembedding is read in float32 and cast inside the
chunk, so its gradient is summed over chunks in float32. Losses and gradients equal the
unchunked ones up to float summation order (tests/chunked_loss_test.py). The same idea is
MaxText's vocabulary tiling and Liger's fused linear cross-entropy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def token_losses(hidden: jax.Array, unembedding: jax.Array, targets: jax.Array, chunk: int):
  """Per-token cross-entropy [B, T] of logits = hidden @ unembedding, `chunk` positions at a time.

  Args:
    hidden: [B, T, D] final hidden states (compute dtype).
    unembedding: [D, V] output projection (float32 parameters).
    targets: int [B, T] next tokens.
    chunk: positions per chunk; must divide T.
  """
  b, t, d = hidden.shape
  if chunk <= 0 or t % chunk:
    raise ValueError(f"train.loss_chunk={chunk} must be positive and divide the {t} positions")
  n = t // chunk
  h = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)  # [N, B, c, D]
  y = targets.reshape(b, n, chunk).swapaxes(0, 1)  # [N, B, c]

  @jax.checkpoint
  def piece(h, y):  # [B, c, D], [B, c] -> [B, c]
    w = unembedding.astype(h.dtype)  # [D, V]
    logits = jnp.einsum("bcd,dv->bcv", h, w, preferred_element_type=jnp.float32)  # [B, c, V]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)

  losses = jax.lax.map(lambda args: piece(*args), (h, y))  # [N, B, c]
  return losses.swapaxes(0, 1).reshape(b, t)
