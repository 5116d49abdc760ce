"""Command line: `python -m jaxcl.main --config=configs/<name>.py[:<preset>] [--workdir=DIR]`.

This file is intentionally short; the work happens in `jaxcl.cil.run.run` (class-incremental
runs) or `jaxcl.lm.run.run` (continual pretraining and growth, `config.kind == "cpt"`), two
recipes on one stage loop (jaxcl/engine/loop.py).
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


def cluster_environment(env=os.environ) -> str | None:
  """Which multi-process launcher started us: "tpu" (a TPU slice of several hosts, or several
  slices), "slurm" (srun with several tasks), "mpi" (Open MPI / MPICH ranks), "env"
  (JAXCL_MULTIHOST=1: JAX finds the cluster itself, or JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID say it), or None (one process).

  JAXCL_MULTIHOST=0 forces a single process.
  """
  forced = env.get("JAXCL_MULTIHOST")
  if forced in ("0", "1"):
    return "env" if forced == "1" else None
  if "," in env.get("TPU_WORKER_HOSTNAMES", "") or int(env.get("MEGASCALE_NUM_SLICES", "1")) > 1:
    return "tpu"
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env:  # inside srun
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", env.get("PMI_SIZE", "1"))) > 1:
    return "mpi"
  return None


def maybe_initialize_distributed(env=os.environ) -> None:
  """Joins the multi-process job the environment describes; only process 0 then logs INFO."""
  kind = cluster_environment(env)
  if kind is None:
    return
  if kind == "mpi" and "OMPI_MCA_orte_hnp_uri" not in env:
    # JAX finds Open MPI <= 4 by its ORTE variable; Open MPI 5 (PRRTE) and MPICH: mpi4py.
    jax.distributed.initialize(cluster_detection_method="mpi4py")
  elif "JAX_NUM_PROCESSES" in env:  # a manual launch (with JAX_COORDINATOR_ADDRESS=host:port)
    jax.distributed.initialize(
      num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"])
    )
  else:
    jax.distributed.initialize()
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  logging.info(
    "%s job: %d processes, %d devices (%d local)",
    kind,
    jax.process_count(),
    jax.device_count(),
    jax.local_device_count(),
  )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  maybe_initialize_distributed()
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(config)
  logging.info("config %s:%s -> workdir %s", config.name, config.preset, workdir)
  # After the flags are parsed: grain workers read absl flags.
  from jaxcl import checkpoint  # noqa: PLC0415
  from jaxcl.cil import run as cil_run  # noqa: PLC0415
  from jaxcl.engine import loop, report  # noqa: PLC0415
  from jaxcl.lm import run as lm_run  # noqa: PLC0415

  run = lm_run.run if config.kind == "cpt" else cil_run.run
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
