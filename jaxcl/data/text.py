"""Text domains for continual pretraining: tokenizers, offline corpora, packing, iterators.

A domain's documents are read in a fixed order, split into train and validation by a hash
of each document's id, tokenized, joined with EOS and cut into windows of `seq_len + 1`
tokens (inputs `tokens[:-1]`, targets `tokens[1:]`). Sources (offline; DESIGN.md §5):

  prose[:<dir>]   docstrings of the running Python's stdlib (or of its folder <dir>), and
                  for the whole stdlib the `pydoc_data.topics` texts.
  code[:<dir>]    the stdlib's `.py` files with their docstrings stripped (`code:email`).
  glob:<pattern>  text files, one document each (UTF-8, sorted paths).
  bin:<path>      nanoGPT-style flat token stream (`data.bin_dtype`, uint16 default) in which
                  every document ends with the EOS id.
  arrayrecord:<pattern>  one record per document: its token ids as raw little-endian
                  `data.record_dtype` (int32 default), no separator (EOS appended on read).
  tfds:<name>     a tfds text dataset prepared as ArrayRecord (`data.text_key` feature).

Byte-level tokens by default; a `tokenizers` JSON file or a sentencepiece model when given.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib
import inspect
import math
import os
import sysconfig
import tokenize
from collections.abc import Iterator, Sequence

import grain
import jax
import ml_collections
import numpy as np

from jaxcl import paths
from jaxcl.data import pipeline

# --- tokenizers --------------------------------------------------------------------------

# Byte tokenizer ids: 0..255 are the UTF-8 bytes.
EOS_ID, PAD_ID, MASK_ID = 256, 257, 258  # document separator / padding / masked-LM input
BYTE_VOCAB_SIZE = 259

_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>")
_MASK_NAMES = ("<mask>", "[MASK]")


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then EOS_ID, PAD_ID, MASK_ID (vocab 259)."""

  vocab_size = BYTE_VOCAB_SIZE
  eos_id, pad_id, mask_id = EOS_ID, PAD_ID, MASK_ID

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:  # specials are dropped
    ids = np.asarray(ids)
    return bytes(ids[ids < 256].astype(np.uint8)).decode("utf-8", errors="replace")


def _round(x: float) -> int:
  return int(math.floor(x + 0.5))  # every count derived from a fraction rounds half up


def _assign_specials(found: Sequence[int | None], base: int) -> tuple[list[int], int]:
  """Specials missing from a vocab get new ids base, base + 1, ...; returns (ids, vocab)."""
  ids, vocab = [], base
  for i in found:
    if i is None:
      i, vocab = vocab, vocab + 1
    ids.append(i)
  return ids, vocab


def _require(package: str, path: str):
  """Imports an optional tokenizer package, or says how to install it."""
  try:
    return importlib.import_module(package)
  except ImportError as e:
    raise ImportError(f"data.tokenizer={path!r} needs `{package}`: pip install {package}") from e


class _Subword:
  """Specials that the wrapped vocab lacks get ids after it; decode drops every special."""

  def _set_specials(self, base: int, found: Sequence[int | None]) -> None:
    self._base = base
    (self.eos_id, self.pad_id, self.mask_id), self.vocab_size = _assign_specials(found, base)

  def decode(self, ids) -> str:
    specials = (self.eos_id, self.pad_id, self.mask_id)
    return self._decode([int(i) for i in np.asarray(ids) if i < self._base and i not in specials])


class HFTokenizer(_Subword):
  """A HuggingFace `tokenizers` JSON file; EOS/PAD/MASK are found by their usual names."""

  def __init__(self, path: str):
    self._tok = _require("tokenizers", path).Tokenizer.from_file(paths.local_copy(path))
    find = lambda names: next((i for i in map(self._tok.token_to_id, names) if i is not None), None)
    self._set_specials(
      self._tok.get_vocab_size(with_added_tokens=True),
      [find(_EOS_NAMES), find(_PAD_NAMES), find(_MASK_NAMES)],
    )
    self._decode = self._tok.decode

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)


class SentencePieceTokenizer(_Subword):
  """A sentencepiece `.model`: its eos/pad ids, and `<mask>`/`[MASK]` when it has one."""

  def __init__(self, path: str):
    module = _require("sentencepiece", path)
    self._sp = sp = module.SentencePieceProcessor(model_file=paths.local_copy(path))
    own = lambda i: i if i >= 0 else None  # sentencepiece reports a disabled special as -1
    mask = next(
      (i for i in map(sp.piece_to_id, _MASK_NAMES) if sp.id_to_piece(i) in _MASK_NAMES), None
    )
    self._set_specials(sp.get_piece_size(), [own(sp.eos_id()), own(sp.pad_id()), mask])
    self._decode = sp.decode

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)


def make_tokenizer(name: str = "byte") -> ByteTokenizer | HFTokenizer | SentencePieceTokenizer:
  """`byte` (or empty), a `tokenizers` `.json` file, or a sentencepiece `.model` file."""
  if name in ("", "byte"):
    return ByteTokenizer()
  if name.endswith(".json"):
    return HFTokenizer(name)
  if name.endswith(".model"):
    return SentencePieceTokenizer(name)
  raise ValueError(f"data.tokenizer={name!r}: use byte | <file>.json (tokenizers) | <file>.model")


# --- offline documents from the stdlib ----------------------------------------------------

# Directories never read: test suites, IDLE and demos, installed packages, codec tables and
# the generated pydoc topics (prose, read through its import instead).
_SKIP_DIRS = frozenset(
  "test tests idlelib turtledemo site-packages dist-packages __pycache__ encodings pydoc_data "
  "ensurepip".split()
)
_DOC_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def python_files(root: str = "") -> list[str]:
  """Sorted `/`-separated paths (relative to `root`, default the stdlib) of its `.py` files."""
  root = root or stdlib_root()
  out = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith("config-")]
    rel = os.path.relpath(folder, root)
    for f in files:
      if f.endswith(".py") and not f.startswith(("test_", "_sysconfigdata")):
        out.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
  return sorted(out)


_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")  # fields holding statements


def docstring_exprs(tree: ast.Module) -> list[tuple[ast.AST, ast.Expr]]:
  """(owner, docstring expression) of every module/class/function docstring, in file order.

  Walks statements only (a def can sit in any block, never inside an expression).
  """
  out, todo = [], [tree]
  while todo:
    node = todo.pop()
    first = node.body[0] if isinstance(node, _DOC_OWNERS) and node.body else None
    if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
      out.append((node, first))  # a str Constant: f-strings are JoinedStr, never docstrings
    for field in _BLOCKS:
      todo += getattr(node, field, ())
  return sorted(out, key=lambda pair: pair[1].lineno)


def strip_docstrings(source: str, tree: ast.Module | None = None, found=None) -> str:
  """`source` without module/class/function docstrings; comments and layout are kept.

  A docstring that is a body's only statement becomes `pass`. If a cut leaves code on the
  docstring's lines (`"doc"; x = 1`) and the result does not parse, the tree is unparsed
  instead (no comments). `found` = `docstring_exprs(tree)` when already computed.
  """
  tree = tree or ast.parse(source)
  found = docstring_exprs(tree) if found is None else found
  lines = source.encode("utf-8").splitlines(keepends=True)  # \n, \r, \r\n: ast's lines
  risky = False
  for owner, doc in reversed(found):
    a, b = doc.lineno - 1, doc.end_lineno - 1  # ast columns are UTF-8 byte offsets
    head, tail = lines[a][: doc.col_offset], lines[b][doc.end_col_offset :]
    risky |= bool(head.strip()) or not (tail.strip() == b"" or tail.lstrip().startswith(b"#"))
    merged = head + (b"pass" if len(owner.body) == 1 else b"") + tail
    lines[a : b + 1] = [] if not merged.strip() else [merged]
  out = b"".join(lines).decode("utf-8")
  if risky:
    try:
      ast.parse(out)
    except SyntaxError:
      for owner, _ in found:
        owner.body = owner.body[1:] or [ast.Pass()]
      out = ast.unparse(tree) + "\n"
  return out


@functools.lru_cache(maxsize=8)
def stdlib_documents(subdir: str = "") -> tuple[tuple[tuple[str, str], ...], ...]:
  """(prose, code) documents of the stdlib, or of its folder `subdir` (e.g. `email`).

  prose: (`<file>:<line>`, docstring) for every module/class/function docstring in file
  order, then, for the whole stdlib only, (`pydoc_data.topics:<key>`, text) per topic.
  code: (`<file>`, source without docstrings) per file. Paths are sorted, so the corpus is
  the same in every run and process on the same Python version. Cached per process.
  """
  root = os.path.join(stdlib_root(), subdir)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"no stdlib folder {root} (prose:<folder> / code:<folder>)")
  prose, code = [], []
  for rel in python_files(root):
    try:
      with tokenize.open(os.path.join(root, rel)) as f:
        source = f.read()
      tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue  # not readable as Python source: skipped
    found = docstring_exprs(tree)
    for node, doc in found:
      if body := inspect.cleandoc(doc.value.value):
        prose.append((f"{rel}:{getattr(node, 'lineno', 0)}", body))
    code.append((rel, strip_docstrings(source, tree, found)))
  return tuple(prose + ([] if subdir else pydoc_topics())), tuple(code)


def pydoc_topics() -> list[tuple[str, str]]:
  """(`pydoc_data.topics:<key>`, text) for every topic of `help()`, sorted by key."""
  from pydoc_data import topics  # noqa: PLC0415

  return [(f"pydoc_data.topics:{k}", topics.topics[k]) for k in sorted(topics.topics)]


def glob_documents(pattern: str) -> list[tuple[str, str]]:
  """(path, text) for every file matching `pattern` (`paths.glob`: local or gs://), sorted."""
  files = [p for p in paths.glob(pattern) if paths.path(p).is_file()]
  if not files:
    raise FileNotFoundError(f"no file matches glob:{pattern}")
  return [(p, paths.path(p).read_bytes().decode("utf-8", errors="replace")) for p in files]


def tfds_documents(name: str, *, split: str, text_key: str, data_dir: str = "") -> list:
  """(example index, text) of a tfds text dataset prepared as ArrayRecord; no TensorFlow."""
  from jaxcl.data import sources  # noqa: PLC0415

  builder = sources.tfds_builder(name, data_dir)  # raises naming how to prepare it
  if text_key not in (features := builder.info.features):
    raise KeyError(f"tfds {name!r} has no feature {text_key!r} (data.text_key): {list(features)}")
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError as e:
    raise FileNotFoundError(
      f"tfds {name!r} is prepared without ArrayRecord files: run `tfds build {name} "
      f"--file_format=array_record` and point data.dir (or $TFDS_DATA_DIR) at it ({e})"
    ) from e
  out, n = [], len(source)
  for start in range(0, n, 1024):
    for i, ex in enumerate(source.__getitems__(list(range(start, min(start + 1024, n))))):
      text = ex[text_key]
      out.append((start + i, text.decode("utf-8", "replace") if isinstance(text, bytes) else text))
  return out


# --- validation split ---------------------------------------------------------------------


def held_out(ids: Sequence, fraction: float, seed: int = 0) -> np.ndarray:
  """bool [D]: documents in the validation split, by a blake2b hash of (seed, id).

  A document is held out iff hash / 2**64 < fraction, so the split depends on nothing but
  the ids: identical across runs, processes and machines. When the fraction selects none,
  the document with the smallest hash is held out, so validation is never empty.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"data.valid_fraction={fraction} must be in [0, 1)")
  digest = lambda i: hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()
  keys = np.fromiter((int.from_bytes(digest(i), "little") for i in ids), np.uint64, len(ids))
  mask = keys.astype(np.float64) / 2.0**64 < fraction
  if fraction > 0 and not mask.any():
    if len(ids) < 2:
      raise ValueError("a validation split needs a domain of at least 2 documents")
    mask[np.argmin(keys)] = True
  if mask.all():
    raise ValueError(f"data.valid_fraction={fraction} left no training document")
  return mask


# --- packing ------------------------------------------------------------------------------


class _Spans:
  """Pieces that are slices [start, end) of one flat token array (in memory or a memmap)."""

  def __init__(self, tokens: np.ndarray, bounds: np.ndarray, keep: np.ndarray):
    starts, ends = bounds[:-1][keep], bounds[1:][keep]  # kept documents, EOS included
    new = np.ones(len(starts), bool)
    new[1:] = starts[1:] != ends[:-1]  # consecutive kept documents form one piece
    last = np.append(new[1:], True)[: len(starts)]
    self.tokens, self.starts = tokens, starts[new]
    self.lengths = ends[last] - self.starts

  def read(self, p: int, a: int, b: int) -> np.ndarray:
    s = int(self.starts[p])
    return self.tokens[s + a : s + b]


class _Records:
  """Pieces that are ArrayRecord records (one document each), EOS appended on read."""

  def __init__(self, source, ids: np.ndarray, lengths: np.ndarray, dtype, eos_id: int):
    self.source, self.ids, self.lengths = source, ids, lengths
    self.dtype, self.eos_id = np.dtype(dtype), eos_id

  def read(self, p: int, a: int, b: int) -> np.ndarray:
    doc = np.frombuffer(self.source[int(self.ids[p])], self.dtype.newbyteorder("<"))
    return np.append(doc, self.eos_id)[a:b]


class PackedSource:
  """Documents joined by EOS, cut into windows of `seq_len + 1` tokens.

  Window i is tokens [i (L+1), (i+1)(L+1)) of the stream: windows never overlap, so a
  token is a target at most once; the tail shorter than a window is dropped.
  `source[i] = {"tokens": int32 [L + 1]}`.
  """

  def __init__(self, pieces: _Spans | _Records, seq_len: int):
    if seq_len < 1:
      raise ValueError(f"data.seq_len={seq_len} must be >= 1")
    self.seq_len, self._pieces = seq_len, pieces
    self._ends = np.cumsum(pieces.lengths, dtype=np.int64)  # [P]
    self._starts = self._ends - pieces.lengths  # [P]
    self.num_tokens = int(self._ends[-1]) if len(self._ends) else 0
    self._len = self.num_tokens // (seq_len + 1)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    i = int(i)
    if not 0 <= i < self._len:
      raise IndexError(f"window {i} of {self._len}")
    w = self.seq_len + 1
    out = np.empty(w, np.int32)  # [L + 1]
    lo, n = i * w, 0
    p = int(np.searchsorted(self._ends, lo, side="right"))
    while n < w:
      a = lo + n - int(self._starts[p])
      b = min(int(self._pieces.lengths[p]), a + w - n)
      out[n : n + b - a] = self._pieces.read(p, a, b)
      n, p = n + b - a, p + 1
    return {"tokens": out}


@dataclasses.dataclass(frozen=True)
class Domain:
  """One domain's packed train and validation windows (disjoint documents)."""

  name: str
  train: PackedSource
  valid: PackedSource
  num_documents: tuple[int, int]  # (train, valid)


def tokenize_documents(texts: Sequence[str], tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """One stream of every document followed by EOS, and the bounds int64 [D + 1]."""
  byte = isinstance(tokenizer, ByteTokenizer)  # fast path: the UTF-8 bytes are the ids
  arrays = [np.frombuffer(t.encode(), np.uint8) if byte else tokenizer.encode(t) for t in texts]
  lengths = np.fromiter((len(a) + 1 for a in arrays), np.int64, len(arrays))
  bounds = np.concatenate([[0], np.cumsum(lengths)])
  tokens = np.empty(int(bounds[-1]), np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32)
  for a, s, e in zip(arrays, bounds[:-1], bounds[1:], strict=True):
    tokens[s : e - 1] = a
    tokens[e - 1] = tokenizer.eos_id
  return tokens, bounds


def bin_bounds(tokens: np.ndarray, eos_id: int, chunk: int = 1 << 24) -> np.ndarray:
  """Document bounds int64 [D + 1] of a flat stream whose documents end with `eos_id`.

  A stream with no EOS at all is cut into blocks of 2**16 tokens instead, so it can still
  be split into train and validation.
  """
  n = len(tokens)
  ends = [np.flatnonzero(tokens[s : s + chunk] == eos_id) + s + 1 for s in range(0, n, chunk)]
  ends = np.concatenate(ends + [np.zeros(0, np.int64)]).astype(np.int64)
  if not len(ends):
    ends = np.arange(1 << 16, n, 1 << 16, dtype=np.int64)
  if not len(ends) or ends[-1] != n:
    ends = np.append(ends, n)
  return np.concatenate([[0], ends])


def record_lengths(source, dtype) -> np.ndarray:
  """int64 [D]: tokens per record plus the EOS, from one pass over the records."""
  itemsize, n = np.dtype(dtype).itemsize, len(source)
  chunks = (source.__getitems__(list(range(s, min(s + 1024, n)))) for s in range(0, n, 1024))
  return np.fromiter((len(r) // itemsize + 1 for c in chunks for r in c), np.int64, n)


def load_domain(
  spec: str,
  tokenizer,
  *,
  seq_len: int,
  valid_fraction: float = 0.02,
  split_seed: int = 0,
  data_dir: str = "",
  bin_dtype: str = "uint16",
  record_dtype: str = "int32",
  text_key: str = "text",
  tfds_split: str = "train",
  max_documents: int = 0,
) -> Domain:
  """Builds one domain from a source spec (see the module docstring for the forms).

  `max_documents` > 0 keeps the first N documents of text sources (before the split).
  Raises if either split holds less than one window.
  """
  kind, _, arg = spec.partition(":")
  if kind == "arrayrecord":
    files = paths.glob(arg)
    if not files:
      raise FileNotFoundError(f"no ArrayRecord file matches {arg!r}")
    source = grain.sources.ArrayRecordDataSource(files)
    lengths = record_lengths(source, record_dtype)
    ids = range(len(lengths))
    pieces = lambda keep: _Records(
      source, np.flatnonzero(keep), lengths[keep], record_dtype, tokenizer.eos_id
    )
  else:
    if kind == "bin" or spec.endswith(".bin"):
      tokens = np.memmap(paths.local_copy(arg or spec), dtype=bin_dtype, mode="r")
      bounds = bin_bounds(tokens, tokenizer.eos_id)
      ids = range(len(bounds) - 1)
    else:
      if kind in ("prose", "code"):
        docs = stdlib_documents(arg)[kind == "code"]
      elif kind == "glob":
        docs = glob_documents(arg)
      elif kind == "tfds":
        docs = tfds_documents(arg, split=tfds_split, text_key=text_key, data_dir=data_dir)
      else:
        raise ValueError(
          f"unknown text domain {spec!r}: prose[:<dir>] | code[:<dir>] | glob:<pattern> | "
          "bin:<path> | arrayrecord:<pattern> | tfds:<name>"
        )
      docs = docs[:max_documents] if max_documents else docs
      tokens, bounds = tokenize_documents([text for _, text in docs], tokenizer)
      ids = [i for i, _ in docs]
    pieces = lambda keep: _Spans(tokens, bounds, keep)
  valid = held_out(ids, valid_fraction, split_seed)
  train, held = PackedSource(pieces(~valid), seq_len), PackedSource(pieces(valid), seq_len)
  for split, packed, need in (("train", train, True), ("validation", held, valid_fraction > 0)):
    if need and not len(packed):
      raise ValueError(
        f"domain {spec!r}: the {split} split has {packed.num_tokens} tokens, fewer than one "
        f"window of data.seq_len + 1 = {seq_len + 1}; use more data, a shorter seq_len or "
        "another data.valid_fraction"
      )
  return Domain(spec, train, held, (int((~valid).sum()), int(valid.sum())))


def default_config() -> ml_collections.ConfigDict:
  """The `data` fields the text pipeline reads (merge into a CPT config's `data`)."""
  c = ml_collections.ConfigDict()
  c.domains = "prose,code"  # comma-separated domain specs, trained in this order
  c.tokenizer = "byte"  # byte | <file>.json (tokenizers) | <file>.model (sentencepiece)
  c.seq_len = 256
  c.valid_fraction = 0.02  # documents held out per domain (by a hash of the document id)
  c.valid_sequences = 64  # validation windows per domain used by evaluation
  c.split_seed = 0
  c.max_documents = 0  # >0: first N documents of each text source (smoke runs)
  c.bin_dtype = "uint16"
  c.record_dtype = "int32"
  c.text_key = "text"  # tfds feature holding the text
  c.tfds_split = "train"
  c.mlm_probability = 0.0  # >0: BERT-style masked LM examples instead of causal windows
  return c


_DOMAIN_FIELDS = (
  "seq_len valid_fraction split_seed bin_dtype record_dtype text_key tfds_split max_documents"
).split()


def load_domains(data, tokenizer) -> list[Domain]:
  """The domains named by `data.domains`, built with the other `data` fields (and `dir`)."""
  kw = {k: data[k] for k in _DOMAIN_FIELDS}
  specs = [s.strip() for s in data.domains.split(",") if s.strip()]
  return [load_domain(s, tokenizer, data_dir=data.dir, **kw) for s in specs]


# --- masked LM (BERT) ---------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _regular_ids(vocab_size: int, specials: tuple[int, ...]) -> np.ndarray:
  return np.setdiff1d(np.arange(vocab_size), specials)


def mask_tokens(tokens: np.ndarray, rng: np.random.Generator, *, tokenizer, prob: float = 0.15):
  """BERT masking (Devlin et al. 2019): of the non-special positions, k = round(prob n)
  (at least 1) are predicted; of those round(0.8 k) become MASK, round(0.1 k) a random
  non-special token and the rest stay (rounding half up, counts exact).

  Returns {"tokens": int32 [L] (the input), "targets": int32 [L], "target_mask": bool [L]}.
  """
  specials = (tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id)
  eligible = np.flatnonzero(~np.isin(tokens, specials))
  k = min(len(eligible), max(_round(prob * len(eligible)), 1))
  picked = rng.permutation(eligible)[:k]
  n_mask = _round(0.8 * k)
  n_random = min(_round(0.1 * k), k - n_mask)
  out = tokens.astype(np.int32)  # a copy
  out[picked[:n_mask]] = tokenizer.mask_id
  regular = _regular_ids(tokenizer.vocab_size, specials)
  out[picked[n_mask : n_mask + n_random]] = rng.choice(regular, n_random)
  target_mask = np.isin(np.arange(len(tokens)), picked)
  return {"tokens": out, "targets": tokens.astype(np.int32), "target_mask": target_mask}


class MaskedSource:
  """MLM examples over the first L tokens of each packed window; the masking of window i is
  a function of (seed, i) only (static masking, as in the original BERT data)."""

  def __init__(self, source: PackedSource, tokenizer, *, seed: int, prob: float = 0.15):
    self.source, self.tokenizer, self.seed, self.prob = source, tokenizer, seed, prob

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    tokens = self.source[i]["tokens"][:-1]  # [L]
    rng = np.random.default_rng([self.seed, int(i)])
    return mask_tokens(tokens, rng, tokenizer=self.tokenizer, prob=self.prob)


# --- iterators ----------------------------------------------------------------------------


class _Keep(grain.transforms.Map):
  def map(self, element):
    return element


def train_iterator(
  source, *, global_batch: int, seed: int, sharding, num_threads: int = 2
) -> pipeline.TrainIterator:
  """Global batches {"tokens": int32 [B, L+1]} (or the MLM keys) over one domain's windows.

  The image pipeline's iterator as it is: seeded per-epoch shuffles, a disjoint shard per
  JAX process, `get_state()`/`set_state()` for checkpoints.
  """
  kw = dict(global_batch=global_batch, seed=seed, sharding=sharding, num_threads=num_threads)
  return pipeline.TrainIterator(source, np.arange(len(source)), lambda x, rng: x, **kw)


def valid_indices(num_windows: int, num_sequences: int) -> np.ndarray:
  """`num_sequences` windows spread evenly over the split (all of them when fewer)."""
  k = min(num_windows, num_sequences) if num_sequences > 0 else num_windows
  return np.unique((np.arange(k, dtype=np.int64) * num_windows) // max(k, 1))


def valid_batches(
  source, *, num_sequences: int, global_batch: int, sharding, num_threads: int = 2
) -> Iterator[dict[str, jax.Array]]:
  """The fixed validation batches of a domain: {"tokens": [B, L+1], "mask": bool [B]}.

  Always the same windows in the same order; the last batch is zero-padded and `mask`
  marks its real rows (evaluate with sums over masked rows, not means).
  """
  kw = dict(global_batch=global_batch, sharding=sharding, num_threads=num_threads)
  return pipeline.eval_batches(source, valid_indices(len(source), num_sequences), _Keep(), **kw)
