"""Base config, presets and validation shared by every `configs/*.py`.

Every config file starts from `base_config()` and overrides a few fields, so the
defaults live here and nowhere else (library code never calls `config.get(k, default)`).
Configs are locked by `jaxcl.main`, so an unknown key or a mistyped value in
`--config.<key>=<value>` is an error that names the key.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable

import ml_collections

ConfigDict = ml_collections.ConfigDict


def base_config() -> ConfigDict:
  """Defaults for every run. Sections: data, model, method, optim, train, eval, checkpoint, mesh."""
  c = ConfigDict()
  c.kind = "cil"  # cil (jaxcl/cil/run.py) | cpt (jaxcl/lm/run.py)
  c.name = ""  # config family, e.g. "l2p"; names the default workdir runs/<name>-<preset>
  c.preset = "default"
  c.seed = 0
  c.resume = True  # resume from a checkpoint in the workdir when there is one
  c.export_backbone = ""  # after the run, write the ViT backbone here as a google-format .npz

  c.data = ConfigDict()
  c.data.name = (
    "glyphs"  # glyphs | fashion_mnist | cifar100 | imagenet_r | caltech_birds2011 | tfds:<name>
  )
  c.data.dir = ""  # data directory (tfds data_dir, or the folder with the idx files)
  c.data.image_size = 32
  c.data.channels = 3
  c.data.scale = "01"  # 01 | -11 | imagenet | cifar100 (reference prompt code feeds [0,1])
  c.data.train_aug = "flip"  # none | flip | rrc_flip | crop_flip
  c.data.rrc_scale_min = 0.08
  c.data.eval_resize = "resize"  # resize | resize_crop
  c.data.init_classes = 10  # classes in the first task
  c.data.increment = 10  # classes in every later task
  c.data.num_classes = 0  # 0 = all classes of the dataset; else use the first N of the class order
  c.data.class_order = (
    "identity"  # identity | seeded (np.random.seed(order_seed) permutation) | coda
  )
  c.data.order_seed = 1993
  c.data.max_train_per_class = 0  # 0 = all
  c.data.max_test_per_class = 0
  c.data.batch_size = 64  # global train batch
  c.data.eval_batch_size = 256  # global eval batch
  c.data.num_threads = 2  # grain read threads per process
  c.data.glyph_set = "continual"  # glyphs only: continual | pretrain

  c.model = ConfigDict()
  c.model.variant = "Ti/16"  # mu | Ti | S | B | L, then /patch
  c.model.init = ""  # pretrained weights: google .npz, timm/HF .safetensors, or "embedded"
  c.model.dtype = "float32"  # compute dtype; bfloat16 on TPU

  c.method = ConfigDict()
  c.method.name = "finetune"

  c.optim = ConfigDict()
  c.optim.name = "adam"  # adam | adamw | sgd
  c.optim.lr = 1e-3
  c.optim.lr_base_batch = 0  # >0: lr is scaled by batch_size / lr_base_batch (L2P: 256)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.momentum = 0.9  # sgd
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0  # 0 = no clipping
  c.optim.clip_scope = "trainable"  # trainable | all (norm over frozen params too: official l2p)
  c.optim.schedule = "constant"  # constant | cosine | coda_cosine | multistep (per task)
  c.optim.warmup_steps = 0
  c.optim.decay_milestones = ()  # multistep: fractions of the task's steps where lr *= factor
  c.optim.decay_factor = 0.1  # multistep
  c.optim.horizon_scale = 1.0  # the schedule spans this x the task's steps (OVOR: > 1)
  c.optim.backbone_lr_scale = 1.0  # backbone lr = this x lr (SLCA slow learner 0.01; 0 = frozen)
  c.optim.reset_per_task = True  # re-create the optimizer state at every task

  c.train = ConfigDict()
  c.train.epochs = 1.0  # per task
  c.train.steps_per_task = 0  # >0 overrides epochs
  c.train.log_every_steps = 50
  c.train.nan_policy = "stop"  # stop | skip

  c.eval = ConfigDict()
  c.eval.mask_unseen = True  # restrict predictions to seen classes (PILOT); False = l2p JAX

  c.checkpoint = ConfigDict()
  c.checkpoint.every_steps = 1000  # also at every task boundary; 0 = only at task boundaries
  c.checkpoint.keep = 2  # newest periodic checkpoints kept (task boundaries are all kept)

  c.mesh = mesh_config(data=-1, fsdp=1)  # data-parallel, the frozen backbone replicated
  return c


def mesh_config(*, data: int, fsdp: int) -> ConfigDict:
  """The `mesh` section (jaxcl/sharding.py): sizes of the ("data", "fsdp", "tensor") axes.

  -1 fills with the devices left over; without a -1 on one slice, the first data x fsdp x
  tensor devices are used (`mesh.data=4` = 4 devices). Multi-slice jobs also give the sizes
  across slices (`dcn_*`, DCN = the data-centre network; -1 fills with the slices).
  """
  return ConfigDict(dict(data=data, fsdp=fsdp, tensor=1, dcn_data=-1, dcn_fsdp=1, dcn_tensor=1))


def cpt_base_config() -> ConfigDict:
  """Defaults for continual-pretraining runs (`kind="cpt"`, jaxcl/lm/run.py).

  Sections: data (jaxcl/data/text.py), model (jaxcl/lm/models.py), optim (as for CIL; the
  learning rate comes from `schedule`), schedule (jaxcl/lm/schedules.py), replay
  (jaxcl/lm/replay.py), growth (jaxcl/lm/growth_events.py), train, eval, checkpoint, mesh.
  """
  from jaxcl.data import text  # noqa: PLC0415
  from jaxcl.lm import growth_events, replay, schedules  # noqa: PLC0415

  cil = base_config()
  c = ConfigDict()
  c.kind = "cpt"
  c.name = ""
  c.preset = "default"
  c.seed = 0
  c.resume = True

  c.data = text.default_config()
  c.data.dir = ""
  c.data.batch_size = 32  # global train batch (sequences), before replay rows in `add` mode
  c.data.eval_batch_size = 32
  c.data.num_threads = 2

  c.model = ConfigDict()
  c.model.preset = "small"  # a name in jaxcl/models/gpt.py (lm) or bert.py (mlm) PRESETS
  c.model.init = ""  # Hugging Face safetensors file or directory (GPT-2, Llama, BERT layouts)
  c.model.dtype = "float32"  # compute dtype; bfloat16 on TPU
  c.model.scan_layers = True
  c.model.remat = "none"  # none | full | dots
  c.model.shape = ConfigDict()  # >0 overrides the preset's (growth runs start small)
  c.model.shape.num_layers = 0
  c.model.shape.width = 0
  c.model.shape.num_heads = 0
  c.model.shape.mlp_dim = 0

  c.optim = cil.optim
  c.optim.name = "adamw"
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.1
  c.optim.reset_per_task = True  # fresh moments at each domain (Ibrahim et al. 2024)
  c.schedule = schedules.default_config()
  c.replay = replay.default_config()
  c.growth = growth_events.default_config()  # growth events inside the run

  c.train = ConfigDict()
  c.train.objective = "lm"  # lm (GPT) | mlm (BERT)
  c.train.steps_per_domain = 200
  c.train.log_every_steps = 25
  c.train.nan_policy = "stop"
  c.train.peak_tflops = 0.0  # per device, for MFU; 0 = measure a matmul on this device
  c.train.anneal_branch = False  # infinite/wsd: later domains resume from the pre-anneal state

  c.eval = ConfigDict()
  c.eval.every_steps = 50  # validation loss of every domain
  c.eval.dense_steps = 40  # ... and every `dense_every` steps over the first steps of a domain
  c.eval.dense_every = 10

  c.checkpoint = cil.checkpoint
  c.mesh = mesh_config(data=1, fsdp=-1)  # FSDP over every device; `mesh.tensor` for Megatron
  return c


def choose_preset(
  config: ConfigDict, arg: str | None, presets: dict[str, Callable[[ConfigDict], None]]
) -> ConfigDict:
  """Applies the preset named by `arg` (None or "" = "default") and records it in the config."""
  name = arg or "default"
  if name not in presets:
    raise ValueError(
      f"unknown preset {name!r} for config {config.name!r}; choose from {sorted(presets)}"
    )
  config.preset = name
  presets[name](config)
  return config


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


def load(path: str, preset: str | None = None, **overrides) -> ConfigDict:
  """`configs/<name>.py:<preset>` as `jaxcl.main` sees it (locked), then dotted `overrides`."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"jaxcl_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset)
  config.lock()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


# Keys a resumed run may change: they decide where and how the run executes, not what it
# computes (a different mesh reorders float reductions, nothing more). `resume` itself, the
# device layout (8 -> 4 -> 1 devices) and the host-side reader threads.
RESUMABLE_KEYS = ("resume", "mesh", "data.num_threads")


def run_identity(config: ConfigDict | dict) -> dict:
  """The resolved config as a dict without RESUMABLE_KEYS: what a resumed run must match."""
  out = json.loads(json.dumps(config.to_dict() if isinstance(config, ConfigDict) else config))
  for key in RESUMABLE_KEYS:
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      node = node.get(p, {})
    node.pop(leaf, None)
  return out


def fingerprint(config: ConfigDict) -> str:
  """A stable hash of `run_identity(config)`, stored in every checkpoint's metadata."""
  text = json.dumps(run_identity(config), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def diff(a: dict, b: dict, prefix: str = "") -> list[str]:
  """Dotted keys whose values differ between two nested config dicts."""
  keys = sorted(set(a) | set(b))
  out = []
  for k in keys:
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += diff(va, vb, f"{prefix}{k}.")
    elif va != vb:
      out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
  return out


# ---------------------------------------------------------------------------
# Class-incremental presets shared by every CIL config (methods add their own on top).
# ---------------------------------------------------------------------------

EMBEDDED_VARIANT = "mu/4"  # the architecture of the ViT shipped in jaxcl/assets


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


def vor(c: ConfigDict, *, epochs: int = 0) -> None:
  """Virtual outlier regularisation fields (jaxcl/methods/vor.py), jpmorganchase/ovor's
  `learners/ood.py` defaults; `epochs` = 0 leaves the method as it is."""
  c.method.ood_epochs = epochs  # head-only epochs with virtual outliers after train.epochs
  c.method.ood_weight = 0.1  # `lmda`
  c.method.ood_center = "origin"  # origin (the released code) | boundary (NPOS as described)
  c.method.ood_cov = 0.1  # offsets cov x N(0, I)
  c.method.ood_candidates = 600  # `sample_from`
  c.method.ood_boundary = 50  # `select`
  c.method.ood_knn = 50  # `K`
  c.method.ood_per_class = 40  # `num_per_class`
  c.method.ood_thres_id = -15.0
  c.method.ood_thres_ood = -3.0
  c.method.max_task_examples = 0  # feature buffer rows; 0 = data.max_train_per_class x classes


def outlier_epochs(epochs: int) -> Callable[[ConfigDict], None]:
  """A preset step: `epochs` VOR epochs after each task's `train.epochs`, a decaying per-task
  schedule stretched over both (jpmorganchase/ovor `--epochs 0 <regular> <epochs>`)."""

  def apply(c: ConfigDict) -> None:
    c.method.ood_epochs = epochs
    if c.optim.schedule != "constant":
      c.optim.horizon_scale = (c.train.epochs + epochs) / c.train.epochs

  return apply


def compose(*fns: Callable[[ConfigDict], None]) -> Callable[[ConfigDict], None]:
  def apply(c: ConfigDict) -> None:
    for fn in fns:
      fn(c)

  return apply


def cil_presets(**method_presets: Callable[[ConfigDict], None]) -> dict:
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
# Growth runs (configs/growth_*.py): continual pretraining with growth events.
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
