"""The offline glyph dataset: inventory, disjoint class sets, determinism, learnability."""

from __future__ import annotations

import numpy as np

from jaxcl.data import glyphs


def test_inventory_size_and_disjoint_class_sets():
  assert len(glyphs.inventory()) >= 1000
  sets = glyphs.class_sets()
  assert len(sets["continual"]) == glyphs.NUM_CONTINUAL_CLASSES == 100
  assert not set(sets["continual"]) & set(sets["pretrain"])
  assert len(sets["continual"]) + len(sets["pretrain"]) == len(glyphs.inventory())
  assert all(len(fonts) >= 2 for _, fonts in glyphs.inventory())
  chars = [c for c, _ in glyphs.inventory()]
  assert len(set(chars)) == len(chars)


def test_samples_are_deterministic_varied_and_inked():
  src = glyphs.GlyphSource(class_set="continual", split="train", image_size=32)
  assert len(src) == 100 * 500 and src.labels[499] == 0 and src.labels[500] == 1
  a, b = src[123], src[123]
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["image"].shape == (32, 32, 1) and a["image"].dtype == np.uint8
  assert int(a["label"]) == src.labels[123]
  assert not np.array_equal(src[123]["image"], src[124]["image"])
  test = glyphs.GlyphSource(class_set="continual", split="test", image_size=32)
  assert not np.array_equal(test[0]["image"], src[0]["image"])
  assert all(src[i]["image"].max() > 50 for i in range(0, 50000, 2500))


def test_nearest_class_mean_on_pixels_beats_chance():
  train = glyphs.GlyphSource(class_set="continual", split="train", image_size=16, per_class=30)
  test = glyphs.GlyphSource(class_set="continual", split="test", image_size=16, per_class=10)
  classes = range(10)
  means = np.stack(
    [np.mean([train[c * 30 + k]["image"] for k in range(30)], 0).ravel() for c in classes]
  )
  correct = 0
  for c in classes:
    for k in range(10):
      x = test[c * 10 + k]["image"].ravel().astype(float)
      correct += int(np.argmin(((means - x) ** 2).sum(1)) == c)
  assert correct / 100 > 0.3  # chance is 0.1
