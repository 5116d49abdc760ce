"""bert2BERT (Chen et al., ACL 2022): function-preserving width growth (FPI, tiled index maps,
exact for integer ratios), then depth by stacking.

  python -m jaxcl.main --config=configs/growth_bert2bert.py
  python -m jaxcl.main --config=configs/growth_bert2bert.py --config.growth.opt_state=reset

Presets:
- default: the text stream of configs/growth_stack.py; a 2 x 64 GPT-2-style model (2 heads,
  FFN 256) grown at step 100 into the 4 x 128 `mini` GPT: FPI doubles width, heads and FFN
  (exact), stacking doubles the depth (not exact). Adam moments carried. Minutes on a 2-core
  CPU.
- smoke: seconds, for tests (tiny model, width only: 2 x 16 -> 2 x 32 at step 3, exact).
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def default(c):
  common.growth_text(c, smoke=False)
  c.model.shape.update(num_layers=2, width=64, num_heads=2, mlp_dim=256)
  c.growth.events = [
    dict(step=100, operator="bert2bert", num_layers=4, width=128, num_heads=4, mlp_dim=512)
  ]


def smoke(c):
  common.growth_text(c, smoke=True)
  c.model.shape.update(width=16, num_heads=2, mlp_dim=32)
  c.growth.events = [dict(step=3, operator="bert2bert", width=32, num_heads=4, mlp_dim=64)]


def get_config(arg=None):
  c = config_lib.cpt_base_config()
  c.name = "growth_bert2bert"
  return config_lib.choose_preset(c, arg, {"default": default, "smoke": smoke})
