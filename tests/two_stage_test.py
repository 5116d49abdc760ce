"""bert2BERT's two-stage training (jaxcl/lm/two_stage.py): sub-model logits, what a stage-1 step
updates, and stage 2 as the ordinary step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcl import sharding
from jaxcl.engine import state as state_lib
from jaxcl.engine import step
from jaxcl.lm import objectives, two_stage
from jaxcl.models import bert, gpt


def test_depths_are_multiples_of_lb_and_the_whole_model():
  assert two_stage.depths(12, 3) == [3, 6, 9, 12]  # BERT_BASE with the paper's l_b
  assert two_stage.depths(4, 3) == [3, 4]
  assert two_stage.depths(2, 3) == [2]


def test_depth_tables_are_seeded_and_the_traced_depth_reads_them():
  a = two_stage.TwoStage([10, 250], [12, 4], steps=200, lb=3, seed=0)
  b = two_stage.TwoStage([10, 250], [12, 4], steps=200, lb=3, seed=0)
  c = two_stage.TwoStage([10, 250], [12, 4], steps=200, lb=3, seed=1)
  np.testing.assert_array_equal(a.tables[0], b.tables[0])
  assert (a.tables[0] != c.tables[0]).any()
  assert set(a.tables[0]) == {3, 6, 9, 12} and set(a.tables[1]) == {3, 4}  # uniform over all
  steps = np.arange(0, 500)
  traced = jax.jit(jax.vmap(lambda s: a.depth(s, 7)))(steps)
  host = [a.depth_at(int(s)) for s in steps]
  assert host[:10] == [None] * 10 and host[210:250] == [None] * 40 and host[450:] == [None] * 50
  assert host[10:210] == list(a.tables[0]) and host[250:450] == list(a.tables[1])
  np.testing.assert_array_equal(traced, [7 if d is None else d for d in host])


def _truncated(model, cfg, depth: int):
  """A model of the bottom `depth` layers of `model` (same embeddings, final norm, head)."""
  module = gpt.GPT if isinstance(cfg, gpt.Config) else bert.BERT
  small = module(dataclasses.replace(cfg, num_layers=depth), rngs=nnx.Rngs(1))
  pure = nnx.to_pure_dict(nnx.state(model))
  if cfg.scan_layers:
    pure["blocks"] = jax.tree.map(lambda x: x[:depth], pure["blocks"])
  else:
    pure["blocks"] = {i: v for i, v in pure["blocks"].items() if int(i) < depth}
  state = nnx.state(small)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(small, state)
  return small


@pytest.mark.parametrize(
  "cfg",
  [
    gpt.config_for("tiny", num_layers=4),
    gpt.config_for("tiny", num_layers=4, scan_layers=False),
    gpt.config_for("tiny_llama", num_layers=4),
    bert.config_for("tiny", num_layers=4),
  ],
  ids=["gpt2", "gpt2_listed", "llama", "bert"],
)
def test_sub_model_logits_are_the_truncated_models(cfg):
  module = gpt.GPT if isinstance(cfg, gpt.Config) else bert.BERT
  model = module(cfg, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 8), 0, cfg.vocab_size)
  logits = lambda m, *depth: m(tokens, depth=depth[0]) if depth else m(tokens)
  unwrap = lambda out: out if isinstance(cfg, gpt.Config) else out[1]  # BERT: (hidden, logits)
  graphdef, state = nnx.split(model)
  traces = step.Traces()

  def sub_model_logits(state, k):
    traces["sub_model"] += 1
    return unwrap(logits(nnx.merge(graphdef, state), k))

  at_depth = jax.jit(sub_model_logits)
  full = unwrap(logits(model))
  with jax.default_matmul_precision("highest"):
    for k in range(1, cfg.num_layers + 1):
      want = unwrap(logits(_truncated(model, cfg, k)))
      np.testing.assert_allclose(at_depth(state, jnp.int32(k)), want, rtol=1e-5, atol=1e-5)
      if k < cfg.num_layers:
        assert np.abs(np.asarray(want - full)).max() > 1e-3  # the depths differ
  assert traces["sub_model"] == 1  # every depth in one compiled function


def _learner(num_layers=4):
  cfg = gpt.config_for("tiny", num_layers=num_layers)
  tx = optax.adamw(1e-2, weight_decay=0.1)
  graphdef, state = state_lib.init_state(gpt.GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param, tx, {}, 1, 0)
  mesh = sharding.make_mesh(1, devices=jax.devices()[:1])
  state_sh = sharding.state_shardings(state, mesh, replicate_frozen=False)
  on = dict(
    state_sharding=state_sh,
    batch_sharding=sharding.batch_sharding(mesh),
    scale="none",
    skip_nonfinite=False,
  )
  return cfg, tx, graphdef, jax.device_put(state, state_sh), on


def _batch(i: int):
  return {"tokens": jax.random.randint(jax.random.PRNGKey(i), (4, 9), 0, 64)}


def _layers(params) -> dict:
  """{parameter path: [L, ...] numpy} of the blocks, and the other leaves under their paths."""
  pure = nnx.to_pure_dict(params)
  flat = jax.tree_util.tree_flatten_with_path(pure)[0]
  return {jax.tree_util.keystr(p): np.array(x) for p, x in flat}  # copies: steps donate


def test_a_stage_one_step_updates_only_the_sub_models_top_layers_and_the_shared_parts():
  cfg, tx, graphdef, state, on = _learner()
  lb, steps = 2, 5
  plan = two_stage.TwoStage([1], [cfg.num_layers], steps=steps, lb=lb, seed=2)
  # k = 2 trains layers 0, 1 (2, 3 above it frozen); k = 4 trains 2, 3 (0, 1 below frozen).
  assert set(plan.tables[0]) == {2, 4}
  loss = objectives.make("lm").loss
  traces = step.Traces()
  train_step = step.make_train_step(
    plan.loss(loss),
    graphdef,
    tx,
    update_mask=plan.update_mask(cfg.num_layers),
    traces=traces,
    **on,
  )
  state, _ = train_step(state, _batch(0))  # step 0, before stage 1: Adam moments everywhere
  for t in range(1, 1 + steps):
    k = plan.depth_at(t)
    before, mu_before = _layers(state.params), _layers(state.opt[0].mu)
    state, _ = train_step(state, _batch(t))
    after, mu_after = _layers(state.params), _layers(state.opt[0].mu)
    for path, old in before.items():
      new, moved = after[path], after[path] != old
      if "'blocks'" not in path:  # embeddings, final norm: shared by every sub-model
        assert moved.any(), path
        continue
      for layer in range(cfg.num_layers):
        trained = k - lb <= layer < k
        assert moved[layer].any() == trained, (t, k, layer, path)
        if not trained:  # frozen: weight decay and momentum did not touch it either
          np.testing.assert_array_equal(new[layer], old[layer])
          np.testing.assert_array_equal(mu_after[path][layer], mu_before[path][layer])
  assert traces["train"] == 1  # every depth, and both stages, in one compiled step


def test_stage_two_is_the_ordinary_step():
  cfg, tx, graphdef, state, on = _learner()
  plan = two_stage.TwoStage([1], [cfg.num_layers], steps=2, lb=1, seed=0)
  loss = objectives.make("lm").loss
  plain = step.make_train_step(loss, graphdef, tx, traces=step.Traces(), **on)
  two = step.make_train_step(
    plan.loss(loss), graphdef, tx, update_mask=plan.update_mask(4), traces=step.Traces(), **on
  )
  state = state.replace(step=jnp.int32(3))  # after stage 1 (steps 1 and 2)
  copy = jax.tree.map(jnp.copy, state)  # the steps donate their input
  before = _layers(state.params)
  a, _ = plain(state, _batch(0))
  b, _ = two(copy, _batch(0))
  after = _layers(b.params)
  for path, x in _layers(a.params).items():  # Adam's steps are 1e-2: equal up to rounding
    np.testing.assert_allclose(after[path], x, rtol=0, atol=1e-5, err_msg=path)
    if "'blocks'" in path and "kernel" in path:  # every layer trains
      assert all((after[path][i] != before[path][i]).any() for i in range(cfg.num_layers))


def test_stage_one_must_end_before_the_next_event():
  from helpers import load_config

  config = load_config("growth_bert2bert", "smoke", **{"growth.two_stage_steps": 10})
  with pytest.raises(ValueError, match="runs into"):
    two_stage.from_config(config, [3, 8], [2, 2])
  assert two_stage.from_config(config, [3], [2]).tables[0].shape == (10,)
  off = load_config("growth_bert2bert", "smoke", **{"growth.two_stage_steps": 0})
  assert two_stage.from_config(off, [3], [2]) is None
