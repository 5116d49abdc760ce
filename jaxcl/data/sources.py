"""Random-access image sources: in-memory arrays, Fashion-MNIST idx files, tfds ArrayRecord.

Every source has `__len__`, `__getitem__(i) -> {"image": uint8 [H, W, C], "label": int32}`
and a `labels` vector (np.int32 [N]) from which task splits are built without
reading images. Named datasets come through `tfds.data_source` (ArrayRecord), so
TensorFlow is needed only to *prepare* them, never to train (DESIGN.md §5).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os

import numpy as np

from jaxcl import paths, user_errors

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_MNIST_FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UINT8 = 0x08  # the IDX type byte for unsigned 8-bit data


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A named dataset: how many classes and which tfds split serves our `train`/`test`."""

  num_classes: int
  tfds_name: str = ""  # empty: not read through tfds
  splits: tuple[tuple[str, str], ...] = (("train", "train"), ("test", "test"))


DATASETS = {
  "fashion_mnist": DatasetSpec(10),
  "cifar100": DatasetSpec(100, "cifar100"),
  # tfds imagenet_r has only a `test` split (30k images); google-research/l2p trains on
  # its first 80% and tests on the rest (research/prompt_cil.md §2.1).
  "imagenet_r": DatasetSpec(200, "imagenet_r", (("train", "test[:80%]"), ("test", "test[80%:]"))),
  "caltech_birds2011": DatasetSpec(200, "caltech_birds2011"),
}


class ArraySource:
  """Examples held in memory: `images` uint8 [N, H, W, C] and integer `labels` [N]."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    images = np.asarray(images)
    if images.ndim == 3:  # [N, H, W] grayscale
      images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images = images  # [N, H, W, C]
    self.labels = np.asarray(labels, np.int32)  # [N]

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.images[i], "label": self.labels[i]}


def read_idx(path: str) -> np.ndarray:
  """A uint8 IDX file (gzipped when the name ends in `.gz`; local or gs://) as an array."""
  data = paths.path(path).read_bytes()
  if path.endswith(".gz"):
    data = gzip.decompress(data)
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UINT8:
    raise user_errors.BadInput(
      f"{path} is not a uint8 IDX file (header {data[:4].hex()}); expected the Fashion-MNIST "
      "idx files as published (plain or .gz): download them again"
    )
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist_missing(path: str, data_dir: str) -> user_errors.MissingInput:
  return user_errors.MissingInput(
    f"Fashion-MNIST file {path}[.gz] not found in {data_dir}. Get the files with "
    "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs them in "
    f"{FASHION_MNIST_DIR}), or download the four idx files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
    "from https://github.com/zalandoresearch/fashion-mnist (data/fashion) into a "
    "directory DIR and pass --config.data.dir=DIR."
  )


def load_fashion_mnist(data_dir: str = "") -> tuple[ArraySource, ArraySource]:
  """Fashion-MNIST (Xiao et al., 2017) from its idx files: 60k train, 10k test, [28, 28, 1].

  Reads `data_dir` (local or gs://) or, when empty, the Debian package's directory; `.gz` or
  plain idx.
  """
  data_dir = data_dir or FASHION_MNIST_DIR
  out = []
  for split in ("train", "test"):
    arrays = []
    for name in _FASHION_MNIST_FILES[split]:
      base = os.path.join(data_dir, name)
      path = next((p for p in (base + ".gz", base) if paths.path(p).is_file()), None)
      if path is None:
        raise _fashion_mnist_missing(name, data_dir)
      arrays.append(read_idx(path))
    images, labels = arrays  # [N, 28, 28], [N]
    out.append(ArraySource(images[..., None], labels))
  return out[0], out[1]


def tfds_data_dir(data_dir: str = "") -> str:
  """`data_dir`, else `$TFDS_DATA_DIR`, else tfds's default `~/tensorflow_datasets`."""
  return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _prepare_hint(name: str, data_dir: str) -> str:
  return (
    f"On a machine with TensorFlow and internet run `tfds build {name} --data_dir=DIR "
    f"--file_format=array_record` (manual-download datasets need their files in "
    f"DIR/downloads/manual first), then copy DIR/{name} into {data_dir} and pass "
    "--config.data.dir (or set TFDS_DATA_DIR). Training reads ArrayRecord files only."
  )


def tfds_builder(name: str, data_dir: str = ""):
  """The tfds builder of a dataset prepared in `data_dir`, never touching the network.

  Raises:
    FileNotFoundError: naming the dataset, the directory searched and how to prepare it.
  """
  import tensorflow_datasets as tfds  # noqa: PLC0415  (slow import, only when used)

  data_dir = tfds_data_dir(data_dir)
  folder = os.path.join(data_dir, name.split(":")[0])
  if not paths.path(folder).is_dir():  # checked first, so tfds never reaches for a download
    raise user_errors.MissingInput(
      f"tfds dataset {name!r} is not prepared: {folder} does not exist. "
      + _prepare_hint(name, data_dir)
    )
  try:
    return tfds.builder(name, data_dir=data_dir)
  except (tfds.core.registered.DatasetNotFoundError, AssertionError, FileNotFoundError) as e:
    raise user_errors.MissingInput(
      f"tfds dataset {name!r} is not prepared in {data_dir} ({e}). " + _prepare_hint(name, data_dir)
    ) from e


class TfdsSource:
  """A tfds dataset prepared as ArrayRecord, read without TensorFlow.

  Opens the builder's `as_data_source` (what `tfds.data_source` calls) after checking
  that the dataset folder exists, so a missing dataset never triggers a download.

  Args:
    name: tfds name, optionally `name/config:version`.
    split: a tfds split string (`train`, `test[:80%]`, ...).
    data_dir: where it was prepared; empty means `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
    image_key / label_key: the feature names of the image and the class label.

  Image features other than `image_key` (e.g. CUB's segmentation masks) are left
  undecoded, and the label vector is read once, in memory, with no image decoded.
  """

  def __init__(
    self,
    name: str,
    split: str,
    data_dir: str = "",
    *,
    image_key: str = "image",
    label_key: str = "label",
  ):
    self.name, self.split, self.data_dir = name, split, tfds_data_dir(data_dir)
    self.image_key, self.label_key = image_key, label_key
    builder = tfds_builder(name, self.data_dir)
    features = builder.info.features
    for key in (image_key, label_key):
      if key not in features:
        raise KeyError(f"tfds dataset {name!r} has no feature {key!r}: {list(features)}")
    self._source = self._open(builder, decode_image=True)
    self.labels = self._read_labels(self._open(builder, decode_image=False))  # [N]

  def _open(self, builder, *, decode_image: bool):
    """An ArrayRecord data source; Image features other than the image stay encoded."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    skip = {
      key: tfds.decode.SkipDecoding()
      for key, feature in builder.info.features.items()
      if isinstance(feature, tfds.features.Image) and (key != self.image_key or not decode_image)
    }
    try:
      return builder.as_data_source(split=self.split, decoders=skip or None)
    except NotImplementedError as e:  # prepared, but as TFRecord (or not at all)
      raise user_errors.MissingInput(
        f"tfds dataset {self.name!r} has no ArrayRecord files in {self.data_dir} ({e}). "
        + _prepare_hint(self.name, self.data_dir)
      ) from e

  def _read_labels(self, source, chunk: int = 1024) -> np.ndarray:
    n = len(source)
    labels = [
      ex[self.label_key]
      for start in range(0, n, chunk)
      for ex in source.__getitems__(list(range(start, min(start + chunk, n))))
    ]
    return np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    ex = self._source[int(i)]
    return {"image": as_image(ex[self.image_key]), "label": np.int32(ex[self.label_key])}

  def __getstate__(self) -> dict:  # pickled into grain workers: they re-open the files
    return {k: v for k, v in self.__dict__.items() if k != "_source"}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._source = self._open(tfds_builder(self.name, self.data_dir), decode_image=True)


def as_image(value) -> np.ndarray:
  """A decoded array or encoded (PNG/JPEG) bytes -> uint8 [H, W, C]."""
  if isinstance(value, bytes | np.bytes_):
    from PIL import Image  # noqa: PLC0415

    with Image.open(io.BytesIO(value)) as pil:
      value = np.asarray(pil.convert("RGB") if pil.mode not in ("L", "RGB") else pil)
  image = np.asarray(value, np.uint8)
  return image[..., None] if image.ndim == 2 else image


def _spec(name: str) -> DatasetSpec:
  if name.startswith("tfds:"):
    return DatasetSpec(0, name.removeprefix("tfds:"))
  if name in DATASETS:
    return DATASETS[name]
  raise ValueError(f"unknown dataset {name!r}: glyphs | {' | '.join(DATASETS)} | tfds:<name>")


def num_classes(name: str, data_dir: str = "") -> int:
  """Number of classes of a named dataset (`tfds:<name>` reads its prepared ClassLabel)."""
  if name == "glyphs":
    from jaxcl.data import glyphs  # noqa: PLC0415  (builds font tables on import)

    return glyphs.num_classes("continual")
  spec = _spec(name)
  if spec.num_classes:
    return spec.num_classes
  label = tfds_builder(spec.tfds_name, data_dir).info.features["label"]
  if not hasattr(label, "num_classes"):
    raise ValueError(f"{name}: feature `label` is {label}, not a ClassLabel")
  return int(label.num_classes)


def load_source(name: str, *, data_dir: str = "", split: str) -> ArraySource | TfdsSource:
  """The `split` (`train` | `test`, or a tfds split string) of a named dataset.

  Names: `glyphs`, `fashion_mnist`, `cifar100`, `imagenet_r`, `caltech_birds2011` and
  `tfds:<name>` for any tfds dataset with `image`/`label` features.
  """
  if name == "glyphs":
    # Delegated: the offline glyph renderer lives in jaxcl/data/glyphs.py.
    from jaxcl.data import glyphs  # noqa: PLC0415  (builds font tables on import)

    return glyphs.load_split(split, data_dir)
  spec = _spec(name)
  if name == "fashion_mnist":
    if split not in ("train", "test"):
      raise ValueError(f"fashion_mnist split must be train | test, got {split!r}")
    train, test = load_fashion_mnist(data_dir)
    return train if split == "train" else test
  return TfdsSource(spec.tfds_name, dict(spec.splits).get(split, split), data_dir)
