"""Command line: `python -m jaxcl.main --config=configs/<name>.py[:<preset>] [--workdir=DIR]`.

This file is intentionally short; the work happens in `jaxcl.cil.run.run` (class-incremental
runs) or `jaxcl.lm.run.run` (continual pretraining and growth, `config.kind == "cpt"`), two
recipes on one stage loop (jaxcl/engine/loop.py).
Configs are locked, so `--config.<key>=<value>` with an unknown key or a value of
the wrong type is an error that names the key. Bad input of any kind (jaxcl/user_errors.py)
exits with status 1 and a message saying what to do, without a traceback; the console shows
jaxcl's own lines and library INFO records go to `<workdir>/log.txt` (jaxcl/console.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxcl import console, user_errors

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


def load_config():
  """The `--config` flag's value; a config file that cannot be loaded is a `BadConfig`."""
  try:
    config = _CONFIG.value
    config.name  # noqa: B018  (a file that failed to load raises on first use)
    return config
  except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
    detail = str(e).strip().splitlines()[-1].strip()  # config_flags nests the cause last
    raise user_errors.BadConfig(
      f"--config could not be loaded: {detail}\nGive --config=configs/<name>.py[:<preset>], a file "
      "that exists, with a preset its get_config knows (README: Configs)."
    ) from e


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (for `app.run`); a bad flag or `--config.<key>=<value>` override
  (unknown key, wrong type) exits with status 1 and a message naming it, without a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
    text = str(e).strip("'\"")
    if isinstance(e, KeyError | AttributeError):
      text = f"unknown config key {text}"
    elif "Traceback" in text:  # config_flags quotes the traceback of a failing get_config
      lines = [line for line in text.splitlines() if line.strip()]
      text = f"{lines[0]} {lines[-1]}"
    raise SystemExit(
      f"jaxcl: bad command line: {text}\nCheck the flag or the --config.<key> override against "
      "the config (print it with --helpfull or read config.json of an earlier run); configs are "
      "locked, so a key must exist and a value must have its type."
    ) from e


@contextlib.contextmanager
def exit_on_user_error(workdir: str, log: str | None) -> Iterator[None]:
  """A `UserError` (or a full disk) becomes exit status 1 with its one-paragraph message on
  the console; its traceback goes to `log` (the workdir's log.txt) only."""
  try:
    yield
  except (user_errors.UserError, OSError) as e:
    if isinstance(e, OSError) and not isinstance(e, user_errors.UserError):
      if e.errno not in user_errors.DISK_FULL:
        _log_bug(log)
        raise
      e = user_errors.disk_full(e, "the run's files", workdir)
    if log:  # the traceback in the workdir's log.txt only (and on the console with --verbosity)
      logging.error("%s", type(e).__name__, exc_info=True, extra={"console": False})
    where = f"\n(traceback in {log})" if log else ""
    raise SystemExit(f"jaxcl: {user_errors.message(e)}{where}") from e
  except Exception:
    _log_bug(log)
    raise


def _log_bug(log: str | None) -> None:
  """Anything else is a bug: its traceback stays on the console and goes to log.txt too."""
  if log:
    logging.error("unexpected error", exc_info=True, extra={"console": False})


def run_in_workdir(config, workdir: str, *, quiet: bool = True) -> dict:
  """Runs `config` in `workdir` with the console of jaxcl/console.py (`quiet`: library INFO
  records only in log.txt). Bad input exits with status 1 and a message (`exit_on_user_error`)."""
  process = jax.process_index() if cluster_environment() else 0
  with contextlib.ExitStack() as stack:
    with exit_on_user_error(workdir, None):
      console.make_workdir(workdir)
      log = stack.enter_context(console.routed(workdir, quiet=quiet, process_index=process))
    with exit_on_user_error(workdir, log):
      logging.info("config %s:%s -> workdir %s", config.name, config.preset, workdir)
      # After the flags are parsed: grain workers read absl flags.
      from jaxcl.cil import run as cil_run  # noqa: PLC0415
      from jaxcl.lm import run as lm_run  # noqa: PLC0415

      return (lm_run.run if config.kind == "cpt" else cil_run.run)(config, workdir)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  maybe_initialize_distributed()
  with exit_on_user_error("", None):
    config = load_config()
  workdir = _WORKDIR.value or default_workdir(config)
  results = run_in_workdir(config, workdir, quiet=not flags.FLAGS["verbosity"].present)
  keys = ("A_last", "A_avg", "final_avg_loss", "forgetting", "tokens_per_sec", "train_compiles")
  summary = {k: results[k] for k in keys if k in results}
  if jax.process_index() == 0:  # multi-host: one summary, not one per host
    print(f"{config.name}:{config.preset} -> {workdir}: {summary}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
