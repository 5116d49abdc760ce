"""Joint training on all classes at once: the upper bound of class-incremental learning.

  python -m jaxcl.main --config=configs/joint.py

The whole ViT is fine-tuned on the union of all tasks, as one task. Presets: default, fmnist,
smoke, scratch_fmnist, cifar100, imagenet_r. Paper reference (RanPAC ablation, "joint full
FT", ViT-B/16): 93.8 on CIFAR-100, 86.6 on ImageNet-R.
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def default(c):
  """Three epochs over all 100 classes, Adam 1e-4 with warmup and cosine decay."""
  c.optim.update(name="adam", lr=1e-4, clip_norm=1.0, schedule="cosine", warmup_steps=50)
  c.train.epochs = 3.0


def scratch_fmnist(c):
  """Engine sanity check: a small ViT from scratch on all of Fashion-MNIST (>= 85% expected)."""
  common.scratch_fmnist(c)
  c.optim.schedule = "cosine"
  c.train.epochs = 3.0


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "joint"
  c.method.name = "joint"
  c.method.head_only = False
  c.method.train_mask = "none"
  c.method.zero_head = True
  presets = common.cil_presets(
    default=default,
    cifar100=common.sgd_finetune,
    imagenet_r=common.sgd_finetune,
    scratch_fmnist=scratch_fmnist,
  )
  return config_lib.choose_preset(c, arg, presets)
