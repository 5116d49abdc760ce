"""Tokenizers of the text domains: UTF-8 bytes by default, a `tokenizers` JSON file or a
sentencepiece model when given; each has EOS, PAD and MASK ids (added after the vocab when
it lacks them)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np

from jaxcl import paths, user_errors

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
  kinds = {
    ".json": (HFTokenizer, "tokenizers"),
    ".model": (SentencePieceTokenizer, "sentencepiece"),
  }
  kind, package = next((k for suffix, k in kinds.items() if name.endswith(suffix)), (None, ""))
  if kind is not None:
    _require(package, name)  # a missing package is named first
    if not paths.path(name).is_file():
      raise user_errors.MissingInput(
        f"tokenizer file {name} (data.tokenizer) not found; give the path of a tokenizers "
        ".json or sentencepiece .model file, or data.tokenizer=byte"
      )
    try:
      return kind(name)
    except (ImportError, user_errors.UserError):
      raise
    except Exception as e:  # noqa: BLE001  (the libraries raise their own error types)
      raise user_errors.BadInput(
        f"tokenizer file {name} (data.tokenizer) could not be read as a "
        f"{'tokenizers JSON' if kind is HFTokenizer else 'sentencepiece model'} ({e}); "
        "check that it is that format and not truncated"
      ) from e
  raise ValueError(f"data.tokenizer={name!r}: use byte | <file>.json (tokenizers) | <file>.model")
