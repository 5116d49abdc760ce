"""Sequential fine-tuning of the whole ViT: the catastrophic-forgetting lower bound.

  python -m jaxcl.main --config=configs/finetune.py             # Split Glyphs-100, embedded ViT
  python -m jaxcl.main --config=configs/finetune.py:fmnist      # Split Fashion-MNIST 5 x 2
  python -m jaxcl.main --config=configs/finetune.py:scratch_fmnist  # small ViT from scratch

Presets: default, fmnist, smoke, scratch_fmnist, cifar100, imagenet_r. The paper presets use
the RevisitingCIL `aper_finetune` recipe (SGD momentum 0.9, lr 0.01, batch 128, wd 5e-4,
cosine, 5 epochs per task) on ViT-B/16 IN-21k; sequential fine-tuning has no paper number of
its own (PILOT's plots show ~A_last far below SimpleCIL); expect heavy forgetting.
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def default(c):
  c.optim.update(name="adam", lr=1e-4, clip_norm=1.0)
  c.train.epochs = 1.0


def scratch_fmnist(c):
  """Engine sanity check: a small ViT trained from scratch on Split Fashion-MNIST."""
  common.scratch_fmnist(c)
  c.train.epochs = 1.0


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "finetune"
  c.method.name = "finetune"
  c.method.head_only = False
  c.method.train_mask = "current"  # current | seen | none
  c.method.zero_head = True
  presets = common.cil_presets(
    default=default,
    cifar100=common.sgd_finetune,
    imagenet_r=common.sgd_finetune,
    scratch_fmnist=scratch_fmnist,
  )
  return config_lib.choose_preset(c, arg, presets)
