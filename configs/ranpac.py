"""RanPAC (McDonnell et al., NeurIPS 2023): first-session PETL, random projection, ridge head.

  python -m jaxcl.main --config=configs/ranpac.py              # Split Glyphs-100, embedded ViT
  python -m jaxcl.main --config=configs/ranpac.py:fmnist       # Split Fashion-MNIST 5 x 2
  python -m jaxcl.main --config=configs/ranpac.py:cifar100 --config.model.init=/path/ViT.npz

Presets: default, fmnist, smoke, cifar100, imagenet_r. The paper presets are RanPAC/RanPAC
`args/*_publish.csv` row 7 ("Algorithm 1"): first session SGD momentum 0.9, lr 0.01, wd 5e-4,
batch 48, 20 epochs, cosine to 0; M = 10000 random features; ridge lambda from 10^-8 .. 10^8
on an 80/20 split of each task; class order np.random.seed(1993); inputs in [0, 1]. Final
accuracy (paper_tables/Table_data_main_*.csv): CIFAR-100 B0Inc10 92.2 with an AdaptFormer
adapter on ViT-B/16 AugReg IN-21k; ImageNet-R B0Inc20 77.9 with SSF on ViT-B/16 AugReg
IN-21k -> IN-1k. The "No RPs" ablation (90.6 / 73.9) is `--config.method.rp_dim=0`.

M x M matrices are kept in float32 on the device: at M = 10000 that is 400 MB each, three of
them (G, and the current task's fit and held-out parts). The glyph default uses M = 2000 on
the 96-wide embedded ViT (the paper's M/D is ~13) and a CPU-sized first session; it should
beat finetune's A_last (~19 on glyphs) by well over 20 points.
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")

PAPER_IN21K = "ViT-B_16-augreg-in21k.npz"  # augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-...npz
PAPER_IN1K = "ViT-B_16-augreg-in21k-ft-in1k.npz"  # ...--imagenet2012-steps_20k-lr_0.01-res_224


def first_session(c):
  c.data.batch_size = 48
  c.optim.update(
    name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="cosine", clip_norm=0.0
  )
  c.train.epochs = 20.0


def official(c):
  first_session(c)
  c.data.class_order = "seeded"
  c.data.order_seed = 1993


def cifar100(c):
  """CIFAR-100 B0Inc10, adapter on AugReg IN-21k, test images resized to 224: A_last 92.2."""
  official(c)
  c.model.init = PAPER_IN21K
  c.data.eval_resize = "resize"


def imagenet_r(c):
  """ImageNet-R B0Inc20, SSF on AugReg IN-21k -> IN-1k: A_last 77.9."""
  official(c)
  c.model.init = PAPER_IN1K
  c.method.petl = "ssf"


def default(c):
  """The embedded glyph stream: the paper's recipe, a smaller M and first session."""
  first_session(c)
  c.train.epochs = 3.0
  c.method.adapter_dim = 16
  c.method.rp_dim = 2000


def smoke(c):
  c.method.update(adapter_dim=4, vpt_length=2, rp_dim=64)


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "ranpac"
  c.method.name = "ranpac"
  c.method.petl = "adapter"  # adapter | ssf | vpt_shallow | vpt_deep | finetune
  c.method.adapter_dim = 64  # RanPAC inc_net.py `ffn_num`
  c.method.adapter_scale = 0.1
  c.method.adapter_dropout = 0.1
  c.method.vpt_length = 5
  c.method.rp_dim = 10000  # M; 0 = no random projection
  c.method.ridge_powers = tuple(range(-8, 9))  # lambda grid 10^p
  c.method.holdout = 0.2  # share of each task's data that picks lambda
  presets = common.cil_presets(
    default=default, smoke=smoke, cifar100=cifar100, imagenet_r=imagenet_r
  )
  return config_lib.choose_preset(c, arg, presets)
