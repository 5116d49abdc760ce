"""Shared test helpers: load a config file by name, list the config files."""

from __future__ import annotations

import os

from jaxcl import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")


def load_config(name: str, preset: str | None = None, **overrides):
  """configs/<name>.py:<preset>, locked like jaxcl.main locks it, then dotted `overrides`."""
  return config_lib.load(os.path.join(CONFIG_DIR, f"{name}.py"), preset, **overrides)


def config_names(kind: str = "cil") -> list[str]:
  """Names of the configs of one kind: cil (class-incremental) or cpt (continual pretraining)."""
  names = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f[0] != "_")
  return [n for n in names if load_config(n).kind == kind]
