"""Per-example image transforms (numpy/PIL, inside grain maps) and on-device input scaling.

Images stay uint8 through the input pipeline (4x less host-to-device traffic than
float32); the train step scales them on device with `scale_images`. The reference
pre-processing is summarised in research/prompt_cil.md §2.2: RandomResizedCrop +
horizontal flip for training (scale (0.05, 1) in l2p/PILOT, (0.08, 1) in CODA),
resize to 256/224 of the size + centre crop for testing, inputs in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math

import grain
import jax.numpy as jnp
import numpy as np
from PIL import Image

TRAIN_AUGS = ("none", "flip", "rrc_flip", "crop_flip")
EVAL_RESIZE_MODES = ("resize", "resize_crop")
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_MEAN_STD = {
  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
  "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),  # GengDavid/SLCA
}
SCALE_MODES = ("01", "-11", *_MEAN_STD)
_CIFAR_PAD = 4  # pixels of reflect padding before the random crop (crop_flip)


def scale_images(images, mode: str):
  """uint8 [..., C] -> float32 [..., C]; traceable, so it runs inside jit on device.

  `01`: x/255 (every reference prompt method). `-11`: x/127.5 - 1 (the ViT
  checkpoints' own range). `imagenet` / `cifar100`: (x/255 - mean) / std with that
  dataset's statistics (SLCA); a single-channel input uses the channel means.
  """
  x = jnp.asarray(images).astype(jnp.float32)
  if mode == "01":
    return x / 255.0
  if mode == "-11":
    return x / 127.5 - 1.0
  if mode in _MEAN_STD:
    mean, std = (jnp.asarray(v, jnp.float32) for v in _MEAN_STD[mode])  # [3]
    if x.shape[-1] == 1:
      mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)  # [1]
    return (x / 255.0 - mean) / std
  raise ValueError(f"unknown image scaling {mode!r}: use one of {' | '.join(SCALE_MODES)}")


def _as_hwc(image) -> np.ndarray:
  """uint8 [h, w] / [h, w, 1] / [h, w, 3] / [h, w, 4] -> uint8 [h, w, 1 or 3]."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 4:  # drop alpha
    image = image[..., :3]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"expected an image [h, w, 1|3], got shape {image.shape}")
  return image


def resize(image: np.ndarray, height: int, width: int, interpolation: str, box=None) -> np.ndarray:
  """uint8 [h, w, c] -> uint8 [height, width, c] with PIL (antialiased when shrinking).

  `box` = (left, top, right, bottom) resizes that region only (a crop and a resize in
  one resampling pass).
  """
  if box is None and image.shape[:2] == (height, width):
    return image
  gray = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if gray else image)
  out = np.asarray(pil.resize((width, height), _RESAMPLE[interpolation], box=box))
  return out[..., None] if gray else out


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """[h, w, 1|3] -> [h, w, channels]: gray is repeated to RGB; RGB to gray is ITU-R 601 luma."""
  if image.shape[-1] == channels:
    return image
  if channels == 3:
    return np.repeat(image, 3, axis=-1)
  return np.asarray(Image.fromarray(image).convert("L"))[..., None]


def random_resized_crop_box(
  height: int, width: int, rng: np.random.Generator, scale: tuple[float, float], ratio
) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box (left, top, right, bottom).

  Ten tries at a random area fraction in `scale` and log-uniform aspect in `ratio`;
  if none fits, a centre crop with the aspect clamped into `ratio`.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = round(math.sqrt(target * aspect))
    h = round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, left + w, top + h
  aspect = width / height
  if aspect < min(ratio):
    w, h = width, round(width / min(ratio))
  elif aspect > max(ratio):
    w, h = round(height * max(ratio)), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return left, top, left + w, top + h


def _check(field: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{field}={value!r}: use one of {' | '.join(map(str, allowed))}")


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
  """Training augmentation to uint8 [S, S, channels]; a grain `RandomMap`.

  aug: `none` (resize), `flip` (resize + horizontal flip p=0.5), `rrc_flip`
  (RandomResizedCrop with scale (scale_min, 1), ratio (3/4, 4/3), then flip), or
  `crop_flip` (resize, reflect-pad 4, random S crop, flip: the classic CIFAR recipe).
  """

  image_size: int
  channels: int = 3
  aug: str = "flip"
  scale_min: float = 0.08
  interpolation: str = "bilinear"

  def __post_init__(self):
    _check("aug", self.aug, TRAIN_AUGS)
    _check("channels", self.channels, (1, 3))
    _check("interpolation", self.interpolation, tuple(_RESAMPLE))
    if not 0.0 < self.scale_min <= 1.0:
      raise ValueError(f"scale_min={self.scale_min}: must be in (0, 1]")

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    image = _as_hwc(element["image"])  # [h, w, c]
    s, interp = self.image_size, self.interpolation
    if self.aug == "rrc_flip":
      box = random_resized_crop_box(
        image.shape[0], image.shape[1], rng, (self.scale_min, 1.0), (3 / 4, 4 / 3)
      )
      image = resize(image, s, s, interp, box=box)
    else:
      image = resize(image, s, s, interp)
    if self.aug == "crop_flip":
      p = _CIFAR_PAD
      padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode="reflect")  # [S+8, S+8, c]
      top, left = rng.integers(0, 2 * p + 1, size=2)
      image = padded[top : top + s, left : left + s]
    if self.aug != "none" and rng.random() < 0.5:
      image = image[:, ::-1]
    image = np.ascontiguousarray(to_channels(image, self.channels))  # [S, S, channels]
    return {"image": image, "label": np.int32(element["label"])}

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    return self.random_map(example, rng)


@dataclasses.dataclass(frozen=True)
class EvalTransform(grain.transforms.Map):
  """Test transform to uint8 [S, S, channels]; a grain `Map`.

  resize_mode: `resize` (straight to S x S) or `resize_crop` (shorter side to
  S * 256/224, aspect kept, then the centre S x S crop: the reference test transform).
  """

  image_size: int
  channels: int = 3
  resize_mode: str = "resize"
  interpolation: str = "bilinear"

  def __post_init__(self):
    _check("resize_mode", self.resize_mode, EVAL_RESIZE_MODES)
    _check("channels", self.channels, (1, 3))
    _check("interpolation", self.interpolation, tuple(_RESAMPLE))

  def map(self, element: dict) -> dict:
    image = _as_hwc(element["image"])  # [h, w, c]
    s, interp = self.image_size, self.interpolation
    if self.resize_mode == "resize":
      image = resize(image, s, s, interp)
    else:
      h, w = image.shape[:2]
      short = round(s * 256 / 224)
      if h <= w:
        image = resize(image, short, int(short * w / h), interp)
      else:
        image = resize(image, int(short * h / w), short, interp)
      top = int(round((image.shape[0] - s) / 2))
      left = int(round((image.shape[1] - s) / 2))
      image = image[top : top + s, left : left + s]
    image = np.ascontiguousarray(to_channels(image, self.channels))  # [S, S, channels]
    return {"image": image, "label": np.int32(element["label"])}

  def __call__(self, example: dict) -> dict:
    return self.map(example)
