"""The language model of a continual-pretraining config: a GPT (`lm`) or a BERT (`mlm`).

`config.model.preset` names a shape in jaxcl/models/gpt.py or bert.py; `config.model.init`,
when set, loads Hugging Face safetensors (GPT-2, Llama or BERT layout) over it.
"""

from __future__ import annotations

from absl import logging
from flax import nnx

from jaxcl.models import bert, gpt, layers, text_loading


def shape(config, vocab_size: int) -> gpt.Config | bert.Config:
  """The model config: the preset with the tokenizer's vocabulary and the data's length."""
  m = config.model
  kw = dict(
    dtype=layers.compute_dtype(m.dtype),
    scan_layers=m.scan_layers,
    remat=m.remat,
    attention=m.attention,
  )
  kw.update({k: v for k, v in m.shape.items() if v})  # e.g. the small model of a growth run
  if config.train.objective == "mlm":
    return bert.config_for(m.preset, vocab_size=vocab_size, seq_len=config.data.seq_len, **kw)
  return gpt.config_for(m.preset, vocab_size=vocab_size, seq_len=config.data.seq_len, **kw)


def build(config, vocab_size: int, rngs: nnx.Rngs) -> nnx.Module:
  cfg = shape(config, vocab_size)
  model = bert.BERT(cfg, rngs=rngs) if isinstance(cfg, bert.Config) else gpt.GPT(cfg, rngs=rngs)
  if config.model.init:
    tensors, _, files = text_loading.read_checkpoint(config.model.init)
    report = text_loading.load_hf(model, tensors, files)
    logging.info("model.init=%s: %s", config.model.init, report)  # e.g. a BERT without MLM head
  return model


def train_flops_per_token(config, vocab_size: int) -> float:
  """Model FLOPs per trained token (MaxText's count; for BERT the same formula, non-causal)."""
  return flops_per_token(shape(config, vocab_size), config.data.seq_len)


def flops_per_token(cfg: gpt.Config | bert.Config, seq_len: int) -> float:
  """`train_flops_per_token` of a model shape (a grown one: jaxcl/lm/growth_events.py)."""
  if isinstance(cfg, gpt.Config):
    return gpt.train_flops_per_token(cfg, seq_len)
  matmul = cfg.num_layers * (4 * cfg.width**2 + 2 * cfg.width * cfg.mlp_dim)
  matmul += cfg.width**2 + cfg.width * cfg.vocab_size  # MLM transform + decoder
  attention = 2 * cfg.num_layers * cfg.width * seq_len  # not halved: bidirectional
  return 6.0 * matmul + 6.0 * attention
