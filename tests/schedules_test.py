"""CPT learning-rate schedules against their formulas, at phase boundaries and midpoints."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxcl.lm import schedules


def _config(name: str, **fields):
  c = ml_collections.ConfigDict({"schedule": schedules.default_config().to_dict()})
  c.schedule.name = name
  c.schedule.update(fields)
  return c


def _check(fn, expected: dict[int, float], rtol=1e-5):
  for step, want in expected.items():
    assert float(fn(step)) == pytest.approx(want, rel=rtol, abs=1e-12), f"step {step}"


def test_constant():
  _check(
    schedules.make(_config("constant", eta_max=2.0, warmup_steps=4), [10, 10]),
    {0: 0.0, 2: 1.0, 4: 2.0, 15: 2.0, 99: 2.0},
  )


def test_cosine_over_all_domains():
  # T = 300, W = 0.1 * 300 = 30: eta = 0.1 + 0.9 (1 + cos(pi (t - 30) / 270)) / 2.
  fn = schedules.make(_config("cosine", eta_max=1.0, eta_min=0.1, warmup_fraction=0.1), [100, 200])
  _check(fn, {0: 0.0, 15: 0.5, 30: 1.0, 165: 0.55, 300: 0.1, 400: 0.1})
  _check(fn, {120: 0.1 + 0.45 * (1 + math.cos(math.pi * 90 / 270))})


def test_rewarm_cosine_restarts_on_every_domain():
  fn = schedules.make(
    _config("rewarm_cosine", eta_max=1.0, eta_min=0.1, warmup_fraction=0.1), [100, 200]
  )
  # Domain 0: W = 10, cosine over 90 steps; domain 1 starts at 100: W = 20, cosine over 180.
  _check(fn, {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55, 100: 0.0, 110: 0.5, 120: 1.0, 210: 0.55})
  _check(fn, {99: 0.1 + 0.45 * (1 + math.cos(math.pi * 89 / 90)), 300: 0.1, 1000: 0.1})


def test_infinite_invsqrt_matches_the_neox_405m_values():
  # research note §A7 (T = 100k, warmup 1%, cooldown 60%, constant to 86%, anneal 14%).
  fn = schedules.make(_config("infinite_invsqrt"), [100_000])
  h = lambda x: 1 / math.sqrt(1 + 10 * x) - 1
  at_5k = 3e-4 + (1.65e-4 - 3e-4) * h(4000 / 60000) / h(1.0)  # = 2.5644e-4
  _check(fn, {0: 0.0, 500: 1.5e-4, 1000: 3e-4, 5000: at_5k, 61_000: 1.65e-4, 86_000: 1.65e-4})
  _check(fn, {30_000: 1.867e-4, 93_000: 7.036e-5, 100_000: 3e-5}, rtol=1e-3)  # the note's digits
  _check(fn, {93_000: 1.65e-4 * (3e-5 / 1.65e-4) ** 0.5})
  assert schedules.anneal_windows(_config("infinite_invsqrt"), [100_000]) == [(86_000, 100_000)]


def test_infinite_cosine_over_two_domains_and_its_branches():
  cfg = _config(
    "infinite_cosine",
    eta_max=1.0,
    eta_const=0.5,
    eta_min=0.125,
    warmup_steps=10,
    cooldown_steps=490,
    anneal_fraction=0.1,
  )
  fn = schedules.make(cfg, [1000, 500])
  # cooldown midpoint 10 + 245: (1 + 0.5) / 2; anneals [900, 1000) and [1450, 1500).
  _check(fn, {5: 0.5, 10: 1.0, 255: 0.75, 500: 0.5, 899: 0.5, 900: 0.5})
  _check(fn, {950: 0.5 * 0.25**0.5, 1000: 0.5, 1200: 0.5, 1449: 0.5, 1475: 0.25, 1500: 0.125})
  _check(fn, {2000: 0.125})
  assert schedules.anneal_windows(cfg, [1000, 500]) == [(900, 1000), (1450, 1500)]
  cfg.schedule.anneal_every_domain = False
  only_last = schedules.make(cfg, [1000, 500])
  _check(only_last, {950: 0.5, 1475: 0.25})
  assert schedules.anneal_windows(cfg, [1000, 500]) == [None, (1450, 1500)]


@pytest.mark.parametrize(
  "shape, mid", [("linear", 0.3125), ("cosine", 0.3125), ("sqrt", 0.125 + 0.375 * (1 - 0.5**0.5))]
)
def test_anneal_shapes_at_their_midpoint(shape, mid):
  cfg = _config(
    "infinite_cosine",
    eta_max=1.0,
    eta_const=0.5,
    eta_min=0.125,
    warmup_steps=0,
    cooldown_steps=10,
    anneal_steps=100,
    anneal_shape=shape,
  )
  _check(schedules.make(cfg, [1000]), {900: 0.5, 950: mid, 1000: 0.125})


def test_wsd():
  cfg = _config("wsd", eta_max=1.0, eta_min=0.25, warmup_fraction=0.01, decay_fraction=0.1)
  fn = schedules.make(cfg, [1000, 1000])
  # exp decay over D = 100 to eta_min = eta_max / 4 is MiniCPM's 0.5^(s / T_half), T_half = 50.
  _check(fn, {0: 0.0, 5: 0.5, 10: 1.0, 500: 1.0, 900: 1.0, 950: 0.5, 975: 0.5**1.5})
  _check(fn, {1000: 1.0, 1500: 1.0, 1950: 0.5, 2000: 0.25})
  assert schedules.anneal_windows(cfg, [1000, 1000]) == [(900, 1000), (1900, 2000)]
  cfg.schedule.decay_shape = "linear"
  _check(schedules.make(cfg, [1000, 1000]), {950: 0.625})


@pytest.mark.parametrize("name", schedules.NAMES)
def test_every_schedule_is_traceable_and_compiles_once(name):
  fn = schedules.make(_config(name), [300, 200, 100])
  steps = jnp.arange(0, 700, 7, dtype=jnp.int32)
  jitted = jax.jit(jax.vmap(fn))(steps)
  eager = np.asarray([float(fn(int(s))) for s in steps])
  np.testing.assert_allclose(np.asarray(jitted), eager, rtol=1e-6)
  assert np.isfinite(eager).all() and eager.max() <= 3e-4 * (1 + 1e-6) and eager.min() >= 0


def test_errors():
  with pytest.raises(ValueError, match="schedule.name"):
    schedules.make(_config("linear"), [10])
  with pytest.raises(ValueError, match="run into the first anneal"):
    schedules.make(_config("infinite_cosine", cooldown_fraction=0.9), [100])
  with pytest.raises(ValueError, match="at least one step"):
    schedules.make(_config("constant"), [10, 0])
  assert schedules.anneal_windows(_config("rewarm_cosine"), [5, 5]) == [None, None]
  assert schedules.round_steps(2.5) == 3 and schedules.round_steps(2.4999) == 2
