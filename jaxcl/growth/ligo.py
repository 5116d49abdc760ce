"""LiGO, the learned linear growth operator (Wang et al., ICLR 2023, arXiv 2303.00980).

The large model's weights are a linear function of the small one's, factored into a width
part and a depth part (LiGO §3.2, Eq. 4-6): with W_j the weight of one kind in small layer j,

    W'_l = sum_j w[l, j] * B_j W_j A_j^T        w [L', L]; B_j, A_j [out', out], [in', in]

one learned depth matrix w per weight kind (Eq. 5) and width matrices tied as LiGO §3.3 ties
them for transformers:

    embedding, positions, norms, biases on the residual stream      B_emb
    Q, K, V of layer j        A = B_emb,        B = B^Q_j, B^K_j, B^V_j
    attention output          A = B^V_j,        B = B_emb            (W_O reads what V writes)
    FFN in (and gate)         A = B_emb,        B = B^fc1_j
    FFN out                   A = B^fc1_j,      B = B_emb

B^Q_j, B^K_j, B^V_j act on the flattened (heads x head size) features, so the new heads are
learned combinations of old features; the head size stays. With grouped-query attention the
output projection reads the query heads' features, not V's, so it gets its own B^O_j there
(the paper is multi-head only). Every A reads the old features' sums: A = B (n / n') keeps a
sum over n' copies the old sum (Net2Net's split), so the operator starts as FPI with the tiled
map (jaxcl/growth/width.py) plus N(0, 0.01) on the new rows, and w as StackBERT
(w[l, l mod L] = 1; the paper's StackBERT / Net2Net special cases, §3.2).

The operator is trained on the large model's loss with the small weights fixed, for the
paper's 100 steps of SGD (§4.1, `growth.ligo_steps`, `growth.ligo_optimizer`), then the
large model starts from M(theta). NOT function preserving (noise, stacking, training).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl.growth import base, depth, width

INIT_NOISE = 0.01
OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam}
# Block leaves whose output features a per-layer matrix expands (name -> its key in theta["B"]).
OUT_OPS = {"attn.query": "Q", "attn.key": "K", "attn.value": "V", "mlp.up": "F", "mlp.gate": "F"}


def _one_hot_rows(sources: np.ndarray, n_old: int) -> np.ndarray:
  return np.eye(n_old, dtype=np.float32)[sources]  # [n', n]


def _noisy(m: np.ndarray, n_old: int, key, noise: float) -> jax.Array:
  """m with N(0, noise) on its new rows (rows >= n_old)."""
  rows = jnp.asarray(np.arange(m.shape[0]) >= n_old, jnp.float32)[:, None]
  return jnp.asarray(m) + noise * jax.random.normal(key, m.shape) * rows


def _head_features(head_map: np.ndarray, n_heads: int, head_size: int) -> np.ndarray:
  """[H' dh, H dh]: copy whole heads through `head_map`, feature by feature."""
  return np.kron(_one_hot_rows(head_map, n_heads), np.eye(head_size, dtype=np.float32))


def uses_own_out(src_cfg) -> bool:
  """Grouped-query attention: W_O reads query-head features, so it cannot share B^V."""
  d = base.dims(src_cfg)
  return d["H"] != d["K"]


def init_operator(src: base.Params, src_cfg, dst_cfg, key, noise: float = INIT_NOISE) -> dict:
  """{"B": {"D": [D', D], "Q"/"K"/"V"(/"O"): [L, n' dh, n dh], "F": [L, F', F]},
  "w": {block leaf: [L', L]}}: FPI (tiled) width maps and StackBERT depth."""
  old, new = base.dims(src_cfg), base.dims(dst_cfg)
  dh, n_layers = base.head_size(src_cfg), old["L"]
  maps = width.fpi_maps(src_cfg, dst_cfg)
  keys = iter(jax.random.split(key, 6))
  q = _head_features(maps["H"], old["H"], dh)
  kv = _head_features(maps["K"], old["K"], dh)
  per_layer = {"Q": (q, old["H"] * dh), "K": (kv, old["K"] * dh), "V": (kv, old["K"] * dh)}
  per_layer["F"] = (_one_hot_rows(maps["F"], old["F"]), old["F"])
  if uses_own_out(src_cfg):
    per_layer["O"] = per_layer["Q"]
  b = {"D": _noisy(_one_hot_rows(maps["D"], old["D"]), old["D"], next(keys), noise)}
  for name, (m, n_old) in per_layer.items():
    k = next(keys)
    b[name] = jnp.stack(
      [_noisy(m, n_old, jax.random.fold_in(k, j), noise) for j in range(n_layers)]
    )
  sources = depth.stack_sources(old["L"], new["L"])
  w0 = jnp.asarray(_one_hot_rows(sources, old["L"]))  # [L', L]
  names = [k for k in base.flatten(src) if k.startswith("blocks.")]
  return {"B": b, "w": {k.replace(".", "/"): w0 for k in names}}


def _map_axes(x, m, start: int, stop: int, read: bool):
  """x with its axes [start, stop) flattened and mapped through m [n', n] (A = m n / n' when
  the leaf reads them), then unflattened with the same trailing sizes."""
  if read:
    m = m * (m.shape[1] / m.shape[0])
  shape = x.shape
  inner = int(np.prod(shape[start + 1 : stop]))  # e.g. the head size
  flat = x.reshape(*shape[:start], -1, *shape[stop:])
  out = jnp.moveaxis(jnp.tensordot(m, flat, axes=[[1], [start]]), 0, start)
  return out.reshape(*shape[:start], m.shape[0] // inner, *shape[start + 1 :])


def _expand_block_leaf(name: str, x, b: dict, own_out: bool):
  """One small layer's leaf (no L axis) through that layer's width matrices `b`."""
  module, kind = name.rsplit(".", 1)
  if module in OUT_OPS:
    op = b[OUT_OPS[module]]
    if kind == "kernel":  # [D, n, (dh)]
      x = _map_axes(x, b["D"], 0, 1, read=True)
      return _map_axes(x, op, 1, x.ndim, read=False)
    return _map_axes(x, op, 0, x.ndim, read=False)  # bias [n, (dh)]
  if module == "attn.out" and kind == "kernel":  # [H, dh, D]
    x = _map_axes(x, b["O" if own_out else "V"], 0, 2, read=True)
    return _map_axes(x, b["D"], 2, 3, read=False)
  if module == "mlp.down" and kind == "kernel":  # [F, D]
    x = _map_axes(x, b["F"], 0, 1, read=True)
    return _map_axes(x, b["D"], 1, 2, read=False)
  return _map_axes(x, b["D"], 0, 1, read=False)  # norms, output biases [D]


def expand(src: base.Params, theta: dict, src_cfg, dst_cfg) -> base.Params:
  """M(theta)(src): the large model's (scanned) parameters, linear in `src` (module doc)."""
  del dst_cfg
  own_out = uses_own_out(src_cfg)
  per_layer = {k: v for k, v in theta["B"].items() if k != "D"}

  def leaf(name, r, x):
    if name.startswith("blocks."):
      short = name[len("blocks.") :]
      grow = lambda xj, bj: _expand_block_leaf(short, xj, {**bj, "D": theta["B"]["D"]}, own_out)
      wide = jax.vmap(grow)(x, per_layer)  # [L, ...'] every small layer widened
      return jnp.tensordot(theta["w"][name.replace(".", "/")], wide, axes=[[1], [0]])  # [L', ...']
    for axis, c in enumerate(r):  # embeddings [V, D], final norm [D], head [D, V]
      if c in "Dd":
        x = _map_axes(x, theta["B"]["D"], axis, axis + 1, read=c == "d")
    return x

  out = base.leaf_map(leaf, src)
  tied = base.tied_output_norm(src_cfg)
  if tied:  # the tied head sums over D' copies: its input norm reads the old sum
    old, new = theta["B"]["D"].shape[1], theta["B"]["D"].shape[0]
    flat = base.flatten(out)
    for k in ("scale", "bias"):
      if f"{tied}.{k}" in flat:
        flat[f"{tied}.{k}"] = flat[f"{tied}.{k}"] * (old / new)
    out = base.unflatten(flat)
  return out


def _untrained(src, init, src_cfg, dst_cfg, key):
  del init
  base.check_same_except(src_cfg, dst_cfg, "LDHKF")
  return expand(src, init_operator(src, src_cfg, dst_cfg, key), src_cfg, dst_cfg)


def train(
  src,
  init,
  src_cfg,
  dst_cfg,
  loss_fn,
  batches,
  *,
  steps: int,
  lr: float,
  seed: int,
  optimizer: str = "sgd",
):
  """Trains the operator for `steps` batches of `batches`; returns (params, tokens read).

  `loss_fn(params, batch)` is the large model's training loss on scanned pure-dict params;
  `optimizer` is the paper's "sgd" or "adam".
  """
  del init
  base.check_same_except(src_cfg, dst_cfg, "LDHKF")
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"growth.ligo_optimizer={optimizer!r}: use {' | '.join(OPTIMIZERS)}")
  src = base.stack_layers(src)
  theta = init_operator(src, src_cfg, dst_cfg, jax.random.PRNGKey(seed))
  tx = OPTIMIZERS[optimizer](lr)
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
