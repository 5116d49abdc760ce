"""What a run writes besides metrics: the workdir's config.json and the results.json dict."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import subprocess

import jax
from etils import epath

from jaxcl import config_lib, user_errors, writers

_PACKAGES = ("jax", "flax", "optax", "orbax-checkpoint", "grain", "jaxcl")


class ConfigMismatch(user_errors.UserError, ValueError):
  """A workdir's checkpoint was made under another config."""


def check_and_write_config(workdir: str, config, *, write: bool) -> None:
  """Creates the workdir and writes config.json; refuses to resume under a different config.

  A workdir that holds checkpoints is resumed only with the same config, apart from
  `config_lib.RESUMABLE_KEYS` (`resume`, the mesh, reader threads, the attention kernel). With
  `--config.resume=false` the old checkpoints are moved aside to `checkpoints.old-<time>`,
  never deleted.
  """
  root = epath.Path(workdir)  # local or gs://
  root.mkdir(parents=True, exist_ok=True)
  path, ckpt_dir = root / "config.json", root / "checkpoints"
  has_ckpt = ckpt_dir.is_dir() and any(ckpt_dir.iterdir())
  new = json.loads(config.to_json())
  if has_ckpt and config.resume and path.exists():
    old = json.loads(path.read_text())
    changed = config_lib.diff(config_lib.run_identity(old), config_lib.run_identity(new))
    if changed:
      raise ConfigMismatch(
        f"{workdir} holds a checkpoint of a run with another config; differing keys:\n  "
        + "\n  ".join(changed)
        + "\nUse a new --workdir, or --config.resume=false to start over (old checkpoints are "
        "moved aside, not deleted)."
      )
  if write:
    if has_ckpt and not config.resume:
      stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
      ckpt_dir.rename(root / f"checkpoints.old-{stamp}")
    writers.write_json(str(path), new)


def version() -> str:
  from jaxcl import __version__  # noqa: PLC0415

  return __version__


def git_hash() -> str:
  try:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
      ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
    )
    return out.stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def environment() -> dict:
  versions = {}
  for name in _PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = version() if name == "jaxcl" else "not installed"
  versions["git"] = git_hash()
  devices = jax.devices()
  return {
    "versions": versions,
    "devices": {
      "count": len(devices),
      "kind": devices[0].device_kind,
      "platform": devices[0].platform,
      "processes": jax.process_count(),
    },
  }
