"""Supervised pretraining of the embedded ViT on the glyph *pretraining* classes.

  python -m jaxcl.main --config=configs/pretrain_vit.py

Trains a small ViT from scratch on every glyph class outside the 100 continual classes
(the "ImageNet-21k" of the embedded default) as one joint task, reports held-out top-1
accuracy on those classes (results.json `A_last`), and exports the backbone in the google
vision_transformer .npz format to jaxcl/assets/vit_glyphs.npz (float16), which the `default`
and `fmnist` presets of every class-incremental config load as `model.init="embedded"`.
The shipped file's command, seed, wall time and accuracy are in jaxcl/assets/README.md.
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def default(c):
  c.data.name = "glyphs"
  c.data.glyph_set = "pretrain"
  c.data.image_size = 32
  c.data.train_aug = "none"
  c.data.batch_size = 128
  c.data.max_train_per_class = 240  # of the 300 rendered per class (2-core CPU budget)
  c.data.max_test_per_class = 20
  c.model.variant = common.EMBEDDED_VARIANT
  c.model.init = ""
  c.method.zero_head = False
  c.optim.update(
    name="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine", warmup_steps=500, clip_norm=1.0
  )
  c.train.epochs = 1.0
  c.train.log_every_steps = 200
  c.checkpoint.every_steps = 1000
  c.export_backbone = "jaxcl/assets/vit_glyphs.npz"


def smoke(c):
  common.smoke(c)
  c.data.glyph_set = "pretrain"
  c.export_backbone = ""


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "pretrain_vit"
  c.method.name = "joint"
  c.method.head_only = False
  c.method.train_mask = "none"
  c.method.zero_head = False
  return config_lib.choose_preset(c, arg, {"default": default, "smoke": smoke})
