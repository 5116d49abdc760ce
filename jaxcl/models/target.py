"""The platform a model is built and traced for.

Usually this process's default backend. `jaxcl.plan` compiles TPU programs on a CPU host
(libtpu's compile-only client), where the "auto" choices — `model.dtype` and
`model.attention` — and the Pallas kernels' interpret mode must follow the TPU being planned
for, not the host: it runs inside `compiling_for("tpu")`.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_PLATFORM = contextvars.ContextVar("jaxcl_target_platform", default="")


def platform() -> str:
  """ "tpu", "gpu" or "cpu": the platform of `compiling_for`, else jax's default backend."""
  return _PLATFORM.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(name: str):
  """Builds and traces inside the block target the `name` platform's devices."""
  token = _PLATFORM.set(name)
  try:
    yield
  finally:
    _PLATFORM.reset(token)
