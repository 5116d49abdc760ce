"""`glyphs`: an offline image dataset of Unicode characters drawn by matplotlib's fonts.

One class is one character; one sample is that character drawn by one of the fonts
that really draw it (`glyph_fonts`), at a random size, aspect, rotation, shear,
position, stroke weight and blur, white on black. Samples are rendered on demand,
deterministically from (seed, split, character, index): no files, random access.

Classes split into a disjoint *pretraining* set (the embedded ViT learns from it)
and a *continual* set of 100 classes, mirroring "pretrained on ImageNet-21k,
continual on CIFAR-100" (DESIGN.md §5).

Classes. Characters come from the Unicode blocks in `BLOCKS`, in that order: letters,
digits, punctuation and symbols (not combining marks, spaces, controls or modifier
letters) that at least two fonts draw with different outlines (font is a nuisance
variable). Look-alikes are then dropped, the later one in block order: two
characters are look-alikes when their canonical images (`canonical_image`, 64x64)
have fewer than `DUPLICATE_PIXELS` = 9 stray pixels (`stray_pixels`: ink of one
with no ink of the other within one pixel). The one-pixel slack at 64x64 is half a
pixel at the default 32x32, the size of the stroke-weight jitter, so stroke width
does not count; 9 stray pixels at 64x64 are about two at 32x32. Identical outlines
(Latin A / Greek Alpha / Cyrillic A, o / Cyrillic o), I / l / Hebrew paseq, 3 /
Cyrillic Ze, Â / Ȃ (circumflex / inverted breve) and Ŏ / Ǒ (breve / caron) score 0-8
and are merged; the closest pairs kept (Ũ / Ŭ, y / Cyrillic U, u / ∪, hyphen / en
dash, Ã / Ä, ط / ظ) score 9-16.

A glyph keeps its size in the font, as in text (one em spans up to 88% of the image,
a capital about 64%), so o stays smaller than O and ж than Ж; only glyphs whose
longest side is under 0.3 em (dots, hyphens) are enlarged to it, and those over 1 em
(long arrows, big operators) shrunk to it.
"""

from __future__ import annotations

import collections
import functools
import unicodedata

import numpy as np
from PIL import Image

from jaxcl.data import glyph_fonts

NUM_CONTINUAL_CLASSES = 100
PER_CLASS = {
  ("continual", "train"): 500,
  ("continual", "test"): 100,
  ("pretrain", "train"): 300,
  ("pretrain", "test"): 50,
}
BLOCKS = (  # (first, last, Unicode block); earlier characters win duplicate ties
  (0x0021, 0x007E, "Basic Latin"),
  (0x00A1, 0x00FF, "Latin-1 Supplement"),
  (0x0100, 0x017F, "Latin Extended-A"),
  (0x0180, 0x024F, "Latin Extended-B"),
  (0x0250, 0x02AF, "IPA Extensions"),
  (0x0370, 0x03FF, "Greek and Coptic"),
  (0x0400, 0x04FF, "Cyrillic"),
  (0x0500, 0x052F, "Cyrillic Supplement"),
  (0x0530, 0x058F, "Armenian"),
  (0x0590, 0x05FF, "Hebrew"),
  (0x0600, 0x06FF, "Arabic"),  # isolated forms
  (0x10A0, 0x10FF, "Georgian"),
  (0x2010, 0x205E, "General Punctuation"),
  (0x20A0, 0x20CF, "Currency Symbols"),
  (0x2100, 0x214F, "Letterlike Symbols"),
  (0x2150, 0x218F, "Number Forms"),
  (0x2190, 0x21FF, "Arrows"),
  (0x2200, 0x22FF, "Mathematical Operators"),
  (0x2300, 0x23FF, "Miscellaneous Technical"),
  (0x2500, 0x257F, "Box Drawing"),  # light and double lines only
  (0x25A0, 0x25FF, "Geometric Shapes"),
  (0x2600, 0x26FF, "Miscellaneous Symbols"),
  (0x2700, 0x27BF, "Dingbats"),
  (0x27C0, 0x27EF, "Miscellaneous Mathematical Symbols-A"),
  (0x27F0, 0x27FF, "Supplemental Arrows-A"),
  (0x2900, 0x297F, "Supplemental Arrows-B"),
  (0x2980, 0x29FF, "Miscellaneous Mathematical Symbols-B"),
  (0x2A00, 0x2AFF, "Supplemental Mathematical Operators"),
  (0x2B00, 0x2BFF, "Miscellaneous Symbols and Arrows"),
  (0x1D400, 0x1D7FF, "Mathematical Alphanumeric Symbols"),  # script, fraktur, double-struck
)
# Left out on purpose: superscripts/subscripts, spacing modifier letters, small capitals
# and fullwidth forms (a smaller or shifted copy of another class); Latin Extended
# Additional and Greek Extended (letters told apart by a one-pixel mark); Block Elements
# and Braille (filled rectangles and dot grids, identified by position only).
CANONICAL_FONTS = ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral")
DUPLICATE_PIXELS = 9  # stray pixels (at 64x64) below which two characters are look-alikes
_DEDUPE_SIZE = 64
CONTINUAL_SEED = 1993  # numpy RandomState seed of the continual-class draw
_KEPT_CATEGORIES = ("Lu", "Ll", "Lt", "Lo", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf")
_KEPT_CATEGORIES += ("Po", "Sm", "Sc", "Sk", "So")
_MATH_STYLES = ("SCRIPT", "FRAKTUR", "DOUBLE-STRUCK")  # distinct letterforms, not bold/italic
_FRAME = 0.88  # one em, as a fraction of the image side, at the largest sample scale
_MIN_EXTENT_EM = 0.3  # smaller glyphs (dots, dashes) are enlarged to this longest side
_MAX_EXTENT_EM = 1.0  # larger glyphs (long arrows, big operators) are shrunk to it
_SPLIT_TAG = {"train": 1, "test": 2}


def _wanted(char: str) -> bool:
  if unicodedata.category(char) not in _KEPT_CATEGORIES:
    return False
  name = unicodedata.name(char, "")
  if name.startswith("BOX DRAWINGS"):
    return "HEAVY" not in name and "DASH" not in name  # heavy = light with a thicker stroke
  if 0x1D400 <= ord(char) <= 0x1D7FF:  # Mathematical Alphanumeric Symbols
    return any(s in name for s in _MATH_STYLES) and "BOLD" not in name
  return True


def _candidates() -> list[str]:
  return [c for a, b, _ in BLOCKS for c in map(chr, range(a, b + 1)) if _wanted(c)]


@functools.cache
def _drawn_by() -> dict[str, dict[int, tuple[float, float]]]:
  """Candidate character -> {font index: box (w, h) in em}, one font per distinct drawing.

  Font files often share a glyph (DejaVu Serif's box lines are DejaVu Sans's): fonts
  whose renders are equal count once, so "two fonts" means two different drawings.
  Only fonts with equal boxes can draw alike, so only those are rendered and compared.
  """
  chars, names = _candidates(), glyph_fonts.font_names()
  per_font = [glyph_fonts.boxes(f, chars) for f in range(len(names))]
  canonical = [names.index(n) for n in CANONICAL_FONTS if n in names]
  order = canonical + [f for f in range(len(names)) if f not in canonical]  # who keeps a copy
  out = {}
  for char in chars:
    fonts = [f for f in order if char in per_font[f]]
    same_box = collections.Counter(per_font[f][char] for f in fonts)
    kept, seen = {}, set()
    for f in fonts:
      box = per_font[f][char]
      key = glyph_fonts.render_key(f, char) if same_box[box] > 1 else None
      if key is None or key not in seen:
        seen.add(key)
        kept[f] = box
    if len(kept) >= 2:
      out[char] = dict(sorted(kept.items()))
  return out


def _canonical_font(char: str) -> int:
  fonts = _drawn_by()[char]
  names = {glyph_fonts.font_names()[f]: f for f in fonts}
  return next((names[n] for n in CANONICAL_FONTS if n in names), min(fonts))


def canonical_image(char: str, image_size: int = 64) -> np.ndarray:
  """uint8 [S, S]: `char` in its canonical font at the largest sample size, centred, upright."""
  work = 2 * image_size
  ink = _rasterize(char, _canonical_font(char), work)  # [h, w]
  canvas = np.zeros((work, work), np.uint8)
  h, w = min(work, ink.shape[0]), min(work, ink.shape[1])
  top, left = (work - h) // 2, (work - w) // 2
  canvas[top : top + h, left : left + w] = ink[:h, :w]
  return glyph_fonts.peak_255(np.asarray(Image.fromarray(canvas).reduce(2), np.float32))


def _near(ink: np.ndarray) -> np.ndarray:
  """bool [N, H, W]: pixels within one pixel (3x3) of `ink` [N, H, W]."""
  padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
  h, w = ink.shape[1:]
  out = np.zeros_like(ink)
  for dy in range(3):
    for dx in range(3):
      out |= padded[:, dy : dy + h, dx : dx + w]
  return out


def stray_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Ink pixels (>= 128) of `a` with no ink of `b` within one pixel, plus the converse.

  a, b: uint8 [..., H, W] -> int [...]. Zero for identical images; counts shape
  differences, not stroke-width differences of up to a pixel each side.
  """
  a, b = a >= 128, b >= 128
  lead = a.shape[:-2]
  a, b = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
  stray = (a & ~_near(b)).sum((1, 2)) + (b & ~_near(a)).sum((1, 2))
  return stray.reshape(lead)


@functools.cache
def inventory() -> tuple[tuple[str, tuple[int, ...]], ...]:
  """(character, indices of the fonts that draw it) in block order, look-alikes dropped."""
  chars = list(_drawn_by())
  n = len(chars)
  images = np.stack([canonical_image(c, _DEDUPE_SIZE) for c in chars])  # [N, 64, 64]
  # Candidates: a 2x2 block inked by one glyph, with no ink of the other in it or the
  # blocks around it, holds at least one stray pixel; so few such blocks is necessary.
  g = _DEDUPE_SIZE // 2
  coarse = (images >= 128).reshape(n, g, 2, g, 2).any((2, 4))  # [N, g, g]
  far = ~_near(coarse)
  coarse, far = coarse.reshape(n, -1).astype(np.float32), far.reshape(n, -1).astype(np.float32)
  lonely = coarse @ far.T  # [N, N]: blocks of i away from all ink of j
  later, earlier = np.nonzero(np.tril(lonely + lonely.T < DUPLICATE_PIXELS, -1))
  alike = stray_pixels(images[later], images[earlier]) < DUPLICATE_PIXELS  # [pairs]
  kept = np.ones(n, bool)
  # `later` ascends, so whether `earlier` is kept is settled when a pair is reached.
  for i, j in zip(later[alike], earlier[alike], strict=True):
    kept[i] &= not kept[j]
  return tuple((c, tuple(sorted(_drawn_by()[c]))) for c, k in zip(chars, kept, strict=True) if k)


@functools.cache
def class_sets() -> dict[str, tuple[int, ...]]:
  """Inventory indices of the continual classes (a seeded draw of 100) and the rest."""
  n = len(inventory())
  draw = np.random.RandomState(CONTINUAL_SEED).choice(n, NUM_CONTINUAL_CLASSES, replace=False)
  continual = np.sort(draw)
  pretrain = np.setdiff1d(np.arange(n), continual)
  return {"continual": tuple(map(int, continual)), "pretrain": tuple(map(int, pretrain))}


def num_classes(class_set: str) -> int:
  return len(class_sets()[class_set])


def _rasterize(char: str, font: int, work_size: int) -> np.ndarray:
  """uint8 [h, w]: the glyph at the largest size a sample shows on a `work_size` canvas."""
  extent = max(_drawn_by()[char][font])  # em
  shown = min(_MAX_EXTENT_EM, max(_MIN_EXTENT_EM, extent))  # em
  return glyph_fonts.rasterize(font, char, _FRAME * work_size * shown / extent)


@functools.lru_cache(maxsize=32768)
def _master(char: str, font: int, work_size: int) -> Image.Image:
  return Image.fromarray(_rasterize(char, font, work_size))


_MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
  """SplitMix64 finaliser: a counter-based generator independent of numpy's streams."""
  x = (x + 0x9E3779B97F4A7C15) & _MASK64
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
  return x ^ (x >> 31)


def _uniforms(key: tuple[int, ...], n: int) -> list[float]:
  h = 0
  for part in key:
    h = _mix(h ^ (part & _MASK64))
  return [_mix(h + j) / 2.0**64 for j in range(1, n + 1)]


class GlyphSource:
  """Random-access glyph images: `__getitem__(i) -> {"image": uint8 [S, S, 1], "label"}`.

  Sample i shows class `i // per_class` (`labels[i]`). Its pixels depend only on
  (seed, split, the class's character, i % per_class), so train and test differ and
  any index is rendered on its own, in any order, in any process.
  """

  def __init__(
    self,
    *,
    class_set: str = "continual",
    split: str = "train",
    image_size: int = 32,
    per_class: int | None = None,
    seed: int = 0,
  ):
    if class_set not in ("pretrain", "continual") or split not in _SPLIT_TAG:
      raise ValueError(
        f"glyphs: class_set pretrain | continual, split train | test; got {class_set!r}, {split!r}"
      )
    if image_size < 8:
      raise ValueError(f"glyphs: image_size must be >= 8, got {image_size}")
    self.class_set, self.split, self.image_size, self.seed = class_set, split, image_size, seed
    classes = class_sets()[class_set]
    self.chars = [inventory()[c][0] for c in classes]
    self._fonts = [inventory()[c][1] for c in classes]
    self.num_classes = len(classes)
    self.per_class = int(per_class or PER_CLASS[(class_set, split)])
    self.labels = np.repeat(np.arange(self.num_classes, dtype=np.int32), self.per_class)  # [N]

  def __len__(self) -> int:
    return self.num_classes * self.per_class

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"glyph index {i} out of range [0, {len(self)})")
    label, k = divmod(i, self.per_class)
    char, fonts = self.chars[label], self._fonts[label]
    u = _uniforms((self.seed, _SPLIT_TAG[self.split], ord(char), k), 9)
    font = fonts[int(u[8] * len(fonts))]
    jitter = glyph_fonts.Jitter.from_uniforms(u, bold=glyph_fonts.is_bold(font))
    image = glyph_fonts.warp(_master(char, font, 2 * self.image_size), self.image_size, jitter)
    return {"image": image[..., None], "label": np.int32(label)}  # [S, S, 1]


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
