"""The config schema, loading and locking, and the fingerprint a resumed run must match.

Every config file starts from `base_config()` (or `cpt_base_config()`) and overrides a few
fields, so the defaults live here and nowhere else (library code never calls
`config.get(k, default)`); the presets the config files share are in configs/_common.py.
Configs are locked by `jaxcl.main`, so an unknown key or a mistyped value in
`--config.<key>=<value>` is an error that names the key.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import types
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
  c.data.augment_on = (
    "host"  # host (grain threads, PIL) | device (in the jitted step; not crop_flip)
  )
  c.data.host_image_size = (
    0  # augment_on=device: the host ships uint8 at this size (0 = image_size)
  )
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
  c.data.num_threads = 0  # grain read threads per process; 0 = the host's cores
  c.data.glyph_set = "continual"  # glyphs only: continual | pretrain

  c.model = ConfigDict()
  c.model.variant = "Ti/16"  # mu | Ti | S | B | L, then /patch
  c.model.init = ""  # pretrained weights: google .npz, timm/HF .safetensors, or "embedded"
  c.model.dtype = "float32"  # compute dtype; auto = bfloat16 on TPU/GPU, float32 on CPU
  c.model.attention = "xla"  # xla | jax | cudnn | splash | auto (jaxcl/models/attention_kernels.py)

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
  c.train.microbatches = 1  # gradient accumulation inside the step (jaxcl/engine/microbatch.py)
  c.train.per_device_microbatch = 0  # >0: microbatches of this many rows per device instead

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

  Sections: data (jaxcl/data/text/), model (jaxcl/lm/models.py), optim (as for CIL; the
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
  c.data.num_threads = 0  # 0 = the host's cores

  c.model = ConfigDict()
  c.model.preset = "small"  # a name in jaxcl/models/gpt.py (lm) or bert.py (mlm) PRESETS
  c.model.init = ""  # Hugging Face safetensors file or directory (GPT-2, Llama, BERT layouts)
  c.model.dtype = "float32"  # compute dtype; auto = bfloat16 on TPU/GPU, float32 on CPU
  c.model.scan_layers = True
  c.model.remat = "none"  # none | full | dots
  c.model.attention = "xla"  # xla | jax | cudnn | splash | auto (jaxcl/models/attention_kernels.py)
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
  c.train.microbatches = 1  # gradient accumulation inside the step (jaxcl/engine/microbatch.py)
  c.train.per_device_microbatch = 0  # >0: microbatches of this many rows per device instead
  c.train.loss_chunk = 0  # lm: cross-entropy in chunks of this many positions (0 = whole)
  c.train.peak_tflops = 0.0  # per device, for MFU; 0 = measure a matmul on this device
  # infinite/wsd: a domain's anneal is an evaluation branch, the next domain continues from the
  # pre-anneal state (Ibrahim et al. 2024 §7); False: it continues from the annealed weights
  c.train.anneal_branch = True

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


def module_from_file(path: str) -> types.ModuleType:
  """The Python file at `path`, imported as a module of its own (not kept in sys.modules)."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"jaxcl_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling_module(config_file: str, name: str) -> types.ModuleType:
  """`<name>.py` beside `config_file`, by path: how a config imports configs/_common.py
  whatever the working directory (configs/ is loaded by path, not installed)."""
  return module_from_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"))


def load(path: str, preset: str | None = None, **overrides) -> ConfigDict:
  """`configs/<name>.py:<preset>` as `jaxcl.main` sees it (locked), then dotted `overrides`."""
  config = module_from_file(path).get_config(preset)
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
# device layout (8 -> 4 -> 1 devices), the host-side reader threads and the attention kernel
# (the same softmax attention on another backend, e.g. "auto" resumed from GPU on TPU).
RESUMABLE_KEYS = ("resume", "mesh", "data.num_threads", "model.attention")


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
