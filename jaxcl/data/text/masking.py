"""Masked-LM examples (BERT) over packed windows."""

from __future__ import annotations

import functools
import math

import numpy as np

from jaxcl.data.text.packing import PackedSource


def _round(x: float) -> int:
  return int(math.floor(x + 0.5))  # every count derived from a fraction rounds half up


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
