"""bert2BERT (Chen et al., ACL 2022): function-preserving width growth (FPI, tiled index maps,
exact for integer ratios), then depth by stacking, then the paper's two-stage training.

  python -m jaxcl.main --config=configs/growth_bert2bert.py
  python -m jaxcl.main --config=configs/growth_bert2bert.py --config.growth.opt_state=reset

Presets:
- default: the text stream of configs/growth_stack.py; a 2 x 64 GPT-2-style model (2 heads,
  FFN 256) grown at step 100 into the 4 x 128 `mini` GPT: FPI doubles width, heads and FFN
  (exact), stacking doubles the depth (not exact). Adam moments carried. Minutes on a 2-core
  CPU.
- smoke: seconds, for tests (tiny model, width only: 2 x 16 -> 2 x 32 at step 3, exact).

Two-stage training is on (jaxcl/lm/two_stage.py), as in the paper's headline result: its 45%
saving for BERT_BASE includes it (ablation: FPI 30.4% -> AKI 38.4% -> + two-stage 45.2%). Stage 1
trains sampled bottom-layer sub-models, each updating only its top l_b layers; the paper's l_b = 3
of 12 layers is scaled to l_b = 1 of the 4 grown layers (sub-models of 1, 2, 3, 4 layers), and
stage 1 runs 30 of the 300 steps after the event (10%: short, since the paper finds an over-long
stage 1 costs most of the gain; its E_b = 5 epochs is not mapped to steps here). The train
step still compiles once per model shape, for both stages: train_compiles = 1 + events.
  --config.growth.two_stage_steps=0 turns it off (bert2BERT with one training stage).
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def default(c):
  common.growth_text(c, smoke=False)
  c.model.shape.update(num_layers=2, width=64, num_heads=2, mlp_dim=256)
  c.growth.events = [
    dict(step=100, operator="bert2bert", num_layers=4, width=128, num_heads=4, mlp_dim=512)
  ]
  c.growth.two_stage_steps = 30
  c.growth.two_stage_lb = 1


def smoke(c):
  common.growth_text(c, smoke=True)
  c.model.shape.update(width=16, num_heads=2, mlp_dim=32)
  c.growth.events = [dict(step=3, operator="bert2bert", width=32, num_heads=4, mlp_dim=64)]
  c.growth.two_stage_steps = 3  # steps 3, 4, 5 train sub-models of 1 or 2 layers
  c.growth.two_stage_lb = 1


def get_config(arg=None):
  c = config_lib.cpt_base_config()
  c.name = "growth_bert2bert"
  return config_lib.choose_preset(c, arg, {"default": default, "smoke": smoke})
