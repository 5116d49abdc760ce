"""Shared test helpers: load a config file by name, list the config files, run jaxcl.main,
build a learner and run a task sequence (in process, or once per session for many tests)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from jaxcl import checkpoint, config_lib, methods, sharding
from jaxcl.cil import evaluate
from jaxcl.cil import run as cil_run
from jaxcl.data import benchmark
from jaxcl.engine import step
from jaxcl.lm import run as lm_run

THREE_TASKS = {"data.num_classes": 6}  # overrides: the smoke presets' 2 classes per task, 3 tasks
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


# --- the engine, as the tests drive it ---------------------------------------------------------
# The only place the tests build a learner or run a task sequence: an engine API change is
# adapted here.


class Learner(NamedTuple):
  """A method's learner as the class-incremental engine builds it, with its eval step."""

  config: Any
  method: Any  # base.Method
  graphdef: Any
  state: Any  # the initial LearnerState (on the default device; the steps place it)
  state_sharding: Any
  eval_step: Callable  # (state, batch, task_mask [C]) -> sums


def build_learner(config, num_classes: int) -> Learner:
  """The learner `cil.run.run(config, ...)` starts from, on the config's mesh."""
  method = methods.get(config.method.name).make(config)
  _, tx, graphdef, state = cil_run.build_learner(config, method, num_classes, 8)
  mesh = sharding.mesh_from_config(config.mesh)
  state_sh, _, eval_step = cil_run.make_steps(
    config, method, tx, graphdef, state, mesh, step.Traces()
  )
  return Learner(config, method, graphdef, state, state_sh, eval_step)


def restore_last(learner: Learner, workdir) -> Any:
  """The learner state of the newest checkpoint in `workdir` (a run of `learner.config`)."""
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  restored = ckpt.restore(sharding.abstract(learner.state, learner.state_sharding))
  ckpt.close()
  return restored.state


def evaluate_all(learner: Learner, state) -> dict:
  """What the engine reports after the last task for `state`: accuracy per task, counts."""
  config = learner.config
  bench = benchmark.build(config.data, single_task=learner.method.single_task)
  mesh = sharding.mesh_from_config(config.mesh)
  return evaluate.evaluate_seen(
    learner.eval_step,
    state,
    bench,
    bench.tasks,
    global_batch=config.data.eval_batch_size,
    sharding=sharding.batch_sharding(mesh),
    num_threads=config.data.num_threads,
  )


def run_tasks(config, workdir) -> dict:
  """Trains and evaluates the config's whole task (or domain) sequence in `workdir`, as
  `python -m jaxcl.main` does; its results.json dict, plus `traces`: how often each jitted step
  was traced during the run."""
  traces = step.Traces()
  results = (lm_run.run if config.kind == "cpt" else cil_run.run)(config, str(workdir), traces)
  return {**results, "traces": {k: n for k, n in traces.items() if n}}


def nan_loss_at_step(monkeypatch, n: int) -> None:
  """Makes the `n`-th call of every jitted train step built from now on report a NaN loss (and
  `finite` False), as a diverging run would."""
  real = step.make_train_step

  def with_nan(*args, **kwargs):
    fn, calls = real(*args, **kwargs), {"n": 0}

    def wrapped(state, batch):
      state, m = fn(state, batch)
      calls["n"] += 1
      if calls["n"] == n:
        m = {**m, "loss": m["loss"] * float("nan"), "finite": m["finite"] & False}
      return state, m

    return wrapped

  monkeypatch.setattr(step, "make_train_step", with_nan)


def made_once(key: str, make: Callable[[str], Any]) -> tuple[Any, str]:
  """(what `make(workdir)` returned, workdir) for a directory under the session's shared runs,
  made once per test session: xdist workers included, the first one makes it under a file lock,
  the others wait and read what it returned (JSON). Treat the directory as read-only."""
  workdir = os.path.join(os.environ["JAXCL_TEST_RUNS"], key)
  done = os.path.join(workdir, "made_once.json")
  with open(f"{workdir}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(done):
      shutil.rmtree(workdir, ignore_errors=True)
      os.makedirs(workdir)
      made = make(workdir)
      with open(done, "w") as f:
        json.dump(made, f)
  with open(done) as f:
    return json.load(f), workdir


def shared_run(name: str, **overrides) -> tuple[dict, str]:
  """(results, workdir) of `run_tasks` on configs/<name>.py:smoke with `overrides`, made once per
  test session and read by every test that asks for the same run (`made_once`)."""
  key = ",".join([name, *(f"{k}={v}" for k, v in sorted(overrides.items()))])
  return made_once(key, lambda workdir: run_tasks(load_config(name, "smoke", **overrides), workdir))
