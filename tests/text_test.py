"""Text domains: tokenizers, stdlib corpora, validation split, packing, token files, iterators."""

from __future__ import annotations

import ast
import os
import sys

import jax
import numpy as np
import pytest

from jaxcl import sharding
from jaxcl.data import pipeline, text

BYTE = text.ByteTokenizer()


def _write_docs(folder, docs: list[str]) -> str:
  for i, doc in enumerate(docs):
    (folder / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
  return str(folder / "*.txt")


def _stream(docs, tokenizer=BYTE) -> np.ndarray:
  """The expected packed stream: every document's tokens followed by EOS."""
  return np.concatenate([np.append(tokenizer.encode(d), tokenizer.eos_id) for d in docs])


def _joined(docs: list[np.ndarray], keep: np.ndarray) -> np.ndarray:
  """The kept token documents, each followed by EOS."""
  return np.concatenate([np.append(x, text.EOS_ID) for x, k in zip(docs, keep, strict=True) if k])


def _windows(source) -> np.ndarray:
  return np.stack([source[i]["tokens"] for i in range(len(source))])


# --- tokenizers ---------------------------------------------------------------------------


def test_byte_tokenizer_round_trip_and_specials():
  s = "plain ASCII, Ünïcödé and 🙂\n\ttabs"
  ids = BYTE.encode(s)
  assert ids.dtype == np.int32 and ids.max() < 256 and len(ids) == len(s.encode("utf-8"))
  assert BYTE.decode(ids) == s
  assert (text.EOS_ID, text.PAD_ID, text.MASK_ID, BYTE.vocab_size) == (256, 257, 258, 259)
  assert BYTE.decode(np.concatenate([ids[:5], [text.EOS_ID, text.MASK_ID], ids[5:]])) == s
  assert text.make_tokenizer("") is not None and text.make_tokenizer("byte").eos_id == 256
  with pytest.raises(ValueError, match="byte"):
    text.make_tokenizer("vocab.txt")


def test_optional_tokenizer_packages_missing_give_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "tokenizers", None)
  monkeypatch.setitem(sys.modules, "sentencepiece", None)
  with pytest.raises(ImportError, match="pip install tokenizers"):
    text.make_tokenizer("t.json")
  with pytest.raises(ImportError, match="pip install sentencepiece"):
    text.make_tokenizer("t.model")


def test_hf_tokenizer_json(tmp_path):
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  trainer = tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]", "</s>", "<pad>"])
  tok.train_from_iterator(["the cat sat on the mat", "a dog sat"], trainer)
  tok.save(str(tmp_path / "t.json"))
  t = text.make_tokenizer(str(tmp_path / "t.json"))
  base = tok.get_vocab_size()
  assert (t.eos_id, t.pad_id) == (tok.token_to_id("</s>"), tok.token_to_id("<pad>"))
  assert t.mask_id == base and t.vocab_size == base + 1  # no mask token: appended
  ids = t.encode("the dog sat on the mat")
  assert ids.dtype == np.int32 and t.decode(ids) == "the dog sat on the mat"


def test_sentencepiece_model(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  lines = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen jugs"] * 20
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(lines),
    model_prefix=str(tmp_path / "m"),
    vocab_size=36,
    pad_id=3,
    user_defined_symbols=["<mask>"],
    minloglevel=2,
  )
  t = text.make_tokenizer(str(tmp_path / "m.model"))
  assert (t.eos_id, t.pad_id, t.vocab_size) == (2, 3, 36)
  assert t.mask_id == 4  # the first user-defined symbol
  ids = t.encode("the lazy fox")
  assert t.decode(np.append(ids, t.eos_id)) == "the lazy fox"


# --- stdlib sources -----------------------------------------------------------------------

_SOURCE = '''"""Module docstring."""
import os  # a comment


class OnlyDoc:
  """Only a docstring."""


def f(x):
  """Function docstring,
  on two lines."""
  y = "not a docstring"  # keep me
  return x


def g(): "one-liner"; return 1


async def h():
  """Async docstring."""
  return 2
'''


def _docstrings(source: str) -> list:
  tree = ast.parse(source)
  return [
    n
    for n in ast.walk(tree)
    if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    and ast.get_docstring(n, clean=False) is not None
  ]


def test_strip_docstrings_keeps_code_and_comments():
  out = text.strip_docstrings(_SOURCE)
  assert _docstrings(_SOURCE) and not _docstrings(out)
  assert "docstring" not in out.replace("not a docstring", "")
  assert "one-liner" not in out and "not a docstring" in out
  ns = {}
  exec(compile(out, "<stripped>", "exec"), ns)  # still runs
  assert ns["f"](3) == 3 and ns["g"]() == 1 and ns["OnlyDoc"].__doc__ is None
  plain = text.strip_docstrings(_SOURCE.replace('def g(): "one-liner"; return 1\n', ""))
  assert "# a comment" in plain and "# keep me" in plain  # the line-based cut keeps comments


def test_python_files_skip_test_suites_and_are_sorted():
  files = text.python_files()
  assert files == sorted(files) and len(files) > 300
  parts = {p for f in files for p in f.split("/")[:-1]}
  assert not parts & {"test", "tests", "idlelib", "site-packages", "encodings"}
  assert not any(f.split("/")[-1].startswith("test_") for f in files)
  assert "json/decoder.py" in files and "asyncio/events.py" in files


def test_prose_and_code_documents_are_nonempty_deterministic_and_stripped():
  prose, code = text.stdlib_documents("json")
  assert len(prose) > 10 and len(code) >= 4
  assert text.stdlib_documents.__wrapped__("json") == (prose, code)  # recomputed: same
  ids = dict(prose)
  assert ids["__init__.py:0"].startswith("JSON (JavaScript Object Notation)")
  source = dict(code)["__init__.py"]
  assert "JavaScript Object Notation" not in source and "def dumps(" in source
  for _, src in code:
    assert not _docstrings(src)
  assert all(doc for _, doc in prose)


def test_pydoc_topics_are_prose_of_the_whole_stdlib_only():
  from pydoc_data import topics

  docs = dict(text.pydoc_topics())
  assert len(docs) == len(topics.topics) > 50
  assert docs["pydoc_data.topics:assert"] == topics.topics["assert"]
  assert not any(i.startswith("pydoc_data") for i, _ in text.stdlib_documents("json")[0])


# --- split and packing --------------------------------------------------------------------


def test_held_out_is_deterministic_disjoint_and_never_empty():
  ids = [f"doc{i}" for i in range(2000)]
  a = text.held_out(ids, 0.1, seed=0)
  np.testing.assert_array_equal(a, text.held_out(ids, 0.1, seed=0))
  assert 150 < a.sum() < 250
  assert (text.held_out(ids, 0.1, seed=1) != a).any()
  assert text.held_out(ids[:3], 0.001).sum() == 1  # never empty
  assert not text.held_out(ids, 0.0).any()
  with pytest.raises(ValueError):
    text.held_out(ids, 1.0)


def test_packing_windows_and_eos_separators(tmp_path):
  docs = [f"document {i}: " + "x" * (i * 7 % 23) for i in range(40)]
  pattern = _write_docs(tmp_path, docs)
  d = text.load_domain(f"glob:{pattern}", BYTE, seq_len=15, valid_fraction=0.2)
  valid = text.held_out(sorted(str(p) for p in tmp_path.glob("*.txt")), 0.2)
  assert d.num_documents == (int((~valid).sum()), int(valid.sum()))
  for source, keep in ((d.train, ~valid), (d.valid, valid)):
    expected = _stream([doc for doc, k in zip(docs, keep, strict=True) if k])
    assert len(source) == len(expected) // 16
    got = _windows(source)  # [N, 16]
    assert got.shape == (len(source), 16) and got.dtype == np.int32
    np.testing.assert_array_equal(got.reshape(-1), expected[: got.size])
    assert (got == text.EOS_ID).sum() >= len(source) * 16 // max(map(len, docs)) - 1
  marks = lambda s: {
    m.split(":")[0] for m in BYTE.decode(_windows(s).reshape(-1)).split("document ")
  }
  assert not (marks(d.train) - {""}) & (marks(d.valid) - {""})  # no shared document
  with pytest.raises(IndexError):
    d.train[len(d.train)]


def test_validation_split_never_overlaps_training_on_stdlib_code():
  d = text.load_domain("code:json", BYTE, seq_len=63, valid_fraction=0.3)
  _, code = text.stdlib_documents("json")
  valid = text.held_out([i for i, _ in code], 0.3)
  assert d.num_documents == (int((~valid).sum()), int(valid.sum()))
  train_text = BYTE.decode(_windows(d.train).reshape(-1))
  for (_, src), v in zip(code, valid, strict=True):
    line = max(src.splitlines(), key=len)  # a distinctive line of the file
    assert (line in train_text) == (not v) or len(src) < 64


def test_too_small_domain_is_a_clear_error(tmp_path):
  pattern = _write_docs(tmp_path, ["ab", "cd", "ef"])
  with pytest.raises(ValueError, match="fewer than one window"):
    text.load_domain(f"glob:{pattern}", BYTE, seq_len=64)
  with pytest.raises(ValueError, match="unknown text domain"):
    text.load_domain("wiki", BYTE, seq_len=8)


# --- token files --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_bin_token_file(tmp_path, dtype):
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, 256, rng.integers(1, 40)) for _ in range(60)]
  flat = np.concatenate([np.append(doc, text.EOS_ID) for doc in docs]).astype(dtype)
  path = tmp_path / "corpus.bin"
  flat.tofile(path)  # nanoGPT layout: one flat little-endian stream, EOS after every doc
  d = text.load_domain(f"bin:{path}", BYTE, seq_len=7, valid_fraction=0.25, bin_dtype=dtype)
  valid = text.held_out(range(60), 0.25)
  assert d.num_documents == (int((~valid).sum()), int(valid.sum()))
  for source, keep in ((d.train, ~valid), (d.valid, valid)):
    expected = _joined(docs, keep)
    got = _windows(source).reshape(-1)
    np.testing.assert_array_equal(got, expected[: len(got)])
    assert len(got) == len(expected) // 8 * 8


def test_bin_bounds_without_eos_uses_blocks():
  bounds = text.bin_bounds(np.zeros(150_000, np.uint16), eos_id=256, chunk=50_000)
  assert bounds.tolist() == [0, 65536, 131072, 150000]
  bounds = text.bin_bounds(np.array([1, 256, 2, 3, 256, 4], np.uint16), eos_id=256, chunk=4)
  assert bounds.tolist() == [0, 2, 5, 6]


def test_arrayrecord_token_files(tmp_path):
  from array_record.python.array_record_module import ArrayRecordWriter

  rng = np.random.default_rng(1)
  docs = [rng.integers(0, 256, rng.integers(0, 30)).astype("<i4") for _ in range(50)]
  for part, chunk in enumerate((docs[:20], docs[20:])):  # two files, read in sorted order
    writer = ArrayRecordWriter(str(tmp_path / f"part-{part}.array_record"), "group_size:1")
    for doc in chunk:
      writer.write(doc.tobytes())  # one record = one document's int32 ids, no separator
    writer.close()
  spec = f"arrayrecord:{tmp_path}/part-*.array_record"
  d = text.load_domain(spec, BYTE, seq_len=9, valid_fraction=0.2)
  valid = text.held_out(range(50), 0.2)
  for source, keep in ((d.train, ~valid), (d.valid, valid)):
    expected = _joined(docs, keep)
    got = _windows(source).reshape(-1)
    assert len(got) == len(expected) // 10 * 10
    np.testing.assert_array_equal(got, expected[: len(got)])


def test_load_domains_from_config(tmp_path):
  pattern = _write_docs(tmp_path, [f"text number {i} " * 5 for i in range(30)])
  data = text.default_config()
  data.dir = ""
  data.domains = f"code:json, glob:{pattern}"
  data.seq_len = 31
  domains = text.load_domains(data, text.make_tokenizer(data.tokenizer))
  assert [d.name for d in domains] == ["code:json", f"glob:{pattern}"]
  assert all(len(d.train) and len(d.valid) for d in domains)


def test_tfds_text_dataset(tmp_path):
  import tensorflow_datasets as tfds

  class TinyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(12)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"text": f"tfds document {i} " * 4}

  TinyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  docs = text.tfds_documents("tiny_text", split="train", text_key="text", data_dir=str(tmp_path))
  assert sorted(t for _, t in docs) == sorted(f"tfds document {i} " * 4 for i in range(12))
  d = text.load_domain(
    "tfds:tiny_text", BYTE, seq_len=31, valid_fraction=0.2, data_dir=str(tmp_path)
  )
  valid = text.held_out([i for i, _ in docs], 0.2)
  kept = [t for (_, t), v in zip(docs, valid, strict=True) if not v]
  np.testing.assert_array_equal(_windows(d.train).reshape(-1), _stream(kept)[: len(d.train) * 32])
  with pytest.raises(KeyError, match="data.text_key"):
    text.tfds_documents("tiny_text", split="train", text_key="content", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="tfds build lm1b"):
    text.load_domain("tfds:lm1b", BYTE, seq_len=8, data_dir=str(tmp_path))


# --- masked LM ----------------------------------------------------------------------------


def test_mlm_masking_counts_and_determinism(tmp_path):
  pattern = _write_docs(tmp_path, [f"masked language model text {i} " * 4 for i in range(30)])
  d = text.load_domain(f"glob:{pattern}", BYTE, seq_len=100, valid_fraction=0.1)
  mlm = text.MaskedSource(d.train, BYTE, seed=3)
  ex = mlm[2]
  window = d.train[2]["tokens"][:-1]
  np.testing.assert_array_equal(ex["targets"], window)
  assert ex["tokens"].shape == ex["target_mask"].shape == (100,)
  eligible = int((window < 256).sum())
  k = int(np.floor(0.15 * eligible + 0.5))
  picked = ex["target_mask"]
  assert picked.sum() == k and not picked[window >= 256].any()  # EOS never predicted
  assert (ex["tokens"][picked] == text.MASK_ID).sum() == int(np.floor(0.8 * k + 0.5))
  assert (ex["tokens"][~picked] == window[~picked]).all()
  changed = picked & (ex["tokens"] != text.MASK_ID)
  assert (ex["tokens"][changed] < 256).all()
  again = text.MaskedSource(d.train, BYTE, seed=3)[2]
  for key in ex:
    np.testing.assert_array_equal(ex[key], again[key])
  assert (text.MaskedSource(d.train, BYTE, seed=4)[2]["target_mask"] != picked).any()


# --- iterators ----------------------------------------------------------------------------


class _Indexed:
  """Window i is [i, i, ...]: the first token names the window."""

  def __init__(self, n: int, width: int = 5):
    self.n, self.width = n, width

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"tokens": np.full(self.width, int(i), np.int32)}


def test_train_iterator_is_deterministic_and_resumes():
  sh = sharding.batch_sharding(sharding.make_mesh())
  same = lambda x, rng: x
  kw = dict(global_batch=16, seed=5, sharding=sh)
  make = lambda: pipeline.TrainIterator(_Indexed(50), np.arange(50), same, **kw)
  a = make()
  first = [np.asarray(next(a)["tokens"]) for _ in range(3)]
  assert first[0].shape == (16, 5) and first[0].dtype == np.int32
  state = a.get_state()
  fourth = np.asarray(next(a)["tokens"])
  b = make()
  for batch in first:
    np.testing.assert_array_equal(np.asarray(next(b)["tokens"]), batch)
  c = make()
  c.set_state(state)
  np.testing.assert_array_equal(np.asarray(next(c)["tokens"]), fourth)
  ids = np.concatenate([x[:, 0] for x in first])
  assert len(set(ids.tolist())) == 48  # no repeat within an epoch


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_process_shards_cover_every_window_exactly_once(monkeypatch, processes):
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  sh = sharding.batch_sharding(mesh)
  n, batch = 64, 16
  seen = []
  for p in range(processes):  # each simulated process builds its own iterator
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    kw = dict(global_batch=batch, seed=9, sharding=sh)
    it = pipeline.TrainIterator(_Indexed(n), np.arange(n), lambda x, rng: x, **kw)
    local = [np.asarray(next(it)["tokens"])[:, 0] for _ in range(n // batch)]
    assert all(len(x) == batch // processes for x in local)
    seen.append(np.concatenate(local))
  monkeypatch.undo()
  assert sorted(np.concatenate(seen).tolist()) == list(range(n))  # one epoch, each once


def test_valid_batches_are_fixed_and_masked():
  sh = sharding.batch_sharding(sharding.make_mesh())
  source = _Indexed(100)
  run = lambda: [
    (np.asarray(b["tokens"])[:, 0], np.asarray(b["mask"]))
    for b in text.valid_batches(source, num_sequences=20, global_batch=8, sharding=sh)
  ]
  a = run()
  assert len(a) == 3 and [m.sum() for _, m in a] == [8, 8, 4]
  ids = np.concatenate([t[m] for t, m in a])
  np.testing.assert_array_equal(ids, np.arange(20) * 5)  # spread evenly over the split
  for (t1, m1), (t2, m2) in zip(a, run(), strict=True):
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(m1, m2)
  assert text.valid_indices(7, 20).tolist() == list(range(7))
  assert os.path.isdir(text.stdlib_root())


def test_docstrings_and_reference_split_the_prose_domain():
  tok = text.ByteTokenizer()
  reference = text.load_domain("reference", tok, seq_len=64)
  assert sum(reference.num_documents) == len(text.pydoc_topics()) > 50
  # A folder's prose has no topics: its docstrings are the same documents.
  docstrings = text.load_domain("docstrings:json", tok, seq_len=16, valid_fraction=0.2)
  prose = text.load_domain("prose:json", tok, seq_len=16, valid_fraction=0.2)
  assert docstrings.num_documents == prose.num_documents
  assert docstrings.train.num_tokens == prose.train.num_tokens


def test_union_lists_every_source_window_once():
  tok = text.ByteTokenizer()
  a = text.load_domain("prose:json", tok, seq_len=16, valid_fraction=0.2).train
  b = text.load_domain("code:json", tok, seq_len=16, valid_fraction=0.2).train
  u = text.Union([a, b])
  assert len(u) == len(a) + len(b)
  np.testing.assert_array_equal(u[0]["tokens"], a[0]["tokens"])
  np.testing.assert_array_equal(u[len(a) - 1]["tokens"], a[len(a) - 1]["tokens"])
  np.testing.assert_array_equal(u[len(a)]["tokens"], b[0]["tokens"])
  np.testing.assert_array_equal(u[len(u) - 1]["tokens"], b[len(b) - 1]["tokens"])


def test_valid_bytes_counts_the_utf8_bytes_of_the_targets():
  tok = text.ByteTokenizer()
  valid = text.load_domain("prose:json", tok, seq_len=16, valid_fraction=0.2).valid
  tokens, nbytes = text.valid_bytes(valid, num_sequences=4, tokenizer=tok)
  windows = [valid[int(i)]["tokens"][1:] for i in text.valid_indices(len(valid), 4)]
  assert tokens == 16 * len(windows)
  # Byte tokens: one byte each, the EOS separators none.
  assert nbytes == sum(int((w < 256).sum()) for w in windows) < tokens + 1
