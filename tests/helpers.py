"""Shared test helpers: load a config file by name, list the config files, run jaxcl.main."""

from __future__ import annotations

import os
import sys

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


def main_command(name: str, workdir, *flags: str, preset: str = "smoke") -> list[str]:
  """`python -m jaxcl.main` on configs/<name>.py:<preset> in `workdir`, plus `flags`."""
  config = f"--config={CONFIG_DIR}/{name}.py:{preset}"
  return [sys.executable, "-m", "jaxcl.main", config, f"--workdir={workdir}", *flags]


def cpu_env(devices: int, **extra: str) -> dict:
  """This environment with `devices` fake CPU devices (for a subprocess run)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env
