"""DualPrompt (Wang et al., "DualPrompt: Complementary Prompting for Rehearsal-free Continual
Learning", ECCV 2022).

  python -m jaxcl.main --config=configs/dualprompt.py            # Split Glyphs-100, embedded
  python -m jaxcl.main --config=configs/dualprompt.py:fmnist     # Split Fashion-MNIST 5 x 2
  python -m jaxcl.main --config=configs/dualprompt.py:fmnist_vor # + virtual outliers (OVOR)
  python -m jaxcl.main --config=configs/dualprompt.py:imagenet_r --config.model.init=ViT-B_16.npz

Presets: default, fmnist, smoke, cifar100, imagenet_r, and with OVOR's virtual outlier
regularisation after each task (`method.ood_epochs`, jaxcl/methods/vor.py): vor, fmnist_vor.
Defaults are google-research/l2p
`configs/cifar100_dualprompt.py`: G-prefix length 5 at layers [0, 1]; E-prefix pool 10,
length 5, top-1 at layers [2, 3, 4], one key per E-prompt; separate key and value prefixes of
the full length each (`[layers, 2, length, H, Dh]`); prompts and keys U[0, 0.01); prompt mask
(task t trains E-prompt t) and shared pool (E-prompt t starts from t-1); pull coefficient 1.0;
batch-wise selection in training; head on CLS; train-time masking of non-current classes;
Adam lr 0.03 * batch / 256, constant, 5 epochs, per-device batch 24, clipping at 1.0 over all
parameters; test logits not masked to seen classes; inputs in [0, 1].

Other implementations, as config fields: JH-LEE-KR/dualprompt-pytorch has the same
hyperparameters with lr scaled by the per-GPU batch 24 (`--config.optim.lr=0.0028125
--config.optim.lr_base_batch=0 --config.optim.clip_scope=trainable`); PILOT uses E-length 5
everywhere, pull 0.1, Adam lr 0.001, batch 24. CODA-Prompt's re-implementation splits one
length-L prompt into L/2 keys + L/2 values (not this parameterisation).

Test-time batch-wise selection (`method.batchwise_eval`) is off: it leaks task identity
(google-research/l2p#28). The official CIFAR-100 config votes per batch at test time too; set
`--config.method.batchwise_eval=True` to reproduce its number.
"""

from jaxcl import config_lib
from jaxcl.methods import vor as vor_lib

common = config_lib.sibling_module(__file__, "_common")


def official(c):
  """google-research/l2p DualPrompt on 8 devices x 24 = batch 192."""
  c.data.batch_size = 192
  c.optim.update(
    name="adam", lr=0.03, lr_base_batch=256, schedule="constant", clip_norm=1.0, clip_scope="all"
  )
  c.train.epochs = 5.0


def cifar100(c):
  """Split CIFAR-100 10 x 10, ViT-B/16 IN-21k (original `imagenet21k/ViT-B_16.npz`).
  Paper: A_N 86.51, forgetting 5.16 (official JAX re-run 85.59 / 5.03), with test-time
  batch-wise selection."""
  official(c)


def imagenet_r(c):
  """Split ImageNet-R 10 x 20 (google-research/l2p configs/imr_dualprompt.py): E-length 20,
  lr 0.005 per 256, 50 epochs, no batch-wise selection. Paper: A_N 68.13, forgetting 4.68
  (official re-run 67.55 / 5.06)."""
  official(c)
  c.method.e_length = 20
  c.method.batchwise_train = False
  c.optim.lr = 0.005
  c.train.epochs = 50.0


def default(c):
  """The embedded glyph stream (a 4-layer ViT: E-prefixes at layers 2-3), CPU-sized budget."""
  official(c)
  c.method.e_layers = (2, 3)
  c.train.epochs = 1.0


def fmnist(c):
  """Split Fashion-MNIST 5 x 2: the default at a tenth of the learning rate.

  Measured here (embedded ViT, A_last; finetune 20.0): lr 0.03 (x batch/256) 26.4, 0.003 34.8,
  0.001 30.9; 0.003 with the official 5 epochs 35.2; train logits of all classes (official
  `train_mask=False`) 30.0, of the seen ones 18.1. Short of finetune + 20: with 2 classes per
  task and non-current logits masked in training, each task's two head rows stay opposite
  (w_a + w_b = 0 from the zero init, Adam keeps it), so nothing calibrates one task's logits
  against another's (README, Results).
  """
  default(c)
  c.optim.lr = 0.003


def vor(c):
  """DualPrompt + virtual outlier regularisation (Huang et al., ICLR 2024, who report it on
  DualPrompt and CODA-P too; jpmorganchase/ovor runs it after any learner): the default glyph
  preset plus 3 head-only outlier epochs per task at the task's learning rate."""
  common.compose(common.glyphs, default, common.outlier_epochs(3))(c)


def fmnist_vor(c):
  """`vor` on Split Fashion-MNIST 5 x 2 (the `fmnist` preset plus 3 outlier epochs per task).

  Measured here (A_last; finetune 20.0, plain `fmnist` 34.8): 1 outlier epoch 42.2, 3: 54.7.
  The outliers' energy term is what 2-class tasks lack: it makes a task's two logits large
  only on that task's features, which calibrates the tasks' logits against each other.
  """
  common.compose(common.fmnist, fmnist, common.outlier_epochs(3))(c)


def smoke(c):
  c.method.update(pool_size=4, g_length=2, e_length=2, e_layers=(2, 3))


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "dualprompt"
  c.method.name = "dualprompt"
  c.method.g_length = 5
  c.method.g_layers = (0, 1)
  c.method.e_length = 5
  c.method.e_layers = (2, 3, 4)
  c.method.pool_size = 10
  c.method.top_k = 1
  c.method.pull_coeff = 1.0
  c.method.batchwise_train = True  # official `batchwise_prompt` (CIFAR-100; off for ImageNet-R)
  c.method.batchwise_eval = False  # True = official at test time (task-identity leak)
  c.method.prompt_mask = True  # task t trains E-prompt t
  c.method.shared_pool = True  # E-prompt t starts from E-prompt t-1
  c.method.init_range = (0.0, 0.01)
  c.method.train_mask = "current"
  # virtual outlier regularisation (OVOR), off: method.ood_epochs=0
  c.method.update(vor_lib.method_fields())
  c.method.zero_head = True
  c.eval.mask_unseen = False
  presets = common.cil_presets(
    default=default,
    fmnist=fmnist,
    smoke=smoke,
    cifar100=cifar100,
    imagenet_r=imagenet_r,
    vor=vor,
    fmnist_vor=fmnist_vor,
  )
  return config_lib.choose_preset(c, arg, presets)
