"""Text domains for continual pretraining: a source spec -> packed train and validation windows.

A domain's documents are read in a fixed order, split into train and validation by a hash
of each document's id, tokenized, joined with EOS and cut into windows of `seq_len + 1`
tokens (jaxcl/data/text/packing.py). Source specs (offline; DESIGN.md §5):

  prose[:<dir>]   docstrings of the running Python's stdlib (or of its folder <dir>), and
                  for the whole stdlib the `pydoc_data.topics` texts.
  docstrings[:<dir>]  the docstrings alone (prose without the topics).
  reference       the `pydoc_data.topics` texts alone: the language reference of `help()`.
  code[:<dir>]    the stdlib's `.py` files with their docstrings stripped (`code:email`).
  glob:<pattern>  text files, one document each (UTF-8, sorted paths).
  bin:<path>      nanoGPT-style flat token stream (`data.bin_dtype`, uint16 default) in which
                  every document ends with the EOS id.
  arrayrecord:<pattern>  one record per document: its token ids as raw little-endian
                  `data.record_dtype` (int32 default), no separator (EOS appended on read).
  tfds:<name>     a tfds text dataset prepared as ArrayRecord (`data.text_key` feature).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence

import grain
import jax
import ml_collections
import numpy as np

from jaxcl import paths, user_errors
from jaxcl.data import pipeline
from jaxcl.data.text import corpora
from jaxcl.data.text.packing import (
  PackedSource,
  Records,
  Spans,
  bin_bounds,
  record_lengths,
  tokenize_documents,
)
from jaxcl.data.text.tokenizers import ByteTokenizer


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


@dataclasses.dataclass(frozen=True)
class Domain:
  """One domain's packed train and validation windows (disjoint documents)."""

  name: str
  train: PackedSource
  valid: PackedSource
  num_documents: tuple[int, int]  # (train, valid)


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
      raise user_errors.MissingInput(
        f"no ArrayRecord file matches {arg!r} (data.domains arrayrecord:<pattern>); check the "
        "pattern and that the token files were written"
      )
    source = grain.sources.ArrayRecordDataSource(files)
    lengths = record_lengths(source, record_dtype)
    ids = range(len(lengths))
    pieces = lambda keep: Records(
      source, np.flatnonzero(keep), lengths[keep], record_dtype, tokenizer.eos_id
    )
  else:
    if kind == "bin" or spec.endswith(".bin"):
      tokens = np.memmap(paths.local_copy(arg or spec), dtype=bin_dtype, mode="r")
      bounds = bin_bounds(tokens, tokenizer.eos_id)
      ids = range(len(bounds) - 1)
    else:
      if kind in ("prose", "code", "docstrings"):
        docs = corpora.stdlib_documents(arg)[kind == "code"]
        if kind == "docstrings":
          docs = [d for d in docs if not d[0].startswith(corpora.TOPICS_ID)]
      elif kind == "reference":
        docs = corpora.pydoc_topics()
      elif kind == "glob":
        docs = corpora.glob_documents(arg)
      elif kind == "tfds":
        docs = corpora.tfds_documents(arg, split=tfds_split, text_key=text_key, data_dir=data_dir)
      else:
        raise ValueError(
          f"unknown text domain {spec!r}: prose[:<dir>] | docstrings[:<dir>] | reference | "
          "code[:<dir>] | glob:<pattern> | bin:<path> | arrayrecord:<pattern> | tfds:<name>"
        )
      docs = docs[:max_documents] if max_documents else docs
      tokens, bounds = tokenize_documents([text for _, text in docs], tokenizer)
      ids = [i for i, _ in docs]
    pieces = lambda keep: Spans(tokens, bounds, keep)
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
  c.union = False  # one stage on the union of the domains' windows (the union baseline)
  return c


_DOMAIN_FIELDS = (
  "seq_len valid_fraction split_seed bin_dtype record_dtype text_key tfds_split max_documents"
).split()


def load_domains(data, tokenizer) -> list[Domain]:
  """The domains named by `data.domains`, built with the other `data` fields (and `dir`)."""
  kw = {k: data[k] for k in _DOMAIN_FIELDS}
  specs = [s.strip() for s in data.domains.split(",") if s.strip()]
  return [load_domain(s, tokenizer, data_dir=data.dir, **kw) for s in specs]


class Union:
  """The windows of several sources as one source: theirs in order (the union baseline)."""

  def __init__(self, sources: Sequence):
    self.sources = list(sources)
    self._ends = np.cumsum([len(x) for x in self.sources])  # [D]

  def __len__(self) -> int:
    return int(self._ends[-1])

  def __getitem__(self, i: int):
    d = int(np.searchsorted(self._ends, int(i), side="right"))
    return self.sources[d][int(i) - (int(self._ends[d - 1]) if d else 0)]


# --- validation batches ------------------------------------------------------------------


class _Keep(grain.transforms.Map):
  def map(self, element):
    return element


def valid_indices(num_windows: int, num_sequences: int) -> np.ndarray:
  """`num_sequences` windows spread evenly over the split (all of them when fewer)."""
  k = min(num_windows, num_sequences) if num_sequences > 0 else num_windows
  return np.unique((np.arange(k, dtype=np.int64) * num_windows) // max(k, 1))


def valid_bytes(source, *, num_sequences: int, tokenizer) -> tuple[int, int]:
  """(target tokens, their UTF-8 bytes) of the validation windows `valid_batches` reads: the
  denominator of bits per byte, comparable across tokenizers. Specials count no bytes; byte
  tokens are counted exactly (a decoded window may split a character)."""
  tokens = nbytes = 0
  for i in valid_indices(len(source), num_sequences):
    targets = source[int(i)]["tokens"][1:]  # [L]
    tokens += len(targets)
    if isinstance(tokenizer, ByteTokenizer):
      nbytes += int((targets < 256).sum())
    else:
      nbytes += len(tokenizer.decode(targets).encode("utf-8"))
  return tokens, nbytes


def valid_batches(
  source, *, num_sequences: int, global_batch: int, sharding, num_threads: int = 0
) -> Iterator[dict[str, jax.Array]]:
  """The fixed validation batches of a domain: {"tokens": [B, L+1], "mask": bool [B]}.

  Always the same windows in the same order; the last batch is zero-padded and `mask`
  marks its real rows (evaluate with sums over masked rows, not means).
  """
  kw = dict(global_batch=global_batch, sharding=sharding, num_threads=num_threads)
  return pipeline.eval_batches(source, valid_indices(len(source), num_sequences), _Keep(), **kw)
