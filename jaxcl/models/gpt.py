"""Decoder-only transformer language model in Flax NNX, in two styles.

- "gpt2" (Radford et al., 2019): learned position embeddings, pre-LN LayerNorm with bias, GELU
  (tanh approximation) MLP, biases everywhere, output projection tied to the token embedding.
- "llama" (Touvron et al., 2023): RMSNorm, rotary position embeddings (Su et al., 2021; HF
  `rotate_half` layout), SwiGLU MLP (Shazeer, 2020), no biases, grouped-query attention
  (Ainslie et al., 2023), an untied `lm_head` unless `tie_embeddings`.

Parameters are float32 and `Config.dtype` is the compute dtype; attention softmax and logits are
float32. With `scan_layers` the blocks are one module whose parameters carry a leading "layers"
axis (`blocks.attn.query.kernel` [L, D, H, Dh]) and run under `jax.lax.scan`; otherwise `blocks`
is a list (`blocks.0.attn.query.kernel` [D, H, Dh]). Both give the same logits for the same
weights (jaxcl/models/text_loading.py converts between them and loads HF checkpoints).

`growth_masks` adds the masks of Masked Structural Growth (Yao et al., ICLR 2024; see
jaxcl/growth/msg.py) as non-trainable `GrowthMask` variables: hidden [D], heads [H],
kv_heads [K], mlp [F] and layers [L], 1 for old units and c in [0, 1] for new ones. The
residual stream, q/k/v and FFN activations are multiplied by them, norm statistics are taken
under the hidden mask, and layer l computes x + c_l (block(x) - x). Without the flag the
forward is the plain one.

    cfg = gpt.config_for("small")
    model = gpt.GPT(cfg, rngs=nnx.Rngs(0))
    logits = model(tokens)  # [B, T] int32 -> [B, T, V] float32; targets are tokens shifted left
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcl.models import layers

STYLES = ("gpt2", "llama")


@dataclasses.dataclass(frozen=True)
class Config:
  """Shape and style of a GPT. Zero `num_kv_heads`/`head_dim` mean `num_heads`/`width // heads`."""

  vocab_size: int = 256
  seq_len: int = 256  # maximum positions (the size of the gpt2 position table)
  num_layers: int = 4
  width: int = 256
  num_heads: int = 4
  num_kv_heads: int = 0
  head_dim: int = 0
  mlp_dim: int = 1024
  style: str = "gpt2"
  tie_embeddings: bool = True
  norm_eps: float = 1e-5
  rope_theta: float = 10_000.0
  init_std: float = 0.02
  dtype: str = "float32"
  scan_layers: bool = True
  remat: str = "none"  # a key of layers.REMAT_POLICIES: "none", "full", "dots"
  attention: str = "xla"  # xla | jax | cudnn | splash | auto (jaxcl/models/attention_kernels.py)
  growth_masks: bool = False  # MSG masks in the forward (jaxcl/growth/msg.py)
  # Where MSG's FFN mask m_F multiplies: "input", the units' pre-activations as `cofe-ai/MSG`
  # (BertIntermediateEx: act((x W_1 + b_1) m_F)); "output", act(x W_1 + b_1) m_F (jaxcl before
  # issue 22, kept for its regression fixture). Both are exact at m_F = 0.
  ffn_mask_at: str = "input"

  def __post_init__(self):
    if self.style not in STYLES:
      raise ValueError(f"style={self.style!r}: use one of {STYLES}")
    if not self.head_dim and self.width % self.num_heads:
      raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"num_heads {self.num_heads} is not a multiple of {self.kv_heads} kv heads")
    if self.remat not in layers.REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r}: use one of {sorted(layers.REMAT_POLICIES)}")
    if self.ffn_mask_at not in ("input", "output"):
      raise ValueError(f"ffn_mask_at={self.ffn_mask_at!r}: use input | output")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_size(self) -> int:
    return self.head_dim or self.width // self.num_heads


PRESETS = {
  # Unit tests: compiles in about a second.
  "tiny": dict(vocab_size=64, seq_len=16, num_layers=2, width=32, num_heads=4, mlp_dim=64),
  "tiny_llama": dict(
    vocab_size=64,
    seq_len=16,
    num_layers=2,
    width=32,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=64,
    style="llama",
    tie_embeddings=False,
  ),
  # Byte-level model of the default continual-pretraining run: minutes on a 2-core CPU.
  "mini": dict(vocab_size=256, seq_len=128, num_layers=4, width=128, num_heads=4, mlp_dim=512),
  # Byte-level model that trains in CPU-minutes.
  "small": dict(vocab_size=256, seq_len=256, num_layers=4, width=256, num_heads=4, mlp_dim=1024),
  # DESIGN.md §8 throughput target: nanoGPT's 6 x 384 character model (byte vocabulary).
  "nanogpt_6x384": dict(
    vocab_size=256, seq_len=256, num_layers=6, width=384, num_heads=6, mlp_dim=1536
  ),
  # GPT-2 small, 124,439,808 parameters (HF `gpt2`).
  "gpt2": dict(
    vocab_size=50257, seq_len=1024, num_layers=12, width=768, num_heads=12, mlp_dim=3072
  ),
  # The 405M shape of the continual-pretraining papers (Ibrahim et al., 2024: 24 layers, d=1024,
  # 16 heads, RoPE, 2048 tokens, GPT-NeoX vocabulary) as a Llama: SwiGLU width 8d/3 rounded up to
  # a multiple of 256 (LLaMA's rule), untied head; 411M parameters.
  "llama_405m": dict(
    vocab_size=50304,
    seq_len=2048,
    num_layers=24,
    width=1024,
    num_heads=16,
    mlp_dim=2816,
    style="llama",
    tie_embeddings=False,
  ),
}


def config_for(name: str, **overrides) -> Config:
  """A named preset (see PRESETS), e.g. `config_for("small", scan_layers=False)`."""
  if name not in PRESETS:
    raise ValueError(f"unknown GPT preset {name!r}: use one of {sorted(PRESETS)}")
  return Config(**{**PRESETS[name], **overrides})


def batch_sharded(x):
  """x [B, ...] split over the batch axes ("data", "fsdp") of the mesh the step traces under
  (jaxcl/engine/step.py), a no-op without one. MaxText constrains activations the same way
  (`activation_batch`): without it, XLA follows the FSDP-sharded weights and shards activations
  along the model dimension instead, so every chip computes attention for the global batch."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = tuple(a for a in ("data", "fsdp") if not mesh.empty and a in mesh.axis_names)
  if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(axes))


class Block(nnx.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    llama = cfg.style == "llama"
    dtype = jnp.dtype(cfg.dtype)
    init = nnx.initializers.normal(cfg.init_std)
    # Residual-branch outputs scaled by 1/sqrt(2L) (GPT-2 paper §2.3; nanoGPT).
    out_init = nnx.initializers.normal(cfg.init_std / math.sqrt(2 * cfg.num_layers))
    kind = "rms" if llama else "layer"
    self.ffn_mask_at = cfg.ffn_mask_at
    self.attn_norm = layers.norm(kind, cfg.width, eps=cfg.norm_eps, dtype=dtype, rngs=rngs)
    self.attn = layers.Attention(
      cfg.width,
      cfg.num_heads,
      num_kv_heads=cfg.kv_heads,
      head_dim=cfg.head_size,
      use_bias=not llama,
      init=init,
      out_init=out_init,
      bias_init=nnx.initializers.zeros,
      logical_axes=True,
      causal=True,
      implementation=cfg.attention,
      dtype=dtype,
      rngs=rngs,
    )
    self.mlp_norm = layers.norm(kind, cfg.width, eps=cfg.norm_eps, dtype=dtype, rngs=rngs)
    self.mlp = layers.FeedForward(
      cfg.width,
      cfg.mlp_dim,
      activation="silu" if llama else "gelu_tanh",
      gated=llama,
      use_bias=not llama,
      init=init,
      out_init=out_init,
      dtype=dtype,
      rngs=rngs,
    )

  def __call__(self, x, rope, masks: dict | None = None, layer_mask=None):
    """x [B, T, D] -> [B, T, D]; under MSG masks (`GPT.masks`) x + c (block(x) - x), where
    c = `layer_mask` and block(x) has its hidden, head and FFN units masked."""
    x = batch_sharded(x)
    if masks is None:
      x = x + self.attn(self.attn_norm(x), rope=rope)
      return x + self.mlp(self.mlp_norm(batch_sharded(x)))
    m = masks["hidden"].astype(x.dtype)  # [D]
    h = _masked_norm(self.attn_norm, x, m)
    heads = dict(head_mask=masks["heads"], kv_head_mask=masks["kv_heads"])
    y = x + self.attn(h, rope=rope, **heads) * m
    h = _masked_norm(self.mlp_norm, y, m)
    y = y + _masked_mlp(self.mlp, h, masks["mlp"], self.ffn_mask_at) * m
    return x + layer_mask.astype(x.dtype) * (y - x)


def _masked_norm(norm: nnx.Module, x, m):
  """LayerNorm / RMSNorm with statistics weighted by m [D] (MSG's masked LayerNorm), times m.

  With m in {0, 1} this is the norm of the selected coordinates, whatever the others hold.
  """
  x32, w = x.astype(jnp.float32), m.astype(jnp.float32)
  n = jnp.sum(w)
  if isinstance(norm, nnx.LayerNorm):
    mean = jnp.sum(x32 * w, -1, keepdims=True) / n
    var = jnp.sum(w * (x32 - mean) ** 2, -1, keepdims=True) / n
    y = (x32 - mean) * jax.lax.rsqrt(var + norm.epsilon) * norm.scale[...]
    y = y + norm.bias[...]
  else:
    ms = jnp.sum(w * x32 * x32, -1, keepdims=True) / n
    y = x32 * jax.lax.rsqrt(ms + norm.epsilon) * norm.scale[...]
  return (y * w).astype(x.dtype)


def _masked_mlp(mlp: layers.FeedForward, x, m, at: str = "input"):
  """`layers.FeedForward` with its units [.., F] scaled by m [F]: every input projection's
  output before the activation (`at="input"`; MSG's BertIntermediateEx, and `tongxuluo/prts`
  msg.py on both SwiGLU projections), or the activations (`at="output"`)."""
  act = layers.ACTIVATIONS[mlp.activation]
  m = m.astype(x.dtype)
  pre = (lambda h: h * m) if at == "input" else (lambda h: h)
  h = pre(mlp.up(x))  # [B, T, F]
  h = act(pre(mlp.gate(x))) * h if hasattr(mlp, "gate") else act(h)
  return mlp.down(h if at == "input" else h * m)


class GrowthMask(nnx.Variable):
  """An MSG mask: 1 for old units, the ramp value c for new ones (not trained)."""


class Masks(nnx.Module):
  """The MSG masks of a GPT, all ones at construction (jaxcl/growth/msg.py sets them)."""

  def __init__(self, cfg: Config):
    def mask(n, axis):
      return GrowthMask(jnp.ones((n,), jnp.float32), out_sharding=(axis,), eager_sharding=False)

    self.hidden = mask(cfg.width, "embed")
    self.heads = mask(cfg.num_heads, "heads")
    self.kv_heads = mask(cfg.kv_heads, "kv_heads")
    self.mlp = mask(cfg.mlp_dim, "mlp")
    self.layers = mask(cfg.num_layers, "layers")

  def values(self) -> dict:
    names = ("hidden", "heads", "kv_heads", "mlp", "layers")
    return {k: getattr(self, k)[...] for k in names}


class GPT(nnx.Module):
  """Causal LM: `model(tokens [B, T]) -> logits [B, T, V]` (float32)."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    self.config = cfg
    dtype = jnp.dtype(cfg.dtype)
    init = nnx.initializers.normal(cfg.init_std)
    self.embed = nnx.Embed(
      cfg.vocab_size,
      cfg.width,
      embedding_init=layers.with_axes(init, "vocab", "embed"),
      dtype=dtype,
      rngs=rngs,
    )  # embedding [V, D]
    if cfg.style == "gpt2":
      self.pos_embed = nnx.Embed(
        cfg.seq_len,
        cfg.width,
        embedding_init=layers.with_axes(init, None, "embed"),
        dtype=dtype,
        rngs=rngs,
      )  # embedding [T_max, D]
    self.blocks = layers.make_layers(
      lambda rngs: Block(cfg, rngs=rngs), cfg.num_layers, scan=cfg.scan_layers, rngs=rngs
    )
    kind = "rms" if cfg.style == "llama" else "layer"
    self.final_norm = layers.norm(kind, cfg.width, eps=cfg.norm_eps, dtype=dtype, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = nnx.Linear(
        cfg.width,
        cfg.vocab_size,
        use_bias=False,
        kernel_init=layers.with_axes(init, "embed", "vocab"),
        dtype=dtype,
        rngs=rngs,
      )  # kernel [D, V]
    if cfg.growth_masks:
      self.masks = Masks(cfg)

  def __call__(self, tokens, depth=None):
    """Next-token logits: tokens [B, T] int -> [B, T, V] float32; T <= config.seq_len."""
    w = self.unembedding().astype(jnp.dtype(self.config.dtype))  # [D, V]
    h = self.hidden(tokens, depth)  # [B, T, D]
    return jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)

  def hidden(self, tokens, depth=None):
    """The final-norm output [B, T, D] (compute dtype) that the unembedding maps to logits; a
    loss can take it with `unembedding()` and never hold all logits (jaxcl/lm/chunked_loss.py).

    `depth` (int32 [], may be traced; None = all layers) runs the sub-model of the bottom
    `depth` blocks under the same final norm and head (bert2BERT's stage 1,
    jaxcl/lm/two_stage.py).
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    t = tokens.shape[1]
    if t > cfg.seq_len:
      raise ValueError(f"sequence of {t} tokens is longer than seq_len={cfg.seq_len}")
    x = batch_sharded(self.embed(tokens))  # [B, T, D]
    rope = None
    if cfg.style == "gpt2":
      x = x + self.pos_embed.embedding[:t].astype(dtype)  # [B, T, D]
    else:
      rope = layers.rope_tables(jnp.arange(t), cfg.head_size, cfg.rope_theta)  # 2 x [T, Dh]
    if cfg.growth_masks:
      masks = self.masks.values()
      x = x * masks["hidden"].astype(x.dtype)  # new hidden coordinates start at 0
      x = layers.apply_layers(
        self.blocks,
        x,
        rope,
        masks,
        per_layer=masks["layers"],
        depth=depth,
        remat=cfg.remat,
      )
      return _masked_norm(self.final_norm, x, masks["hidden"])  # [B, T, D]
    x = layers.apply_layers(self.blocks, x, rope, depth=depth, remat=cfg.remat)
    return self.final_norm(x)  # [B, T, D]

  def unembedding(self):
    """The output projection [D, V] (float32 parameters; the tied embedding transposed)."""
    if self.config.tie_embeddings:
      return self.embed.embedding[...].T
    return self.lm_head.kernel[...]


def _matmul_params_per_layer(cfg: Config) -> int:
  attn = cfg.width * cfg.head_size * (2 * cfg.num_heads + 2 * cfg.kv_heads)  # q, k, v, out
  return attn + cfg.width * cfg.mlp_dim * (3 if cfg.style == "llama" else 2)


def param_count(cfg: Config) -> int:
  """Number of parameters of `GPT(cfg)` (embeddings included, a tied head counted once)."""
  d = cfg.width
  per_layer = _matmul_params_per_layer(cfg)
  if cfg.style == "gpt2":  # biases of q, k, v, out, up, down; two LayerNorms (scale and bias)
    per_layer += cfg.head_size * (cfg.num_heads + 2 * cfg.kv_heads) + d + cfg.mlp_dim + d
    per_layer += 4 * d
    top = cfg.seq_len * d + 2 * d  # position table, final LayerNorm
  else:
    per_layer += 2 * d  # two RMSNorm scales
    top = d
  head = 0 if cfg.tie_embeddings else d * cfg.vocab_size
  return cfg.vocab_size * d + cfg.num_layers * per_layer + top + head


def train_flops_per_token(cfg: Config, seq_len: int | None = None) -> float:
  """Training FLOPs per token, counted as MaxText does (`calculate_tflops_training_per_device`).

  6 x (matmul parameters: the L blocks' projections plus the D x V unembedding; the embedding
  lookup is free) + 6 x L x H x Dh x S for causal attention (QK^T and AV, 4·S²·H·Dh per layer
  and sequence, halved by the causal mask, x3 for forward and backward). No remat recompute.
  """
  s = cfg.seq_len if seq_len is None else seq_len
  matmul = cfg.num_layers * _matmul_params_per_layer(cfg) + cfg.width * cfg.vocab_size
  attention = cfg.num_layers * cfg.num_heads * cfg.head_size * s
  return 6.0 * matmul + 6.0 * attention
