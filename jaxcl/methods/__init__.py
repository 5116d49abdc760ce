"""Continual-learning methods, one module each, found by name (big_vision style)."""

import importlib
import pkgutil

_NOT_METHODS = {"base", "prompts", "vor"}


def get(name: str):
  """The module `jaxcl.methods.<name>`; it exposes `make(config) -> base.Method`."""
  if name not in names():
    raise ValueError(f"unknown method {name!r}; available: {names()}")
  return importlib.import_module(f"jaxcl.methods.{name}")


def names() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_METHODS)
