"""Presets shared by the config files: datasets, optimizer recipes, growth-run text streams.

Config files import this file by path, `common = config_lib.sibling_module(__file__, "_common")`
(configs/ is not a package: `jaxcl.main`, the tests and the notebooks load each config by its
path), then build their preset table with `cil_presets` and pick from it with
`config_lib.choose_preset`. The schema itself (every field and its default) is
`config_lib.base_config` / `cpt_base_config`; the defaults of a method are in its config file.
"""

from collections.abc import Callable

from ml_collections import ConfigDict

Preset = Callable[[ConfigDict], None]

EMBEDDED_VARIANT = "mu/4"  # the architecture of the ViT shipped in jaxcl/assets


def compose(*fns: Preset) -> Preset:
  def apply(c: ConfigDict) -> None:
    for fn in fns:
      fn(c)

  return apply


# ---------------------------------------------------------------------------
# Class-incremental datasets (every CIL config has these presets; methods add their own).
# ---------------------------------------------------------------------------


def smoke(config: ConfigDict) -> None:
  """Shrinks any CIL config to seconds: tiny model, 2 tasks, a handful of steps."""
  config.data.name = "glyphs"
  config.data.image_size = 16
  config.data.num_classes = 4
  config.data.init_classes = 2
  config.data.increment = 2
  config.data.max_train_per_class = 16
  config.data.max_test_per_class = 8
  config.data.batch_size = 8
  config.data.eval_batch_size = 16
  config.data.train_aug = "none"
  config.data.eval_resize = "resize"
  config.model.variant = "mu/4"
  config.model.init = ""
  config.train.epochs = 1.0
  config.train.steps_per_task = 2
  config.train.log_every_steps = 1


def glyphs(c: ConfigDict) -> None:
  """Split Glyphs-100 (10 x 10) on the embedded pretrained ViT: the offline default.

  300 train and 50 test images per class (a seeded selection of the 500 / 100 rendered), so
  that every method's default run takes minutes on a 2-core CPU; `--config.data.
  max_train_per_class=0 --config.data.max_test_per_class=0` uses them all.
  """
  c.data.name = "glyphs"
  c.data.glyph_set = "continual"
  c.data.image_size = 32
  c.data.max_train_per_class = 300
  c.data.max_test_per_class = 50
  c.data.init_classes = c.data.increment = 10
  c.data.train_aug = "none"  # a flipped glyph is another character; rendering already varies
  c.model.variant = EMBEDDED_VARIANT
  c.model.init = "embedded"


def fmnist(c: ConfigDict) -> None:
  """Split Fashion-MNIST (5 x 2), real images, on the embedded pretrained ViT.

  2,000 of the 6,000 training images per class (seeded selection; the CPU budget) and all
  1,000 test images; `--config.data.max_train_per_class=0` trains on all of them.
  """
  glyphs(c)
  c.data.name = "fashion_mnist"
  c.data.max_train_per_class = 2000
  c.data.max_test_per_class = 0
  c.data.init_classes = c.data.increment = 2
  c.data.train_aug = "flip"


def cifar100(c: ConfigDict) -> None:
  """Split CIFAR-100 (10 x 10) at 224 on ViT-B/16; needs prepared tfds data + the .npz weights."""
  c.data.name = "cifar100"
  c.data.image_size = 224
  c.data.init_classes = c.data.increment = 10
  c.data.scale = "01"  # every reference prompt implementation feeds [0, 1]
  c.data.train_aug = "rrc_flip"
  c.data.rrc_scale_min = 0.05
  c.data.eval_resize = "resize_crop"
  c.data.eval_batch_size = 256
  c.model.variant = "B/16"
  c.model.init = "ViT-B_16.npz"  # gs://vit_models/imagenet21k/ViT-B_16.npz, copied locally
  c.model.dtype = "auto"  # bfloat16 on TPU/GPU (float32 parameters), float32 on CPU
  c.train.log_every_steps = 50


def imagenet_r(c: ConfigDict) -> None:
  """Split ImageNet-R (10 x 20): tfds imagenet_r, train = test[:80%], test = test[80%:]."""
  cifar100(c)
  c.data.name = "imagenet_r"
  c.data.init_classes = c.data.increment = 20


def scratch_fmnist(c: ConfigDict) -> None:
  """Engine sanity check: Split Fashion-MNIST with a small ViT (mu/4) trained from scratch."""
  fmnist(c)
  c.model.variant = "mu/4"
  c.model.init = ""
  c.method.zero_head = False
  c.optim.update(name="adam", lr=1e-3)


def cil_presets(**method_presets: Preset) -> dict[str, Preset]:
  """The data/model presets of every CIL config, each followed by the method's own tweaks.

  `method_presets[name]` runs after the shared preset `name` (e.g. the paper's
  optimizer for `cifar100`); `default` tweaks also apply to `fmnist`.
  """
  shared = {
    "default": glyphs,
    "fmnist": fmnist,
    "smoke": smoke,
    "cifar100": cifar100,
    "imagenet_r": imagenet_r,
  }
  noop = lambda c: None
  out = {}
  for name, fn in shared.items():
    extra = method_presets.get(name) or (
      method_presets.get("default") if name == "fmnist" else None
    )
    out[name] = compose(fn, extra or noop)
  for name, fn in method_presets.items():
    if name not in shared:
      out[name] = fn
  return out


# ---------------------------------------------------------------------------
# Class-incremental optimizer recipes.
# ---------------------------------------------------------------------------


def pilot_sgd(c: ConfigDict, *, lr: float, batch: int, weight_decay: float, epochs: float):
  """LAMDA-PILOT's training recipe: SGD momentum 0.9, cosine to 0, no clipping."""
  c.optim.update(
    name="sgd", lr=lr, momentum=0.9, weight_decay=weight_decay, schedule="cosine", clip_norm=0.0
  )
  c.data.batch_size = batch
  c.train.epochs = float(epochs)


def sgd_finetune(c: ConfigDict) -> None:
  """RevisitingCIL's `aper_finetune` recipe: SGD momentum 0.9, lr 0.01, wd 5e-4, cosine,
  batch 128, 5 epochs per task (used by the full fine-tuning paper presets)."""
  pilot_sgd(c, lr=0.01, batch=128, weight_decay=5e-4, epochs=5)


def outlier_epochs(epochs: int) -> Preset:
  """A preset step: `epochs` VOR epochs after each task's `train.epochs`, a decaying per-task
  schedule stretched over both (jpmorganchase/ovor `--epochs 0 <regular> <epochs>`)."""

  def apply(c: ConfigDict) -> None:
    c.method.ood_epochs = epochs
    if c.optim.schedule != "constant":
      c.optim.horizon_scale = (c.train.epochs + epochs) / c.train.epochs

  return apply


# ---------------------------------------------------------------------------
# Text streams of the language-model runs (configs/cpt.py, configs/growth_*.py).
# ---------------------------------------------------------------------------


def text_smoke(c: ConfigDict) -> None:
  """Seconds-long text runs for tests: the bundled JSON prose/code samples, 16-token
  sequences, the `tiny` GPT/BERT, a fixed matmul peak (no measuring in tests)."""
  c.data.domains = "prose:json,code:json"
  c.data.seq_len = 16
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.data.valid_fraction = 0.2
  c.data.valid_sequences = 8
  c.model.preset = "tiny"
  c.schedule.eta_max = 3e-3
  c.schedule.eta_min = 3e-4
  c.train.peak_tflops = 1.0


def growth_text(c: ConfigDict, *, smoke: bool) -> None:
  """The stream of every growth config: the default offline text domains (stdlib prose, then
  stdlib code), byte tokens, one cosine over both domains; the target model is GPT `mini`
  (4 x 128) or, for `smoke`, `tiny` (2 x 32). The growth configs set the small start shape
  (`model.shape`) and the events."""
  c.kind = "cpt"
  c.optim.reset_per_task = False  # one run over the stream; moments reset only at growth
  c.schedule.name = "cosine"
  c.schedule.warmup_steps = 10
  c.replay.fraction = 0.0
  if smoke:
    text_smoke(c)
    c.schedule.warmup_steps = 1
    c.train.steps_per_domain = 4
    c.train.log_every_steps = 2
    c.eval.every_steps = 2
    c.eval.dense_steps = 0
    c.growth.ramp_steps = 2
    c.growth.ligo_steps = 2
    return
  c.data.domains = "prose,code"
  c.data.seq_len = 128
  c.data.batch_size = 16
  c.model.preset = "mini"
  c.schedule.eta_max = 2e-3
  c.schedule.eta_min = 2e-4
  c.train.steps_per_domain = 200
  c.eval.every_steps = 20
  c.eval.dense_steps = 0
