"""Learning-rate schedules for continual pretraining over a sequence of domains (optax style).

Every schedule maps the GLOBAL step, counted across domains, to a learning rate with jnp
ops, so one compiled train step serves the whole domain sequence. Domain d has
`domain_steps[d]` = T_d steps and occupies global steps [S_d, S_d + T_d), S_d = sum T_<d.
Formulas and defaults: research/cpt_and_throughput.md §A1–A4, A7. Fractions become step
counts by rounding half up (`round_steps`).

`schedule.name`:
  constant            warmup, then eta_max (the constant baseline of Gupta et al. 2023)
  cosine              warmup, one cosine over all domains (one schedule over the union)
  rewarm_cosine       warmup + cosine on every domain (Gupta et al. 2023; Ibrahim et al. 2024)
  infinite_cosine     warmup, cosine cooldown to eta_const, constant, anneal (Ibrahim et al.
                      2024 §7; Singh et al. 2025)
  infinite_invsqrt    the same with the inverse-sqrt cooldown
  wsd                 warmup, stable eta_max, decay (MiniCPM, Hu et al. 2024)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

NAMES = ("constant", "cosine", "rewarm_cosine", "infinite_cosine", "infinite_invsqrt", "wsd")


def default_config() -> ml_collections.ConfigDict:
  """`config.schedule`: the 405M values of Ibrahim et al. 2024 (research note §A7)."""
  c = ml_collections.ConfigDict()
  c.name = "rewarm_cosine"  # constant | cosine | rewarm_cosine | infinite_cosine | ...
  c.eta_max = 3e-4  # peak
  c.eta_min = 3e-5  # end of a cosine / anneal / decay (0.1 eta_max)
  c.eta_const = 1.65e-4  # infinite: the plateau, (eta_max + eta_min) / 2
  c.warmup_fraction = 0.01  # of each domain (rewarm) / of the first domain / of all (cosine)
  c.warmup_steps = 0  # >0 overrides warmup_fraction
  c.cooldown_fraction = 0.6  # infinite: of the first domain, starting after warmup
  c.cooldown_steps = 0  # >0 overrides cooldown_fraction
  c.cooldown_alpha = 10.0  # infinite_invsqrt timescale
  c.anneal_fraction = 0.14  # infinite: the last 14% of a domain (NeoX 405M: 0.86 T -> T)
  c.anneal_steps = 0  # >0 overrides anneal_fraction
  c.anneal_shape = "exp"  # exp | linear | cosine | sqrt
  c.anneal_every_domain = True  # each domain (a branch, train.anneal_branch); False: last only
  c.decay_fraction = 0.1  # wsd: MiniCPM found ~10% of the tokens enough (2.5% not)
  c.decay_steps = 0  # >0 overrides decay_fraction
  c.decay_shape = "exp"  # wsd decay: exp (MiniCPM) | linear | cosine | sqrt
  return c


def round_steps(x: float) -> int:
  """floor(x + 0.5): the rounding of every fraction of steps."""
  return int(math.floor(x + 0.5))


def _float(step) -> jnp.ndarray:
  return jnp.asarray(step, jnp.float32)


def constant(value: float, warmup_steps: int = 0) -> optax.Schedule:
  """value * t / W during the first W steps, then `value`."""

  def schedule(step):
    t = _float(step)
    return jnp.where(t < warmup_steps, value * t / max(warmup_steps, 1), value)

  return schedule


def rewarm_cosine(
  domain_steps: Sequence[int],
  *,
  eta_max: float,
  eta_min: float,
  warmup_steps: int | Sequence[int],
) -> optax.Schedule:
  """Re-warm and re-decay on every domain (Gupta et al. 2023, arXiv 2308.04014; Ibrahim
  et al. 2024, arXiv 2403.08763, Eq. 2), with u = t - S_d the step within domain d:

    eta = eta_max u / W_d                                            u < W_d
    eta = eta_min + (eta_max - eta_min) (1 + cos(pi (u - W_d) / (T_d - W_d))) / 2

  Past the last domain the rate stays at eta_min.
  """
  lengths = np.asarray(domain_steps, np.int64)  # [D]
  starts = jnp.asarray(np.cumsum(lengths) - lengths, jnp.int32)  # [D]
  warm = jnp.asarray(np.broadcast_to(np.asarray(warmup_steps, np.int64), lengths.shape))
  lengths = jnp.asarray(lengths)

  def schedule(step):
    t = jnp.asarray(step, jnp.int32)
    d = jnp.sum(t >= starts[1:])  # the domain of t (the last one past the end)
    u, total, w = _float(t - starts[d]), _float(lengths[d]), _float(warm[d])
    x = jnp.clip((u - w) / jnp.maximum(total - w, 1.0), 0.0, 1.0)
    cos = eta_min + (eta_max - eta_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * x))
    return jnp.where(u < w, eta_max * u / jnp.maximum(w, 1.0), cos)

  return schedule


def warmup_cosine(
  eta_max: float, total_steps: int, warmup_steps: int = 0, eta_min: float = 0.0
) -> optax.Schedule:
  """Linear warmup 0 -> eta_max over W steps, cosine to eta_min at `total_steps`
  (`optax.warmup_cosine_decay_schedule(0, eta_max, W, total_steps, eta_min)`)."""
  return rewarm_cosine([total_steps], eta_max=eta_max, eta_min=eta_min, warmup_steps=warmup_steps)


Shape = Callable[[float, float, jnp.ndarray], jnp.ndarray]  # (from, to, x in [0, 1]) -> lr

# Anneal / decay shapes from `a` to `b` over x in [0, 1].
ANNEALS: dict[str, Shape] = {
  "exp": lambda a, b, x: a * (b / a) ** x,  # = optax.exponential_decay(a, A, b / a)
  "linear": lambda a, b, x: a + (b - a) * x,
  "cosine": lambda a, b, x: b + (a - b) * 0.5 * (1.0 + jnp.cos(jnp.pi * x)),
  "sqrt": lambda a, b, x: b + (a - b) * (1.0 - jnp.sqrt(x)),  # "1-sqrt", Hägele et al. 2024
}


def _cooldown(kind: str, alpha: float) -> Shape:
  """eta_max -> eta_const over x in [0, 1] (GPT-NeoX fork of Ibrahim et al., §A7)."""
  if kind == "inv_sqrt":
    h = lambda x: 1.0 / jnp.sqrt(1.0 + alpha * x) - 1.0
    return lambda a, b, x: a + (b - a) * h(x) / h(1.0)
  if kind == "cosine":
    return ANNEALS["cosine"]
  if kind == "linear":
    return ANNEALS["linear"]
  raise ValueError(f"cooldown {kind!r}: use cosine | inv_sqrt | linear")


def windows(
  domain_steps: Sequence[int], lengths: int | Sequence[int], every_domain: bool
) -> list[tuple[int, int] | None]:
  """Per domain, the global steps [start, end) of its anneal (the last A_d of its steps),
  or None. `every_domain=False`: only the last domain anneals."""
  steps = [int(n) for n in domain_steps]
  lengths = [int(a) for a in np.broadcast_to(np.asarray(lengths), (len(steps),))]
  out, end = [], 0
  for d, (n, a) in enumerate(zip(steps, lengths, strict=True)):
    end += n
    keep = a > 0 and (every_domain or d == len(steps) - 1)
    if keep and a > n:
      raise ValueError(f"domain {d}: anneal of {a} steps is longer than its {n} steps")
    out.append((end - a, end) if keep else None)
  return out


def infinite(
  domain_steps: Sequence[int],
  *,
  eta_max: float,
  eta_const: float,
  eta_min: float,
  warmup_steps: int,
  cooldown_steps: int,
  anneal_steps: int | Sequence[int],
  cooldown: str = "cosine",
  alpha: float = 10.0,
  anneal: str = "exp",
  anneal_every_domain: bool = True,
) -> optax.Schedule:
  """Infinite schedule (Ibrahim et al. 2024 §7; Singh et al. 2025, arXiv 2503.02844).

  Warmup and cooldown happen once, at the start of the first domain; later domains train
  at eta_const with no re-warm. With W = warmup, C = cooldown, x = (t - W) / C:

    warmup    eta = eta_max t / W                                     t < W
    cooldown  cosine:   eta_const + (eta_max - eta_const) (1 + cos(pi x)) / 2
              inv_sqrt: eta_max + (eta_const - eta_max) h(x) / h(1),
                        h(x) = 1 / sqrt(1 + alpha x) - 1              W <= t < W + C
    constant  eta_const
    anneal    exp: eta_const (eta_min / eta_const)^y, y = (t - start) / A_d, inside the
              domain's anneal window (`windows`; other shapes in ANNEALS).

  The anneal is a side branch in Ibrahim et al.: the next domain continues from the
  pre-anneal state at eta_const. A loop that branches saves the state at a window's start,
  runs the window, evaluates, and restores the saved state with its step set to the window's
  end; one that does not simply goes on at eta_const after each anneal. Past the end of
  the last domain the rate stays at eta_min (or eta_const with no final anneal).
  """
  spans = [w for w in windows(domain_steps, anneal_steps, anneal_every_domain) if w]
  if spans and warmup_steps + cooldown_steps > spans[0][0]:
    raise ValueError(
      f"warmup ({warmup_steps}) + cooldown ({cooldown_steps}) steps run into the first anneal,"
      f" which starts at step {spans[0][0]}"
    )
  if anneal == "exp" and spans and eta_min <= 0:
    raise ValueError("an exp anneal needs eta_min > 0")
  if anneal not in ANNEALS:
    raise ValueError(f"anneal {anneal!r}: use {' | '.join(ANNEALS)}")
  cool, shape = _cooldown(cooldown, alpha), ANNEALS[anneal]
  total = sum(int(n) for n in domain_steps)
  starts = jnp.asarray([s for s, _ in spans], jnp.float32)  # [K]
  ends = jnp.asarray([e for _, e in spans], jnp.float32)  # [K]
  open_end = jnp.asarray([e == total for _, e in spans])  # the final anneal never ends
  w, c = warmup_steps, cooldown_steps

  def schedule(step):
    t = _float(step)
    x = jnp.clip((t - w) / max(c, 1), 0.0, 1.0)
    lr = jnp.where(
      t < w,
      eta_max * t / max(w, 1),
      jnp.where(t < w + c, cool(eta_max, eta_const, x), eta_const),
    )
    if spans:
      y = jnp.clip((t - starts) / (ends - starts), 0.0, 1.0)  # [K]
      active = (t >= starts) & ((t < ends) | open_end)  # [K], at most one
      annealed = jnp.sum(jnp.where(active, shape(eta_const, eta_min, y), 0.0))
      lr = jnp.where(jnp.any(active), annealed, lr)
    return lr

  return schedule


def wsd(
  domain_steps: Sequence[int],
  *,
  eta_max: float,
  eta_min: float,
  warmup_steps: int,
  decay_steps: int | Sequence[int],
  decay: str = "exp",
  decay_every_domain: bool = True,
) -> optax.Schedule:
  """Warmup-stable-decay (MiniCPM, Hu et al. 2024, arXiv 2404.06395):

    eta = eta_max t / W (t < W);  eta_max (stable);  f(y) eta_max in the decay window,

  y = (t - start) / D_d. `exp` is MiniCPM's f = 0.5^((t - start) / T_half) with the
  half-life T_half = D ln 2 / ln(eta_max / eta_min), i.e. eta_max -> eta_min over D steps;
  `linear` / `cosine` (MaxText's wsd_decay_style) and `sqrt` ("1-sqrt") also end at
  eta_min. Decay windows are branches exactly like `infinite`'s anneals (an infinite
  schedule without the cooldown).
  """
  return infinite(
    domain_steps,
    eta_max=eta_max,
    eta_const=eta_max,
    eta_min=eta_min,
    warmup_steps=warmup_steps,
    cooldown_steps=0,
    anneal_steps=decay_steps,
    anneal=decay,
    anneal_every_domain=decay_every_domain,
  )


def _check(config, domain_steps: Sequence[int]) -> list[int]:
  if config.schedule.name not in NAMES:
    raise ValueError(f"schedule.name={config.schedule.name!r}: use {' | '.join(NAMES)}")
  steps = [int(n) for n in domain_steps]
  if not steps or min(steps) < 1:
    raise ValueError(f"every domain needs at least one step, got {steps}")
  return steps


def _window_lengths(s, steps: list[int]) -> list[int]:
  if s.name == "wsd":
    return [s.decay_steps or round_steps(s.decay_fraction * n) for n in steps]
  return [s.anneal_steps or round_steps(s.anneal_fraction * n) for n in steps]


def make(config, domain_steps: Sequence[int]) -> optax.Schedule:
  """The schedule named by `config.schedule.name` over domains of `domain_steps` steps."""
  steps, s = _check(config, domain_steps), config.schedule
  warm = lambda n: s.warmup_steps or round_steps(s.warmup_fraction * n)
  if s.name == "constant":
    return constant(s.eta_max, warm(steps[0]))
  if s.name == "cosine":
    return warmup_cosine(s.eta_max, sum(steps), warm(sum(steps)), s.eta_min)
  if s.name == "rewarm_cosine":
    return rewarm_cosine(
      steps, eta_max=s.eta_max, eta_min=s.eta_min, warmup_steps=[warm(n) for n in steps]
    )
  if s.name == "wsd":
    return wsd(
      steps,
      eta_max=s.eta_max,
      eta_min=s.eta_min,
      warmup_steps=warm(steps[0]),
      decay_steps=_window_lengths(s, steps),
      decay=s.decay_shape,
      decay_every_domain=s.anneal_every_domain,
    )
  return infinite(
    steps,
    eta_max=s.eta_max,
    eta_const=s.eta_const,
    eta_min=s.eta_min,
    warmup_steps=warm(steps[0]),
    cooldown_steps=s.cooldown_steps or round_steps(s.cooldown_fraction * steps[0]),
    anneal_steps=_window_lengths(s, steps),
    cooldown="cosine" if s.name == "infinite_cosine" else "inv_sqrt",
    alpha=s.cooldown_alpha,
    anneal=s.anneal_shape,
    anneal_every_domain=s.anneal_every_domain,
  )


def anneal_windows(config, domain_steps: Sequence[int]) -> list[tuple[int, int] | None]:
  """Per domain, the global steps [start, end) of its anneal/decay branch, or None
  (always None for constant, cosine and rewarm_cosine)."""
  steps, s = _check(config, domain_steps), config.schedule
  if s.name not in ("infinite_cosine", "infinite_invsqrt", "wsd"):
    return [None] * len(steps)
  return windows(steps, _window_lengths(s, steps), s.anneal_every_domain)
