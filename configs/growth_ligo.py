"""LiGO (Wang et al., ICLR 2023): learn the linear map from the small model's weights to the
large model's (width matrices B, depth mixing w) for a few steps, then train the large model.

  python -m jaxcl.main --config=configs/growth_ligo.py --config.growth.ligo_optimizer=adam

Presets:
- default: the text stream of configs/growth_stack.py; a 2 x 64 GPT-2-style model grown at
  step 100 into the 4 x 128 `mini` GPT, the operator (per-layer width matrices, W_O tied to
  B^V, learned depth mixing) trained for the paper's 100 SGD steps (lr 1e-2) on the training
  stream (those tokens and FLOPs are counted), moments carried. Minutes on a 2-core CPU.
- smoke: seconds, for tests (tiny model, 1 x 16 -> 2 x 32 at step 3, 2 operator steps).
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def default(c):
  common.growth_text(c, smoke=False)
  c.model.shape.update(num_layers=2, width=64, num_heads=2, mlp_dim=256)
  c.growth.events = [
    dict(step=100, operator="ligo", num_layers=4, width=128, num_heads=4, mlp_dim=512)
  ]


def smoke(c):
  common.growth_text(c, smoke=True)
  c.model.shape.update(num_layers=1, width=16, num_heads=2, mlp_dim=32)
  c.growth.events = [dict(step=3, operator="ligo", num_layers=2, width=32, num_heads=4, mlp_dim=64)]


def get_config(arg=None):
  c = config_lib.cpt_base_config()
  c.name = "growth_ligo"
  return config_lib.choose_preset(c, arg, {"default": default, "smoke": smoke})
