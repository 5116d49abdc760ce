"""SLCA (slow learner, class statistics, classifier alignment) and OVOR (OnePrompt, virtual
outlier regularisation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import THREE_TASKS, load_config, shared_run

from jaxcl import methods, optim
from jaxcl.engine import state as state_lib
from jaxcl.methods import base, ovor, slca, vor
from jaxcl.models import vit

NUM_CLASSES = 4


def _setup(name, **overrides):
  config = load_config(name, "smoke", **{"data.image_size": 8, **overrides})
  method = methods.get(name).make(config)
  model = method.build(config, NUM_CLASSES, nnx.Rngs(0))
  tx = optim.make_optimizer(config.optim, optim.make_schedule(config.optim, 1e-3, 2))
  extra = method.init_extra(model, NUM_CLASSES)
  graphdef, state = state_lib.init_state(model, method.trainable, tx, extra, NUM_CLASSES, 0)
  return config, method, graphdef, state


def _ctx(task: int, classes) -> base.Ctx:
  ids = np.arange(NUM_CLASSES)
  return base.Ctx(
    jnp.int32(task),
    jnp.asarray(ids <= max(classes)),
    jnp.asarray(np.isin(ids, classes)),
    jax.random.PRNGKey(task),
  )


def _env(graphdef, method, batches, task: int, classes) -> base.TaskEnv:
  """The loop's TaskEnv without jit: hooks run eagerly over hand-made batches."""
  ctx = _ctx(task, classes)

  def feature_pass(state, fn):
    for batch in batches:
      model = nnx.merge(graphdef, state.params, state.frozen)
      state = state.replace(extra=fn(model, state.extra, batch, ctx))
    return state

  def edit(state, fn):
    fresh = jax.tree.map(lambda x: x, (state.params, state.frozen))  # new Variables: no aliasing
    model = nnx.merge(graphdef, *fresh)
    extra = fn(model, state.extra, ctx)
    _, params, frozen = nnx.split(model, method.trainable, ...)
    return state.replace(params=params, frozen=frozen, extra=extra)

  return base.TaskEnv(task, 2, np.asarray(classes), feature_pass, edit)


def _batches(classes, n: int, seed: int, size: int = 4):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(n, 8, 8, 3)).astype(np.float32)
  labels = np.asarray(classes)[np.arange(n) % len(classes)].astype(np.int32)
  out = []
  for i in range(0, n, size):  # the last batch is padded, as the eval pipeline pads
    img, lab = images[i : i + size], labels[i : i + size]
    pad = size - len(lab)
    out.append(
      {
        "image": jnp.asarray(np.pad(img, ((0, pad), (0, 0), (0, 0), (0, 0)))),
        "label": jnp.asarray(np.pad(lab, (0, pad))),
        "mask": jnp.asarray(np.arange(size) < len(lab)),
      }
    )
  return out, images, labels


# ---------------------------------------------------------------------------------------------
# Optimizer: per-group learning rates, multistep schedule.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_backbone_lr_is_a_fraction_of_the_head_lr(name):
  cfg = load_config("slca", "smoke").optim
  cfg.unlock()
  cfg.update(name=name, weight_decay=0.0, clip_norm=0.0, schedule="constant")
  params = {"backbone": {"w": jnp.ones((3, 2))}, "head": {"kernel": jnp.ones((2, 4))}}
  grads = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), params)
  tx = optim.make_optimizer(cfg, optim.make_schedule(cfg, 0.01, 10))
  updates, _ = tx.update(grads, tx.init(params), params)
  ratio = jnp.abs(updates["backbone"]["w"]).mean() / jnp.abs(updates["head"]["kernel"]).mean()
  np.testing.assert_allclose(float(ratio), 0.01, rtol=1e-5)  # SLCA's bcb_lrscale
  cfg.backbone_lr_scale = 0.0  # frozen backbone
  tx = optim.make_optimizer(cfg, optim.make_schedule(cfg, 0.01, 10))
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates["backbone"]["w"]).max()) == 0.0
  assert float(jnp.abs(updates["head"]["kernel"]).min()) > 0.0


def test_slca_model_splits_backbone_and_head_into_groups():
  _, _, _, state = _setup("slca")
  labels = jax.tree.leaves(optim.param_groups(state.params))
  assert labels.count("other") == 2 and labels.count("backbone") == len(labels) - 2


def test_multistep_schedule_drops_at_the_milestone():
  cfg = load_config("slca", "smoke").optim  # milestone 0.9 of the task, x 0.1
  schedule = optim.make_schedule(cfg, 0.01, 20)
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 17, 18, 19)], [1e-2] * 2 + [1e-3] * 2)


# ---------------------------------------------------------------------------------------------
# SLCA: statistics, logit normalisation, classifier alignment.
# ---------------------------------------------------------------------------------------------


def test_class_statistics_equal_numpy_mean_and_cov():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(11, 3)).astype(np.float32) + 5.0  # offset: centring matters
  labels = np.array([0, 2, 2, 0, 2, 0, 2, 2, 0, 0, 2], np.int32)
  mask = np.ones(11, bool)
  mask[-1] = False  # a padded row
  sums, counts, scatter = jnp.zeros((3, 3)), jnp.zeros(3), jnp.zeros((3, 3, 3))
  for part in (slice(0, 6), slice(6, 11)):  # two batches
    sums, counts = slca.add_sums(feats[part], labels[part], mask[part], sums, counts)
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  for part in (slice(0, 6), slice(6, 11)):
    scatter = slca.add_scatter(feats[part], labels[part], mask[part], means, scatter)
  rows = jnp.array([True, False, True])
  covs = slca.finish_covariance(scatter, counts, rows, 1e-4)
  for c in (0, 2):
    x = feats[mask & (labels == c)]
    np.testing.assert_allclose(means[c], x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(covs[c], np.cov(x.T) + 1e-4 * np.eye(3), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(covs[1], 0.0)  # not a current class: untouched


def test_logit_normalisation_as_defined():
  logits = jnp.array([[1.0, -2.0, 3.0, 0.5, 9.0], [0.0, 4.0, -1.0, 2.0, 9.0]])
  tasks = np.array([0, 0, 1, 1, 2])
  seen = jnp.array([True, True, True, True, False])
  out = slca.normalized_logits(logits, seen, tasks, jnp.int32(1), 0.1)
  x = np.asarray(logits)
  norms = (np.linalg.norm(x[:, :2], axis=1) + np.linalg.norm(x[:, 2:4], axis=1)) / 2 + 1e-7
  np.testing.assert_allclose(out[:, :4], x[:, :4] / norms[:, None] / 0.1, rtol=1e-5)
  assert float(out[:, 4].max()) < -1e30  # unseen class masked
  first = slca.normalized_logits(logits, seen.at[2:].set(False), tasks, jnp.int32(0), 0.1)
  norm0 = np.linalg.norm(x[:, :2], axis=1) + 1e-7
  np.testing.assert_allclose(first[:, :2], x[:, :2] / norm0[:, None] / 0.1, rtol=1e-5)


def _sample_accuracy(head, means, covs, seen, key):
  x = jax.random.multivariate_normal(key, means, covs, (64, means.shape[0]))  # [64, C, D]
  logits = base.mask_logits(x.reshape(-1, means.shape[1]) @ head["kernel"] + head["bias"], seen)
  y = jnp.tile(jnp.arange(means.shape[0]), 64)
  return float(((logits.argmax(-1) == y) * seen[y]).sum() / (seen[y]).sum())


def test_alignment_fits_the_head_to_the_class_gaussians():
  cfg = ml_collections.ConfigDict(
    dict(
      ca_samples=32,
      ca_epochs=5,
      ca_lr=0.01,
      ca_momentum=0.9,
      ca_tau=0.1,
      ca_mean_scale=0.1,
      weight_decay=5e-4,
    )
  )
  c, d = 6, 5
  means = 3.0 * jnp.eye(c, d) + 1.0  # classes 0-3 seen (tasks 0, 1), 4-5 not
  covs = jnp.broadcast_to(0.2 * jnp.eye(d), (c, d, d))
  seen = jnp.arange(c) < 4
  tasks = np.array([0, 0, 1, 1, 2, 2])
  # The usual class-incremental bias: new classes (task 1) have larger weights and biases.
  scale = jnp.array([0.5, 0.5, 2.0, 2.0, 1.0, 1.0])
  biased = {
    "kernel": (base.l2_normalize(means) * scale[:, None]).T,
    "bias": jnp.array([0.0, 0.0, 2.0, 2.0, 0.0, 0.0]),
  }
  assert _sample_accuracy(biased, means, covs, seen, jax.random.PRNGKey(1)) <= 0.55
  new = slca.align_head(biased, means, covs, seen, tasks, jnp.int32(1), jax.random.PRNGKey(0), cfg)
  assert _sample_accuracy(new, means, covs, seen, jax.random.PRNGKey(1)) > 0.95
  np.testing.assert_array_equal(new["kernel"][:, 4:], biased["kernel"][:, 4:])  # unseen: kept
  np.testing.assert_array_equal(new["bias"][4:], biased["bias"][4:])
  cos = base.l2_normalize(new["kernel"].T[:4]) @ base.l2_normalize(means[:4]).T
  assert np.all(np.argmax(cos, axis=1) == np.arange(4))  # columns point at their class means


def test_slca_hooks_collect_statistics_align_and_restore_the_head():
  config, method, graphdef, state = _setup("slca")
  batches, images, labels = _batches([0, 1], 10, seed=0)
  state = method.after_task(state, _env(graphdef, method, batches, 0, [0, 1]))
  model = nnx.merge(graphdef, state.params, state.frozen)
  feats = np.asarray(model.backbone(jnp.asarray(images))["pre_logits"])
  for c in (0, 1):
    x = feats[labels == c]
    mean = state.extra["sums"][c] / state.extra["counts"][c]
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
      state.extra["covs"][c], np.cov(x.T) + 1e-4 * np.eye(x.shape[1]), rtol=1e-3, atol=1e-5
    )
  head0 = np.asarray(state.params["head"]["kernel"][...])  # task 0: no alignment
  np.testing.assert_array_equal(state.extra["head"]["kernel"], head0)
  batches, _, _ = _batches([2, 3], 10, seed=1)
  state = method.after_task(state, _env(graphdef, method, batches, 1, [2, 3]))
  aligned = np.asarray(state.params["head"]["kernel"][...])
  assert not np.allclose(aligned, head0)  # task 1: aligned
  np.testing.assert_array_equal(state.extra["head"]["kernel"], head0)  # pre-alignment copy
  state = method.before_task(state, _env(graphdef, method, [], 2, [2, 3]))
  np.testing.assert_array_equal(state.params["head"]["kernel"][...], head0)


def test_slca_weight_decay_skips_other_tasks_head_columns():
  batch = {"image": jnp.zeros((2, 8, 8, 3)), "label": jnp.array([2, 3])}
  grads = {}
  for wd in (0.0, 1.0):
    _, method, graphdef, state = _setup("slca", **{"method.weight_decay": wd})

    def loss_fn(params, method=method, graphdef=graphdef, state=state):
      model = nnx.merge(graphdef, params, state.frozen)
      return method.loss(model, state.extra, batch, _ctx(1, [2, 3]))[0]

    grads[wd] = jax.jit(jax.grad(loss_fn))(state.params)
  decay = jax.tree.map(lambda a, b: a - b, grads[1.0], grads[0.0])  # coupled L2: wd * w
  kernel = np.asarray(state.params["head"]["kernel"][...])
  np.testing.assert_allclose(decay["head"]["kernel"][...][:, 2:], kernel[:, 2:], atol=1e-6)
  np.testing.assert_array_equal(decay["head"]["kernel"][...][:, :2], 0.0)  # other tasks' heads
  pos = np.asarray(state.params["backbone"]["pos_embedding"][...])
  np.testing.assert_allclose(decay["backbone"]["pos_embedding"][...], pos, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# OVOR: one prompt, one forward, outlier regulariser.
# ---------------------------------------------------------------------------------------------


def test_oneprompt_has_one_prompt_and_one_forward(monkeypatch):
  config, method, graphdef, state = _setup("ovor")
  names = {path[0] for path, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  assert {getattr(k, "key", k) for k in names} == {"g_prompt", "e_prompt", "head"}
  g, e = state.params["g_prompt"][...], state.params["e_prompt"][...]
  assert g.shape == (1, 2, 96) and e.shape == (1, 4, 96)  # [layers, length, D]: no pool, no keys
  calls = []
  forward = vit.ViT.__call__

  def counted(self, *args, **kwargs):
    calls.append(kwargs.get("prefix"))
    return forward(self, *args, **kwargs)

  monkeypatch.setattr(vit.ViT, "__call__", counted)
  model = nnx.merge(graphdef, state.params, state.frozen)
  batch = {"image": jnp.zeros((2, 8, 8, 3)), "label": jnp.array([2, 3])}
  method.loss(model, state.extra, batch, _ctx(1, [2, 3]))
  method.predict(model, state.extra, batch["image"], _ctx(1, [2, 3]))
  assert len(calls) == 2 and all(sorted(p) == [0, 1] for p in calls)  # no query pass
  k, v = calls[0][1]
  assert k.shape == (2, 2, 3, 32) and v.shape == (2, 2, 3, 32)  # E: 4 tokens = 2 keys + 2 values


def _ood_cfg(weight):
  return ml_collections.ConfigDict(dict(ood_weight=weight, ood_thres_id=-15.0, ood_thres_ood=-3.0))


def test_outlier_regulariser_zero_when_off_positive_on_constructed_example():
  ids, oods = jnp.array([[2.0, 1.0], [0.5, 0.0]]), jnp.array([[8.0, 7.0]])
  ones = jnp.ones(2, bool)
  # Energies: ID -logsumexp ~ -2.3 > -15, outlier ~ -8.3 < -3: both pay.
  reg = vor.outlier_loss(ids, oods, ones, ones[:1], _ood_cfg(0.1))
  lse_id, lse_ood = jax.nn.logsumexp(ids, -1), jax.nn.logsumexp(oods, -1)
  huber = lambda x: np.where(x <= 1, 0.5 * x**2, x - 0.5)
  expected = 0.1 * (huber(15.0 - lse_id).mean() + huber(lse_ood - 3.0).mean())
  np.testing.assert_allclose(float(reg), float(expected), rtol=1e-5)
  assert float(reg) > 0
  assert float(vor.outlier_loss(ids, oods, ones, ones[:1], _ood_cfg(0.0))) == 0.0
  calm = vor.outlier_loss(ids + 20.0, oods - 20.0, ones, ones[:1], _ood_cfg(0.1))
  assert float(calm) == 0.0  # thresholds met: no penalty


def test_ood_epochs_zero_is_oneprompt_and_leaves_the_head_alone():
  overrides = {"method.ood_epochs": 0, "optim.horizon_scale": 1.0}
  config, method, graphdef, state = _setup("ovor", **overrides)
  assert state.extra == {}
  batches, _, _ = _batches([0, 1], 8, seed=0)
  after = method.after_task(state, _env(graphdef, method, batches, 0, [0, 1]))
  assert after is state


@pytest.mark.parametrize("name", ["ovor", "dualprompt", "coda_prompt", "l2p"])
def test_outlier_epochs_train_only_the_head(name):
  """OVOR's regulariser after any prompt method (the reference runs it after each learner)."""
  config, method, graphdef, state = _setup(name, **{"method.ood_epochs": 1})
  batches, _, _ = _batches([0, 1], 12, seed=0)
  after = method.after_task(state, _env(graphdef, method, batches, 0, [0, 1]))
  assert int(after.extra["vor"]["count"]) == 0  # the buffer is released for the next task
  before, now = _leaves(state.params), _leaves(after.params)
  assert before.keys() == now.keys()
  for path, x in before.items():
    if "head" not in path:
      np.testing.assert_array_equal(now[path], x, err_msg=path)
  assert not np.allclose(now["['head']['kernel'].value"], before["['head']['kernel'].value"])


def _leaves(tree) -> dict:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


@pytest.mark.parametrize("center", ["origin", "boundary"])
def test_virtual_outliers_are_far_from_the_task_features(center):
  cfg = ml_collections.ConfigDict(
    dict(ood_center=center, ood_cov=0.1, ood_candidates=64, ood_boundary=4, ood_knn=3)
  )
  key = jax.random.PRNGKey(0)
  feats = 5.0 * base.l2_normalize(jax.random.normal(key, (20, 8)) + 3.0)  # one blob
  valid = jnp.arange(20) < 18
  out = vor.synthesize(feats, valid, jax.random.PRNGKey(1), cfg, 10)
  assert out.shape == (10, 8)
  normed = base.l2_normalize(feats)[:18]
  dist = vor.kth_distance(out, normed, jnp.ones(18, bool), 3)
  offsets = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (64, 8))
  if center == "origin":  # the released code: offsets only, each repeated `ood_boundary` times
    all_dist = vor.kth_distance(offsets, normed, jnp.ones(18, bool), 3)
    top = np.sort(np.asarray(all_dist))[::-1]
    np.testing.assert_allclose(np.sort(dist)[::-1], np.repeat(top[:3], 4)[:10], rtol=1e-5)
  else:  # offsets around boundary features: near the blob's scale, not the origin
    assert float(jnp.linalg.norm(out, axis=-1).min()) > 4.0


def test_schedule_must_span_the_outlier_epochs():
  with pytest.raises(ValueError, match="horizon_scale=2"):
    ovor.make(load_config("ovor", "smoke", **{"optim.horizon_scale": 1.0}))


# ---------------------------------------------------------------------------------------------
# Both: one train-step compilation for a whole task sequence.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("name", "overrides"), [("slca", {}), ("ovor", {}), ("dualprompt", {"method.ood_epochs": 1})]
)
def test_multi_task_run_compiles_the_train_step_once(name, overrides):
  results, _ = shared_run(name, **THREE_TASKS, **overrides)  # 3 x 2 classes
  assert results["num_tasks"] == 3
  assert results["train_compiles"] == 1
  assert results["traces"].get("edit", 0) <= 2 and results["traces"].get("feature", 0) <= 2
  assert all(np.isfinite(row).all() for row in results["acc_matrix"][-1:])


def test_optax_huber_matches_torch_default():
  x = jnp.array([0.0, 0.5, 1.0, 3.0])
  np.testing.assert_allclose(optax.huber_loss(x), [0.0, 0.125, 0.5, 2.5])
