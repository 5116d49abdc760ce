"""RanPAC: random projections and a closed-form ridge classifier on a first-session-tuned ViT.

McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for Continual Learning"
(NeurIPS 2023), as RanPAC/RanPAC `RanPAC.py` implements it (research/prompt_cil.md §1.9):

1. Task 0 only: the PETL module and a cosine head are trained as in APER (jaxcl/methods/
   aper.py), then frozen (`train_tasks="first"`).
2. After every task, with the adapted CLS feature f [D] and a fixed W_rand ~ N(0, 1) [D, M]:
   h = ReLU(f W_rand) [M]; G += h^T h, Q += h^T y with y one-hot over all classes (no
   centring). The ridge lambda is picked from 10^-8 .. 10^8 on the task's own data: fit on a
   random 80%, lowest mean squared error of h W - y on the other 20% (the reference shuffles
   then splits; here each example is held out with probability 0.2). All lambdas come from
   one eigendecomposition of that fit Gram matrix. Then W = (G + lambda I)^-1 Q [M, C].
3. Logits = h W, plain linear (the official head; PILOT applies a cosine instead).

`method.rp_dim=0` skips the projection (h = f, the "no RP" ablation). G, Q and the task's
fit / held-out statistics live in `extra` as device arrays; every solve runs jitted.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcl.methods import aper, base

HIGHEST = jax.lax.Precision.HIGHEST  # TPUs would otherwise run f32 matmuls in bf16 passes


class RanPACModel(aper.FirstSessionModel):
  """APER's first-session model plus the fixed random projection W_rand [D, M]."""

  def __init__(self, config, num_classes: int, rngs: nnx.Rngs):
    super().__init__(config, num_classes, rngs)
    width, m = self.backbone.cls.shape[-1], config.method.rp_dim
    if m:
      self.projection = nnx.Param(jax.random.normal(rngs.params(), (width, m)))  # [D, M]


def project(model: RanPACModel, images: jax.Array) -> jax.Array:
  """h = ReLU(f W_rand) [B, M] of the adapted features f [B, D] (f itself when M = 0)."""
  f = aper.adapted(model, images)
  if not hasattr(model, "projection"):
    return f
  return jax.nn.relu(jnp.dot(f, model.projection[...], precision=HIGHEST))


def ridge_errors(g_fit, q_fit, g_hold, q_hold, n_hold, ridges) -> jax.Array:
  """Held-out squared error ||H_hold W(l) - Y_hold||^2 of W(l) = (G_fit + l I)^-1 Q_fit [L].

  With G_fit = V diag(e) V^T, W(l) = V diag(d) R for d = 1 / (e + l) and R = V^T Q_fit, so
  with A = V^T G_hold V and S = V^T Q_hold the error is
  d^T (A * R R^T) d - 2 d . rowsum(R * S) + n_hold (one-hot rows have unit norm):
  one eigendecomposition serves every l.
  """
  e, v = jnp.linalg.eigh(g_fit)  # [M], [M, M]
  e = jnp.maximum(e, 0.0)  # G_fit is PSD; drop rounding noise below 0
  d = 1.0 / (e[None, :] + ridges[:, None])  # [L, M]
  r = jnp.dot(v.T, q_fit, precision=HIGHEST)  # [M, C]
  a = jnp.dot(jnp.dot(v.T, g_hold, precision=HIGHEST), v, precision=HIGHEST)  # [M, M]
  s = jnp.dot(v.T, q_hold, precision=HIGHEST)  # [M, C]
  quad = jnp.einsum("lm,mn,ln->l", d, a * jnp.dot(r, r.T, precision=HIGHEST), d, precision=HIGHEST)
  return quad - 2.0 * jnp.dot(d, (r * s).sum(1), precision=HIGHEST) + n_hold


def ridge_solve(g, q, ridge) -> jax.Array:
  """W = (G + ridge I)^-1 Q [M, C] (Cholesky; G + ridge I is positive definite)."""
  eye = jnp.eye(g.shape[0], dtype=g.dtype)
  return jax.scipy.linalg.solve(g + ridge * eye, q, assume_a="pos")


def accumulate(model, extra, batch, ctx, *, holdout: float):
  """Adds a batch's h^T h and h^T y to the fit or held-out statistics of the current task."""
  h = project(model, batch["image"])  # [B, M]
  y = jax.nn.one_hot(batch["label"], extra["Q"].shape[1])  # [B, C]
  key = jax.random.fold_in(jax.random.fold_in(ctx.rng, ctx.task), extra["batches"])
  hold = jax.random.bernoulli(key, holdout, batch["mask"].shape) & batch["mask"]  # [B]
  fit = batch["mask"] & ~hold
  out = dict(extra, batches=extra["batches"] + 1, n_hold=extra["n_hold"] + hold.sum())
  for part, rows in (("fit", fit), ("hold", hold)):
    hp, yp = h * rows[:, None], y * rows[:, None]
    out[f"G_{part}"] = extra[f"G_{part}"] + jnp.dot(hp.T, hp, precision=HIGHEST)
    out[f"Q_{part}"] = extra[f"Q_{part}"] + jnp.dot(hp.T, yp, precision=HIGHEST)
  return out


def solve(extra: dict, ridges: jax.Array) -> dict:
  """Picks lambda on the task's held-out part, folds the task into G and Q, solves W."""
  errors = ridge_errors(
    extra["G_fit"], extra["Q_fit"], extra["G_hold"], extra["Q_hold"], extra["n_hold"], ridges
  )
  ridge = ridges[jnp.argmin(errors)]
  g = extra["G"] + extra["G_fit"] + extra["G_hold"]
  q = extra["Q"] + extra["Q_fit"] + extra["Q_hold"]
  zero = jnp.zeros_like
  return dict(
    extra,
    G=g,
    Q=q,
    W=ridge_solve(g, q, ridge),
    ridge=ridge,
    G_fit=zero(g),
    Q_fit=zero(q),
    G_hold=zero(g),
    Q_hold=zero(q),
    n_hold=zero(extra["n_hold"]),
  )


def make(config) -> base.Method:
  cfg = config.method
  ridges = jnp.asarray([10.0**p for p in cfg.ridge_powers], jnp.float32)
  if not 0 < cfg.holdout < 1:
    raise ValueError(f"method.holdout={cfg.holdout}: need 0 < holdout < 1")
  scan_fn = functools.partial(accumulate, holdout=cfg.holdout)

  def build(config, num_classes: int, rngs: nnx.Rngs) -> RanPACModel:
    return RanPACModel(config, num_classes, rngs)

  def init_extra(model, num_classes: int):
    m = cfg.rp_dim or model.backbone.cls.shape[-1]
    gram, corr = lambda: jnp.zeros((m, m)), lambda: jnp.zeros((m, num_classes))  # own buffers
    return {
      "G": gram(),  # [M, M] over every task so far
      "Q": corr(),  # [M, C]
      "G_fit": gram(),  # [M, M] the current task's fit part
      "Q_fit": corr(),
      "G_hold": gram(),  # [M, M] the current task's held-out part
      "Q_hold": corr(),
      "n_hold": jnp.zeros(()),
      "W": corr(),  # [M, C] readout
      "ridge": jnp.zeros(()),  # the last chosen lambda
      "batches": jnp.zeros((), jnp.int32),  # feature batches seen (folds the split rng)
    }

  def solve_step(model, extra, ctx):
    del model, ctx
    return solve(extra, ridges)

  def predict(model, extra, images, ctx):
    del ctx
    return jnp.dot(project(model, images), extra["W"], precision=HIGHEST), {}  # [B, C]

  def after_task(state, env: base.TaskEnv):
    return env.edit(env.feature_pass(state, scan_fn), solve_step)

  return base.Method(
    build=build,
    trainable=aper.TRAINABLE,
    predict=predict,
    loss=aper.first_session_loss,
    init_extra=init_extra,
    after_task=after_task,
    train_tasks="first",
  )
