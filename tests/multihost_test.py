"""A real two-process job on one machine: `python -m jaxcl.main` started twice, joined by
jax.distributed (gloo collectives on CPU), 4 fake devices each. It must end where one process
with 8 devices ends, and only process 0 may write the run's outputs. A prompt method runs
data-parallel across the processes; the language model runs FSDP across them."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import numpy as np
import pytest
from helpers import ROOT, cpu_env, main_command

from jaxcl import checkpoint

ARGS = {
  "l2p": ["--config.train.steps_per_task=4", "--config.checkpoint.every_steps=2"],
  "cpt": ["--config.checkpoint.every_steps=3"],
}


def _command(name: str, workdir) -> list[str]:
  return main_command(name, workdir, *ARGS[name])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _leaves(workdir) -> dict:
  import jax  # noqa: PLC0415

  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"))
  state = ckpt.read_state()
  ckpt.close()
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["l2p", "cpt"])
def test_two_processes_end_where_one_process_ends(tmp_path, name):
  port = _free_port()
  procs = []
  for i in range(2):
    env = cpu_env(
      4,
      JAXCL_MULTIHOST="1",
      JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
      JAX_NUM_PROCESSES="2",
      JAX_PROCESS_ID=str(i),
      JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    )
    log = open(tmp_path / f"process{i}.log", "w")  # noqa: SIM115
    procs.append(
      (
        subprocess.Popen(
          _command(name, tmp_path / "pod"), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        ),
        log,
      )
    )
  for proc, log in procs:
    proc.wait(timeout=600)
    log.close()
  logs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
  for (proc, _), text in zip(procs, logs, strict=True):
    assert proc.returncode == 0, text[-3000:]
  single = subprocess.run(
    _command(name, tmp_path / "single"), env=cpu_env(8), cwd=ROOT, capture_output=True, text=True
  )
  assert single.returncode == 0, single.stderr[-3000:]

  pod = json.loads((tmp_path / "pod" / "results.json").read_text())
  one = json.loads((tmp_path / "single" / "results.json").read_text())
  assert pod["devices"]["processes"] == 2 and one["devices"]["processes"] == 1
  a, b = _leaves(tmp_path / "pod"), _leaves(tmp_path / "single")
  assert a.keys() == b.keys() and int(a["['step']"]) == int(b["['step']"]) > 0
  # The same examples every step, other reduction orders: rounding only (after AdamW steps for
  # the language model, which turn rounding in tiny gradients into larger differences).
  if name == "l2p":
    assert pod["acc_matrix"] == one["acc_matrix"]
    tol = dict(rtol=1e-5, atol=1e-6)
    progress = "task 2/2: accuracy"
  else:
    np.testing.assert_allclose(pod["loss_matrix"], one["loss_matrix"], rtol=1e-5)
    tol = dict(rtol=1e-4, atol=5e-5)
    progress = "domain 2/2"
  for path, x in a.items():
    np.testing.assert_allclose(x, b[path], **tol, err_msg=path)
  # Only process 0 logs progress (process 1 logs warnings and errors only) and writes outputs.
  assert progress in logs[0] and progress not in logs[1]
  assert sorted(os.listdir(tmp_path / "pod")) == sorted(os.listdir(tmp_path / "single"))
