"""`glyphs`: an offline image dataset of Unicode characters drawn with matplotlib's fonts.

One class is one character; a sample is that character rendered by one of the fonts
that draw it (DejaVu Sans/Serif/Mono and STIX General, four styles each), with random
size, position, rotation, stroke weight and blur. Samples are rendered on the fly,
deterministically from (seed, class set, split, index), so the source needs no
files. Classes split into a disjoint *pretraining* set (the embedded ViT learns
from it) and a *continual* set of 100 classes, mirroring "pretrained on
ImageNet-21k, continual on CIFAR-100".
"""

from __future__ import annotations

import functools
import os

import matplotlib
import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

NUM_CONTINUAL_CLASSES = 100
PER_CLASS = {
  ("continual", "train"): 500,
  ("continual", "test"): 100,
  ("pretrain", "train"): 300,
  ("pretrain", "test"): 50,
}
_FAMILIES = ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral")
_BLOCKS = [  # Unicode ranges scanned for classes
  (0x21, 0x7E),
  (0xA1, 0xFF),
  (0x100, 0x24F),
  (0x250, 0x2AF),
  (0x370, 0x3FF),
  (0x400, 0x4FF),
  (0x20A0, 0x20CF),
  (0x2100, 0x214F),
  (0x2190, 0x21FF),
  (0x2200, 0x22FF),
  (0x2300, 0x23FF),
  (0x25A0, 0x25FF),
  (0x2600, 0x26FF),
  (0x2700, 0x27BF),
]
_CANVAS = 64  # high-resolution render, downsampled per sample
_SPLIT_SEED = {"train": 0, "test": 1}
_SET_SEED = {"pretrain": 0, "continual": 1}


@functools.cache
def fonts() -> tuple[str, ...]:
  """Paths of the matplotlib fonts used (standard Unicode cmaps only)."""
  folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
  names = sorted(f for f in os.listdir(folder) if f.endswith(".ttf"))
  return tuple(
    os.path.join(folder, f) for f in names if f.split("-")[0].removesuffix(".ttf") in _FAMILIES
  )


@functools.cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
  return ImageFont.truetype(path, size)


def _render(char: str, font_path: str, size: int = 44) -> np.ndarray:
  """uint8 [64, 64] white-on-black glyph, centred by its ink bounding box."""
  font = _font(font_path, size)
  img = Image.new("L", (2 * _CANVAS, 2 * _CANVAS), 0)
  ImageDraw.Draw(img).text((_CANVAS // 2, _CANVAS // 2), char, fill=255, font=font)
  box = img.getbbox()
  out = Image.new("L", (_CANVAS, _CANVAS), 0)
  if box is None:
    return np.asarray(out)
  glyph = img.crop(box)
  scale = min(1.0, (_CANVAS - 8) / max(glyph.size))
  if scale < 1.0:
    glyph = glyph.resize(
      (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.BILINEAR
    )
  out.paste(glyph, ((_CANVAS - glyph.width) // 2, (_CANVAS - glyph.height) // 2))
  return np.asarray(out)


@functools.cache
def inventory() -> tuple[tuple[str, tuple[int, ...]], ...]:
  """(character, indices of the fonts that draw it), deduplicated, sorted by code point.

  A character is kept when at least two fonts map it, its canonical rendering (the
  first font that draws it) has ink, and that rendering's 16x16 binarised bitmap
  differs from every earlier kept character's (drops look-alikes such as Latin A /
  Greek Alpha / Cyrillic A, which render identically).
  """
  cmaps = [set(TTFont(p, lazy=True).getBestCmap()) for p in fonts()]
  seen, out = set(), []
  for lo, hi in _BLOCKS:
    for cp in range(lo, hi + 1):
      char = chr(cp)
      if not char.isprintable() or char.isspace():
        continue
      have = tuple(i for i, cmap in enumerate(cmaps) if cp in cmap)
      if len(have) < 2:
        continue
      canon = _render(char, fonts()[have[0]])
      if (canon > 64).sum() < 12:
        continue
      key = (np.asarray(Image.fromarray(canon).resize((16, 16), Image.BILINEAR)) > 96).tobytes()
      if key in seen:
        continue
      seen.add(key)
      out.append((char, have))
  return tuple(out)


@functools.cache
def class_sets() -> dict[str, tuple[int, ...]]:
  """Inventory indices of the continual (100, seeded choice) and pretraining classes."""
  n = len(inventory())
  continual = np.sort(np.random.RandomState(1993).choice(n, NUM_CONTINUAL_CLASSES, replace=False))
  rest = np.setdiff1d(np.arange(n), continual)
  return {"continual": tuple(int(i) for i in continual), "pretrain": tuple(int(i) for i in rest)}


def num_classes(class_set: str) -> int:
  return len(class_sets()[class_set])


@functools.lru_cache(maxsize=200_000)
def _glyph(inventory_index: int, font_index: int) -> Image.Image:
  char, _ = inventory()[inventory_index]
  return Image.fromarray(_render(char, fonts()[font_index]))


class GlyphSource:
  """Random-access glyph images: `__getitem__(i) -> {"image": uint8 [S, S, 1], "label"}`."""

  def __init__(
    self,
    *,
    class_set: str = "continual",
    split: str = "train",
    image_size: int = 32,
    per_class: int | None = None,
    seed: int = 0,
  ):
    if class_set not in _SET_SEED or split not in _SPLIT_SEED:
      raise ValueError(f"glyphs: class_set in {list(_SET_SEED)}, split in {list(_SPLIT_SEED)}")
    self.class_set, self.split, self.image_size, self.seed = class_set, split, image_size, seed
    self.classes = class_sets()[class_set]
    self.chars = [inventory()[i][0] for i in self.classes]
    self.num_classes = len(self.classes)
    self.per_class = per_class or PER_CLASS[(class_set, split)]
    self.labels = np.repeat(np.arange(self.num_classes, dtype=np.int32), self.per_class)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    label = i // self.per_class
    rng = np.random.default_rng([self.seed, _SET_SEED[self.class_set], _SPLIT_SEED[self.split], i])
    inv = self.classes[label]
    fonts_of_char = inventory()[inv][1]
    img = _glyph(inv, fonts_of_char[rng.integers(len(fonts_of_char))])
    img = self._distort(img, rng)
    image = np.asarray(img.resize((self.image_size, self.image_size), Image.BILINEAR))
    return {"image": image[..., None], "label": np.int32(label)}

  @staticmethod
  def _distort(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random rotation, scale, translation, stroke weight and blur."""
    scale = rng.uniform(0.7, 1.05)
    angle = np.deg2rad(rng.uniform(-15, 15))
    tx, ty = rng.uniform(-6, 6, size=2)
    c = _CANVAS / 2
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    # Inverse affine (output pixel -> input pixel) about the canvas centre.
    coeffs = (
      cos,
      sin,
      c - cos * (c + tx) - sin * (c + ty),
      -sin,
      cos,
      c + sin * (c + tx) - cos * (c + ty),
    )
    img = img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BILINEAR)
    stroke = rng.integers(3)
    if stroke == 1:
      img = img.filter(ImageFilter.MaxFilter(3))
    elif stroke == 2 and rng.random() < 0.5:
      img = img.filter(ImageFilter.MinFilter(3))
    blur = rng.uniform(0.0, 1.2)
    if blur > 0.4:
      img = img.filter(ImageFilter.GaussianBlur(blur))
    return ImageOps.autocontrast(img)  # thin strokes stay visible: ink peaks at 255


def load_split(
  split: str,
  data_dir: str = "",
  *,
  class_set: str = "continual",
  image_size: int = 32,
  seed: int = 0,
) -> GlyphSource:
  """The glyph source for `split` (`data_dir` is unused: nothing is read from disk)."""
  del data_dir
  return GlyphSource(class_set=class_set, split=split, image_size=image_size, seed=seed)
