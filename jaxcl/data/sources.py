"""Random-access image sources: in-memory arrays, Fashion-MNIST idx files, tfds ArrayRecord.

Every source has `__len__`, `__getitem__(i) -> {"image": uint8 [H, W, C], "label"}` and
a `labels` vector (read without decoding images) from which splits are built.
Named datasets come through `tfds.data_source`, so TensorFlow is needed only to
*prepare* them, never to train.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_TFDS = {"cifar100": 100, "imagenet_r": 200, "caltech_birds2011": 200}
# imagenet_r has only a `test` split in tfds; google-research/l2p trains on its first 80%.
_SPLITS = {"imagenet_r": {"train": "test[:80%]", "test": "test[80%:]"}}


class ArraySource:
  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images = images if images.ndim == 4 else images[..., None]
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.images[i], "label": self.labels[i]}


def read_idx(path: str) -> np.ndarray:
  """An IDX file (optionally gzipped) as a uint8 array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(data_dir: str = "") -> tuple[ArraySource, ArraySource]:
  data_dir = data_dir or FASHION_MNIST_DIR
  out = []
  for prefix in ("train", "t10k"):
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
      base = os.path.join(data_dir, f"{prefix}-{kind}")
      path = next((p for p in (base + ".gz", base) if os.path.exists(p)), None)
      if path is None:
        raise FileNotFoundError(
          f"Fashion-MNIST file {base}[.gz] not found. Install it with "
          "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, files land in "
          f"{FASHION_MNIST_DIR}), or download the four idx files from "
          "github.com/zalandoresearch/fashion-mnist and pass --config.data.dir=DIR."
        )
      arrays.append(read_idx(path))
    out.append(ArraySource(arrays[0][..., None], arrays[1]))
  return out[0], out[1]


class TfdsSource:
  """A prepared tfds dataset (ArrayRecord) read through `tfds.data_source`."""

  def __init__(self, name: str, split: str, data_dir: str = ""):
    import tensorflow_datasets as tfds  # noqa: PLC0415  (slow import, only when used)

    data_dir = data_dir or os.environ.get(
      "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")
    )
    if not os.path.isdir(os.path.join(data_dir, name)):
      raise FileNotFoundError(
        f"tfds dataset {name!r} is not prepared in {data_dir}. On a machine with TensorFlow "
        f"and internet run `tfds build {name} --data_dir=DIR --file_format=array_record`, copy "
        f"DIR/{name} here and pass --config.data.dir=DIR (or set TFDS_DATA_DIR)."
      )
    self.source = tfds.data_source(name, split=split, data_dir=data_dir)
    self.labels = np.asarray(
      [int(self.source[i]["label"]) for i in range(len(self.source))], np.int32
    )

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    ex = self.source[i]
    image = ex["image"]
    if isinstance(image, bytes):
      import io  # noqa: PLC0415

      from PIL import Image  # noqa: PLC0415

      image = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    return {"image": np.asarray(image, np.uint8), "label": np.int32(ex["label"])}


def load_source(name: str, *, data_dir: str = "", split: str):
  """`fashion_mnist`, `cifar100`, `imagenet_r`, `caltech_birds2011` or `tfds:<name>`."""
  if name == "fashion_mnist":
    train, test = load_fashion_mnist(data_dir)
    return train if split == "train" else test
  tfds_name = name.removeprefix("tfds:")
  if name.startswith("tfds:") or name in _TFDS:
    return TfdsSource(tfds_name, _SPLITS.get(tfds_name, {}).get(split, split), data_dir)
  raise ValueError(
    f"unknown dataset {name!r}: glyphs | fashion_mnist | {' | '.join(_TFDS)} | tfds:<name>"
  )
