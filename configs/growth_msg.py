"""MSG, Masked Structural Growth (Yao et al., ICLR 2024): grow FFN, depth, width and heads one
dimension per event behind masks that start at 0 (exactly function preserving) and ramp to 1;
at every event the learning rate rewinds to its peak and decays again (`cofe-ai/MSG`
get_scheduler_ex with rewind; `growth.lr_after=rewind`), in the order of the reference's
BERT-base plan (scripts/grow_bert_*.sh: FFN, layers, hidden, heads).

  python -m jaxcl.main --config=configs/growth_msg.py

Presets:
- default: the text stream of configs/growth_stack.py; a 2 x 64 GPT-2-style model (2 heads,
  FFN 256) grown into the 4 x 128 `mini` GPT: FFN 256 -> 512 at step 100, layers 2 -> 4 at
  140 (copied, StackBERT order), width 64 -> 128 at 180, heads 2 -> 4 at 220, masks ramping
  over 30 steps each, Adam moments carried (zeros for new entries). Minutes on a 2-core CPU.
- smoke: seconds, for tests (tiny model 1 x 16, 2 heads, FFN 32: FFN -> 64 at step 2,
  layers -> 2 at 4, width -> 32 at 6, ramps of 1 step).

results.json `growth_events[k].max_abs_logit_change` is ~1e-6 (exact at mask 0).
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def default(c):
  common.growth_text(c, smoke=False)
  c.model.shape.update(num_layers=2, width=64, num_heads=2, mlp_dim=256)
  c.growth.events = [
    dict(step=100, operator="msg", mlp_dim=512),
    dict(step=140, operator="msg", num_layers=4),
    dict(step=180, operator="msg", width=128),
    dict(step=220, operator="msg", num_heads=4),
  ]
  c.growth.ramp_steps = 30
  c.growth.lr_after = "rewind"


def smoke(c):
  common.growth_text(c, smoke=True)
  c.model.shape.update(num_layers=1, width=16, num_heads=2, mlp_dim=32)
  c.growth.events = [
    dict(step=2, operator="msg", mlp_dim=64),
    dict(step=4, operator="msg", num_layers=2),
    dict(step=6, operator="msg", width=32),
  ]
  c.growth.ramp_steps = 1
  c.growth.lr_after = "rewind"


def get_config(arg=None):
  c = config_lib.cpt_base_config()
  c.name = "growth_msg"
  return config_lib.choose_preset(c, arg, {"default": default, "smoke": smoke})
