"""`model.dtype=auto`: bfloat16 on TPU/GPU, float32 on CPU; the paper presets use it."""

from __future__ import annotations

import jax
import pytest
from helpers import load_config

from jaxcl import config_lib
from jaxcl.lm import models
from jaxcl.models import layers


@pytest.mark.parametrize(
  ("backend", "dtype"), [("cpu", "float32"), ("tpu", "bfloat16"), ("gpu", "bfloat16")]
)
def test_auto_follows_the_backend(monkeypatch, backend, dtype):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  assert layers.compute_dtype("auto") == dtype
  assert layers.compute_dtype("float32") == "float32"  # an explicit name is kept
  config = config_lib.cpt_base_config()
  config.model.dtype = "auto"
  assert models.shape(config, 256).dtype == dtype


@pytest.mark.parametrize("name", ["l2p", "finetune", "dualprompt"])
def test_paper_presets_compute_in_bfloat16_on_accelerators_only(name):
  assert load_config(name, "cifar100").model.dtype == "auto"
  assert load_config(name, "imagenet_r").model.dtype == "auto"
  assert load_config(name, "smoke").model.dtype == "float32"
