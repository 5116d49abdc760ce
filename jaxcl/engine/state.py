"""The learner state: only arrays, so jit, donation, sharding and orbax all see a plain pytree.

Everything that changes between tasks (task index, seen / current class masks) is a
traced array here, which is what lets one compiled train step serve a whole task
sequence. Static things (the NNX graphdef, the optimizer, the method) are closed
over by the step, never stored.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class LearnerState:
  step: jax.Array  # int32 [], global, never reset
  task: jax.Array  # int32 [], index of the current task
  seen: jax.Array  # bool [C], classes revealed so far
  current: jax.Array  # bool [C], classes of the current task
  params: Any  # nnx.State, trainable leaves only
  frozen: Any  # nnx.State, everything else (e.g. the pretrained ViT)
  opt: Any  # optax state for `params`
  extra: Any  # method-owned non-differentiable arrays (prototypes, prompt counts, ...)
  rng: jax.Array  # uint32 [2], raw PRNG key


def init_state(
  model: nnx.Module,
  trainable,
  tx: optax.GradientTransformation,
  extra: Any,
  num_classes: int,
  seed: int,
) -> tuple[nnx.GraphDef, LearnerState]:
  """Splits `model` into trainable / frozen parts and builds the initial learner state."""
  graphdef, params, frozen = nnx.split(model, trainable, ...)
  state = LearnerState(
    step=jnp.zeros((), jnp.int32),
    task=jnp.zeros((), jnp.int32),
    seen=jnp.zeros((num_classes,), bool),
    current=jnp.zeros((num_classes,), bool),
    params=params,
    frozen=frozen,
    opt=tx.init(params),
    extra=extra,
    rng=jax.random.PRNGKey(seed),
  )
  return graphdef, state


def count_params(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))
