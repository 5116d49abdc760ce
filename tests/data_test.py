"""Class orders, task splits, transforms, Fashion-MNIST and tfds sources, the grain pipeline."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from jaxcl import sharding
from jaxcl.data import pipeline, sources, splits, transforms


def test_class_orders():
  pilot = splits.class_order(100, "seeded", 1993)
  assert pilot[:10].tolist() == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
  assert sorted(pilot.tolist()) == list(range(100))
  assert splits.class_order(5, "identity", 0).tolist() == [0, 1, 2, 3, 4]
  assert splits.class_order(10, "coda", 0).tolist() == list(range(10))
  assert splits.class_order(10, "coda", 1).tolist() != list(range(10))
  with pytest.raises(ValueError, match="identity"):
    splits.class_order(3, "bogus", 0)


def test_tasks_are_disjoint_cover_all_classes_and_respect_caps():
  rng = np.random.default_rng(0)
  train, test = rng.integers(0, 10, 500), rng.integers(0, 10, 100)
  tasks = splits.make_tasks(
    train, test, num_classes=10, init_classes=4, increment=2, max_train_per_class=3
  )
  assert [t.classes.tolist() for t in tasks] == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
  all_train = np.concatenate([t.train_idx for t in tasks])
  assert len(all_train) == len(set(all_train.tolist())) == 30
  for t in tasks:
    assert set(train[t.train_idx]) <= set(t.classes.tolist())
    assert np.all(np.diff(t.train_idx) > 0)
    assert set(test[t.test_idx]) == set(t.classes.tolist())
  again = splits.make_tasks(
    train, test, num_classes=10, init_classes=4, increment=2, max_train_per_class=3
  )
  assert all(np.array_equal(a.train_idx, b.train_idx) for a, b in zip(tasks, again, strict=True))
  with pytest.raises(ValueError, match="tile"):
    splits.make_tasks(train, test, num_classes=10, init_classes=3, increment=3)


def test_transforms_shapes_channels_and_flip():
  image = np.zeros((28, 28, 1), np.uint8)
  image[:, :5] = 255  # bright left edge
  ex = {"image": image, "label": 3}
  out = transforms.EvalTransform(32, channels=3).map(ex)
  assert out["image"].shape == (32, 32, 3) and out["image"].dtype == np.uint8
  assert out["label"] == 3
  for aug in ("none", "flip", "rrc_flip", "crop_flip"):
    t = transforms.TrainTransform(16, channels=3, aug=aug)
    a = t.random_map(ex, np.random.default_rng(5))
    b = t.random_map(ex, np.random.default_rng(5))
    assert a["image"].shape == (16, 16, 3)
    np.testing.assert_array_equal(a["image"], b["image"])
  flips = [
    transforms.TrainTransform(28, channels=1, aug="flip").random_map(ex, np.random.default_rng(s))[
      "image"
    ]
    for s in range(8)
  ]
  left = [f[:, :5].mean() > f[:, -5:].mean() for f in flips]
  assert any(left) and not all(left)  # some flipped, some not


def test_scale_images():
  x = np.array([0, 255], np.uint8).reshape(1, 1, 2, 1)
  np.testing.assert_allclose(transforms.scale_images(x, "01").ravel(), [0, 1])
  np.testing.assert_allclose(transforms.scale_images(x, "-11").ravel(), [-1, 1])
  with pytest.raises(ValueError, match="imagenet"):
    transforms.scale_images(x, "bad")


@pytest.mark.skipif(
  not os.path.isdir(sources.FASHION_MNIST_DIR),
  reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_from_idx_files():
  train, test = sources.load_fashion_mnist()
  assert len(train) == 60000 and len(test) == 10000
  assert train[0]["image"].shape == (28, 28, 1)
  assert np.bincount(test.labels).tolist() == [1000] * 10


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    sources.load_fashion_mnist(str(tmp_path))


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfds build cifar100"):
    sources.load_source("cifar100", data_dir=str(tmp_path), split="train")


def test_tfds_array_record_round_trip(tmp_path):
  import tensorflow_datasets as tfds  # noqa: PLC0415

  class Tiny(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "image": tfds.features.Tensor(shape=(4, 4, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=3),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(12)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"image": np.full((4, 4, 3), i, np.uint8), "label": i % 3}

  Tiny(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  src = sources.TfdsSource("tiny", "train", str(tmp_path))
  assert len(src) == 12 and sorted(src.labels.tolist()) == sorted([i % 3 for i in range(12)])
  ex = src[0]
  assert ex["image"].shape == (4, 4, 3) and ex["label"] == ex["image"][0, 0, 0] % 3


def _array_source(n=40):
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 4, 4, 1), np.uint8)
  return sources.ArraySource(images, np.arange(n) % 4)


def test_train_iterator_is_deterministic_and_resumes_to_the_same_batch():
  mesh = sharding.make_mesh()
  sh = sharding.batch_sharding(mesh)
  tf = transforms.TrainTransform(4, channels=1, aug="none")
  make = lambda: pipeline.TrainIterator(
    _array_source(), np.arange(40), tf, global_batch=8, seed=3, sharding=sh
  )
  a = make()
  first = [np.asarray(next(a)["image"])[:, 0, 0, 0].tolist() for _ in range(3)]
  state = a.get_state()
  fourth = np.asarray(next(a)["image"])
  b = make()
  assert [np.asarray(next(b)["image"])[:, 0, 0, 0].tolist() for _ in range(3)] == first
  c = make()
  c.set_state(state)
  np.testing.assert_array_equal(np.asarray(next(c)["image"]), fourth)
  epoch = sorted(sum(first, []) + np.asarray(next(make())["image"])[:, 0, 0, 0].tolist()[:0])
  assert len(set(epoch)) == len(epoch)  # no repeats within an epoch


def test_eval_batches_cover_every_example_once_with_mask():
  mesh = sharding.make_mesh()
  tf = transforms.EvalTransform(4, channels=1)
  seen = []
  for batch in pipeline.eval_batches(
    _array_source(), np.arange(3, 30), tf, global_batch=16, sharding=sharding.batch_sharding(mesh)
  ):
    assert batch["image"].shape[0] == 16
    mask = np.asarray(batch["mask"])
    seen += np.asarray(batch["image"])[mask, 0, 0, 0].tolist()
  assert sorted(seen) == list(range(3, 30))
  assert jax.device_count() == 8
