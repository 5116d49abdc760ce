"""Pause and resume: a killed, preempted or re-meshed run ends exactly where a straight run does.

The SIGKILL cases run `python -m jaxcl.main` in a subprocess (on 1 and on 8 fake devices, for
prompt methods and for continual pretraining),
kill it while checkpoints are being written, rerun the same command and compare the final
learner state and accuracy matrix bit for bit with an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers import ROOT, cpu_env, load_config, made_once, main_command, nan_loss_at_step, run_tasks

from jaxcl import checkpoint
from jaxcl.engine import loop, step

STEPS = 6  # per task; the smoke presets have 2 tasks


def _command(name: str, workdir) -> list[str]:
  steps_key = "steps_per_domain" if name == "cpt" else "steps_per_task"
  flags = ("--config.checkpoint.every_steps=1", "--config.train.log_every_steps=4")
  return main_command(name, workdir, f"--config.train.{steps_key}={STEPS}", *flags)


def _run_to_end(name: str, workdir, devices: int) -> subprocess.CompletedProcess:
  done = subprocess.run(
    _command(name, workdir), env=cpu_env(devices), cwd=ROOT, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def _start_and_signal(name: str, workdir, devices: int, sig: int, at_step: int):
  """Starts a run and sends `sig` once checkpoint directory `at_step` (maybe half-written) shows.

  The run's output goes to a file: orbax logs enough to fill a pipe, which would block the run.
  """
  workdir.mkdir(parents=True)
  log = workdir.parent / f"{workdir.name}.log"
  with open(log, "w") as out:
    proc = subprocess.Popen(
      _command(name, workdir), env=cpu_env(devices), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
    )
    ckpt_dir = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
      names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
      if any(n.split(".")[0] == str(at_step) for n in names):
        proc.send_signal(sig)
        break
      time.sleep(0.02)
    proc.wait(timeout=300)
  return proc.returncode, log.read_text()


def _final(workdir) -> tuple[dict, dict]:
  results = json.loads((workdir / "results.json").read_text())
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"))
  state = ckpt.read_state()
  ckpt.close()
  return results, state


def _assert_identical(a, b) -> None:
  (ra, sa), (rb, sb) = a, b
  keys = ("acc_matrix", "task_il_matrix", "A_last", "A_avg", "forgetting", "prompt_usage")
  for key in (*keys, "loss_matrix", "curve", "tokens_seen"):
    assert ra.get(key) == rb.get(key), key
  leaves_a, leaves_b = _leaves(sa), _leaves(sb)
  assert leaves_a.keys() == leaves_b.keys()
  for path, x in leaves_a.items():
    np.testing.assert_array_equal(x, leaves_b[path], err_msg=path)


def _leaves(tree) -> dict:
  import jax  # noqa: PLC0415

  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


@pytest.fixture(scope="session")
def straight_run():
  """straight_run(name, devices): the workdir of an uninterrupted run, made once per test session
  (across xdist workers: helpers.made_once)."""

  def get(name: str, devices: int):
    _, workdir = made_once(
      f"straight-{name}-{devices}", lambda w: _run_to_end(name, w, devices).returncode
    )
    return pathlib.Path(workdir)

  return get


@pytest.mark.parametrize(
  # at_step: a checkpoint id; ids count saves, so with every_steps=1 the cpt id 9 is step 8
  ("name", "devices", "at_step"),
  [("l2p", 1, 4), ("coda_prompt", 8, 10), ("cpt", 1, 9)],
)
def test_sigkill_then_rerun_is_bitwise_identical(tmp_path, straight_run, name, devices, at_step):
  killed = tmp_path / "killed"
  code, _ = _start_and_signal(name, killed, devices, signal.SIGKILL, at_step)
  assert code == -signal.SIGKILL, "the run ended before it could be killed"
  assert not (killed / "results.json").exists()
  resumed = _run_to_end(name, killed, devices)
  assert "resumed from step" in resumed.stderr
  _assert_identical(_final(straight_run(name, devices)), _final(killed))


def test_sigterm_saves_exits_75_says_how_to_resume_and_resumes_identically(tmp_path, straight_run):
  stopped = tmp_path / "stopped"
  code, log = _start_and_signal("coda_prompt", stopped, 8, signal.SIGTERM, 8)
  assert code == loop.PREEMPTED_EXIT_CODE, log[-3000:]
  assert "rerun the same command with the same --workdir to resume" in log
  _run_to_end("coda_prompt", stopped, 8)
  _assert_identical(_final(straight_run("coda_prompt", 8)), _final(stopped))


def _interrupt_after(monkeypatch, calls: dict) -> None:
  """Makes the train step send this process SIGTERM when `calls["n"]` reaches `calls["at"]`."""
  real = step.make_train_step

  def interrupting(*args, **kwargs):
    fn = real(*args, **kwargs)

    def wrapped(state, batch):
      calls["n"] += 1
      if calls["n"] == calls["at"]:
        os.kill(os.getpid(), signal.SIGTERM)
      return fn(state, batch)

    return wrapped

  monkeypatch.setattr(step, "make_train_step", interrupting)


def _run(workdir, name="finetune", **overrides):
  config = load_config(name, "smoke", **{"train.steps_per_task": 4, **overrides})
  return run_tasks(config, workdir)


def test_sigterm_mid_task_in_process_then_resume_gives_identical_results(tmp_path, monkeypatch):
  overrides = {"data.num_classes": 6}
  straight = _run(tmp_path / "straight", **overrides)
  calls = {"n": 0, "at": 6}  # task 1, second step
  _interrupt_after(monkeypatch, calls)
  with pytest.raises(SystemExit) as stopped:
    _run(tmp_path / "resumed", **overrides)
  assert stopped.value.code == loop.PREEMPTED_EXIT_CODE
  calls.update(n=0, at=-1)
  resumed = _run(tmp_path / "resumed", **overrides)
  assert calls["n"] == 3 * 4 - 6  # it continued from the step saved at SIGTERM
  assert resumed["acc_matrix"] == straight["acc_matrix"]


def test_resume_on_8_then_4_then_1_devices(tmp_path, monkeypatch):
  straight = _run(tmp_path / "straight", "l2p", **{"data.num_classes": 6})
  calls = {"n": 0, "at": 3}
  _interrupt_after(monkeypatch, calls)
  work = tmp_path / "moved"
  with pytest.raises(SystemExit):
    _run(work, "l2p", **{"data.num_classes": 6, "mesh.data": 8})
  calls.update(n=0, at=4)  # 3 steps done; stop again in task 1
  with pytest.raises(SystemExit):
    _run(work, "l2p", **{"data.num_classes": 6, "mesh.data": 4})
  calls.update(n=0, at=-1)
  moved = _run(work, "l2p", **{"data.num_classes": 6, "mesh.data": 1})
  assert calls["n"] == 3 * 4 - 3 - 4
  assert moved["num_tasks"] == straight["num_tasks"] == 3
  a, b = _leaves(_final(tmp_path / "straight")[1]), _leaves(_final(work)[1])
  assert int(b["['step']"]) == int(a["['step']"]) == 12
  for path, x in a.items():  # other meshes reorder float reductions: equal up to rounding
    np.testing.assert_allclose(b[path], x, rtol=2e-4, atol=2e-5, err_msg=path)


def test_resume_with_another_config_is_refused_but_the_mesh_may_change(tmp_path):
  _run(tmp_path)
  with pytest.raises(ValueError, match="optim.lr"):
    _run(tmp_path, **{"optim.lr": 0.5})
  with pytest.raises(ValueError, match="method.train_mask"):
    _run(tmp_path, **{"method.train_mask": "seen"})
  _run(tmp_path, **{"mesh.data": 2})  # resumes the finished run: nothing left to train


def test_a_non_finite_step_never_reaches_a_checkpoint(tmp_path, monkeypatch):
  """Saves every step, logs every 4: a NaN at step 3 stops the run before step 3 is saved."""
  nan_loss_at_step(monkeypatch, 3)
  with pytest.raises(loop.NonFiniteLoss, match=r"step 3 \(task 0\): metric 'loss' = nan"):
    _run(tmp_path, **{"checkpoint.every_steps": 1, "train.log_every_steps": 4})
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.steps() == [1, 2]
  ckpt.close()


def test_a_corrupted_latest_checkpoint_is_passed_over_loudly_and_the_run_ends_the_same(
  tmp_path, caplog
):
  from checkpoint_test import truncate_largest_array_file  # noqa: PLC0415

  work = tmp_path / "run"
  first = _run(work, **{"checkpoint.every_steps": 1})
  _, state = _final(work)
  ckpt = checkpoint.Checkpointer(str(work / "checkpoints"))
  newest = ckpt.steps()[-1]
  ckpt.close()
  truncate_largest_array_file(work / "checkpoints" / str(newest))
  shutil.copytree(
    work / "checkpoints" / str(newest - 1),
    work / "checkpoints" / f"{newest + 5}.orbax-checkpoint-tmp-1",
  )
  (work / "results.json").unlink()
  with caplog.at_level(logging.WARNING):
    again = _run(work, **{"checkpoint.every_steps": 1})
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(f"STEP {newest} " in m and "CANNOT BE RESTORED" in m for m in warnings), warnings
  assert again["acc_matrix"] == first["acc_matrix"]
  _assert_identical((again, _final(work)[1]), (first, state))
