"""The fonts inside matplotlib: which characters each really draws; one glyph, jittered.

Every `*.ttf` under `matplotlib.get_data_path()/fonts/ttf` is used (DejaVu Sans/Serif/
Mono and their styles, the DejaVu "Display" subsets, STIX General/NonUnicode/Size
fonts, the BaKoMa Computer Modern fonts cmr10, cmmi10, ...) except Last Resort, whose
every glyph is a placeholder box, not the character.

A font draws a character when its charmap maps the character to a real glyph (not
glyph 0, not named `.notdef`) with an outline (ink) that is not a copy of the font's
`.notdef` box. The BaKoMa fonts carry TeX encodings behind their charmaps (cmmi10 maps `!` to
an omega); a font whose glyph names mostly contradict their code points is treated
as such, and its glyphs count only for the character their Adobe glyph-list name
names.

Glyphs are drawn with FreeType through matplotlib's `FT2Font` (`load_char`,
`draw_glyph_to_bitmap`), unhinted; `warp` turns such a raster into one jittered sample.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import struct
import threading

import matplotlib
import numpy as np
from fontTools import agl
from fontTools.ttLib import TTFont
from matplotlib import ft2font
from PIL import Image, ImageFilter

_EXCLUDED_FONTS = ("LastResortHE-Regular.ttf",)  # placeholder boxes, not glyphs
# cmsy10 names its calligraphic capitals "A".."Z": those are \mathcal letters, not A..Z.
_MISNAMED = {"cmsy10.ttf": frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}
_UNICODE_AGREEMENT = 0.9  # fraction of named glyphs whose name matches their code point
_NO_HINTING = ft2font.LoadFlags.NO_HINTING
_PROBE_PPEM = 32  # size of the renders that tell two fonts' drawings apart
_MAX_SHIFT = 0.125  # of the image side: +-4 pixels at 32x32, like CIFAR's pad-4 crops
_LOCK = threading.RLock()  # FreeType faces are not thread-safe


@functools.cache
def font_paths() -> tuple[str, ...]:
  """Paths of the matplotlib fonts used, sorted by file name (the font index order)."""
  folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
  names = sorted(f for f in os.listdir(folder) if f.endswith(".ttf") and f not in _EXCLUDED_FONTS)
  return tuple(os.path.join(folder, f) for f in names)


@functools.cache
def font_names() -> tuple[str, ...]:
  """File names without `.ttf`, in font index order (e.g. `DejaVuSans-Bold`)."""
  return tuple(os.path.basename(p).removesuffix(".ttf") for p in font_paths())


@functools.cache
def is_bold(font: int) -> bool:
  return bool(_face(font).style_flags & ft2font.StyleFlags.BOLD)


@functools.cache
def _face(font: int) -> ft2font.FT2Font:
  return ft2font.FT2Font(font_paths()[font])


def _named_codes(face: ft2font.FT2Font) -> dict[int, str]:
  """Code point -> glyph name for every charmap entry that is a real glyph."""
  out = {}
  for code, gid in face.get_charmap().items():
    name = face.get_glyph_name(gid) if gid else ".notdef"
    if name != ".notdef":
      out[code] = name
  return out


@functools.cache
def char_codes(font: int) -> dict[str, int]:
  """Character -> the code to render it with in `font`, before ink checks."""
  named = _named_codes(_face(font))
  probe = [(code, agl.toUnicode(name)) for code, name in list(named.items())[:500]]
  known = [(code, u) for code, u in probe if u]
  agree = sum(u == chr(code) for code, u in known) / max(1, len(known))
  if agree >= _UNICODE_AGREEMENT:  # a Unicode charmap: trust it
    return {chr(code): code for code in sorted(named)}
  misnamed = _MISNAMED.get(os.path.basename(font_paths()[font]), frozenset())
  out = {}
  for code in sorted(named):  # a TeX encoding: trust only the glyph names
    u = agl.toUnicode(named[code])
    if len(u) == 1 and u not in out and u not in misnamed:
      out[u] = code
  return out


def _draw(face: ft2font.FT2Font, code: int) -> np.ndarray:
  """uint8 [h, w]: `code` at the face's size, unhinted, anti-aliased, cropped to its ink."""
  glyph = face.load_char(code, _NO_HINTING)
  x0, y0, x1, y1 = (v // 64 for v in glyph.bbox)  # control box, whole pixels
  image = np.zeros((y1 - y0 + 4, x1 - x0 + 4), np.uint8)
  try:  # matplotlib >= 3.11 draws into an ndarray (at x + the glyph's left bearing)
    face.draw_glyph_to_bitmap(image, 1 - x0, 1, glyph)
  except TypeError:  # older: lay the one character out and take its image
    face.set_text(chr(code), 0.0, flags=_NO_HINTING)
    face.draw_glyphs_to_bitmap(antialiased=True)
    image = np.array(face.get_image())
  rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
  if rows.size == 0:
    return np.zeros((1, 1), np.uint8)
  return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


@functools.cache
def _glyph_records(font: int) -> tuple[bytes, np.ndarray]:
  """The raw TrueType `glyf` table and its glyph offsets (`loca`), [num_glyphs + 1]."""
  reader = TTFont(font_paths()[font], lazy=True).reader
  if "glyf" not in reader or "loca" not in reader:  # not TrueType outlines: nothing usable
    return b"", np.zeros(1, np.int64)
  long_offsets = struct.unpack(">h", reader["head"][50:52])[0]  # head.indexToLocFormat
  loca = np.frombuffer(reader["loca"], ">u4" if long_offsets else ">u2").astype(np.int64)
  return reader["glyf"], loca if long_offsets else 2 * loca


def boxes(font: int, chars) -> dict[str, tuple[float, float]]:
  """{char: (width, height) of its outline box in em} for the `chars` that `font` draws.

  Read from the TrueType `glyf` records without rendering: a character is left out
  when the font has no glyph for it, the glyph has no outline (no ink) or a zero-area
  box, or its outline is byte-identical to the `.notdef` box's.
  """
  glyf, loca = _glyph_records(font)
  codes, cmap, em = char_codes(font), _face(font).get_charmap(), _face(font).units_per_EM
  notdef = glyf[loca[0] : loca[1]]
  out = {}
  for char in chars:
    gid = cmap.get(codes.get(char, -1), 0)
    if gid == 0 or gid + 1 >= len(loca):
      continue
    record = glyf[loca[gid] : loca[gid + 1]]
    if len(record) < 10 or record == notdef:
      continue
    _, x0, y0, x1, y1 = struct.unpack(">5h", record[:10])  # numberOfContours, box
    if x1 > x0 and y1 > y0:
      out[char] = ((x1 - x0) / em, (y1 - y0) / em)
  return out


def render_key(font: int, char: str) -> bytes:
  """The glyph rendered at 32 pixels per em, as bytes: equal keys, equal drawings."""
  ink = rasterize(font, char, _PROBE_PPEM)
  return ink.tobytes() + str(ink.shape).encode()


def rasterize(font: int, char: str, ppem: float) -> np.ndarray:
  """uint8 [h, w] anti-aliased ink of `char` at `ppem` pixels per em, cropped to its ink."""
  face = _face(font)
  with _LOCK:
    face.set_size(ppem, 72)
    return _draw(face, char_codes(font)[char])


@dataclasses.dataclass(frozen=True)
class Jitter:
  """Nuisance parameters of one sample."""

  scale: float  # of the largest size the glyph may take
  aspect: float  # width / height stretch
  angle: float  # rotation, radians
  shear: float  # horizontal shear
  shift: tuple[float, float]  # in [-1, 1]: of the room (<= 1/8 image side), per axis
  stroke: int  # +1 thicker by half an output pixel each side, -1 thinner, 0 as drawn
  blur: float  # Gaussian radius in pixels at twice the output size; <= 0.3: none

  @classmethod
  def from_uniforms(cls, u, *, bold: bool) -> Jitter:
    """From 8 uniforms in [0, 1). Only bold fonts get thinner (thin strokes would vanish)."""
    return cls(
      scale=0.82 + 0.18 * u[0],
      aspect=math.exp(0.16 * (u[1] - 0.5)),
      angle=math.radians(24 * (u[2] - 0.5)),
      shear=0.2 * (u[3] - 0.5),
      shift=(2 * u[4] - 1, 2 * u[5] - 1),
      stroke=1 if u[6] < 0.3 else (-1 if bold and u[6] > 0.75 else 0),
      blur=1.4 * u[7],
    )


def warp(master: Image.Image, image_size: int, jitter: Jitter) -> np.ndarray:
  """uint8 [S, S]: place `master` (drawn for a 2S canvas) by `jitter`, then halve it.

  Affine (scale, aspect, shear, rotation about the glyph's centre, a shift of up to an
  eighth of the image that keeps the warped box inside), stroke weight (3x3 max/min
  filter), blur, 2x2 box downsampling, and a stretch so the brightest ink is 255.
  """
  work = 2 * image_size
  s, a, k = jitter.scale, jitter.aspect, jitter.shear
  cos, sin = math.cos(jitter.angle), math.sin(jitter.angle)
  # Forward map master -> canvas: rotation @ shear @ diag(s * a, s / a).
  m00, m01 = cos * s * a, (cos * k - sin) * s / a
  m10, m11 = sin * s * a, (sin * k + cos) * s / a
  half_w, half_h = master.size[0] / 2, master.size[1] / 2
  extent_x = 2 * (abs(m00) * half_w + abs(m01) * half_h)  # the warped box
  extent_y = 2 * (abs(m10) * half_w + abs(m11) * half_h)
  room_x = min(_MAX_SHIFT * work, max(0.0, work - extent_x) / 2)  # keep the box inside
  room_y = min(_MAX_SHIFT * work, max(0.0, work - extent_y) / 2)
  cx, cy = work / 2 + room_x * jitter.shift[0], work / 2 + room_y * jitter.shift[1]
  det = m00 * m11 - m01 * m10
  i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det  # canvas -> master
  coeffs = (i00, i01, half_w - i00 * cx - i01 * cy, i10, i11, half_h - i10 * cx - i11 * cy)
  img = master.transform((work, work), Image.AFFINE, coeffs, resample=Image.BILINEAR)
  if jitter.stroke > 0:
    img = img.filter(ImageFilter.MaxFilter(3))
  elif jitter.stroke < 0:
    img = img.filter(ImageFilter.MinFilter(3))
  if jitter.blur > 0.3:
    img = img.filter(ImageFilter.GaussianBlur(jitter.blur))
  return peak_255(np.asarray(img.reduce(2), np.float32))  # [S, S]


def peak_255(image: np.ndarray) -> np.ndarray:
  """uint8: stretch so the brightest ink is 255 (thin or blurred strokes stay visible)."""
  return (image * (255.0 / max(1.0, float(image.max()))) + 0.5).astype(np.uint8)
