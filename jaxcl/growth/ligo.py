"""LiGO, the learned linear growth operator (Wang et al., ICLR 2023, arXiv 2303.00980).

The large model's weights are a linear function of the small one's, factored into a width
part and a depth part (LiGO §3): every axis of role R in {D, H, K, F} (jaxcl/growth/base.py) is
expanded by a learned matrix B_R [R', R], shared by all weights (LiGO's tying: the embedding's
B_emb also expands the q/k/v inputs and the o/FFN outputs), and every block weight kind is
mixed across depth by a learned w [L', L]:

    W'_l = sum_j w[l, j] * (B_out W_j B_in^T)

Heads are expanded as units (B_H acts on whole heads, head size fixed), a simplification of
LiGO's per-feature B_Q. Initialisation: B_R = the tiled copy map of bert2BERT (read axes use
B_R / (R'/R), so this *is* FPI), plus N(0, 0.01) on the new rows to break symmetry, and w =
StackBERT (w[l, l mod L] = 1). The operator is then trained for `ligo_steps` Adam steps on the
large model's training loss with the small weights fixed (LiGO: 100 SGD steps), and the large
model starts from M(theta). NOT function preserving (noise, stacking, training).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl.growth import base, depth, width

INIT_NOISE = 0.01


def init_operator(src: base.Params, src_cfg, dst_cfg, key, noise: float = INIT_NOISE) -> dict:
  """{"B": {R: [R', R]}, "w": {block leaf: [L', L]}}: FPI width maps and StackBERT depth."""
  old, new = base.dims(src_cfg), base.dims(dst_cfg)
  maps = width.fpi_maps(src_cfg, dst_cfg)
  b = {}
  for i, r in enumerate("DHKF"):
    m = np.eye(old[r], dtype=np.float32)[maps[r]]  # [R', R] one-hot rows
    rows = jnp.asarray(np.arange(new[r]) >= old[r], jnp.float32)[:, None]
    jitter = noise * jax.random.normal(jax.random.fold_in(key, i), m.shape) * rows
    b[r] = jnp.asarray(m) + jitter
  sources = depth.stack_sources(old["L"], new["L"])
  w0 = jnp.asarray(np.eye(old["L"], dtype=np.float32)[sources])  # [L', L]
  names = [k for k in base.flatten(src) if k.startswith("blocks.")]
  return {"B": b, "w": {k.replace(".", "/"): w0 for k in names}}


def _contract(x, m, axis: int):
  """x with `axis` mapped through m [new, old]."""
  return jnp.moveaxis(jnp.tensordot(m, x, axes=[[1], [axis]]), 0, axis)


def expand(src: base.Params, theta: dict, src_cfg, dst_cfg) -> base.Params:
  """M(theta)(src): the large model's (scanned) parameters, linear in `src`."""
  old, new = base.dims(src_cfg), base.dims(dst_cfg)

  def leaf(name, r, x):
    for axis, c in enumerate(r):
      if c == ".":
        continue
      if c == "L":
        x = _contract(x, theta["w"][name.replace(".", "/")], axis)
        continue
      m = theta["B"][c.upper()]
      if c.islower():
        m = m * (old[c.upper()] / new[c.upper()])
      x = _contract(x, m, axis)
    return x

  out = base.leaf_map(leaf, src)
  tied = base.tied_output_norm(src_cfg)
  if tied:
    flat = base.flatten(out)
    for k in ("scale", "bias"):
      if f"{tied}.{k}" in flat:
        flat[f"{tied}.{k}"] = flat[f"{tied}.{k}"] * (old["D"] / new["D"])
    out = base.unflatten(flat)
  return out


def _untrained(src, init, src_cfg, dst_cfg, key):
  del init
  base.check_same_except(src_cfg, dst_cfg, "LDHKF")
  return expand(src, init_operator(src, src_cfg, dst_cfg, key), src_cfg, dst_cfg)


def train(src, init, src_cfg, dst_cfg, loss_fn, batches, *, steps: int, lr: float, seed: int):
  """Trains the operator for `steps` batches of `batches`; returns (params, tokens read).

  `loss_fn(params, batch)` is the large model's training loss on scanned pure-dict params.
  """
  del init
  base.check_same_except(src_cfg, dst_cfg, "LDHKF")
  src = base.stack_layers(src)
  theta = init_operator(src, src_cfg, dst_cfg, jax.random.PRNGKey(seed))
  tx = optax.adam(lr)
  opt = tx.init(theta)

  @jax.jit
  def step(theta, opt, batch):
    loss, grads = jax.value_and_grad(lambda t: loss_fn(expand(src, t, src_cfg, dst_cfg), batch))(
      theta
    )
    updates, opt = tx.update(grads, opt, theta)
    return optax.apply_updates(theta, updates), opt, loss

  tokens = 0
  for _ in range(steps):
    batch = next(batches)
    theta, opt, _ = step(theta, opt, batch)
    tokens += int(np.prod(batch["tokens"].shape))
  return expand(src, theta, src_cfg, dst_cfg), tokens


OPERATOR = base.GrowthOp(
  "ligo",
  _untrained,
  exact="no: noisy init, stacking, then trained",
  layer_sources=depth.stack_sources,
)
