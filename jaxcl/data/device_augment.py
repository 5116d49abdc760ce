"""Training augmentation on device, inside the jitted step, from small uint8 images.

The host ships images at their stored size (CIFAR: 32², 49x fewer bytes than 224²) and the step
does what `transforms.TrainTransform` does on the host: resize to S x S, or torchvision's
RandomResizedCrop (scale (scale_min, 1), ratio (3/4, 4/3)) as one bilinear resample of the box,
then a horizontal flip with p = 0.5. Shapes are static, so the step still compiles once; the
randomness comes from the step's key. Bilinear with antialiasing like PIL's, but not bit-equal
to it (a different sampling grid convention at the borders).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

DEVICE_AUGS = ("none", "flip", "rrc_flip")
_TRIES = 10  # torchvision's attempts before the centre-crop fallback


def crop_boxes(key, batch: int, height: int, width: int, scale_min: float):
  """torchvision RandomResizedCrop boxes for `batch` images, vectorised: `_TRIES` candidates per
  image, the first that fits, else the centre crop with the aspect clamped into [3/4, 4/3].

  Returns:
    (top, left, h, w), each [B] float32, in pixels of the [height, width] source.
  """
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  shape = (batch, _TRIES)
  area = height * width * jax.random.uniform(k_area, shape, minval=scale_min, maxval=1.0)
  log_ratio = jax.random.uniform(k_ratio, shape, minval=math.log(3 / 4), maxval=math.log(4 / 3))
  aspect = jnp.exp(log_ratio)
  w = jnp.round(jnp.sqrt(area * aspect))  # [B, tries]
  h = jnp.round(jnp.sqrt(area / aspect))
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(fits, axis=1)  # [B]; 0 when nothing fits (then `any` is False)
  ok = jnp.any(fits, axis=1)
  pick = lambda x: jnp.take_along_axis(x, first[:, None], axis=1)[:, 0]  # noqa: E731
  w, h = pick(w), pick(h)
  top = jnp.floor(jax.random.uniform(k_top, (batch,)) * (height - h + 1))
  left = jnp.floor(jax.random.uniform(k_left, (batch,)) * (width - w + 1))
  aspect = width / height  # the fallback: centre crop, aspect clamped into the ratio range
  fw = float(width) if aspect <= 4 / 3 else round(height * 4 / 3)
  fh = float(height) if aspect >= 3 / 4 else round(width / (3 / 4))
  fall = ((height - fh) // 2, (width - fw) // 2, fh, fw)
  top, left, h, w = (jnp.where(ok, a, b) for a, b in zip((top, left, h, w), fall, strict=True))
  return top, left, h, w


def resample(images, top, left, h, w, size: int):
  """The box (top, left, h, w) of each image [B, H, W, C] resized to [B, size, size, C] float32
  (bilinear, antialiased when shrinking: `jax.image.scale_and_translate`)."""

  def one(image, top, left, h, w):  # [H, W, C] -> [S, S, C]
    scale = jnp.stack([size / h, size / w])
    translation = -jnp.stack([top, left]) * scale
    return jax.image.scale_and_translate(
      image, (size, size, image.shape[-1]), (0, 1), scale, translation, "linear"
    )

  return jax.vmap(one)(images.astype(jnp.float32), top, left, h, w)


def augment(images, key, *, size: int, aug: str, scale_min: float = 0.08):
  """uint8 [B, h, w, C] -> float32 [B, size, size, C] in [0, 255]: `aug` one of DEVICE_AUGS."""
  if aug not in DEVICE_AUGS:
    raise ValueError(f"device augmentation {aug!r}: use one of {DEVICE_AUGS}")
  b, height, width, _ = images.shape
  k_box, k_flip = jax.random.split(key)
  if aug == "rrc_flip":
    top, left, h, w = crop_boxes(k_box, b, height, width, scale_min)
  else:
    zeros = jnp.zeros((b,), jnp.float32)
    top, left, h, w = zeros, zeros, zeros + height, zeros + width
  out = resample(images, top, left, h, w, size)  # [B, S, S, C]
  if aug == "none":
    return out
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)
