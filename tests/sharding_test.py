"""Pod scale on 8 fake CPU devices: meshes, logical-axis rules, one step on many meshes, and the
per-process data shards."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import grain
import jax
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import load_config

from jaxcl import main, methods, optim, sharding
from jaxcl.data import pipeline
from jaxcl.engine import state as state_lib
from jaxcl.engine import step as step_lib
from jaxcl.lm import models, objectives
from jaxcl.models import bert, gpt, vit

P = sharding.P
MESHES = [(8, 1, 1), (2, 4, 1), (1, 8, 1)]  # (data, fsdp, tensor), against one device
AGREEMENT = {}  # (model, mesh) -> (loss_1, |loss - loss_1|, step, max |param - param_1|)


def test_mesh_sizes_fill_with_minus_one():
  assert sharding.mesh_shape((-1, 1, 1), (-1, 1, 1), 8) == ((8, 1, 1), (1, 1, 1))
  assert sharding.mesh_shape((2, -1, 1), (-1, 1, 1), 8) == ((2, 4, 1), (1, 1, 1))
  assert sharding.mesh_shape((1, -1, 2), (1, 1, 1), 8) == ((1, 4, 2), (1, 1, 1))
  # two slices of 16: fsdp within a slice, data across slices (MaxText's recommendation)
  assert sharding.mesh_shape((1, -1, 1), (-1, 1, 1), 32, 2) == ((1, 16, 1), (2, 1, 1))
  assert sharding.mesh_shape((4, 1, 1), (-1, 1, 1), 8) == ((4, 1, 1), (1, 1, 1))  # 4 of 8
  for bad in [(-1, -1, 1), (3, -1, 1), (4, 4, 1), (0, 1, 1)]:
    with pytest.raises(ValueError, match="mesh sizes"):
      sharding.mesh_shape(bad, (-1, 1, 1), 8)
  with pytest.raises(ValueError, match="dcn_data"):
    sharding.mesh_shape((-1, 1, 1), (3, 1, 1), 32, 2)


def test_mesh_from_config_and_the_old_mesh_data_key():
  config = load_config("l2p", "smoke")
  mesh = sharding.mesh_from_config(config.mesh)
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  config = load_config("cpt", "smoke")
  assert dict(sharding.mesh_from_config(config.mesh).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  assert sharding.make_mesh(4).devices.size == 4  # `mesh.data=4`: the first 4 devices
  assert sharding.batch_sharding(sharding.make_mesh(2, 4)).spec == P(("data", "fsdp"))


def test_logical_names_map_to_mesh_axes_or_fall_back_to_replication():
  mesh = sharding.make_mesh(1, 4, 2)
  spec = lambda names, shape: sharding.logical_spec(names, shape, mesh)
  assert spec(("embed", "mlp"), (32, 64)) == P("fsdp", "tensor")
  assert spec(("layers", "embed", "heads", "kv"), (2, 32, 4, 8)) == P(None, "fsdp", "tensor")
  assert spec(("embed", "heads", "kv"), (6, 3, 8)) == P()  # 6 % 4, 3 % 2: replicated
  assert spec(("vocab", "embed"), (65, 32)) == P(None, "fsdp")
  assert spec(("embed", "embed"), (32, 32)) == P("fsdp")  # a mesh axis shards one dim only
  assert spec(("batch",), (6,)) == P()
  with pytest.raises(ValueError, match="no rule"):
    spec(("embd",), (32,))


# --- one train step on several meshes ------------------------------------------------------


def _mesh(shape):
  if shape is None:
    return sharding.make_mesh(1)
  return sharding.make_mesh(*shape)


def _l2p_setup(config):
  """(method, model, trainable, tx, batch) of the l2p smoke config."""
  method = methods.get("l2p").make(config)
  tx = optim.make_optimizer(config.optim, optim.make_schedule(config.optim, 1e-2, 10))
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
    "label": rng.integers(0, 2, (8,)).astype(np.int32),
  }
  return method, tx, batch, config.data.num_classes


class _LanguageModel(NamedTuple):
  """The parts of a learner `_one_step` uses, for a GPT and the next-token objective."""

  build: Callable = models.build
  trainable: Any = nnx.Param
  loss: Callable = objectives.make("lm").loss


def _gpt_setup(config):
  """SGD, not Adam: Adam's first step is about lr * sign(g), which blows float noise in gradients
  that are zero in exact arithmetic (the key bias: softmax ignores it) up to a visible update."""
  tx = optax.sgd(0.5)
  tokens = np.random.default_rng(0).integers(0, 64, (8, config.data.seq_len + 1))
  return _LanguageModel(), tx, {"tokens": tokens.astype(np.int32)}, 2


def _one_step(kind: str, mesh_shape):
  """(loss, updated params as numpy, state shardings) after one step of a fresh learner."""
  config = load_config("l2p" if kind == "l2p" else "cpt", "smoke")
  method, tx, batch, num_classes = (_l2p_setup if kind == "l2p" else _gpt_setup)(config)
  vocab = 64
  model = method.build(config, num_classes if kind == "l2p" else vocab, nnx.Rngs(0))
  extra = method.init_extra(model, num_classes) if kind == "l2p" else {}
  _, state = state_lib.init_state(model, method.trainable, tx, extra, num_classes, 0)
  graphdef = nnx.graphdef(model)
  state = state.replace(seen=np.ones(num_classes, bool), current=np.ones(num_classes, bool))
  mesh = _mesh(mesh_shape)
  state_sh = sharding.state_shardings(state, mesh, replicate_frozen=kind == "l2p")
  batch_sh = sharding.batch_sharding(mesh)
  train_step = step_lib.make_train_step(
    method.loss,
    graphdef,
    tx,
    scale="01" if kind == "l2p" else "none",
    skip_nonfinite=False,
    state_sharding=state_sh,
    batch_sharding=batch_sh,
    traces=step_lib.Traces(),
  )
  state = jax.device_put(state, state_sh)
  new, metrics = train_step(state, pipeline.to_global(batch, batch_sh))
  params = jax.tree.map(np.asarray, jax.device_get(nnx.to_pure_dict(new.params)))
  return float(metrics["loss"]), params, new


def _initial_params(kind: str) -> dict:
  config = load_config("l2p" if kind == "l2p" else "cpt", "smoke")
  method, _, _, num_classes = (_l2p_setup if kind == "l2p" else _gpt_setup)(config)
  model = method.build(config, num_classes if kind == "l2p" else 64, nnx.Rngs(0))
  return _flat(nnx.to_pure_dict(nnx.state(model, method.trainable)))


def _flat(tree) -> dict:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p).removesuffix(".value"): x for p, x in flat}


@pytest.mark.parametrize("kind", ["l2p", "gpt"])
def test_one_step_gives_the_same_loss_and_parameters_on_every_mesh(kind):
  loss_1, params_1, _ = _one_step(kind, None)
  ref = _flat(params_1)
  before = _initial_params(kind)
  step_size = max(float(np.max(np.abs(ref[k] - np.asarray(before[k])))) for k in ref)
  assert step_size > 1e-4  # the step moved the trainable parameters (so agreement means something)
  meshes = MESHES + ([(1, 4, 2)] if kind == "gpt" else [])  # + Megatron tensor parallelism
  for shape in meshes:
    loss, params, new = _one_step(kind, shape)
    got = _flat(params)
    assert got.keys() == ref.keys()
    diff = max(float(np.max(np.abs(got[k] - ref[k]))) for k in ref)
    AGREEMENT[kind, shape] = (loss_1, abs(loss - loss_1), step_size, diff)
    assert loss == pytest.approx(loss_1, rel=1e-5, abs=1e-6), shape
    for k, x in ref.items():
      np.testing.assert_allclose(got[k], x, rtol=1e-4, atol=1e-6, err_msg=f"{shape} {k}")
    if kind == "gpt":
      _check_gpt_shardings(new, shape)
    else:
      _check_l2p_shardings(new, shape)


def _check_gpt_shardings(state, shape):
  """Spot checks: FSDP on the model dimension, tensor on heads / MLP / vocabulary, and (for
  AdamW) both moments sharded like their parameters."""
  _, fsdp, tensor = shape
  f = "fsdp" if fsdp > 1 else None
  t = "tensor" if tensor > 1 else None
  want = {
    "['blocks']['mlp']['up']['kernel']": (None, f, t),  # [L, D, F]
    "['blocks']['mlp']['down']['kernel']": (None, t, f),  # [L, F, D]
    "['blocks']['attn']['query']['kernel']": (None, f, t),  # [L, D, H, Dh]
    "['blocks']['attn_norm']['scale']": (None, f),  # [L, D]
    "['embed']['embedding']": (t, f),  # [V, D]
  }
  params = _flat(state.params)
  for name, spec in want.items():
    assert _strip(params[name].sharding.spec) == _strip(spec), (shape, name)
  config = load_config("cpt", "smoke")
  model = models.build(config, 64, nnx.Rngs(0))
  tx = optim.make_optimizer(config.optim, lambda step: 1e-3)  # AdamW
  _, adam_state = state_lib.init_state(model, nnx.Param, tx, {}, 2, 0)
  sh = sharding.state_shardings(adam_state, sharding.make_mesh(*shape), replicate_frozen=False)
  moments = {k: x.spec for k, x in _flat(sh.opt).items() if ".mu" in k or ".nu" in k}
  for name, spec in want.items():
    got = [_strip(x) for k, x in moments.items() if k.endswith(name)]
    assert got == [_strip(spec)] * 2, (shape, "moments", name)


def _strip(spec) -> tuple:
  out = list(spec)
  while out and out[-1] is None:
    out.pop()
  return tuple(out)


def _check_l2p_shardings(state, shape):
  """Data-parallel prompt method: the frozen ViT is replicated on every mesh."""
  frozen = _flat(state.frozen)
  assert any("['attn']['query']['kernel']" in k for k in frozen)
  assert all(_strip(x.sharding.spec) == () for x in frozen.values()), shape


def test_a_fine_tuned_vit_follows_the_rules():
  """Full fine-tuning trains the ViT itself: its weights and moments go FSDP x tensor."""
  config = load_config("finetune", "smoke")
  method = methods.get("finetune").make(config)
  model = method.build(config, 4, nnx.Rngs(0))
  tx = optim.make_optimizer(config.optim, lambda step: 1e-3)
  _, state = state_lib.init_state(model, method.trainable, tx, {}, 4, 0)
  mesh = sharding.make_mesh(1, 4, 2)
  sh = sharding.state_shardings(state, mesh, replicate_frozen=True)
  specs = {k: _strip(s.spec) for k, s in _flat(sh.params).items()}
  block = "['blocks'][0]"
  want = {
    "['mlp']['dense_0']['kernel']": ("fsdp", "tensor"),  # [96, 384]
    "['mlp']['dense_1']['kernel']": ("tensor", "fsdp"),
    "['attn']['query']['kernel']": ("fsdp",),  # 3 heads: not split over tensor=2
    "['ln_0']['scale']": ("fsdp",),
  }
  for name, spec in want.items():
    (got,) = [v for k, v in specs.items() if k.endswith(block + name)]
    assert got == spec, name
  moments = {k: _strip(s.spec) for k, s in _flat(sh.opt).items() if ".mu" in k}
  (mu,) = [v for k, v in moments.items() if k.endswith(block + "['mlp']['dense_0']['kernel']")]
  assert mu == ("fsdp", "tensor")


def test_print_agreement():
  """Prints the measured agreement (run with -s to see it; used in the issue's closing note)."""
  for (kind, shape), (loss, dloss, step, dparam) in sorted(AGREEMENT.items(), key=str):
    print(
      f"{kind} mesh {shape}: loss {loss:.6f}, |loss - loss_1dev| = {dloss:.2e}; largest step "
      f"{step:.2e}, max |param - param_1dev| = {dparam:.2e}"
    )


# --- per-process data shards ----------------------------------------------------------------


class _Ids(grain.transforms.Map):
  def map(self, element):
    return element


def _source(n: int) -> list[dict]:
  return [{"id": np.int64(i)} for i in range(n)]


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_train_shards_cover_every_example_exactly_once_per_epoch(processes):
  n, batch = 48, 8
  its = [
    pipeline.TrainIterator(
      _source(n),
      np.arange(n),
      lambda x, rng: x,
      global_batch=batch,
      seed=3,
      sharding=None,
      process_index=p,
      process_count=processes,
    )
    for p in range(processes)
  ]
  for _epoch in range(2):
    seen = []
    for _ in range(n // batch):
      rows = [it.next_local()["id"] for it in its]
      assert all(len(r) == batch // processes for r in rows)
      seen += [int(i) for r in rows for i in r]
    assert sorted(seen) == list(range(n))  # disjoint and covering, every epoch


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_eval_shards_cover_every_example_exactly_once(processes):
  n, batch = 37, 8
  indices = np.arange(100, 100 + n)
  per_process = [
    list(
      pipeline.eval_local_batches(
        _source(200),
        indices,
        _Ids(),
        global_batch=batch,
        process_index=p,
        process_count=processes,
      )
    )
    for p in range(processes)
  ]
  assert len({len(b) for b in per_process}) == 1  # the same number of batches on every process
  seen = [int(i) for bs in per_process for b in bs for i in b["id"][b["mask"]]]
  assert sorted(seen) == list(indices)


def test_cluster_environment_detection():
  env = main.cluster_environment
  assert env({}) is None
  assert env({"TPU_WORKER_HOSTNAMES": "t1"}) is None  # a single-host TPU VM
  assert env({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}) == "tpu"
  assert env({"MEGASCALE_NUM_SLICES": "2"}) == "tpu"
  assert env({"SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}) == "slurm"
  assert env({"SLURM_NTASKS": "8"}) is None  # the batch script itself, outside srun
  assert env({"OMPI_COMM_WORLD_SIZE": "4"}) == "mpi"
  assert env({"PMI_SIZE": "4"}) == "mpi"
  assert env({"JAXCL_MULTIHOST": "1"}) == "env"
  assert env({"JAXCL_MULTIHOST": "0", "TPU_WORKER_HOSTNAMES": "a,b"}) is None


def test_processes_must_agree_is_a_no_op_on_one_process():
  sharding.assert_same_on_all_processes("the config", {"a": 1})


def test_remote_workdir_code_path_with_a_local_directory(tmp_path, monkeypatch):
  """gs:// workdirs go through etils.epath: the same code run on a local path."""
  from jaxcl import writers  # noqa: PLC0415
  from jaxcl.engine import report  # noqa: PLC0415

  monkeypatch.setattr(writers, "is_remote", lambda path: True)
  config = load_config("finetune", "smoke")
  report.check_and_write_config(str(tmp_path / "run"), config, write=True)
  assert (tmp_path / "run" / "config.json").exists()
  writers.write_acc_matrix(str(tmp_path / "run"), np.eye(2) * 50)
  assert (tmp_path / "run" / "acc_matrix.png").read_bytes()[:4] == b"\x89PNG"
  with writers.MetricWriter(str(tmp_path / "run")) as w:
    w.write(1, {"loss": 1.0})
    w.write(2, {"loss": 0.5})
  with writers.MetricWriter(str(tmp_path / "run")) as w:  # a resumed run continues the file
    w.write(3, {"loss": 0.25})
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
  writers.write_json(str(tmp_path / "run" / "results.json"), {"a": float("nan")})
  assert json.loads((tmp_path / "run" / "results.json").read_text()) == {"a": None}


@pytest.mark.parametrize(
  "build",
  [
    lambda: gpt.GPT(gpt.config_for("tiny"), rngs=nnx.Rngs(0)),
    lambda: gpt.GPT(gpt.config_for("tiny_llama", scan_layers=False), rngs=nnx.Rngs(0)),
    lambda: bert.BERT(bert.config_for("tiny"), rngs=nnx.Rngs(0)),
    lambda: vit.from_variant("mu/4", image_size=16, num_classes=4, rngs=nnx.Rngs(0)),
  ],
  ids=["gpt2", "llama", "bert", "vit"],
)
def test_every_model_parameter_has_logical_names_with_rules(build):
  mesh = sharding.make_mesh(1, 4, 2)
  for path, var in nnx.to_flat_state(nnx.state(build(), nnx.Param)):
    names = sharding.logical_names(var)
    assert names is not None and len(names) == var[...].ndim, path
    sharding.logical_spec(names, var[...].shape, mesh)  # every name has a rule
