"""The method contract, checked for every file in jaxcl/methods automatically.

For each method (on the smoke preset of the first config that uses it, three tasks of two
classes): the interface; no frozen variable in the trainable set, by name against what the
method's `trainable` filter says; one train-step compilation for the whole task sequence;
evaluation masks the classes not yet seen (when the config asks for it); and a checkpoint
restored from that run evaluates exactly as the run did.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.nnx import filterlib
from helpers import (
  THREE_TASKS,
  build_learner,
  config_names,
  evaluate_all,
  load_config,
  restore_last,
  shared_run,
)

from jaxcl import methods
from jaxcl.engine import state as state_lib
from jaxcl.methods import base

RUN = THREE_TASKS
NUM_CLASSES = RUN["data.num_classes"]


@functools.cache
def _config_name(method_name: str) -> str:
  for name in config_names():
    if load_config(name).method.name == method_name:
      return name
  raise AssertionError(f"no configs/*.py uses method {method_name!r}")


@functools.cache
def _learner(method_name: str):
  return build_learner(load_config(_config_name(method_name), "smoke", **RUN), NUM_CLASSES)


def _ctx(seen_classes: int = 4):
  seen = jnp.arange(NUM_CLASSES) < seen_classes
  current = (jnp.arange(NUM_CLASSES) >= seen_classes - 2) & seen
  return base.Ctx(jnp.int32(1), seen, current, jax.random.PRNGKey(0))


def _model(learner, state=None):
  state = learner.state if state is None else state
  return nnx.merge(learner.graphdef, state.params, state.frozen)


def _images(learner, n: int, key: int = 1):
  data = learner.config.data
  return jax.random.uniform(jax.random.PRNGKey(key), (n, data.image_size, data.image_size, 3))


def _leaves(tree) -> dict:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


@pytest.mark.parametrize("name", methods.names())
def test_interface_and_loss_gradients(name):
  learner = _learner(name)
  method, state = learner.method, learner.state
  logits, aux = method.predict(_model(learner), state.extra, _images(learner, 3), _ctx())
  assert logits.shape == (3, NUM_CLASSES)
  assert isinstance(aux, dict)
  if method.loss is None:
    return
  batch = {"image": _images(learner, 3), "label": jnp.array([2, 3, 2]), "mask": jnp.ones(3, bool)}

  def loss_fn(params):
    model = nnx.merge(learner.graphdef, params, state.frozen)
    return method.loss(model, state.extra, batch, _ctx())

  (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state.params)
  assert np.isfinite(float(loss))
  assert jax.tree.structure(grads) == jax.tree.structure(state.params)
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads)), "no gradient reaches params"


@pytest.mark.parametrize("name", methods.names())
def test_predict_changes_neither_the_model_nor_the_extras(name):
  """An eager predict that wrote to a variable (a counter, a cache) would differ under jit."""
  learner = _learner(name)
  model, extra = _model(learner), learner.state.extra
  before = _leaves((nnx.state(model), extra))
  first, _ = learner.method.predict(model, extra, _images(learner, 2, key=2), _ctx())
  assert _leaves((nnx.state(model), extra)).keys() == before.keys()
  for path, x in _leaves((nnx.state(model), extra)).items():
    np.testing.assert_array_equal(x, before[path], err_msg=path)
  again, _ = learner.method.predict(model, extra, _images(learner, 2, key=2), _ctx())
  np.testing.assert_array_equal(first, again)


def declared_frozen(trainable) -> tuple[set[str], set[str] | None, bool]:
  """What a method's `trainable` filter says, by name: (names it freezes, names it alone trains
  or None for no such list, whether only `nnx.Param` variables train)."""
  if trainable is nnx.Param:
    return set(), None, True
  if trainable is nnx.Nothing:
    return set(), set(), False
  if isinstance(trainable, filterlib.Not) and isinstance(trainable.predicate, nnx.PathContains):
    return {trainable.predicate.key}, None, False
  keys = [trainable] if isinstance(trainable, nnx.PathContains) else []
  if isinstance(trainable, filterlib.Any):
    keys = list(trainable.predicates)
  if keys and all(isinstance(k, nnx.PathContains) for k in keys):
    return set(), {k.key for k in keys}, False
  raise AssertionError(f"teach declared_frozen the filter {trainable!r}")


@pytest.mark.parametrize("name", methods.names())
def test_no_frozen_variable_is_in_the_trainable_set(name):
  learner = _learner(name)
  frozen_names, only_names, params_only = declared_frozen(learner.method.trainable)
  trainable = dict(nnx.to_flat_state(learner.state.params))
  everything = dict(nnx.to_flat_state(nnx.state(_model(learner))))
  for key in frozen_names:  # the name is really there: a renamed module would train silently
    assert any(key in path for path in everything), f"no variable under {key!r}"
  for path, variable in trainable.items():
    assert not frozen_names & set(path), f"{path} is frozen by name but trainable"
    if only_names is not None:
      assert only_names & set(path), f"{path} is outside {only_names} but trainable"
    if params_only:
      assert isinstance(variable, nnx.Param), f"{path} is a {type(variable).__name__}"
  for path, variable in everything.items():  # and whatever the filter trains is in the set
    trains = not frozen_names & set(path)
    trains &= only_names is None or bool(only_names & set(path))
    trains &= not params_only or isinstance(variable, nnx.Param)
    assert trains == (path in trainable), path
  if learner.method.loss is not None:
    assert state_lib.count_params(learner.state.params) > 0


@pytest.mark.parametrize("name", methods.names())
def test_train_step_compiles_once_over_three_tasks(name):
  method = _learner(name).method
  results, _ = shared_run(_config_name(name), **RUN)
  assert results["num_tasks"] == (1 if method.single_task else 3)
  compiles = 1 if method.loss is not None else 0
  assert results["train_compiles"] == results["traces"].get("train", 0) == compiles


@pytest.mark.parametrize("name", methods.names())
def test_evaluation_masks_classes_not_yet_seen(name):
  """The class the fresh learner predicts most often, made unseen: with `eval.mask_unseen` no
  example may be predicted as it (task-IL, restricted to it, still predicts it)."""
  learner = _learner(name)
  n = learner.config.data.eval_batch_size
  batch = {"image": _images(learner, n, key=3), "mask": jnp.ones(n, bool)}
  every = jnp.ones(NUM_CLASSES, bool)
  state = learner.state.replace(seen=jax.device_put(every, learner.state_sharding.seen))

  def count(state, label: int, task_mask) -> dict:
    sums = learner.eval_step(state, {**batch, "label": jnp.full(n, label)}, task_mask)
    return {k: int(v) for k, v in jax.device_get(sums).items() if k != "prompt_counts"}

  hits = [count(state, c, every)["correct"] for c in range(NUM_CLASSES)]
  assert sum(hits) == n
  top = int(np.argmax(hits))
  unseen = state.replace(
    seen=jax.device_put(jnp.arange(NUM_CLASSES) != top, learner.state_sharding.seen)
  )
  sums = count(unseen, top, jnp.arange(NUM_CLASSES) == top)
  assert sums["correct"] == (0 if learner.config.eval.mask_unseen else hits[top])
  assert sums["task_il_correct"] == sums["count"] == n


@pytest.mark.parametrize("name", methods.names())
def test_checkpoint_round_trip_evaluates_as_the_run_did(name):
  """The run evaluates its state after the last task, then saves it: restored from disk into a
  fresh learner, it must evaluate exactly the same."""
  results, workdir = shared_run(_config_name(name), **RUN)
  learner = _learner(name)
  restored = restore_last(learner, workdir)
  row = evaluate_all(learner, restored)
  assert row["acc"] == results["acc_matrix"][-1]
  assert row["task_il"] == results["task_il_matrix"][-1]
  assert row["counts"] == results["test_counts"]
  fresh, _ = learner.method.predict(
    _model(learner), learner.state.extra, _images(learner, 4), _ctx(6)
  )
  trained, _ = learner.method.predict(
    _model(learner, restored), restored.extra, _images(learner, 4), _ctx(6)
  )
  assert not np.allclose(fresh, trained), "the restored state predicts like an untrained one"


def test_linear_probe_trains_only_the_head():
  config = load_config("linear_probe", "smoke")
  method = methods.get("finetune").make(config)
  model = method.build(config, NUM_CLASSES, nnx.Rngs(0))
  _, params, _ = nnx.split(model, method.trainable, ...)
  paths = {"/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert paths and all("head" in p for p in paths)


def test_mask_logits_and_masked_cross_entropy():
  logits = jnp.array([[1.0, 2.0, 3.0]])
  masked = base.mask_logits(logits, jnp.array([True, True, False]))
  assert int(jnp.argmax(masked)) == 1
  ce = base.cross_entropy(masked, jnp.array([1]))
  expected = -np.log(np.exp(2) / (np.exp(1) + np.exp(2)))
  np.testing.assert_allclose(float(ce), expected, rtol=1e-5)
