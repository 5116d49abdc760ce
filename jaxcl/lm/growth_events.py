"""Growth events inside a language-model run (jaxcl/lm/run.py plugs them into the stage loop).

`config.growth.events` is a list of dicts, applied in order once the run has taken `step`
train steps:

    dict(step=200, operator="g_stack", num_layers=4)              # depth x4 (G_stack)
    dict(step=200, operator="msg", width=128, num_heads=4, ramp_steps=100)
    dict(step=200, operator="ligo", num_layers=4, width=128, ligo_steps=20)
    dict(step=200, operator="aki", width=128, num_heads=4, index_map="random")

Target keys: num_layers, width, num_heads, num_kv_heads, mlp_dim (unchanged when absent).
At an event the `GrowthPlan` builds the large model, maps the parameters with the operator
(jaxcl/growth/*), grows the optimizer state (`growth.opt_state`: carry | reset), and measures
the largest logit change on a fixed validation batch; the stage loop then jits the steps again
for the new shape, the only recompilation. How many events a state has seen is its run's
`progress.growth_events`; the plan itself never changes. MSG's masks ramp 0 -> 1 over the
event's `ramp_steps` (default `growth.ramp_steps`). With `growth.two_stage_steps` > 0 every
event is followed by bert2BERT's stage 1 of sub-model training (jaxcl/lm/two_stage.py).

The learning rate across events (`growth.lr_after`, see `lr_schedule`):
  carry    the run's global schedule goes on (times a linear re-warmup over
           `growth.rewarm_steps` after every event when > 0)
  restart  G_stack's recipe (Du et al. 2024; `tongxuluo/prts` g_stack.sh): a new warmup +
           cosine from the event to the end of the run, peak `growth.restart_lr` (prts: 3e-4
           for the grown model vs 1e-3 for the small one), floor `restart_lr / 10`
  rewind   MSG's (`cofe-ai/MSG` get_scheduler_ex, rewind_bool): the schedule jumps back to
           its post-warmup peak and decays again along the same curve
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from jaxcl import growth
from jaxcl.engine import state as state_lib
from jaxcl.growth import base, ligo, msg, optimizer
from jaxcl.lm import schedules

SHAPE_KEYS = ("num_layers", "width", "num_heads", "num_kv_heads", "mlp_dim")
EVENT_KEYS = ("step", "operator", "ramp_steps", "ligo_steps", "index_map", *SHAPE_KEYS)
LR_AFTER = ("carry", "restart", "rewind")


def default_config() -> ml_collections.ConfigDict:
  """`config.growth`: no events by default."""
  c = ml_collections.ConfigDict()
  c.events = []  # list of dict(step=..., operator=..., <target shape>)
  c.opt_state = "carry"  # carry (moments of old entries kept, new ones zero) | reset
  c.lr_after = "carry"  # carry | restart (G_stack's new cosine) | rewind (MSG): see lr_schedule
  c.rewarm_steps = 0  # carry: >0 re-warms the lr linearly over this many steps after each event
  c.restart_lr = 3e-4  # restart: the new cosine's peak (prts: 3e-4 after 1e-3 for the small model)
  c.restart_warmup = 0  # restart: warmup steps of the new cosine (prts: its base warmup, 3000)
  c.ramp_steps = 100  # MSG / G_random: steps for the masks to go from 0 to 1
  c.ligo_steps = 100  # LiGO: steps to train the growth operator (Wang et al. 2023: 100)
  c.ligo_optimizer = "sgd"  # LiGO: sgd (Wang et al. 2023 §4.1) | adam
  c.ligo_lr = 1e-2  # LiGO: learning rate of the operator
  # bert2BERT's two-stage training (jaxcl/lm/two_stage.py): > 0 trains sampled bottom-layer
  # sub-models for this many steps after every event (stage 1), then the whole model.
  c.two_stage_steps = 0
  c.two_stage_lb = 3  # stage 1: each sub-model's top l_b layers train (Chen et al. 2022: 3)
  return c


def parse_events(growth_config) -> list[dict]:
  """The events as plain dicts, checked: known keys and operators, increasing steps."""
  events, last = [], 0
  for raw in growth_config.events:
    e = dict(raw)
    unknown = set(e) - set(EVENT_KEYS)
    if unknown or "step" not in e or "operator" not in e:
      raise ValueError(f"growth event {e}: needs step and operator; unknown keys {unknown}")
    if e["operator"] != "ligo":
      growth.get(e["operator"], e.get("index_map"))
    if int(e["step"]) <= last:
      raise ValueError(f"growth event steps must increase and be > 0, got {e['step']}")
    last = int(e["step"])
    events.append(e)
  return events


def rewarm(growth_config, schedule):
  """`schedule` times min(1, (t - s + 1) / W) after every event step s (W = rewarm_steps)."""
  warm = int(growth_config.rewarm_steps)
  starts = [int(e["step"]) for e in growth_config.events]
  if warm <= 0 or not starts:
    return schedule

  def rewarmed(count):
    t = jnp.asarray(count, jnp.float32)
    factor = jnp.ones_like(t)
    for s in starts:
      factor = factor * jnp.where(t >= s, jnp.clip((t - s + 1) / warm, 0.0, 1.0), 1.0)
    return schedule(count) * factor

  return rewarmed


def lr_schedule(growth_config, schedule, total_steps: int):
  """The run's learning rate across its growth events (`growth.lr_after`, module doc).

  With s the latest event step <= t: `restart` gives warmup_cosine(restart_lr, T - s, W,
  restart_lr / 10) at t - s (T = total_steps, W = restart_warmup); `rewind` gives
  schedule(p + t - s), p the step of the schedule's peak.
  """
  mode = growth_config.lr_after
  if mode not in LR_AFTER:
    raise ValueError(f"growth.lr_after={mode!r}: use {' | '.join(LR_AFTER)}")
  starts = np.asarray([int(e["step"]) for e in growth_config.events], np.int32)  # [E]
  if mode == "carry" or not len(starts):
    return rewarm(growth_config, schedule)
  if mode == "rewind":
    peak = int(np.argmax(np.asarray(jax.vmap(schedule)(jnp.arange(total_steps)))))
    after = lambda s, u: schedule(peak + u)
  else:
    peak_lr = float(growth_config.restart_lr)
    tails = [
      schedules.warmup_cosine(
        peak_lr, total_steps - int(s), growth_config.restart_warmup, peak_lr / 10
      )
      for s in starts
    ]
    after = lambda s, u: jax.lax.switch(s, tails, u)

  def grown(count):
    t = jnp.asarray(count, jnp.int32)
    k = jnp.sum(t >= jnp.asarray(starts)) - 1  # the latest event at or before t, -1: none
    u = t - jnp.asarray(starts)[jnp.maximum(k, 0)]
    return jnp.where(k < 0, schedule(count), after(jnp.maximum(k, 0), u))

  return grown


def shape_of(cfg: base.ModelConfig) -> dict:
  d = base.dims(cfg)
  return dict(
    num_layers=d["L"], width=d["D"], num_heads=d["H"], num_kv_heads=d["K"], mlp_dim=d["F"]
  )


def logits_of(model, batch: dict, objective: str):
  """The logits the objective trains: next-token [B, T, V] or masked-LM [B, T, V]."""
  if objective == "lm":
    return model(batch["tokens"][:, :-1])
  return model(batch["tokens"])[1]


class GrowthPlan:
  """The growth events of one run: the model shape after each, and applying one.

  `cfgs[k]` is the model config after k events; `loss_fn(model, extra, batch, ctx)` is the
  run's objective (it trains LiGO's operator).
  """

  def __init__(self, config, model_cfg: base.ModelConfig, loss_fn, tx, num_domains: int):
    self.config, self.loss_fn, self.tx = config, loss_fn, tx
    self.num_domains = num_domains
    self.events = parse_events(config.growth)
    steps = [config.train.steps_per_domain] * num_domains
    if self.events and config.train.anneal_branch and any(schedules.anneal_windows(config, steps)):
      raise ValueError("growth events with anneal branches (train.anneal_branch) are not supported")
    self.ops, self.cfgs = [], [model_cfg]
    for e in self.events:
      op = (
        ligo.OPERATOR if e["operator"] == "ligo" else growth.get(e["operator"], e.get("index_map"))
      )
      shape = {k: e[k] for k in SHAPE_KEYS if k in e}
      self.ops.append(op)
      self.cfgs.append(growth.target(op, self.cfgs[-1], shape))
    self._check_masked_events()

  def _check_masked_events(self):
    """MSG grows one dimension per event (L, D, heads or F; Yao et al. 2024, `cofe-ai/MSG`
    `available_to_grow`), and a ramp ends before the next event starts."""
    for i, (e, op) in enumerate(zip(self.events, self.ops, strict=True)):
      if not op.masked:
        continue
      a, b = base.dims(self.cfgs[i]), base.dims(self.cfgs[i + 1])
      grown = [k for k in "LDHF" if a[k] != b[k]]
      if len(grown) > 1:
        raise ValueError(f"growth event {e}: MSG grows one dimension per event, not {grown}")
      end = int(e["step"]) + int(e.get("ramp_steps", self.config.growth.ramp_steps))
      if i + 1 < len(self.events) and int(self.events[i + 1]["step"]) <= end:
        raise ValueError(f"growth event {self.events[i + 1]} starts before the ramp of {e} ends")

  def due(self, done: int, step: int) -> bool:
    """Whether the next event (after `done` applied) comes before the step after `step`."""
    return done < len(self.events) and int(self.events[done]["step"]) == step

  def init_state(self, done: int):
    """(graphdef, state) of a fresh model of the shape after `done` events (a restore target)."""
    model = growth.build_model(self.cfgs[done], self.config.seed)
    return state_lib.init_state(model, nnx.Param, self.tx, {}, self.num_domains, self.config.seed)

  def grow(self, i: int, graphdef, state, step: int, batches, valid_batch: dict):
    """Applies event `i` to `state`; returns (graphdef, state, record).

    `batches` feeds a trained operator (LiGO); the logit change is measured on `valid_batch`
    (replicated).
    """
    event, op = self.events[i], self.ops[i]
    src_cfg, dst_cfg = self.cfgs[i], self.cfgs[i + 1]
    big = growth.build_model(dst_cfg, self.config.seed + 1 + i)
    dst_graphdef, params, frozen = nnx.split(big, nnx.Param, ...)
    src = nnx.to_pure_dict(state.params)
    init = nnx.to_pure_dict(params)
    extra_tokens = 0
    if op is ligo.OPERATOR:
      steps = int(event.get("ligo_steps", self.config.growth.ligo_steps))
      new, extra_tokens = ligo.train(
        src,
        init,
        src_cfg,
        dst_cfg,
        self._loss_fn(dst_graphdef, params, frozen),
        batches,
        steps=steps,
        lr=self.config.growth.ligo_lr,
        optimizer=self.config.growth.ligo_optimizer,
        seed=self.config.seed + i,
      )
    else:
      new = growth.grow_params(op, src, src_cfg, dst_cfg, init, self.config.seed + i)
    nnx.replace_by_pure_dict(params, new)
    if op.masked:
      old = nnx.to_pure_dict(state.frozen)["masks"] if src_cfg.growth_masks else None
      nnx.replace_by_pure_dict(frozen, {"masks": msg.initial_masks(src_cfg, dst_cfg, old)})
    layer_sources = op.layer_sources(src_cfg.num_layers, dst_cfg.num_layers)
    opt = optimizer.grow_opt_state(
      self.tx, state.opt, params, layer_sources, self.config.growth.opt_state
    )
    before = self._logits(graphdef, state.params, state.frozen, valid_batch)
    new_state = state.replace(params=params, frozen=frozen, opt=opt)
    after = self._logits(dst_graphdef, params, frozen, valid_batch)
    change = float(jnp.max(jnp.abs(after - before)))
    record = {
      "step": int(step),
      "operator": op.name,
      "from": shape_of(src_cfg),
      "to": shape_of(dst_cfg),
      "max_abs_logit_change": change,
      "exact": op.exact,
      "extra_tokens": int(extra_tokens),
    }
    logging.info("growth at step %d: %s", step, record)
    return dst_graphdef, new_state, record

  def _logits(self, graphdef, params, frozen, batch):
    objective = self.config.train.objective
    fn = jax.jit(lambda p, f, b: logits_of(nnx.merge(graphdef, p, f), b, objective))
    with jax.default_matmul_precision("highest"):
      return fn(params, frozen, batch)

  def _loss_fn(self, graphdef, params_template, frozen):
    """loss(pure params, batch) of the large model, for training LiGO's operator."""
    loss_fn = self.loss_fn

    def loss(pure, batch):
      p = jax.tree.map(lambda x: x, params_template)
      nnx.replace_by_pure_dict(p, pure)
      value, _ = loss_fn(nnx.merge(graphdef, p, frozen), {}, batch, None)
      return value

    return loss

  def ramp(self, done: int, step: int) -> jax.Array | None:
    """MSG: the masks' value for the train step after `step` steps, None outside a ramp."""
    if not done or not self.ops[done - 1].masked:
      return None
    event = self.events[done - 1]
    start = int(event["step"])
    length = int(event.get("ramp_steps", self.config.growth.ramp_steps))
    if not start <= step <= start + length:
      return None
    return msg.ramp(step, start, length)


def set_masks(state, value):
  """`state` with every MSG mask below 1 at `value` (pure; the run jits it per model shape)."""
  frozen = jax.tree_util.tree_map_with_path(
    lambda path, m: msg.set_ramp(m, value) if _in_masks(path) else m, state.frozen
  )
  return state.replace(frozen=frozen)


def _in_masks(path) -> bool:
  return any(getattr(p, "key", None) == "masks" for p in path)
