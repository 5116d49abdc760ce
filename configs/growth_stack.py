"""G_stack (Du et al. 2024, "Stacking Your Transformers"): train a model of 1/4 the depth, then
stack it g = 4 times (layer l <- layer l mod L) and keep training.

  python -m jaxcl.main --config=configs/growth_stack.py
  python -m jaxcl.main --config=configs/growth_stack.py --config.growth.lr_after=carry

Presets:
- default: stdlib prose then stdlib code (byte tokens, seq 128, batch 16, 200 steps each), a
  2 x 128 GPT-2-style model (the `mini` width) stacked into an 8 x 128 GPT at step 100, with
  G_stack's recipe (`tongxuluo/prts` base_model.sh / g_stack.sh): AdamW (0.9, 0.95), weight
  decay 0.1, clip 1; after growth a fresh AdamW and a new warmup + cosine from the event to
  the end of the run at 0.3 x the small model's peak (prts: 3e-4 after 1e-3), floor / 10,
  the base warmup again. `--config.growth.lr_after=carry` keeps the run's one cosine instead
  (with `growth.rewarm_steps` > 0 re-warmed). Minutes on a 2-core CPU.
  bench/growth_speedup.py compares it with the 8 x 128 model trained from scratch
  (`--config.model.shape.num_layers=8 --config.growth.events=[]`).
- smoke: seconds, for tests (tiny model, 1 -> 2 layers at step 3).

results.json `growth_events` records the event and the largest logit change it caused on a
fixed validation batch (G_stack is not function preserving: O(0.1-1)).
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def default(c):
  common.growth_text(c, smoke=False)
  c.model.shape.num_layers = 2
  c.growth.events = [dict(step=100, operator="g_stack", num_layers=8)]
  prts_recipe(c)


def prts_recipe(c):
  """G_stack's optimizer and learning rate around growth (module doc)."""
  c.optim.name = "adamw"
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.1
  c.growth.opt_state = "reset"
  c.growth.lr_after = "restart"
  c.growth.restart_lr = 0.3 * c.schedule.eta_max
  c.growth.restart_warmup = c.schedule.warmup_steps


def smoke(c):
  common.growth_text(c, smoke=True)
  c.model.shape.num_layers = 1
  c.growth.events = [dict(step=3, operator="g_stack", num_layers=2)]
  prts_recipe(c)


def get_config(arg=None):
  c = config_lib.cpt_base_config()
  c.name = "growth_stack"
  return config_lib.choose_preset(c, arg, {"default": default, "smoke": smoke})
