"""The offline glyph dataset: fonts, class inventory, class sets, determinism, learnability."""

from __future__ import annotations

import concurrent.futures
import pickle

import numpy as np
import pytest

from jaxcl.data import glyph_fonts, glyphs


def _font(name: str) -> int:
  return glyph_fonts.font_names().index(name)


def test_fonts_are_matplotlibs_without_last_resort():
  names = glyph_fonts.font_names()
  assert {"DejaVuSans", "DejaVuSerif-Bold", "DejaVuSansMono", "STIXGeneral", "cmr10"} <= set(names)
  assert not any(n.startswith("LastResort") for n in names)
  assert glyph_fonts.is_bold(_font("DejaVuSans-Bold")) and not glyph_fonts.is_bold(_font("cmr10"))


def test_tex_encoded_fonts_count_a_glyph_for_the_character_it_draws():
  cmmi = glyph_fonts.char_codes(_font("cmmi10"))
  assert cmmi["ω"] == ord("!")  # cmmi10 puts omega at the code of "!"
  assert "!" not in cmmi
  assert "A" not in glyph_fonts.char_codes(_font("cmsy10"))  # a calligraphic A
  assert glyph_fonts.char_codes(_font("DejaVuSans"))["!"] == ord("!")


def test_boxes_leave_out_missing_and_empty_glyphs():
  font = _font("DejaVuSans")
  drawn = glyph_fonts.boxes(font, ["A", " ", "\ue000", "\u0378"])
  assert set(drawn) == {"A"}  # space has no ink; the others are not in the font
  width, height = drawn["A"]  # em
  assert 0.5 < width < 1.0 and 0.6 < height < 0.8
  ink = glyph_fonts.rasterize(font, "A", 64.0)
  assert ink.dtype == np.uint8 and ink.max() == 255
  assert abs(ink.shape[0] - 64 * height) <= 2 and abs(ink.shape[1] - 64 * width) <= 2


def test_render_keys_tell_shared_glyphs_from_different_ones():
  sans, serif = _font("DejaVuSans"), _font("DejaVuSerif")
  assert glyph_fonts.render_key(sans, "\u2500") == glyph_fonts.render_key(serif, "\u2500")  # ─
  assert glyph_fonts.render_key(sans, "a") != glyph_fonts.render_key(serif, "a")
  assert glyphs.inventory()  # and the box line, drawn alike by every font, is no class:
  assert "\u2500" not in {c for c, _ in glyphs.inventory()}


def test_inventory_has_over_a_thousand_distinct_multi_font_classes():
  inventory = glyphs.inventory()
  chars = [c for c, _ in inventory]
  assert len(chars) >= 1000
  assert len(set(chars)) == len(chars)
  assert all(len(fonts) >= 2 for _, fonts in inventory)
  blocks = [(a, b) for a, b, _ in glyphs.BLOCKS]
  assert all(any(a <= ord(c) <= b for a, b in blocks) for c in chars)
  for char in ("A", "7", "ж", "∑", "→"):
    assert char in chars


def test_class_fonts_draw_the_character_in_different_ways():
  rng = np.random.default_rng(0)
  inventory = glyphs.inventory()
  for k in rng.choice(len(inventory), 60, replace=False):
    char, fonts = inventory[k]
    inks = [glyph_fonts.rasterize(f, char, 40.0) for f in fonts[:2]]
    assert all(ink.max() >= 128 for ink in inks), char
    same_shape = inks[0].shape == inks[1].shape
    assert not (same_shape and np.array_equal(inks[0], inks[1])), char


def test_look_alikes_keep_only_the_first():
  chars = {c for c, _ in glyphs.inventory()}
  # Latin / Greek / Cyrillic A; o; I / l; A-ring / Angstrom sign; Omega / Ohm sign
  for first, *others in ("A\u0391\u0410", "o\u03bf\u043e", "Il", "\u00c5\u212b", "\u03a9\u2126"):
    assert first in chars
    assert not set(others) & chars, (first, others)
  for a, b in ("O0", "EÉ", "ÃÄ", "-–"):  # close, but different
    assert a in chars and b in chars


def test_stray_pixels_ignore_stroke_width_but_not_shape():
  bar = np.zeros((16, 16), np.uint8)
  bar[2:14, 7:9] = 255
  wide = bar.copy()
  wide[2:14, 6:10] = 255
  moved = np.roll(bar, 4, axis=1)
  assert glyphs.stray_pixels(bar, bar) == 0
  assert glyphs.stray_pixels(bar, wide) == 0  # one pixel thicker on each side
  assert glyphs.stray_pixels(bar, moved) == 2 * 24
  assert glyphs.stray_pixels(np.stack([bar, bar]), np.stack([bar, moved])).tolist() == [0, 48]


def test_no_two_classes_render_alike():
  chars = [c for c, _ in glyphs.inventory()]
  images = np.stack([glyphs.canonical_image(c) for c in chars])  # [N, 64, 64]
  assert len({im.tobytes() for im in images}) == len(chars)
  # Brute force over a subset, independent of the inventory's candidate pruning.
  rng = np.random.default_rng(1)
  subset = images[rng.choice(len(chars), 250, replace=False)]
  i, j = np.triu_indices(len(subset), 1)
  assert glyphs.stray_pixels(subset[i], subset[j]).min() >= glyphs.DUPLICATE_PIXELS


def test_class_sets_are_disjoint_and_cover_the_inventory():
  sets = glyphs.class_sets()
  continual, pretrain = set(sets["continual"]), set(sets["pretrain"])
  assert len(continual) == glyphs.NUM_CONTINUAL_CLASSES == glyphs.num_classes("continual") == 100
  assert len(pretrain) == glyphs.num_classes("pretrain") >= 900
  assert not continual & pretrain
  assert continual | pretrain == set(range(len(glyphs.inventory())))
  train = glyphs.GlyphSource(class_set="continual", split="train", per_class=1)
  test = glyphs.GlyphSource(class_set="pretrain", split="test", per_class=1)
  assert not set(train.chars) & set(test.chars)


def test_source_layout_shapes_and_labels():
  src = glyphs.load_split("train", "/nonexistent", image_size=32)
  assert src.class_set == "continual" and len(src) == 100 * 500 == len(src.labels)
  assert src.labels.dtype == np.int32 and src.labels[499] == 0 and src.labels[500] == 1
  assert src.num_classes == len(src.chars) == 100
  assert len(glyphs.load_split("test")) == 100 * 100
  assert len(glyphs.load_split("test", class_set="pretrain")) == 50 * glyphs.num_classes("pretrain")
  for i in (0, 499, 500, 27_123, len(src) - 1):
    ex = src[i]
    assert ex["image"].shape == (32, 32, 1) and ex["image"].dtype == np.uint8
    assert ex["label"].dtype == np.int32 and ex["label"] == src.labels[i]
  for size in (16, 48):
    assert glyphs.GlyphSource(image_size=size)[3]["image"].shape == (size, size, 1)
  with pytest.raises(IndexError):
    src[len(src)]
  with pytest.raises(ValueError):
    glyphs.GlyphSource(class_set="imagenet")


def test_samples_are_deterministic_and_independent_of_layout():
  src = glyphs.GlyphSource(class_set="continual", split="train", seed=3)
  again = pickle.loads(
    pickle.dumps(glyphs.GlyphSource(class_set="continual", split="train", seed=3))
  )
  for i in (0, 777, 49_999):
    assert src[i]["image"].tobytes() == again[i]["image"].tobytes()
  assert not np.array_equal(src[123]["image"], src[124]["image"])
  other_seed = glyphs.GlyphSource(class_set="continual", split="train", seed=4)
  assert not np.array_equal(src[123]["image"], other_seed[123]["image"])
  few = glyphs.GlyphSource(class_set="continual", split="train", seed=3, per_class=10)
  assert np.array_equal(few[7 * 10 + 4]["image"], src[7 * 500 + 4]["image"])  # class 7, sample 4


def test_samples_rendered_from_threads_match():
  src = glyphs.GlyphSource(class_set="pretrain", split="train")
  indices = list(range(0, len(src), len(src) // 64))
  sequential = [src[i]["image"].tobytes() for i in indices]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    threaded = list(pool.map(lambda i: src[i]["image"].tobytes(), indices))
  assert threaded == sequential


def test_train_and_test_samples_differ():
  train = glyphs.GlyphSource(class_set="continual", split="train")
  test = glyphs.GlyphSource(class_set="continual", split="test")
  train_images = {train[c * 500 + k]["image"].tobytes() for c in range(5) for k in range(100)}
  test_images = {test[c * 100 + k]["image"].tobytes() for c in range(5) for k in range(100)}
  assert len(train_images) == 500 and len(test_images) == 500  # no repeats within a split
  assert not train_images & test_images


def test_every_sample_has_ink():
  for class_set, step in (("continual", 1), ("pretrain", 9)):
    src = glyphs.GlyphSource(class_set=class_set, split="train", per_class=3)
    for c in range(0, src.num_classes, step):
      for k in range(3):
        image = src[c * 3 + k]["image"]
        assert image.max() == 255 and (image >= 128).sum() >= 4, src.chars[c]
        assert (image >= 128).mean() < 0.7, src.chars[c]  # a glyph, not a filled frame


def test_nearest_class_mean_on_pixels_beats_chance():
  train = glyphs.GlyphSource(class_set="continual", split="train", image_size=16, per_class=30)
  test = glyphs.GlyphSource(class_set="continual", split="test", image_size=16, per_class=10)
  classes = range(10)
  train_x = np.stack([[train[c * 30 + k]["image"].ravel() for k in range(30)] for c in classes])
  assert all(len({x.tobytes() for x in per_class}) == 30 for per_class in train_x)  # varied
  means = train_x.astype(np.float32).mean(1)  # [10, 256]
  correct = 0
  for c in classes:
    for k in range(10):
      x = test[c * 10 + k]["image"].ravel().astype(np.float32)
      correct += int(np.argmin(((means - x) ** 2).sum(1)) == c)
  assert correct / 100 > 0.3  # chance is 0.1
