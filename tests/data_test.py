"""Class orders, task splits, Fashion-MNIST and tfds sources, per-example transforms, scaling."""

from __future__ import annotations

import functools
import os
import pickle
import random

import grain
import jax
import numpy as np
import pytest

from jaxcl.data import sources, splits, transforms

# --- class orders and remapping -------------------------------------------------------


def test_seeded_order_reproduces_pilot_seed_1993():
  order = splits.class_order(100, "seeded", 1993)
  assert order[:10].tolist() == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
  np.random.seed(1993)  # PILOT's exact call sequence (utils/data_manager.py)
  np.testing.assert_array_equal(order, np.random.permutation(100))
  assert splits.class_order(200, "seeded", 1993)[:5].tolist() == [168, 136, 51, 9, 183]


def test_identity_and_coda_orders():
  assert splits.class_order(5, "identity", 7).tolist() == [0, 1, 2, 3, 4]
  assert splits.class_order(10, "coda", 0).tolist() == list(range(10))
  expected = list(range(10))
  random.seed(3)  # CODA-Prompt's run.py: random.seed(seed); random.shuffle(order)
  random.shuffle(expected)
  assert splits.class_order(10, "coda", 3).tolist() == expected != list(range(10))
  with pytest.raises(ValueError, match="identity | seeded | coda"):
    splits.class_order(3, "bogus", 0)


def test_remap_labels_is_position_in_order():
  order = [3, 0, 2, 1]
  labels = np.array([0, 1, 2, 3, 3, 0])
  got = splits.remap_labels(labels, order)
  assert got.tolist() == [order.index(y) for y in labels.tolist()]
  assert got.dtype == np.int32  # labels index the classes: never floats
  assert splits.remap_labels([5, 2], [2, 1]).tolist() == [-1, 0]  # 5 is not in the order
  with pytest.raises(ValueError, match="distinct"):
    splits.remap_labels(labels, [0, 0, 1])


# --- task splits ---------------------------------------------------------------------


def _labels(n, num_classes, seed):
  return np.random.default_rng(seed).integers(0, num_classes, n)


def test_equal_tasks_are_disjoint_and_cover_every_example():
  train, test = _labels(600, 20, 0), _labels(200, 20, 1)
  tasks = splits.make_tasks(train, test, num_classes=20, init_classes=5, increment=5)
  assert [t.index for t in tasks] == [0, 1, 2, 3]
  assert [t.classes.tolist() for t in tasks] == [list(range(i, i + 5)) for i in (0, 5, 10, 15)]
  for labels, key in ((train, "train_idx"), (test, "test_idx")):
    idx = [getattr(t, key) for t in tasks]
    np.testing.assert_array_equal(np.sort(np.concatenate(idx)), np.arange(len(labels)))
    for t, i in zip(tasks, idx, strict=True):
      assert np.all(np.diff(i) > 0)  # ascending
      assert set(labels[i].tolist()) == set(t.classes.tolist())


def test_base_plus_increment_split():
  train, test = _labels(500, 10, 2), _labels(100, 10, 3)
  tasks = splits.make_tasks(train, test, num_classes=10, init_classes=4, increment=2)
  assert [t.classes.tolist() for t in tasks] == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
  with pytest.raises(ValueError, match="tile"):
    splits.make_tasks(train, test, num_classes=10, init_classes=3, increment=3)
  with pytest.raises(ValueError, match="init_classes"):
    splits.make_tasks(train, test, num_classes=10, init_classes=12, increment=2)


def test_labels_outside_the_class_range_belong_to_no_task():
  train = np.array([0, -1, 1, 2, 3, -1])
  tasks = splits.make_tasks(train, train, num_classes=4, init_classes=2, increment=2)
  assert np.concatenate([t.train_idx for t in tasks]).tolist() == [0, 2, 3, 4]


def test_per_class_caps_keep_the_first_examples_in_index_order():
  train, test = _labels(500, 10, 4), _labels(100, 10, 5)
  kw = dict(num_classes=10, init_classes=5, increment=5, max_train_per_class=3)
  tasks = splits.make_tasks(train, test, max_test_per_class=2, **kw)
  for t in tasks:
    for c in t.classes:
      np.testing.assert_array_equal(
        t.train_idx[train[t.train_idx] == c], np.flatnonzero(train == c)[:3]
      )
      np.testing.assert_array_equal(
        t.test_idx[test[t.test_idx] == c], np.flatnonzero(test == c)[:2]
      )
  again = splits.make_tasks(train, test, max_test_per_class=2, **kw)
  for a, b in zip(tasks, again, strict=True):
    np.testing.assert_array_equal(a.train_idx, b.train_idx)
    np.testing.assert_array_equal(a.test_idx, b.test_idx)
  seeded = [splits.make_tasks(train, test, seed=9, **kw)[0].train_idx for _ in range(2)]
  np.testing.assert_array_equal(*seeded)  # a seeded choice is deterministic too
  assert len(seeded[0]) == 15 and not np.array_equal(seeded[0], tasks[0].train_idx)


def test_split_is_deterministic_through_order_and_remap():
  raw = _labels(300, 10, 6)
  build = lambda: splits.make_tasks(
    splits.remap_labels(raw, splits.class_order(10, "seeded", 1993)),
    splits.remap_labels(raw, splits.class_order(10, "seeded", 1993)),
    num_classes=10,
    init_classes=2,
    increment=2,
  )
  a, b = build(), build()
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x.train_idx, y.train_idx)
  first = set(splits.class_order(10, "seeded", 1993)[:2].tolist())
  assert set(raw[a[0].train_idx].tolist()) == first  # task 0 holds the order's first classes


def test_coda_order_shuffles_from_seed_1():
  expected = list(range(10))
  random.Random(1).shuffle(expected)  # CODA-Prompt's usual first seed
  assert splits.class_order(10, "coda", 1).tolist() == expected != list(range(10))


def test_negative_labels_stay_minus_one_through_remap():
  assert splits.remap_labels([-1, 2, -1, 0], [2, 0]).tolist() == [-1, 0, -1, 1]


def test_one_class_tasks_single_task_and_uneven_base():
  train, test = _labels(300, 7, 10), _labels(70, 7, 11)
  one = splits.make_tasks(train, test, num_classes=3, init_classes=1, increment=1)
  assert [t.classes.tolist() for t in one] == [[0], [1], [2]]  # no empty task at the end
  (whole,) = splits.make_tasks(train, test, num_classes=7, init_classes=7, increment=1)
  assert whole.classes.tolist() == list(range(7))
  b1 = splits.make_tasks(train, test, num_classes=7, init_classes=1, increment=3)
  assert [t.classes.tolist() for t in b1] == [[0], [1, 2, 3], [4, 5, 6]]
  with pytest.raises(ValueError, match="init_classes"):
    splits.make_tasks(train, test, num_classes=6, init_classes=0, increment=2)


def test_a_cap_of_one_keeps_one_example_per_class():
  train = _labels(200, 4, 12)
  (task,) = splits.make_tasks(
    train, train, num_classes=4, init_classes=4, increment=4, max_train_per_class=1
  )
  assert sorted(train[task.train_idx].tolist()) == [0, 1, 2, 3]
  assert task.train_idx.tolist() == sorted(np.flatnonzero(train == c)[0] for c in range(4))


def test_a_seed_draws_the_test_examples_too():
  train, test = _labels(400, 4, 13), _labels(400, 4, 14)
  kw = dict(num_classes=4, init_classes=4, increment=4, max_train_per_class=5)
  first = splits.make_tasks(train, test, max_test_per_class=5, **kw)[0]
  seeded = splits.make_tasks(train, test, max_test_per_class=5, seed=3, **kw)[0]
  assert len(seeded.test_idx) == len(first.test_idx) == 20
  assert not np.array_equal(seeded.test_idx, first.test_idx)


def test_joint_is_one_task_with_everything():
  train, test = _labels(200, 6, 7), _labels(60, 6, 8)
  tasks = splits.make_tasks(train, test, num_classes=6, init_classes=2, increment=2)
  (whole,) = splits.joint(tasks)
  assert whole.index == 0 and whole.classes.tolist() == list(range(6))
  np.testing.assert_array_equal(whole.train_idx, np.arange(200))
  np.testing.assert_array_equal(whole.test_idx, np.arange(60))


# --- sources -------------------------------------------------------------------------


def test_array_source_items_and_labels():
  images = np.arange(6 * 2 * 2, dtype=np.uint8).reshape(6, 2, 2, 1)
  src = sources.ArraySource(images, np.array([5, 4, 3, 2, 1, 0], np.int64))
  assert len(src) == 6 and src.labels.dtype == np.int32
  ex = src[2]
  np.testing.assert_array_equal(ex["image"], images[2])
  assert ex["label"] == 3 and ex["label"].dtype == np.int32
  with pytest.raises(ValueError, match="uint8"):
    sources.ArraySource(images.astype(np.float32), src.labels)


@pytest.mark.skipif(
  not os.path.isdir(sources.FASHION_MNIST_DIR),
  reason=f"Fashion-MNIST idx files absent: `apt-get install dataset-fashion-mnist` puts them "
  f"in {sources.FASHION_MNIST_DIR}",
)
def test_fashion_mnist_from_debian_idx_files():
  train, test = sources.load_fashion_mnist()
  assert len(train) == 60000 and len(test) == 10000
  ex = train[0]
  assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
  assert np.bincount(train.labels).tolist() == [6000] * 10
  assert np.bincount(test.labels).tolist() == [1000] * 10
  assert sources.load_source("fashion_mnist", split="test").labels.shape == (10000,)
  assert sources.num_classes("fashion_mnist") == 10


def _write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_uncompressed_idx_from_data_dir(tmp_path):
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 7), ("t10k", 3)):
    _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
    _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
  train, test = sources.load_fashion_mnist(str(tmp_path))
  assert len(train) == 7 and len(test) == 3
  assert train.images.shape == (7, 28, 28, 1)
  assert test.labels.tolist() == [0, 1, 2]


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    sources.load_fashion_mnist(str(tmp_path))
  msg = str(err.value)
  assert "apt-get install dataset-fashion-mnist" in msg
  assert "--config.data.dir=DIR" in msg and "github.com/zalandoresearch/fashion-mnist" in msg


def test_missing_tfds_dataset_names_it_the_directory_and_the_build_command(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    sources.load_source("imagenet_r", data_dir=str(tmp_path), split="train")
  msg = str(err.value)
  assert "'imagenet_r'" in msg and str(tmp_path) in msg
  assert "tfds build imagenet_r --data_dir=DIR --file_format=array_record" in msg


def test_tfds_dataset_prepared_as_tfrecord_is_reported(tmp_path):
  (tmp_path / "cifar100").mkdir()  # a folder tfds cannot read as ArrayRecord
  with pytest.raises(FileNotFoundError, match="tfds build cifar100"):
    sources.load_source("cifar100", data_dir=str(tmp_path), split="train")


def test_unknown_dataset_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match="tfds:<name>"):
    sources.load_source("cifar1000", split="train")


@functools.cache
def _tiny_builder_class():
  """A 2-split image dataset, unregistered: reads go through tfds's read-only builder."""
  import tensorflow_datasets as tfds  # noqa: PLC0415

  class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "image": tfds.features.Tensor(shape=(5, 6, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=4),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(20), "test": self._generate_examples(8)}

    def _generate_examples(self, n):
      for i in range(n):  # pixel value i encodes the example, label i % 4
        yield i, {"image": np.full((5, 6, 3), i, np.uint8), "label": i % 4}

  return TinyImages


def _build_tiny_tfds(data_dir: str) -> None:
  _tiny_builder_class()(data_dir=data_dir, file_format="array_record").download_and_prepare()


def test_tfds_array_record_round_trip(tmp_path):
  _build_tiny_tfds(str(tmp_path))
  src = sources.load_source("tfds:tiny_images", data_dir=str(tmp_path), split="train")
  assert isinstance(src, sources.TfdsSource)
  assert len(src) == 20 and src.labels.dtype == np.int32
  assert sorted(src.labels.tolist()) == sorted(i % 4 for i in range(20))
  seen = set()
  for i in range(len(src)):
    ex = src[i]
    assert ex["image"].shape == (5, 6, 3) and ex["image"].dtype == np.uint8
    value = int(ex["image"][0, 0, 0])
    assert ex["label"] == src.labels[i] == value % 4
    seen.add(value)
  assert seen == set(range(20))
  half = sources.TfdsSource("tiny_images", "test[:50%]", str(tmp_path))
  assert len(half) == 4
  clone = pickle.loads(pickle.dumps(src))  # grain worker processes receive a pickle
  np.testing.assert_array_equal(clone[3]["image"], src[3]["image"])
  assert sources.num_classes("tfds:tiny_images", data_dir=str(tmp_path)) == 4


def test_tfds_data_dir_falls_back_to_env(tmp_path, monkeypatch):
  _build_tiny_tfds(str(tmp_path))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  assert len(sources.TfdsSource("tiny_images", "test")) == 8


def test_encoded_image_bytes_are_decoded():
  import io  # noqa: PLC0415

  from PIL import Image  # noqa: PLC0415

  pixels = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG")
  np.testing.assert_array_equal(sources.as_image(buf.getvalue()), pixels)


def test_registry_class_counts_and_imagenet_r_split_mapping():
  assert sources.num_classes("cifar100") == 100
  assert sources.num_classes("imagenet_r") == 200
  assert sources.num_classes("caltech_birds2011") == 200
  splits_ = dict(sources.DATASETS["imagenet_r"].splits)
  assert splits_ == {"train": "test[:80%]", "test": "test[80%:]"}


# --- transforms ----------------------------------------------------------------------


def _gray_example(h=28, w=28):
  image = np.zeros((h, w, 1), np.uint8)
  image[:, : w // 4] = 255  # a bright left band
  return {"image": image, "label": np.int64(3)}


@pytest.mark.parametrize("aug", transforms.TRAIN_AUGS)
@pytest.mark.parametrize("channels", [1, 3])
def test_train_transform_shape_dtype_channels_and_determinism(aug, channels):
  t = transforms.TrainTransform(16, channels=channels, aug=aug, scale_min=0.3)
  rgb = {"image": np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8), "label": 1}
  for ex in (_gray_example(), rgb):
    out = t(ex, np.random.default_rng(5))
    assert out["image"].shape == (16, 16, channels) and out["image"].dtype == np.uint8
    assert out["label"] == ex["label"] and out["label"].dtype == np.int32
    np.testing.assert_array_equal(out["image"], t.random_map(ex, np.random.default_rng(5))["image"])
  if channels == 3:  # gray repeated to RGB
    out = t(_gray_example(), np.random.default_rng(1))["image"]
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_train_transform_draws_differ_across_seeds():
  t = transforms.TrainTransform(16, channels=1, aug="rrc_flip")
  ex = {"image": np.random.default_rng(0).integers(0, 256, (32, 32, 1), np.uint8), "label": 0}
  outs = {t(ex, np.random.default_rng(s))["image"].tobytes() for s in range(6)}
  assert len(outs) > 1


def test_flip_mirrors_the_image():
  ex = _gray_example()
  t = transforms.TrainTransform(28, channels=1, aug="flip")
  outs = [t(ex, np.random.default_rng(s))["image"] for s in range(16)]
  flipped = [o for o in outs if not np.array_equal(o, ex["image"])]
  assert 0 < len(flipped) < len(outs)  # p = 0.5
  for o in flipped:
    np.testing.assert_array_equal(o, ex["image"][:, ::-1])
  assert not transforms.TrainTransform(28, channels=1, aug="none")(ex, np.random.default_rng(0))[
    "image"
  ][:, -1].any()


def test_crop_flip_is_a_shifted_window_of_the_padded_image():
  image = np.random.default_rng(2).integers(0, 256, (12, 12, 3), np.uint8)
  t = transforms.TrainTransform(12, channels=3, aug="crop_flip")
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")
  for s in range(5):
    out = t({"image": image, "label": 0}, np.random.default_rng(s))["image"]
    windows = [
      padded[y : y + 12, x : x + 12][:, ::f] for y in range(9) for x in range(9) for f in (1, -1)
    ]
    assert any(np.array_equal(out, w) for w in windows)


def test_rrc_box_fits_and_respects_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(50):
    left, top, right, bottom = transforms.random_resized_crop_box(
      40, 60, rng, (0.2, 1.0), (3 / 4, 4 / 3)
    )
    w, h = right - left, bottom - top
    assert 0 <= left < right <= 60 and 0 <= top < bottom <= 40
    assert 0.2 * 2400 * 0.9 <= w * h <= 2400
  box = transforms.random_resized_crop_box(10, 100, rng, (0.9, 1.0), (3 / 4, 4 / 3))
  assert box == (43, 0, 56, 10)  # fallback: centre crop with the aspect clamped to 4/3


@pytest.mark.parametrize("mode", transforms.EVAL_RESIZE_MODES)
def test_eval_transform_shapes(mode):
  t = transforms.EvalTransform(16, channels=3, resize_mode=mode, interpolation="bicubic")
  for shape in ((28, 28, 1), (30, 50, 3), (50, 30, 3)):
    out = t({"image": np.full(shape, 7, np.uint8), "label": 2})
    assert out["image"].shape == (16, 16, 3) and out["image"].dtype == np.uint8
    assert np.all(out["image"] == 7) and out["label"] == 2
  assert t.map({"image": np.zeros((8, 8, 3), np.uint8), "label": 0})["image"].shape == (16, 16, 3)


def test_eval_resize_crop_takes_the_centre():
  image = np.zeros((224, 448, 1), np.uint8)
  image[:, 224 - 20 : 224 + 20] = 255  # a bright vertical band in the middle
  out = transforms.EvalTransform(224, channels=1, resize_mode="resize_crop")(
    {"image": image, "label": 0}
  )["image"]
  assert out.shape == (224, 224, 1)
  assert out[:, 112, 0].min() == 255 and out[:, :60].max() == 0 and out[:, -60:].max() == 0


def test_transform_arguments_are_validated():
  with pytest.raises(ValueError, match="aug"):
    transforms.TrainTransform(8, aug="mixup")
  with pytest.raises(ValueError, match="channels"):
    transforms.TrainTransform(8, channels=2)
  with pytest.raises(ValueError, match="resize_mode"):
    transforms.EvalTransform(8, resize_mode="pad")


def test_transforms_pickle_and_run_in_grain():
  train = transforms.TrainTransform(8, channels=3, aug="rrc_flip")
  ev = transforms.EvalTransform(8, channels=3)
  assert isinstance(train, grain.transforms.RandomMap) and isinstance(ev, grain.transforms.Map)
  assert pickle.loads(pickle.dumps(train)) == train
  items = [_gray_example(12, 12) for _ in range(4)]
  ds = grain.MapDataset.source(items).seed(0).random_map(train)
  a, b = [x["image"] for x in ds], [x["image"] for x in ds]
  assert all(x.shape == (8, 8, 3) for x in a)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)
  assert [x["label"] for x in grain.MapDataset.source(items).map(ev)] == [3] * 4


# --- scaling -------------------------------------------------------------------------


def test_scale_images_values_and_jit():
  x = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3, 1) * np.ones((1, 1, 1, 3), np.uint8)
  np.testing.assert_allclose(transforms.scale_images(x, "01")[0, 0, :, 0], [0, 0.2, 1], rtol=1e-6)
  np.testing.assert_allclose(
    transforms.scale_images(x, "-11")[0, 0, :, 0], [-1, 51 / 127.5 - 1, 1], rtol=1e-6
  )
  net = jax.jit(lambda v: transforms.scale_images(v, "imagenet"))(x)
  assert net.dtype == np.float32 and net.shape == x.shape
  np.testing.assert_allclose(
    net[0, 0, 0], -np.array([0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], rtol=1e-5
  )
  np.testing.assert_allclose(
    transforms.scale_images(x, "cifar100")[0, 0, 2],
    (1 - np.array([0.5071, 0.4867, 0.4408])) / [0.2675, 0.2565, 0.2761],
    rtol=1e-5,
  )
  gray = transforms.scale_images(x[..., :1], "imagenet")
  assert gray.shape == (1, 1, 3, 1)
  with pytest.raises(ValueError, match="imagenet"):
    transforms.scale_images(x, "bad")
