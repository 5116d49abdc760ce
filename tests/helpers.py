"""Shared test helpers: load a config file by path, run it in-process."""

from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")


def load_config(name: str, preset: str | None = None, **overrides):
  """configs/<name>.py:<preset>, locked like jaxcl.main locks it, then dotted `overrides`."""
  spec = importlib.util.spec_from_file_location(
    f"cfg_{name}", os.path.join(CONFIG_DIR, f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset)
  config.lock()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def config_names() -> list[str]:
  return sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f[0] != "_")
