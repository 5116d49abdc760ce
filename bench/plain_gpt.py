"""The plain-JAX ceiling: a minimal GPT-2-style train step, no framework, for jaxcl to match.

  python bench/plain_gpt.py [--layers=6 --width=384 --heads=6 --seq=256 --batch=8] [--steps=10]
      [--attention=einsum|jax] [--dtype=float32|bfloat16]

nanoGPT's shape by default (Karpathy's shakespeare_char model on a byte vocabulary): learned
positions, pre-LN, GELU (tanh), tied head, AdamW (0.9, 0.95, wd 0.1) + global-norm clip 1.0,
layers under `lax.scan`. Prints tokens/s of the jitted step.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax


def init(key, *, layers, width, heads, seq, vocab=256):
  k = iter(jax.random.split(key, 8))
  n = lambda shape, std=0.02: std * jax.random.normal(next(k), shape)  # noqa: E731
  out = 0.02 / (2 * layers) ** 0.5  # residual projections scaled by 1/sqrt(2L) (GPT-2)
  blocks = dict(
    ln1=jnp.ones((layers, 2, width)).at[:, 1].set(0),  # [L, scale/bias, D]
    qkv=n((layers, width, 3 * width)), qkv_b=jnp.zeros((layers, 3 * width)),
    proj=n((layers, width, width), out), proj_b=jnp.zeros((layers, width)),
    ln2=jnp.ones((layers, 2, width)).at[:, 1].set(0),
    up=n((layers, width, 4 * width)), up_b=jnp.zeros((layers, 4 * width)),
    down=n((layers, 4 * width, width), out), down_b=jnp.zeros((layers, width)),
  )  # fmt: skip
  return dict(wte=n((vocab, width)), wpe=n((seq, width)), blocks=blocks, lnf=blocks["ln1"][0])


def layer_norm(x, p):  # x [B, T, D], p [2, D]
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-5) * p[0] + p[1]


def loss_fn(params, tokens, *, heads, attention, dtype):  # tokens [B, T + 1]
  x, y = tokens[:, :-1], tokens[:, 1:]
  b, t = x.shape
  h = (params["wte"][x] + params["wpe"][:t]).astype(dtype)  # [B, T, D]

  def block(h, p):
    p = jax.tree.map(lambda a: a.astype(dtype), p)
    q, k, v = jnp.split(layer_norm(h, p["ln1"]) @ p["qkv"] + p["qkv_b"], 3, axis=-1)
    q, k, v = (a.reshape(b, t, heads, -1) for a in (q, k, v))  # [B, T, H, Dh]
    if attention == "jax":
      a = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    else:
      s = jnp.einsum("bthd,bshd->bhts", q, k) / q.shape[-1] ** 0.5  # [B, H, T, T]
      s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s.astype(jnp.float32), -jnp.inf)
      a = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s).astype(dtype), v)
    h = h + a.reshape(b, t, -1) @ p["proj"] + p["proj_b"]
    u = jax.nn.gelu(layer_norm(h, p["ln2"]) @ p["up"] + p["up_b"], approximate=True)
    return h + u @ p["down"] + p["down_b"], None

  h, _ = jax.lax.scan(block, h, params["blocks"])
  logits = layer_norm(h, params["lnf"].astype(dtype)) @ params["wte"].T.astype(dtype)
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()


def make_step(tx, **kw):
  @jax.jit
  def step(params, opt, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, **kw)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  return step


def tokens_per_second(*, layers, width, heads, seq, batch, steps, attention, dtype) -> float:
  params = init(jax.random.key(0), layers=layers, width=width, heads=heads, seq=seq)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, 0.9, 0.95, weight_decay=0.1))
  opt = tx.init(params)
  step = make_step(tx, heads=heads, attention=attention, dtype=jnp.dtype(dtype))
  tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, 256)
  for _ in range(2):  # compile, then once more with committed outputs
    params, opt, loss = step(params, opt, tokens)
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for _ in range(steps):
    params, opt, loss = step(params, opt, tokens)
  jax.block_until_ready(loss)
  return steps * batch * seq / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name, default in (("layers", 6), ("width", 384), ("heads", 6), ("seq", 256), ("batch", 8)):
    parser.add_argument(f"--{name}", type=int, default=default)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--attention", default="einsum", choices=("einsum", "jax"))
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()
  rate = tokens_per_second(**vars(args))
  print(f"plain JAX GPT {args.layers}L x {args.width} seq {args.seq} batch {args.batch} "
        f"{args.attention} {args.dtype}: {rate:,.0f} tok/s")  # fmt: skip


if __name__ == "__main__":
  main()
