"""EASE (Zhou et al., CVPR 2024): an adapter subspace per task, prototype complement.

  python -m jaxcl.main --config=configs/ease.py              # Split Glyphs-100, embedded ViT
  python -m jaxcl.main --config=configs/ease.py:fmnist       # Split Fashion-MNIST 5 x 2
  python -m jaxcl.main --config=configs/ease.py:imagenet_r --config.model.init=/path/ViT.npz

Presets: default, fmnist, smoke, cifar100, imagenet_r. The paper presets are
sun-hailong/CVPR24-Ease `exps/ease_*_in21k.json` (= PILOT `exps/ease*.json` with the IN-21k
backbone): AdaptFormer adapters (bottleneck 64, scale 0.1, dropout 0.1) trained 20 epochs per
task with SGD momentum 0.9 and cosine to 0, alpha 0.1, class order np.random.seed(1993),
inputs in [0, 1], ViT-B/16 AugReg IN-21k. Shipped logs (A_last / A_avg): ImageNet-R B0Inc20
76.17 / 81.74 (IN-1k backbone: 77.33 / 82.60); CIFAR-100 **B0Inc5** (20 tasks, the only CIFAR
split EASE ships) 85.80 / 91.51, which is what the cifar100 preset runs.

Each task trains its own adapters and prediction runs the ViT once per task so far, so a run
costs about T/2 times a prompt method's evaluation. The glyph default trains 1 epoch per task
with a 4-layer-sized bottleneck; it should beat finetune's A_last (~19 on glyphs) by well over
20 points.
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")

PAPER_IN21K = "ViT-B_16-augreg-in21k.npz"  # augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-...npz


def paper(c):
  c.data.class_order = "seeded"
  c.data.order_seed = 1993
  c.model.init = PAPER_IN21K


def cifar100(c):
  """ease_cifar_in21k.json: CIFAR-100 B0Inc5, lr 0.025, batch 48, wd 5e-4: A_last 85.80."""
  paper(c)
  c.data.init_classes = c.data.increment = 5
  common.pilot_sgd(c, lr=0.025, batch=48, weight_decay=5e-4, epochs=20)


def imagenet_r(c):
  """ease_inr_in21k.json: ImageNet-R B0Inc20, lr 0.05, batch 16, wd 5e-3: A_last 76.17."""
  paper(c)
  common.pilot_sgd(c, lr=0.05, batch=16, weight_decay=5e-3, epochs=20)


def default(c):
  """The embedded glyph stream: the CIFAR recipe, 1 epoch per task, bottleneck 16."""
  common.pilot_sgd(c, lr=0.025, batch=48, weight_decay=5e-4, epochs=1)
  c.method.adapter_dim = 16


def smoke(c):
  c.method.adapter_dim = 4


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "ease"
  c.method.name = "ease"
  c.method.adapter_dim = 64  # `ffn_num`
  c.method.adapter_scale = 0.1  # `ffn_adapter_scalar`
  c.method.adapter_dropout = 0.1
  c.method.alpha = 0.1  # weight of the other subspaces, divided by the task index
  presets = common.cil_presets(
    default=default, smoke=smoke, cifar100=cifar100, imagenet_r=imagenet_r
  )
  return config_lib.choose_preset(c, arg, presets)
