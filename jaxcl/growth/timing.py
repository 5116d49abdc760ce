"""When to grow: G_stack's growth-timing guideline and the speedup measure (Du et al. 2024).

The README of `tongxuluo/prts` ("Stacking Your Transformers", arXiv 2405.15319) fits the number
of tokens d to train the small model before stacking it g = 4 times:

    log10(d) = 0.88 log10(N) + 163.27 / log10(C) - 5.74,

N = parameters of the *target* model, C = 6 N D its training FLOPs for D target tokens. It
reproduces the authors' table (`PUBLISHED`): Llama3-8B / 15T -> 6.58B tokens, Llama2-7B / 2T
-> 11.11B, Llama2-13B -> 15.84B, Llama2-70B -> 42.48B. The fit comes from 410M-3B IsoFLOP
sweeps; far below that (the CPU-sized models of jaxcl's defaults) it extrapolates.
"""

from __future__ import annotations

import math

GROWTH_FACTOR = 4  # g: "we fix g = 4"

# (name, target parameters N, target tokens D, published d in tokens)
PUBLISHED = (
  ("Llama3-8B", 8e9, 15e12, 6.58e9),
  ("Llama2-7B", 7e9, 2e12, 11.11e9),
  ("Llama2-13B", 13e9, 2e12, 15.84e9),
  ("Llama2-70B", 70e9, 2e12, 42.48e9),
)


def growth_tokens(num_params: float, num_tokens: float) -> float:
  """d: tokens to train the small model before growing into `num_params` for `num_tokens`."""
  flops = 6.0 * num_params * num_tokens
  return 10.0 ** (0.88 * math.log10(num_params) + 163.27 / math.log10(flops) - 5.74)


def growth_step(num_params: float, num_tokens: float, tokens_per_step: int) -> int:
  """The guideline's d as a step count of a run with `tokens_per_step` tokens per step."""
  return max(1, round(growth_tokens(num_params, num_tokens) / tokens_per_step))


def speedup(scratch_cost: float, grown_cost: float) -> float:
  """How many times less compute the grown model needs: C_scratch / C_grown.

  The paper quotes `speedup - 1` as a percentage: 300B / 194B tokens -> 1.546, "54.6%".
  """
  return scratch_cost / grown_cost
