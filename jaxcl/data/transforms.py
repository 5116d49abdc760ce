"""Per-example image transforms (numpy/PIL, inside grain maps) and on-device input scaling.

Images stay uint8 through the input pipeline (4x less host->device traffic); the
train step scales them on device with `scale_images`. Reference pre-processing is
summarised in research/prompt_cil.md §2.2: RandomResizedCrop(scale=(0.05, 1)) +
flip for training, resize(256/224) + centre crop for testing, inputs in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math

import grain
import jax.numpy as jnp
import numpy as np
from PIL import Image

_MEAN_STD = {
  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
  "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def scale_images(images, mode: str):
  """uint8 [..., C] -> float32: `01` x/255, `-11` x/127.5-1, `imagenet`/`cifar100` mean/std."""
  x = jnp.asarray(images).astype(jnp.float32)
  if mode == "01":
    return x / 255.0
  if mode == "-11":
    return x / 127.5 - 1.0
  if mode in _MEAN_STD:
    mean, std = (jnp.asarray(v, jnp.float32) for v in _MEAN_STD[mode])
    if x.shape[-1] == 1:
      mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    return (x / 255.0 - mean) / std
  raise ValueError(f"data.scale={mode!r}: use 01 | -11 | imagenet | cifar100")


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [h, w, c] -> [size[0], size[1], c], bilinear."""
  if image.shape[:2] == size:
    return image
  c = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if c == 1 else image)
  out = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR))
  return out[..., None] if c == 1 else out


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == channels:
    return image
  if image.shape[-1] == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  if image.shape[-1] == 3 and channels == 1:
    return image.mean(-1, keepdims=True).astype(np.uint8)
  raise ValueError(f"cannot convert {image.shape[-1]} channels to {channels}")


def random_resized_crop(
  image, rng: np.random.Generator, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> np.ndarray:
  """torchvision's RandomResizedCrop: 10 tries at a random area/aspect, else a centre crop."""
  h, w = image.shape[:2]
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < cw <= w and 0 < ch <= h:
      y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      return _resize(image[y : y + ch, x : x + cw], (size, size))
  s = min(h, w)
  y, x = (h - s) // 2, (w - s) // 2
  return _resize(image[y : y + s, x : x + s], (size, size))


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
  """Training augmentation: none | flip | rrc_flip | crop_flip (pad 4 + crop, CIFAR style)."""

  image_size: int
  channels: int = 3
  aug: str = "flip"
  scale_min: float = 0.08

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    image = _channels(np.asarray(element["image"]), self.channels)
    s = self.image_size
    if self.aug == "rrc_flip":
      image = random_resized_crop(image, rng, s, scale=(self.scale_min, 1.0))
    elif self.aug == "crop_flip":
      image = np.pad(_resize(image, (s, s)), ((4, 4), (4, 4), (0, 0)), mode="reflect")
      y, x = rng.integers(0, 9, size=2)
      image = image[y : y + s, x : x + s]
    elif self.aug in ("none", "flip"):
      image = _resize(image, (s, s))
    else:
      raise ValueError(f"data.train_aug={self.aug!r}: none | flip | rrc_flip | crop_flip")
    if self.aug != "none" and rng.random() < 0.5:
      image = image[:, ::-1]
    return {"image": np.ascontiguousarray(image, np.uint8), "label": np.int32(element["label"])}


@dataclasses.dataclass(frozen=True)
class EvalTransform(grain.transforms.Map):
  """Test transform: resize to the model size, or resize to size*256/224 then centre crop."""

  image_size: int
  channels: int = 3
  resize_mode: str = "resize"

  def map(self, element: dict) -> dict:
    image = _channels(np.asarray(element["image"]), self.channels)
    s = self.image_size
    if self.resize_mode == "resize":
      image = _resize(image, (s, s))
    elif self.resize_mode == "resize_crop":
      h, w = image.shape[:2]
      short = round(s * 256 / 224)
      image = _resize(image, (max(short, round(h * short / w)), max(short, round(w * short / h))))
      y, x = (image.shape[0] - s) // 2, (image.shape[1] - s) // 2
      image = image[y : y + s, x : x + s]
    else:
      raise ValueError(f"data.eval_resize={self.resize_mode!r}: resize | resize_crop")
    return {"image": np.ascontiguousarray(image, np.uint8), "label": np.int32(element["label"])}
