"""MSG, Masked Structural Growth (Yao et al., ICLR 2024): grow depth, width, heads and FFN at
once behind masks that start at 0 (exactly function preserving) and ramp to 1.

  python -m jaxcl.main --config=configs/growth_msg.py

Presets:
- default: the text stream of configs/growth_stack.py; a 2 x 64 GPT-2-style model (2 heads,
  FFN 256) grown at step 100 into the 4 x 128 `mini` GPT (4 heads, FFN 512), new layers
  copied (StackBERT order), masks ramping over 50 steps, Adam moments carried (zeros for new
  entries). Minutes on a 2-core CPU.
- smoke: seconds, for tests (tiny model, 1 x 16 -> 2 x 32 at step 3).

results.json `growth_events[0].max_abs_logit_change` is ~1e-6 (exact at mask 0).
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def default(c):
  common.growth_text(c, smoke=False)
  c.model.shape.update(num_layers=2, width=64, num_heads=2, mlp_dim=256)
  c.growth.events = [
    dict(step=100, operator="msg", num_layers=4, width=128, num_heads=4, mlp_dim=512, ramp_steps=50)
  ]


def smoke(c):
  common.growth_text(c, smoke=True)
  c.model.shape.update(num_layers=1, width=16, num_heads=2, mlp_dim=32)
  c.growth.events = [dict(step=3, operator="msg", num_layers=2, width=32, num_heads=4, mlp_dim=64)]


def get_config(arg=None):
  c = config_lib.cpt_base_config()
  c.name = "growth_msg"
  return config_lib.choose_preset(c, arg, {"default": default, "smoke": smoke})
