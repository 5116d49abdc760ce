"""Packing: documents joined by EOS into one token stream, cut into windows of `seq_len + 1`
tokens (inputs `tokens[:-1]`, targets `tokens[1:]`), from tokenized text, a flat token file
or ArrayRecord token records."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxcl.data.text.tokenizers import ByteTokenizer


class Spans:
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


class Records:
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

  def __init__(self, pieces: Spans | Records, seq_len: int):
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
