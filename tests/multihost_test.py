"""A real two-process job on one machine: `python -m jaxcl.main` started twice, joined by
jax.distributed (gloo collectives on CPU), 4 fake devices each. It must end where one process
with 8 devices ends, and only process 0 may write the run's outputs. A prompt method runs
data-parallel across the processes; the language model runs FSDP across them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

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


def _two_processes(command: list[str], tmp_path, **extra: str) -> list[str]:
  """Runs `command` as process 0 and 1 of a jax.distributed job (4 CPU devices each); returns
  their logs after asserting both exited 0."""
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
      **extra,
    )
    log = open(tmp_path / f"process{i}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    procs.append((proc, log))
  for proc, log in procs:
    proc.wait(timeout=600)
    log.close()
  logs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
  for (proc, _), text in zip(procs, logs, strict=True):
    assert proc.returncode == 0, text[-3000:]
  return logs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["l2p", "cpt"])
def test_two_processes_end_where_one_process_ends(tmp_path, name):
  logs = _two_processes(_command(name, tmp_path / "pod"), tmp_path)
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


def _restore_worker(directory: str) -> None:
  """Process JAX_PROCESS_ID of a two-process job: saves steps 1-3 of a sharded tree, then
  restores; process 1 cannot read step 3 (an injected transient read error on that host)."""
  import jax  # noqa: PLC0415
  import orbax.checkpoint as ocp  # noqa: PLC0415
  from jax.sharding import NamedSharding  # noqa: PLC0415
  from jax.sharding import PartitionSpec as P  # noqa: PLC0415

  from jaxcl import main, sharding  # noqa: PLC0415

  main.maybe_initialize_distributed()
  mesh = sharding.make_mesh(8)
  sh = NamedSharding(mesh, P("data"))
  tree = lambda v: {
    "w": jax.make_array_from_callback((16, 4), sh, lambda i: np.full((16, 4), v)[i])
  }
  ckpt = checkpoint.Checkpointer(directory, keep=5)
  for s in (1, 2, 3):
    ckpt.save(s, tree(float(s)), data_state={"i": s}, meta={"s": s}, wait=True)
  if jax.process_index() == 1:
    read = ocp.StandardCheckpointHandler.restore

    def flaky_read(self, directory, *args, **kwargs):
      if directory.parent.name == "3":
        raise OSError("injected: transient read error on this host")
      return read(self, directory, *args, **kwargs)

    ocp.StandardCheckpointHandler.restore = flaky_read
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree(0.0))
  r = ckpt.restore(target)
  local = [float(np.asarray(x.data).mean()) for x in r.state["w"].addressable_shards]
  print("RESULT", json.dumps({"step": r.step, "skipped": r.skipped, "meta": r.meta, "w": local}))
  ckpt.close()


@pytest.mark.slow
def test_processes_that_disagree_about_the_newest_checkpoint_resume_from_the_same_step(tmp_path):
  command = [sys.executable, __file__, "restore", str(tmp_path / "checkpoints")]
  logs = _two_processes(command, tmp_path)
  results = [json.loads(log.split("\nRESULT ", 1)[1].splitlines()[0]) for log in logs]
  for r in results:  # both passed step 3 over, though process 0 alone could read it
    assert (r["step"], r["skipped"], r["meta"]) == (2, [3], {"s": 2})
    assert r["w"] == [2.0] * 4  # its four local shards hold step 2's values
  assert "CANNOT BE RESTORED (another process could not restore it)" in logs[0]
  assert "injected: transient read error" in logs[1]


def _pod_worker(directory: str) -> None:
  """Process JAX_PROCESS_ID of a two-process job: gathers a sharded array, checks two batch
  layouts, then gets a preemption notice (SIGTERM to process 1) between steps, as during an
  evaluation."""
  import signal  # noqa: PLC0415
  import time  # noqa: PLC0415

  import jax  # noqa: PLC0415
  from jax.sharding import NamedSharding  # noqa: PLC0415
  from jax.sharding import PartitionSpec as P  # noqa: PLC0415

  from jaxcl import main, multihost, preemption, sharding  # noqa: PLC0415

  main.maybe_initialize_distributed()
  out = {}
  full = np.arange(32, dtype=np.float32).reshape(8, 4)
  sh = NamedSharding(sharding.make_mesh(8), P("data"))  # rows 0-3 on process 0, 4-7 on 1
  x = jax.make_array_from_callback(full.shape, sh, lambda i: full[i])
  out["gathered"] = multihost.to_host({"x": x})["x"].tolist() == full.tolist()
  sharding.check_batch(8, sharding.make_mesh(2, 1, 4))  # the hosts split the batch: fine
  try:
    sharding.check_batch(8, sharding.make_mesh(1, 1, 8))  # tensor across hosts
    out["tensor_across_hosts"] = "accepted"
  except ValueError as e:
    out["tensor_across_hosts"] = str(e)
  ckpt = checkpoint.Checkpointer(directory)
  watch = preemption.PreemptionWatch(ckpt)
  out["steps"] = [watch(step) for step in (1, 2, 3)]
  if jax.process_index() == 1:
    os.kill(os.getpid(), signal.SIGTERM)  # the notice reaches one host, during "evaluation"
  time.sleep(5)
  out["boundary"] = watch.at_boundary()
  print("RESULT", json.dumps(out), flush=True)
  ckpt.close()


@pytest.mark.slow
def test_pod_gathers_exports_forbids_replicated_batches_and_stops_at_a_boundary(tmp_path):
  command = [sys.executable, __file__, "pod", str(tmp_path / "checkpoints")]
  logs = _two_processes(command, tmp_path)
  for log in logs:
    out = json.loads(log.split("\nRESULT ", 1)[1].splitlines()[0])
    assert out["gathered"], "the sharded array gathered whole on every process"
    assert "replicates data.batch_size rows across processes" in out["tensor_across_hosts"]
    assert out["steps"] == [False] * 3
    assert out["boundary"] is True  # on both hosts, though only process 1 got SIGTERM


@pytest.mark.parametrize(
  ("env", "method"),
  [
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5"}, None),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "mpi4py"),  # Open MPI 5 sets no ORTE variable
    ({"PMI_SIZE": "4"}, "mpi4py"),  # MPICH
  ],
)
def test_mpi_launches_join_through_the_environment_jax_reads(monkeypatch, env, method):
  import jax  # noqa: PLC0415

  from jaxcl import main  # noqa: PLC0415

  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  main.maybe_initialize_distributed(env)
  assert calls == [{"cluster_detection_method": method} if method else {}]


if __name__ == "__main__":
  {"restore": _restore_worker, "pod": _pod_worker}[sys.argv[1]](*sys.argv[2:])
