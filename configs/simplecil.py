"""SimpleCIL: prototypes of the frozen pretrained ViT, cosine classifier, no training.

  python -m jaxcl.main --config=configs/simplecil.py

Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models" (IJCV 2024).
Presets: default, fmnist, smoke, cifar100, imagenet_r. Paper numbers (RevisitingCIL logs,
ViT-B/16 IN-21k AugReg, seed 1993 order): CIFAR-100 B0Inc5 A_last 81.28 / A_avg 87.57;
ImageNet-R B0Inc5 54.55 / 62.57. The presets here use the 10-task splits with the seed-1993
class order; PILOT's plot gives ~76.2 on CIFAR B0Inc10 with the IN-1k backbone. Prototypes
use the test transform, as the reference does.
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def paper(c):
  c.data.class_order = "seeded"
  c.data.order_seed = 1993
  c.model.init = "ViT-B_16-augreg-in21k.npz"  # B_16-i21k-300ep-lr_0.001-aug_medium1-...npz
  c.data.batch_size = 256


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "simplecil"
  c.method.name = "simplecil"
  presets = common.cil_presets(cifar100=paper, imagenet_r=paper)
  return config_lib.choose_preset(c, arg, presets)
