"""The regression fixture of commit a60afed: stored weights, inputs and outputs to reproduce.

Issue 20 redesigns the run loops, configs, attention and text modules. Whatever the code
becomes, every class-incremental method and language model must compute, from the weights and
inputs stored in tests/fixtures/regression_a60afed.npz, the loss, its aux values, the logits
and the gradients stored there (float32, 1e-6). tests/regression_test.py checks that.

Regenerate ONLY on commit a60afed (later code reproduces the numbers, it never rewrites them):

  PYTHONPATH=. python tests/regression.py --regenerate

A refactor that changes how a model is built or called adapts `cil_case` or `lm_case` (the
only glue between the fixture and jaxcl); one that renames parameter paths adds to
tests/regression_test.py `RENAMES`.

Keys of the npz are "<case>/<section>/<path>":
- `vit/weights/<path>`: the one ViT every class-incremental case shares, stored once.
- `<case>/weights/<path>`: the case's other variables by nnx path (`head/kernel`): the smoke
  model's initial values plus seeded noise (`Case.noise`: zero-initialised heads hide nothing,
  attention is not uniform), rounded to 8 significant bits (exact float32 values that compress).
- `<case>/inputs/<path>`: images, labels, the `Ctx` arrays and `extra` (seeded random values of
  `init_extra`'s shapes), or the token batch.
- `<case>/outputs/<name>`: `loss`, `loss_aux/<key>`, `logits`, `predict_aux/<key>` and
  `grad/<path>`; a gradient of more than SKETCH_ABOVE entries is stored as `grad_sums/<path>`,
  its sums over the rows and over the columns as a [first axis, rest] matrix (the full
  fine-tuning gradients would not fit in the 3 MB budget).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from helpers import config_names, load_config

from jaxcl import growth, methods
from jaxcl.data import text
from jaxcl.engine import microbatch
from jaxcl.growth import msg
from jaxcl.lm import models, objectives
from jaxcl.methods import base

FIXTURE = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "fixtures", "regression_a60afed.npz"
)
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
SKETCH_ABOVE = 4096
BATCH = 4
NUM_CLASSES = 6  # 3 tasks of the smoke split (4 classes there), so task 1 has unseen classes
MSG_RAMP = 0.5  # the value of MSG's masks of new units: strictly between 0 and 1

LM_CASES = {
  "gpt": ("cpt", {}),
  "gpt_llama": ("cpt", {"model.preset": "tiny_llama"}),  # RMSNorm, RoPE, GQA, SwiGLU
  "bert": ("cpt", {"train.objective": "mlm"}),
  # the grown model of a60afed's smoke event (all dimensions at once), masks at MSG_RAMP
  "msg": (
    "growth_msg",
    {
      "growth.events": [
        dict(step=3, operator="msg", num_layers=2, width=32, num_heads=4, mlp_dim=64)
      ]
    },
  ),
}


def case_names() -> list[str]:
  """What `regenerate` stores: every class-incremental config file (`finetune`, `ovor`, ...:
  OVOR's smoke wraps OnePrompt in VOR, which changes after_task only) and LM_CASES."""
  return [*config_names("cil"), *LM_CASES]


def stored_cases(path: str = FIXTURE) -> list[str]:
  """The cases the fixture holds."""
  with np.load(path) as npz:
    return sorted({key.split("/")[0] for key in npz.files} - {"vit"})


class Case(NamedTuple):
  model: nnx.Module
  trainable: Any  # nnx filter: gradients are taken w.r.t. these variables
  loss: Callable | None  # (model, inputs) -> (loss [], aux dict)
  predict: Callable | None  # (model, inputs) -> (logits, aux dict)
  example: Callable  # (np.random.Generator) -> inputs, a nested dict of arrays (regenerating)
  vit_at: str | None  # path prefix of the shared ViT inside `model` ("backbone/"), or None
  noise: float  # regenerating: std of the noise on the initial parameters (O(1) attention logits)


def build(name: str, abstract: bool = False) -> Case:
  """The case `name`; `abstract`: its model's variables are shapes only (`nnx.eval_shape`, no
  initialisation to run), to be filled by `load_weights`."""
  if name in LM_CASES:
    return lm_case(*LM_CASES[name], abstract)
  return cil_case(name, abstract)


def construct(fn: Callable[[], nnx.Module], abstract: bool) -> nnx.Module:
  return nnx.eval_shape(fn) if abstract else fn()


def cil_case(config_name: str, abstract: bool = False) -> Case:
  """The method of configs/<config_name>.py:smoke, called as the train / eval steps call it."""
  config = load_config(config_name, "smoke", **{"data.num_classes": NUM_CLASSES})
  method = methods.get(config.method.name).make(config)
  build = lambda: method.build(config, NUM_CLASSES, nnx.Rngs(config.seed))
  model = construct(build, abstract)

  def ctx(x):
    return base.Ctx(x["task"], x["seen"], x["current"], x["rng"])

  def loss(model, x):
    batch = {"image": x["image"], "label": x["label"], "mask": x["mask"]}
    return method.loss(model, x.get("extra", {}), batch, ctx(x))  # an empty extra is not stored

  def predict(model, x):
    return method.predict(model, x.get("extra", {}), x["image"], ctx(x))

  def example(rng):
    size, channels, c = config.data.image_size, config.data.channels, np.arange(NUM_CLASSES)
    return {
      "image": rng.uniform(size=(BATCH, size, size, channels)).astype(np.float32),
      "label": rng.integers(2, 4, BATCH).astype(np.int32),  # the current task's classes
      "mask": np.ones(BATCH, bool),
      "task": np.int32(1),
      "seen": c < 4,
      "current": (c >= 2) & (c < 4),
      "rng": np.asarray(jax.random.PRNGKey(1)),
      "extra": jax.tree.map(lambda a: random_like(rng, a), method.init_extra(model, NUM_CLASSES)),
    }

  vit_at = "backbone/" if hasattr(model, "backbone") else ""
  return Case(model, method.trainable, method.loss and loss, predict, example, vit_at, 0.05)


def lm_case(config_name: str, overrides: dict, abstract: bool = False) -> Case:
  """The language model of configs/<config_name>.py:smoke and its objective's loss; a growth
  config gives the model after its first event, MSG's masks of new units at MSG_RAMP."""
  config = load_config(config_name, "smoke", **overrides)
  vocab = text.make_tokenizer(config.data.tokenizer).vocab_size
  objective = objectives.make(config.train.objective)

  def build():
    if not config.growth.events:
      return models.build(config, vocab, nnx.Rngs(config.seed))
    event = dict(config.growth.events[0])
    op = growth.get(event.pop("operator"))
    del event["step"]
    src = models.shape(config, vocab)
    dst = growth.target(op, src, event)
    if op.masked:  # a60afed masked the FFN activations, not the pre-activations (issue 22)
      dst = dataclasses.replace(dst, ffn_mask_at="output")
    model = growth.build_model(dst, config.seed)
    if op.masked:
      growth.set_masks(model, msg.set_ramp(msg.initial_masks(src, dst), MSG_RAMP))
    return model

  model = construct(build, abstract)
  seq_len = config.data.seq_len

  def loss(model, x):
    value, aux = objective.loss(model, {}, x, None)
    aux.pop(microbatch.WEIGHT)  # the accumulation weight (token count), reported since a60afed
    return value, aux

  def example(rng):
    if config.train.objective == "lm":
      return {"tokens": rng.integers(0, vocab, (BATCH, seq_len + 1)).astype(np.int32)}
    targets = rng.integers(0, vocab, (BATCH, seq_len)).astype(np.int32)
    chosen = rng.uniform(size=targets.shape) < 0.15
    chosen[:, 0] = True
    tokens = np.where(chosen, text.MASK_ID, targets).astype(np.int32)
    return {"tokens": tokens, "targets": targets, "target_mask": chosen}

  return Case(model, nnx.Param, loss, None, example, None, 0.1)


def random_like(rng: np.random.Generator, a) -> np.ndarray:
  """Seeded values of `a`'s shape and dtype: N(0, 1) floats, ints in [0, 3), fair booleans."""
  a = np.asarray(a)
  if a.dtype == bool:
    return rng.uniform(size=a.shape) < 0.5
  if np.issubdtype(a.dtype, np.integer):
    return rng.integers(0, 3, a.shape).astype(a.dtype)
  return rng.normal(size=a.shape).astype(a.dtype)


def stored_name(path: str, renames) -> str:
  """The fixture's name of a path of today's code: `renames` are (regex, replacement) pairs."""
  for pattern, replacement in renames:
    path = re.sub(pattern, replacement, path)
  return path


def variables(module: nnx.Module, kind=nnx.Variable) -> dict[str, np.ndarray]:
  """{"head/kernel": array, ...}: the module's variables of `kind` by path."""
  flat = nnx.to_flat_state(nnx.state(module, kind))
  return {"/".join(map(str, path)): np.asarray(var[...]) for path, var in flat}


def load_weights(case: Case, fixture: dict, name: str, renames=()) -> None:
  """Writes the stored weights of case `name` into its model, every variable by path; refuses
  a variable without a stored value and a stored value that nothing reads."""
  stored = dict(fixture[name].get("weights", {}))
  if case.vit_at is not None:
    stored.update({case.vit_at + k: v for k, v in fixture["vit"]["weights"].items()})
  state = nnx.state(case.model)
  missing, used = [], set()
  for path, var in nnx.to_flat_state(state):
    key = stored_name("/".join(map(str, path)), renames)
    if key not in stored:
      missing.append(key)
      continue
    current = var.get_value()  # an array, or its shape only in an abstract model
    if stored[key].shape != current.shape:
      raise ValueError(f"{name}: {key} has shape {current.shape}, stored {stored[key].shape}")
    var.set_value(jnp.asarray(stored[key], current.dtype))
    used.add(key)
  unused = sorted(set(stored) - used)
  if missing or unused:
    raise ValueError(f"{name}: no stored value for {missing}; stored but unused: {unused}")
  nnx.update(case.model, state)


def outputs(case: Case, inputs: dict, renames=()) -> dict[str, np.ndarray]:
  """The case's loss, aux values, gradients and logits on `inputs`, named as in the fixture.

  One jitted function per case, compiled at XLA's backend optimisation level 0: half the
  compile time, and the same numbers in the fixture and the test (which is what matters).
  """
  graphdef, params, rest = nnx.split(case.model, case.trainable, ...)

  def compute(params, rest, inputs):
    out = {}
    if case.loss is not None:
      loss_fn = lambda p: case.loss(nnx.merge(graphdef, p, rest), inputs)
      (out["loss"], aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      out |= flatten(aux, "loss_aux/") | {"grads": grads}
    if case.predict is not None:
      out["logits"], aux = case.predict(nnx.merge(graphdef, params, rest), inputs)
      out |= flatten(aux, "predict_aux/")
    return out

  inputs = jax.tree.map(jnp.asarray, inputs)
  with jax.default_matmul_precision("highest"):
    compiled = jax.jit(compute).lower(params, rest, inputs).compile(COMPILER_OPTIONS)
    out = compiled(params, rest, inputs)
  for path, g in nnx.to_flat_state(out.pop("grads", nnx.State({}))):
    name, g = stored_name("/".join(map(str, path)), renames), np.asarray(g[...])
    out[f"grad_sums/{name}" if g.size > SKETCH_ABOVE else f"grad/{name}"] = (
      sums(g) if g.size > SKETCH_ABOVE else g
    )
  return {k: np.asarray(v) for k, v in out.items()}


def sums(g: np.ndarray) -> np.ndarray:
  """[rows + columns]: sums over the rows and over the columns of `g` as [g.shape[0], -1]."""
  m = g.reshape(g.shape[0], -1).astype(np.float64)
  return np.concatenate([m.sum(1), m.sum(0)]).astype(np.float32)


def flatten(tree: dict, prefix: str = "") -> dict:
  return {prefix + k: v for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def read(path: str = FIXTURE) -> dict:
  """{case: {"weights": {path: array}, "inputs": nested dict, "outputs": {name: array}}}."""
  out = {}
  with np.load(path) as npz:
    for key in npz.files:
      case, section, rest = key.split("/", 2)
      out.setdefault(case, {}).setdefault(section, {})[rest] = npz[key]
  for case in out.values():
    if "inputs" in case:
      case["inputs"] = traverse_util.unflatten_dict(case["inputs"], sep="/")
  return out


def rounded(x: np.ndarray) -> np.ndarray:
  """`x` rounded to 8 significant bits relative to its largest entry (exact in float32)."""
  top = float(np.max(np.abs(x)))
  if top == 0:
    return x
  step = 2.0 ** (np.ceil(np.log2(top)) - 7)
  return (np.round(x / step) * step).astype(x.dtype)


def regenerate(path: str = FIXTURE) -> None:
  """Writes the fixture: run on commit a60afed only (see the module docstring)."""
  rng = np.random.default_rng(20)
  arrays, vit = {}, None
  for name in case_names():
    case = build(name)
    params = variables(case.model, nnx.Param)
    weights = variables(case.model)
    for k, v in params.items():
      noisy = v + case.noise * rng.normal(size=v.shape) if v.dtype.kind == "f" else v
      weights[k] = rounded(noisy.astype(v.dtype))
    if case.vit_at is not None:
      mine = {k[len(case.vit_at) :]: v for k, v in weights.items() if k.startswith(case.vit_at)}
      vit = mine if vit is None else vit
      if set(mine) != set(vit):
        raise ValueError(f"{name}: its ViT has other paths than the shared one")
      weights = {k: v for k, v in weights.items() if not k.startswith(case.vit_at)}
    fixture = {name: {"weights": weights}, "vit": {"weights": vit or {}}}
    load_weights(case, fixture, name)
    inputs = case.example(rng)
    results = outputs(case, inputs)
    sections = {"weights": weights, "inputs": flatten(inputs), "outputs": results}
    for section, values in sections.items():
      arrays.update({f"{name}/{section}/{k}": np.asarray(v) for k, v in values.items()})
    print(f"{name}: {len(weights)} weights, outputs {sorted(results)[:4]}...")
  arrays.update({f"vit/weights/{k}": v for k, v in vit.items()})
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez_compressed(path, **arrays)
  print(f"wrote {path}: {os.path.getsize(path) / 1e6:.2f} MB, {len(arrays)} arrays")


if __name__ == "__main__":
  if sys.argv[1:] != ["--regenerate"]:
    sys.exit(f"usage: PYTHONPATH=. python {sys.argv[0]} --regenerate   (on commit a60afed only)")
  regenerate()
