"""Hugging Face text checkpoints (safetensors + config.json) to and from jaxcl GPT/BERT models.

Three HF layouts are understood, with or without the task-model prefix:

- GPT-2 (`GPT2Model`/`GPT2LMHeadModel`, optional `transformer.`): `h.N.attn.c_attn.weight` is a
  Conv1D [D, 3D] (y = x W + b) holding q, k, v side by side; `wte`, `wpe`, `ln_f`.
- Llama (`LlamaModel`/`LlamaForCausalLM`, optional `model.`): `layers.N.self_attn.q_proj.weight`
  is a torch Linear [out, in] (y = x W^T), K/V with `num_key_value_heads` rows; `embed_tokens`,
  `norm`, `lm_head` (absent when tied).
- BERT (`BertModel`/`BertForMaskedLM`, optional `bert.`): `embeddings.*`,
  `encoder.layer.N.attention.self.query.weight` [out, in], ...; MLM head `cls.predictions.*`
  (optional: its absence is reported, not an error). Old `LayerNorm.gamma/beta` names are read.

Every conversion is one `Rule`: one HF tensor <-> one or more jaxcl parameters (GPT-2's fused qkv
is the only split). jaxcl parameters are named by their path with a layer index,
`blocks.3.attn.query.kernel`, whatever the model's layout; `flat_params`/`set_flat_params` stack
and unstack the scanned layout. Unknown or wrongly shaped tensors raise a ValueError naming the
key; known tensors jaxcl has no use for (causal-mask buffers, `position_ids`, the BERT pooler and
NSP head, tied copies of the embedding) are listed in the report as ignored.

    model, report = text_loading.from_hf("/path/to/dir")  # model.safetensors + config.json
    text_loading.save_hf(model, "/tmp/out")  # back to the HF layout
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load, save_file

from jaxcl import paths, user_errors
from jaxcl.models import bert, gpt

FAMILIES = ("gpt2", "llama", "bert")
PREFIXES = {"gpt2": "transformer.", "llama": "model.", "bert": "bert."}
# Tensors jaxcl has no parameter for; tied copies are checked against the embedding instead.
_IGNORED = {
  "gpt2": (r"h\.\d+\.attn\.(bias|masked_bias)",),
  "llama": (r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
  "bert": (
    r"embeddings\.position_ids",
    r"pooler\.dense\.(weight|bias)",
    r"cls\.seq_relationship\.(weight|bias)",
    r"cls\.predictions\.decoder\.bias",  # a copy of cls.predictions.bias
  ),
}
# Output layers that HF may save although they are tied to the input embedding.
_TIED_COPIES = {
  "gpt2": "lm_head.weight",
  "llama": "lm_head.weight",
  "bert": "cls.predictions.decoder.weight",
}


@dataclasses.dataclass(frozen=True)
class Rule:
  """One HF tensor <-> jaxcl parameters.

  The HF tensor, transposed first if `transpose` (torch Linear [out, in]), is a matrix
  [in, out] (or a vector [out] when `in_axes` is 0) whose last axis concatenates the jaxcl
  parameters, each flattened from its first `in_axes` axes (the input) and the rest (the
  output): e.g. `out.kernel` [H, Dh, D] has in_axes=2.
  """

  hf: str
  jx: tuple[str, ...]
  in_axes: int
  transpose: bool = False

  def hf_shape(self, shapes: dict) -> tuple[int, ...]:
    first = shapes[self.jx[0]]
    out = sum(math.prod(shapes[k][self.in_axes :]) for k in self.jx)
    if self.in_axes == 0:
      return (out,)
    rows = math.prod(first[: self.in_axes])
    return (out, rows) if self.transpose else (rows, out)

  def load(self, w: np.ndarray, shapes: dict, name: str = "") -> dict:
    """jaxcl parameters from the HF tensor `w` (called `name` in the checkpoint)."""
    if tuple(w.shape) != self.hf_shape(shapes):
      raise ValueError(
        f"checkpoint tensor {name or self.hf!r} has shape {tuple(w.shape)}, expected "
        f"{self.hf_shape(shapes)} for jaxcl {', '.join(self.jx)}"
      )
    w = np.asarray(w, np.float32)
    w = w.T if self.transpose else w
    sizes = [math.prod(shapes[k][self.in_axes :]) for k in self.jx]
    parts = np.split(w, np.cumsum(sizes)[:-1], axis=-1)
    return {k: p.reshape(shapes[k]) for k, p in zip(self.jx, parts, strict=True)}

  def save(self, params: dict) -> np.ndarray:
    parts = [params[k] for k in self.jx]
    rows = parts[0].shape[: self.in_axes]
    w = np.concatenate([p.reshape(math.prod(rows), -1) for p in parts], axis=-1)
    w = w.reshape(-1) if self.in_axes == 0 else w
    return np.ascontiguousarray(w.T if self.transpose else w)


def _norm_rules(hf: str, jx: str, bias: bool = True) -> list[Rule]:
  rules = [Rule(f"{hf}.weight", (f"{jx}.scale",), 0)]
  return rules + [Rule(f"{hf}.bias", (f"{jx}.bias",), 0)] if bias else rules


def _gpt2_rules(cfg: gpt.Config) -> list[Rule]:
  rules = [
    Rule("wte.weight", ("embed.embedding",), 1),
    Rule("wpe.weight", ("pos_embed.embedding",), 1),
    *_norm_rules("ln_f", "final_norm"),
  ]
  if not cfg.tie_embeddings:
    rules.append(Rule("lm_head.weight", ("lm_head.kernel",), 1, transpose=True))
  for i in range(cfg.num_layers):
    h, b = f"h.{i}.", f"blocks.{i}."
    qkv = tuple(f"{b}attn.{n}" for n in ("query", "key", "value"))
    rules += [
      *_norm_rules(f"{h}ln_1", f"{b}attn_norm"),
      Rule(f"{h}attn.c_attn.weight", tuple(f"{k}.kernel" for k in qkv), 1),
      Rule(f"{h}attn.c_attn.bias", tuple(f"{k}.bias" for k in qkv), 0),
      Rule(f"{h}attn.c_proj.weight", (f"{b}attn.out.kernel",), 2),
      Rule(f"{h}attn.c_proj.bias", (f"{b}attn.out.bias",), 0),
      *_norm_rules(f"{h}ln_2", f"{b}mlp_norm"),
      Rule(f"{h}mlp.c_fc.weight", (f"{b}mlp.up.kernel",), 1),
      Rule(f"{h}mlp.c_fc.bias", (f"{b}mlp.up.bias",), 0),
      Rule(f"{h}mlp.c_proj.weight", (f"{b}mlp.down.kernel",), 1),
      Rule(f"{h}mlp.c_proj.bias", (f"{b}mlp.down.bias",), 0),
    ]
  return rules


def _llama_rules(cfg: gpt.Config) -> list[Rule]:
  rules = [
    Rule("embed_tokens.weight", ("embed.embedding",), 1),
    *_norm_rules("norm", "final_norm", bias=False),
  ]
  if not cfg.tie_embeddings:
    rules.append(Rule("lm_head.weight", ("lm_head.kernel",), 1, transpose=True))
  for i in range(cfg.num_layers):
    h, b = f"layers.{i}.", f"blocks.{i}."
    rules += [
      *_norm_rules(f"{h}input_layernorm", f"{b}attn_norm", bias=False),
      Rule(f"{h}self_attn.q_proj.weight", (f"{b}attn.query.kernel",), 1, transpose=True),
      Rule(f"{h}self_attn.k_proj.weight", (f"{b}attn.key.kernel",), 1, transpose=True),
      Rule(f"{h}self_attn.v_proj.weight", (f"{b}attn.value.kernel",), 1, transpose=True),
      Rule(f"{h}self_attn.o_proj.weight", (f"{b}attn.out.kernel",), 2, transpose=True),
      *_norm_rules(f"{h}post_attention_layernorm", f"{b}mlp_norm", bias=False),
      Rule(f"{h}mlp.gate_proj.weight", (f"{b}mlp.gate.kernel",), 1, transpose=True),
      Rule(f"{h}mlp.up_proj.weight", (f"{b}mlp.up.kernel",), 1, transpose=True),
      Rule(f"{h}mlp.down_proj.weight", (f"{b}mlp.down.kernel",), 1, transpose=True),
    ]
  return rules


def _linear_rules(hf: str, jx: str, in_axes: int = 1) -> list[Rule]:
  return [
    Rule(f"{hf}.weight", (f"{jx}.kernel",), in_axes, True),
    Rule(f"{hf}.bias", (f"{jx}.bias",), 0),
  ]


def _bert_rules(cfg: bert.Config) -> list[Rule]:
  rules = [
    Rule("embeddings.word_embeddings.weight", ("embed.embedding",), 1),
    Rule("embeddings.position_embeddings.weight", ("pos_embed.embedding",), 1),
    Rule("embeddings.token_type_embeddings.weight", ("type_embed.embedding",), 1),
    *_norm_rules("embeddings.LayerNorm", "embed_norm"),
  ]
  for i in range(cfg.num_layers):
    h, b = f"encoder.layer.{i}.", f"blocks.{i}."
    rules += [
      *_linear_rules(f"{h}attention.self.query", f"{b}attn.query"),
      *_linear_rules(f"{h}attention.self.key", f"{b}attn.key"),
      *_linear_rules(f"{h}attention.self.value", f"{b}attn.value"),
      *_linear_rules(f"{h}attention.output.dense", f"{b}attn.out", in_axes=2),
      *_norm_rules(f"{h}attention.output.LayerNorm", f"{b}attn_norm"),
      *_linear_rules(f"{h}intermediate.dense", f"{b}mlp.up"),
      *_linear_rules(f"{h}output.dense", f"{b}mlp.down"),
      *_norm_rules(f"{h}output.LayerNorm", f"{b}mlp_norm"),
    ]
  return rules + [
    *_linear_rules("cls.predictions.transform.dense", "mlm.dense"),
    *_norm_rules("cls.predictions.transform.LayerNorm", "mlm.norm"),
    Rule("cls.predictions.bias", ("mlm.bias",), 0),
  ]


def family_of(model: nnx.Module) -> str:
  if isinstance(model, bert.BERT):
    return "bert"
  if isinstance(model, gpt.GPT):
    return model.config.style
  raise TypeError(f"not a jaxcl text model: {type(model).__name__}")


def rules_for(model: nnx.Module) -> list[Rule]:
  """The HF <-> jaxcl rules for this model's family and shape."""
  family = family_of(model)
  make = {"gpt2": _gpt2_rules, "llama": _llama_rules, "bert": _bert_rules}[family]
  return make(model.config)


# jaxcl parameters by name, in the per-layer naming for both layouts.
# ------------------------------------------------------------------------------------------------


def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
  """{"blocks.0.attn.query.kernel": array, ...}: every parameter, per layer in both layouts."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    value = np.asarray(var[...])
    if model.config.scan_layers and path[0] == "blocks":
      rest = ".".join(str(p) for p in path[1:])
      out.update({f"blocks.{i}.{rest}": layer for i, layer in enumerate(value)})
    else:
      out[".".join(str(p) for p in path)] = value
  return out


def set_flat_params(model: nnx.Module, params: dict) -> None:
  """Writes `params` (names as `flat_params`; a subset is fine) into the model in place."""
  current = flat_params(model)
  unknown = sorted(set(params) - set(current))
  if unknown:
    raise user_errors.BadInput(
      f"weights for parameters this model does not have: {unknown[:5]} (of {len(unknown)}); "
      "the weights are of another architecture than the config's model (check model.*)"
    )
  for key, value in params.items():
    if tuple(np.shape(value)) != current[key].shape:
      raise user_errors.BadInput(
        f"weights for {key} have shape {tuple(np.shape(value))} but the config's model has "
        f"{current[key].shape}: the weights are of another size than model.* says (set the "
        "model's layers/width/heads/vocabulary to the checkpoint's)"
      )
  merged = {**current, **params}
  state = nnx.state(model, nnx.Param)
  for path, var in nnx.to_flat_state(state):
    name = ".".join(str(p) for p in path)
    if model.config.scan_layers and path[0] == "blocks":
      rest = ".".join(str(p) for p in path[1:])
      value = np.stack([merged[f"blocks.{i}.{rest}"] for i in range(var.shape[0])])
    else:
      value = merged[name]
    var[...] = jnp.asarray(value, var.dtype)
  nnx.update(model, state)


# HF checkpoints.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What `load_hf` did: `missing` jaxcl parameters kept their initial values."""

  family: str
  missing: tuple[str, ...]
  ignored: tuple[str, ...]
  files: tuple[str, ...] = ()

  def __str__(self):
    return (
      f"{self.family} checkpoint {list(self.files)}: {len(self.missing)} jaxcl parameters "
      f"missing {list(self.missing)[:8]}, {len(self.ignored)} tensors ignored "
      f"{list(self.ignored)[:8]}"
    )


def _canonical(key: str, family: str) -> str:
  """Strips the task-model prefix and renames old LayerNorm gamma/beta."""
  prefix = PREFIXES[family]
  key = key[len(prefix) :] if key.startswith(prefix) else key
  old_names = {"gamma": "weight", "beta": "bias"}
  return re.sub(r"LayerNorm\.(gamma|beta)$", lambda m: f"LayerNorm.{old_names[m[1]]}", key)


def load_hf(model: nnx.Module, tensors: dict, files: tuple[str, ...] = ()) -> LoadReport:
  """Copies HF-named `tensors` (numpy arrays) into `model` in place.

  Raises:
    ValueError: a tensor is unknown, has the wrong shape, or is a tied copy (GPT-2/Llama
      `lm_head.weight`, BERT `cls.predictions.decoder.weight`) that differs from the embedding.
  """
  family = family_of(model)
  current = flat_params(model)
  shapes = {k: v.shape for k, v in current.items()}
  rules = {r.hf: r for r in rules_for(model)}
  tensors = {_canonical(k, family): (k, v) for k, v in tensors.items()}
  params, ignored, tied = {}, [], {}
  for key, (original, value) in sorted(tensors.items()):
    if key in rules:
      params.update(rules[key].load(value, shapes, original))
    elif any(re.fullmatch(p, key) for p in _IGNORED[family]):
      ignored.append(original)
    elif key == _TIED_COPIES[family]:
      tied[original] = value
    else:
      raise user_errors.BadInput(
        f"unknown checkpoint tensor {original!r} for a jaxcl {family} model: the weights are "
        "of another architecture than the config's model (check model.* or the file)"
      )
  embedding = params.get("embed.embedding", current["embed.embedding"])
  for key, value in tied.items():
    if np.shape(value) != embedding.shape or not np.allclose(value, embedding):
      raise user_errors.BadInput(
        f"checkpoint tensor {key!r} is not a copy of the token embedding; this jaxcl model ties "
        "its output layer to the embedding (set tie_embeddings=False for an untied lm_head)"
      )
    ignored.append(key)
  set_flat_params(model, params)
  missing = tuple(k for k in current if k not in params)
  return LoadReport(family, missing, tuple(sorted(ignored)), tuple(files))


def read_checkpoint(path: str) -> tuple[dict, dict | None, tuple[str, ...]]:
  """(tensors, HF config or None, files) from a `.safetensors` file or a directory of them
  (local or gs://)."""
  if not paths.path(path).exists():
    raise user_errors.MissingInput(
      f"text model weights {path} not found: give a .safetensors file or a directory of them "
      "(an HF checkpoint: config.json beside its *.safetensors)"
    )
  if paths.path(path).is_dir():
    files = paths.glob(f"{path.rstrip('/')}/*.safetensors")
    directory = path
  else:
    files, directory = [path], os.path.dirname(path)
  if not files:
    raise user_errors.MissingInput(
      f"no .safetensors file in {path}: give an HF checkpoint directory"
    )
  tensors = {}
  for f in files:
    tensors.update(load(paths.path(f).read_bytes()))
  config_path = paths.path(os.path.join(directory, "config.json"))
  hf_config = json.loads(config_path.read_text()) if config_path.exists() else None
  return tensors, hf_config, tuple(files)


def detect_family(tensors: dict, hf_config: dict | None) -> str:
  if hf_config and "model_type" in hf_config:
    family = hf_config["model_type"]
    if family not in FAMILIES:
      raise ValueError(f"HF model_type {family!r} is not supported: use one of {FAMILIES}")
    return family
  for family, marker in (
    ("gpt2", "attn.c_attn.weight"),
    ("llama", "self_attn.q_proj.weight"),
    ("bert", "attention.self.query.weight"),
  ):
    if any(k.endswith(marker) for k in tensors):
      return family
  raise ValueError("cannot tell the model family (gpt2, llama, bert) from the tensor names")


def _require(hf: dict, key: str, allowed, default=None):
  value = hf.get(key, default)
  if value not in allowed:
    raise ValueError(f"HF config {key}={value!r} is not supported (jaxcl supports {allowed})")


# Per family: (HF config.json key, jaxcl Config field or property, default when the key is
# missing) for both directions, then the HF keys whose values jaxcl fixes (required on load,
# written on save).
_HF_SIZES = {
  "gpt2": (
    ("vocab_size", "vocab_size", None),
    ("n_positions", "seq_len", 1024),
    ("n_layer", "num_layers", None),
    ("n_embd", "width", None),
    ("n_head", "num_heads", None),
    ("n_inner", "mlp_dim", None),  # None: 4 x width
    ("layer_norm_epsilon", "norm_eps", 1e-5),
    ("tie_word_embeddings", "tie_embeddings", True),
  ),
  "llama": (
    ("vocab_size", "vocab_size", None),
    ("max_position_embeddings", "seq_len", 2048),
    ("num_hidden_layers", "num_layers", None),
    ("hidden_size", "width", None),
    ("num_attention_heads", "num_heads", None),
    ("num_key_value_heads", "kv_heads", None),  # None: num_heads
    ("head_dim", "head_size", None),  # None: width // heads
    ("intermediate_size", "mlp_dim", None),
    ("rms_norm_eps", "norm_eps", 1e-6),
    ("rope_theta", "rope_theta", 10_000.0),
    ("tie_word_embeddings", "tie_embeddings", False),
  ),
  "bert": (
    ("vocab_size", "vocab_size", None),
    ("max_position_embeddings", "seq_len", 512),
    ("type_vocab_size", "type_vocab_size", 2),
    ("num_hidden_layers", "num_layers", None),
    ("hidden_size", "width", None),
    ("num_attention_heads", "num_heads", None),
    ("intermediate_size", "mlp_dim", None),
    ("layer_norm_eps", "norm_eps", 1e-12),
  ),
}
_HF_FIXED = {
  "gpt2": dict(
    architectures=["GPT2LMHeadModel"],
    model_type="gpt2",
    activation_function=("gelu_new", "gelu_pytorch_tanh"),
    scale_attn_by_inverse_layer_idx=(False,),
    scale_attn_weights=(True,),
  ),
  "llama": dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    hidden_act=("silu",),
    attention_bias=(False,),
    mlp_bias=(False,),
    rope_scaling=(None,),
  ),
  "bert": dict(
    architectures=["BertForMaskedLM"],
    model_type="bert",
    hidden_act=("gelu",),
    position_embedding_type=("absolute",),
  ),
}
# jaxcl field names of the Config properties above (the fields hold 0 for "the default")
_FIELD_OF = {"kv_heads": "num_kv_heads", "head_size": "head_dim"}


def config_from_hf(hf: dict, family: str) -> dict:
  """jaxcl Config fields from an HF config.json dictionary."""
  for key, allowed in _HF_FIXED[family].items():
    if key not in ("architectures", "model_type"):
      _require(hf, key, allowed, allowed[0])
  if family == "llama":
    rope = hf.get("rope_parameters") or {}  # transformers >= 5 keeps rope_theta here
    if rope.get("rope_type", "default") != "default":
      raise ValueError(f"HF rope_parameters {rope} are not supported (only the default RoPE)")
    hf = {**hf, "rope_theta": rope.get("rope_theta", hf.get("rope_theta", 10_000.0))}
  fields = {}
  for key, field, default in _HF_SIZES[family]:
    value = hf.get(key, default)
    if value is None and field not in ("mlp_dim", "kv_heads", "head_size"):
      value = hf[key]  # required: a KeyError names it
    fields[_FIELD_OF.get(field, field)] = value
  if family == "gpt2":
    fields["seq_len"] = hf.get("n_positions", hf.get("n_ctx", 1024))
    fields["mlp_dim"] = fields["mlp_dim"] or 4 * fields["width"]
  if family == "llama":
    fields["num_kv_heads"] = fields["num_kv_heads"] or fields["num_heads"]
    fields["head_dim"] = fields["head_dim"] or fields["width"] // fields["num_heads"]
  return {"style": family, **fields} if family != "bert" else fields


def config_from_tensors(tensors: dict, family: str) -> dict:
  """The sizes that tensor shapes reveal (no head counts: pass `num_heads` to `from_hf`)."""
  t = {_canonical(k, family): v.shape for k, v in tensors.items()}
  index = {"gpt2": r"h\.(\d+)\.", "llama": r"layers\.(\d+)\.", "bert": r"encoder\.layer\.(\d+)\."}
  num_layers = 1 + max(int(m.group(1)) for k in t if (m := re.match(index[family], k)))
  if family == "gpt2":
    (vocab, width), (seq_len, _) = t["wte.weight"], t["wpe.weight"]
    mlp = t["h.0.mlp.c_fc.weight"][1]
    extra = dict(style="gpt2", tie_embeddings="lm_head.weight" not in t)
  elif family == "llama":
    vocab, width = t["embed_tokens.weight"]
    seq_len, mlp = 2048, t["layers.0.mlp.up_proj.weight"][0]
    extra = dict(style="llama", tie_embeddings="lm_head.weight" not in t)
  else:
    vocab, width = t["embeddings.word_embeddings.weight"]
    seq_len = t["embeddings.position_embeddings.weight"][0]
    mlp = t["encoder.layer.0.intermediate.dense.weight"][0]
    extra = dict(type_vocab_size=t["embeddings.token_type_embeddings.weight"][0])
  sizes = dict(vocab_size=vocab, seq_len=seq_len, num_layers=num_layers, width=width, mlp_dim=mlp)
  return {**sizes, **extra}


def from_hf(
  path: str,
  *,
  scan_layers: bool = True,
  dtype: str = "float32",
  seed: int = 0,
  **overrides,
) -> tuple[nnx.Module, LoadReport]:
  """Builds a GPT or BERT from an HF checkpoint and loads its weights.

  Args:
    path: a `.safetensors` file or a directory of them, with `config.json` beside them when
      available (otherwise sizes come from tensor shapes and `num_heads` must be given; a Llama
      without config also needs `num_kv_heads` when it uses GQA).
    scan_layers: layers stacked and scanned (True) or a python list.
    dtype: compute dtype of the model.
    seed: initialises parameters the checkpoint lacks (see `report.missing`).
    **overrides: jaxcl Config fields that win over the checkpoint's, e.g. `remat="full"`.

  Returns:
    (model, report).
  """
  tensors, hf_config, files = read_checkpoint(path)
  family = detect_family(tensors, hf_config)
  if hf_config is not None:
    fields = config_from_hf(hf_config, family)
  else:
    fields = config_from_tensors(tensors, family)
    if "num_heads" not in overrides:
      raise ValueError(f"{path} has no config.json: pass num_heads=... to from_hf")
    if family == "llama":
      head_dim = overrides.get("head_dim") or fields["width"] // overrides["num_heads"]
      kv_rows = next(v.shape[0] for k, v in tensors.items() if k.endswith("k_proj.weight"))
      fields["num_kv_heads"] = kv_rows // head_dim
  fields.update(scan_layers=scan_layers, dtype=dtype, **overrides)
  if family == "bert":
    model = bert.BERT(bert.Config(**fields), rngs=nnx.Rngs(seed))
  else:
    model = gpt.GPT(gpt.Config(**fields), rngs=nnx.Rngs(seed))
  return model, load_hf(model, tensors, files)


def to_hf(model: nnx.Module) -> tuple[dict[str, np.ndarray], dict]:
  """(tensors, config.json dict) of the model in the HF layout (`GPT2LMHeadModel` without
  prefix, `LlamaForCausalLM`, `BertForMaskedLM`); tied output layers are not written."""
  family = family_of(model)
  cfg = model.config
  if family == "gpt2" and (
    cfg.kv_heads != cfg.num_heads or cfg.head_size * cfg.num_heads != cfg.width
  ):
    raise ValueError("HF GPT-2 needs num_kv_heads == num_heads and head_dim == width // heads")
  params = flat_params(model)
  prefix = {"gpt2": "", "llama": "model.", "bert": "bert."}[family]
  tensors = {}
  for rule in rules_for(model):
    top_level = rule.hf.startswith(("lm_head.", "cls."))
    tensors[rule.hf if top_level else prefix + rule.hf] = rule.save(params)
  hf = {key: getattr(cfg, field) for key, field, _ in _HF_SIZES[family]}
  for key, value in _HF_FIXED[family].items():
    hf[key] = value if key in ("architectures", "model_type") else value[0]
  if family == "gpt2":
    hf["n_ctx"] = cfg.seq_len
  return tensors, {**hf, "torch_dtype": "float32"}


def save_hf(model: nnx.Module, directory: str) -> None:
  """Writes `model.safetensors` and `config.json` in the HF layout (see `to_hf`)."""
  tensors, hf_config = to_hf(model)
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
