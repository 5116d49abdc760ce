"""Linear probe: frozen pretrained ViT, a linear head trained task after task.

  python -m jaxcl.main --config=configs/linear_probe.py

Presets: default, fmnist, smoke, cifar100, imagenet_r. Paper presets: Adam lr 1e-3 on the head,
batch 128, 5 epochs per task, train-time masking of classes outside the current task (the
l2p `train_mask`), ViT-B/16 IN-21k. Reference point: RanPAC's ablation "joint linear probe"
reaches 87.9 (CIFAR-100) / 72.0 (ImageNet-R) when trained jointly; sequentially it forgets.
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def paper(c):
  c.optim.update(name="adam", lr=1e-3, clip_norm=0.0)
  c.data.batch_size = 128
  c.train.epochs = 5.0


def default(c):
  c.optim.update(name="adam", lr=1e-2, clip_norm=0.0)
  c.train.epochs = 1.0


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "linear_probe"
  c.method.name = "finetune"
  c.method.head_only = True
  c.method.train_mask = "current"
  c.method.zero_head = True
  presets = common.cil_presets(default=default, cifar100=paper, imagenet_r=paper)
  return config_lib.choose_preset(c, arg, presets)
