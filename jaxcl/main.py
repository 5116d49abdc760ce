"""Command line: `python -m jaxcl.main --config=configs/<name>.py[:<preset>] [--workdir=DIR]`.

This file is intentionally short; the work happens in `jaxcl.train.loop.run` (class-incremental
runs) or `jaxcl.cpt.run.run` (continual pretraining, `config.kind == "cpt"`).
Configs are locked, so `--config.<key>=<value>` with an unknown key or a value of
the wrong type is an error that names the key.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a configs/*.py file[:preset].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<name>-<preset>).")


def default_workdir(config) -> str:
  return os.path.join("runs", f"{config.name}-{config.preset}")


def maybe_initialize_distributed() -> None:
  """Joins a multi-process job when the environment says we are in one (TPU pod, SLURM, MPI)."""
  env = os.environ
  multi = (
    env.get("JAXCL_MULTIHOST") == "1"
    or int(env.get("SLURM_NTASKS", "1")) > 1
    or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    or "TPU_WORKER_HOSTNAMES" in env
    and "," in env["TPU_WORKER_HOSTNAMES"]
  )
  if multi:
    jax.distributed.initialize()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  maybe_initialize_distributed()
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(config)
  logging.info("config %s:%s -> workdir %s", config.name, config.preset, workdir)
  # After the flags are parsed: grain workers read absl flags.
  from jaxcl import checkpoint  # noqa: PLC0415
  from jaxcl.cpt import run as cpt_run  # noqa: PLC0415
  from jaxcl.train import loop, report  # noqa: PLC0415

  run = cpt_run.run if config.kind == "cpt" else loop.run
  try:
    results = run(config, workdir)
  except (checkpoint.CheckpointError, report.ConfigMismatch, loop.NonFiniteLoss) as e:
    raise SystemExit(f"jaxcl: {type(e).__name__}: {e}") from e  # exit code 1, no traceback
  keys = ("A_last", "A_avg", "final_avg_loss", "forgetting", "tokens_per_sec", "train_compiles")
  summary = {k: results[k] for k in keys if k in results}
  print(f"{config.name}:{config.preset} -> {workdir}: {summary}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
