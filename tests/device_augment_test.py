"""Augmentation inside the jitted step (data.augment_on=device) and the host thread default."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, run_tasks

from jaxcl.data import device_augment, pipeline


def images(b=64, h=32, w=32, c=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, h, w, c)), jnp.uint8)


def test_crop_boxes_follow_random_resized_crop():
  top, left, h, w = (
    np.asarray(x) for x in device_augment.crop_boxes(jax.random.key(0), 4096, 32, 40, 0.08)
  )
  assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 40).all()
  area = h * w / (32 * 40)
  assert area.min() >= 0.05 and area.max() <= 1.0 and area.std() > 0.15  # scale (0.08, 1), rounded
  aspect = w / h
  assert 0.6 < aspect.min() and aspect.max() < 1.6  # ratio (3/4, 4/3) up to integer rounding
  assert np.unique(top).size > 10 and np.unique(left).size > 10
  again = device_augment.crop_boxes(jax.random.key(0), 4096, 32, 40, 0.08)
  np.testing.assert_array_equal(again[0], top)  # deterministic per key


def test_resample_of_a_box_at_its_own_size_is_the_crop():
  x = images(b=2)
  box = [jnp.full((2,), v, jnp.float32) for v in (8, 4, 16, 16)]  # top, left, h, w
  got = device_augment.resample(x, *box, size=16)
  np.testing.assert_allclose(got, np.asarray(x[:, 8:24, 4:20], np.float32), atol=1e-3)


def test_resize_keeps_a_constant_image_and_averages_when_shrinking():
  flat = jnp.full((1, 32, 32, 3), 77, jnp.uint8)
  np.testing.assert_allclose(
    device_augment.augment(flat, jax.random.key(1), size=224, aug="none"), 77, atol=1e-3
  )
  stripes = jnp.asarray(
    np.tile([0, 255], 16)[None, None, :, None] * np.ones((1, 32, 1, 1)), jnp.uint8
  )
  half = device_augment.augment(stripes, jax.random.key(1), size=16, aug="none")
  # antialiased: every inner column averages a black and a white one (borders renormalise)
  np.testing.assert_allclose(half[:, :, 1:-1], 127.5, atol=1.0)


def test_flip_mirrors_about_half_the_images():
  x = images()
  out = np.asarray(device_augment.augment(x, jax.random.key(2), size=32, aug="flip"))
  same = np.abs(out - np.asarray(x, np.float32)).max(axis=(1, 2, 3)) < 1e-3
  mirrored = np.abs(out - np.asarray(x, np.float32)[:, :, ::-1]).max(axis=(1, 2, 3)) < 1e-3
  assert (same ^ mirrored).all()
  assert 16 < mirrored.sum() < 48


def test_rrc_output_shape_and_range_and_refusals():
  out = jax.jit(lambda x, k: device_augment.augment(x, k, size=48, aug="rrc_flip"))(
    images(b=8), jax.random.key(3)
  )
  assert out.shape == (8, 48, 48, 3) and out.dtype == jnp.float32
  assert float(out.min()) >= -1e-3 and float(out.max()) <= 255.001
  with pytest.raises(ValueError, match="crop_flip"):
    device_augment.augment(images(b=1), jax.random.key(0), size=32, aug="crop_flip")


def test_num_threads_zero_means_the_host_cores():
  assert pipeline.host_threads(0) == len(os.sched_getaffinity(0))
  assert pipeline.host_threads(3) == 3


@pytest.mark.slow
def test_a_run_with_device_augmentation_compiles_the_step_once(tmp_path):
  """Glyphs stored at 16², shipped at 8² and random-resized-cropped on device back to 16²."""
  config = load_config(
    "finetune",
    "smoke",
    **{"data.augment_on": "device", "data.train_aug": "rrc_flip", "data.host_image_size": 8},
  )
  results = run_tasks(config, tmp_path)
  assert results["num_tasks"] == 2 and results["train_compiles"] == 1
  assert results["traces"]["train"] == 1
  assert np.isfinite(results["A_last"])
  with pytest.raises(ValueError, match="no device version"):
    run_tasks(
      load_config(
        "finetune", "smoke", **{"data.augment_on": "device", "data.train_aug": "crop_flip"}
      ),
      tmp_path / "b",
    )
