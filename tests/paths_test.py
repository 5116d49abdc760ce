"""gs:// wherever a path is accepted (jaxcl/paths.py): data dirs, text domains, tokenizers and
weights read from a fake bucket, a local directory that fsspec serves as `gs://` to epath."""

from __future__ import annotations

import gzip
import json
import os

import fsspec
import numpy as np
import pytest
from etils import epath
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import _registry

from jaxcl import paths
from jaxcl.data import sources, text
from jaxcl.models import text_loading


class _FakeBucket(LocalFileSystem):
  """`gs://BUCKET/KEY` served from `root/BUCKET/KEY`; lists paths as gcsfs does (no scheme)."""

  protocol = ("gs", "gcs")
  root = "/nonexistent"

  def __init__(self, *args, finalize_on_close: bool = False, **kwargs):
    del finalize_on_close  # a gcsfs option epath passes
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    path = path.split("://", 1)[1] if "://" in path else path
    if not path.startswith(cls.root):
      path = os.path.join(cls.root, path.lstrip("/"))
    return path.rstrip("/") or cls.root

  def glob(self, path, **kwargs):
    return [p[len(self.root) + 1 :] for p in super().glob(path, **kwargs)]


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The local directory behind `gs://`; JAXCL_CACHE is a fresh directory too."""
  root = tmp_path / "gcs"
  root.mkdir()
  monkeypatch.setattr(_FakeBucket, "root", str(root))
  for scheme in ("gs", "gcs"):
    monkeypatch.setitem(_registry, scheme, _FakeBucket)
  monkeypatch.setenv("JAXCL_CACHE", str(tmp_path / "cache"))
  cached = epath.backend.fsspec_backend._get_filesystem
  cached.cache_clear()
  yield root
  cached.cache_clear()


def _put(bucket, key: str, data: bytes) -> str:
  path = bucket / key
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return f"gs://{key}"


def test_the_fake_bucket_is_not_the_local_file_system(bucket):
  url = _put(bucket, "b/x/a.txt", b"hi")
  assert epath.Path(url).read_text() == "hi" and not os.path.exists(url)
  assert paths.glob("gs://b/x/*.txt") == [url] and paths.glob("gs://b/y/*.txt") == []


def test_local_copy_downloads_once_and_again_when_the_object_changes(bucket, tmp_path):
  url = _put(bucket, "b/tok/vocab.model", b"12345")
  local = paths.local_copy(url)
  assert local.startswith(str(tmp_path / "cache")) and open(local, "rb").read() == b"12345"
  _put(bucket, "b/tok/vocab.model", b"1234567")  # replaced by another size
  assert paths.local_copy(url) == local and open(local, "rb").read() == b"1234567"
  assert paths.local_copy("~/x") == os.path.expanduser("~/x")


def _idx(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  return gzip.compress(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files_from_a_bucket(bucket):
  rng = np.random.default_rng(0)
  images = {"train": rng.integers(0, 256, (6, 28, 28)), "test": rng.integers(0, 256, (3, 28, 28))}
  for split, (image_file, label_file) in sources._FASHION_MNIST_FILES.items():
    _put(bucket, f"b/fmnist/{image_file}.gz", _idx(images[split]))
    _put(bucket, f"b/fmnist/{label_file}.gz", _idx(np.arange(len(images[split])) % 10))
  train, test = sources.load_fashion_mnist("gs://b/fmnist")
  assert (len(train), len(test)) == (6, 3)
  np.testing.assert_array_equal(train[4]["image"][..., 0], images["train"][4])
  np.testing.assert_array_equal(test.labels, [0, 1, 2])


def test_tfds_data_dir_in_a_bucket_is_looked_up_there(bucket):
  with pytest.raises(FileNotFoundError, match="gs://b/tfds/cifar100 does not exist"):
    sources.tfds_builder("cifar100", "gs://b/tfds")
  _put(bucket, "b/tfds/cifar100/README", b"")  # now the folder exists: tfds reads it there
  builder = sources.tfds_builder("cifar100", "gs://b/tfds")
  assert str(builder.data_dir).startswith("gs://b/tfds/cifar100/")


def test_text_domains_and_tokenizer_from_a_bucket(bucket):
  _put(bucket, "b/text/a/one.txt", b"first document " * 40)
  _put(bucket, "b/text/b/two.txt", b"second document " * 40)
  docs = text.glob_documents("gs://b/text/*/*.txt")  # epath refuses ** on buckets
  assert [p for p, _ in docs] == ["gs://b/text/a/one.txt", "gs://b/text/b/two.txt"]
  assert docs[1][1].startswith("second document")
  tokens = np.frombuffer(("abc" * 300).encode(), np.uint8).astype(np.uint16)
  _put(bucket, "b/tokens.bin", tokens.tobytes())
  byte = text.make_tokenizer("byte")
  domain = text.load_domain("bin:gs://b/tokens.bin", byte, seq_len=16, valid_fraction=0.0)
  window = domain.train[0]["tokens"]  # [seq_len + 1] or [seq_len]
  np.testing.assert_array_equal(window[:6], tokens[:6])
  tokenizers = pytest.importorskip("tokenizers")
  vocab = {"[UNK]": 0, "a": 1, "b": 2, "</s>": 3}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  _put(bucket, "b/tok/tokenizer.json", tok.to_str().encode())
  hf = text.make_tokenizer("gs://b/tok/tokenizer.json")
  assert hf.encode("a b a").tolist() == [1, 2, 1]


def test_safetensors_checkpoint_directory_from_a_bucket(bucket):
  from safetensors.numpy import save  # noqa: PLC0415

  weights = {"wte.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
  _put(bucket, "b/gpt/model.safetensors", save(weights))
  _put(bucket, "b/gpt/config.json", json.dumps({"model_type": "gpt2"}).encode())
  tensors, config, files = text_loading.read_checkpoint("gs://b/gpt")
  np.testing.assert_array_equal(tensors["wte.weight"], weights["wte.weight"])
  assert config == {"model_type": "gpt2"} and files == ("gs://b/gpt/model.safetensors",)
