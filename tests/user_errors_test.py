"""The catalogue of bad input (README: When something goes wrong): each entry, run in-process
through `main.run_in_workdir` as `python -m jaxcl.main` runs it, exits with status 1 and a
message naming the input and what to do, with no traceback on the console but one in the
workdir's log.txt. Bad command lines (absl flags, parsed once per process) are checked by
configs_test.py's command-line test, the one subprocess of the catalogue."""

import errno
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest
from checkpoint_test import truncate_largest_array_file
from helpers import load_config, nan_loss_at_step, shared_run

from jaxcl import checkpoint, main, user_errors
from jaxcl.cil import run as cil_run
from jaxcl.models import text_loading


def _exit_message(config, workdir) -> str:
  """The console message of running `config` in `workdir`, which must fail with status 1."""
  with pytest.raises(SystemExit) as stopped:
    main.run_in_workdir(config, str(workdir))
  message = stopped.value.code
  assert isinstance(message, str), message  # SystemExit(str): status 1, the text on stderr
  assert message.startswith("jaxcl: ") and "Traceback" not in message
  return message


def _logged_traceback(workdir) -> str:
  return (workdir / "log.txt").read_text()


def test_missing_weights_name_the_file_and_where_to_get_them(tmp_path):
  config = load_config("l2p", "smoke", **{"model.init": str(tmp_path / "missing.npz")})
  message = _exit_message(config, tmp_path / "run")
  assert "missing.npz (model.init) not found" in message and "gs://vit_models" in message
  assert "MissingInput" in _logged_traceback(tmp_path / "run")


def test_corrupt_weights_say_what_format_is_expected(tmp_path):
  (tmp_path / "vit.npz").write_bytes(b"PK\x03\x04 half a zip file")
  config = load_config("l2p", "smoke", **{"model.init": str(tmp_path / "vit.npz")})
  message = _exit_message(config, tmp_path / "run")
  assert "vit.npz (model.init) are not a readable .npz" in message
  assert "Transformer/encoderblock_0" in message
  assert "Traceback" in _logged_traceback(tmp_path / "run")


def test_weights_with_other_names_name_the_missing_one(tmp_path):
  np.savez(tmp_path / "other.npz", **{"conv1/kernel": np.zeros((3, 3), np.float32)})
  config = load_config("l2p", "smoke", **{"model.init": str(tmp_path / "other.npz")})
  assert "other.npz (model.init) has no '" in _exit_message(config, tmp_path / "run")


def test_a_missing_dataset_says_how_to_get_it(tmp_path):
  config = load_config(
    "finetune", "smoke", **{"data.name": "fashion_mnist", "data.dir": str(tmp_path / "none")}
  )
  message = _exit_message(config, tmp_path / "run")
  assert "Fashion-MNIST file" in message and "--config.data.dir=DIR" in message


def test_a_missing_tokenizer_names_the_flag(tmp_path):
  config = load_config("cpt", "smoke", **{"data.tokenizer": str(tmp_path / "tok.json")})
  message = _exit_message(config, tmp_path / "run")
  assert "tok.json (data.tokenizer) not found" in message and "byte" in message


def test_text_files_that_match_nothing_name_the_pattern(tmp_path):
  config = load_config("cpt", "smoke", **{"data.domains": f"glob:{tmp_path}/*.txt,code:json"})
  assert f"glob:{tmp_path}/*.txt (data.domains)" in _exit_message(config, tmp_path / "run")


def test_a_workdir_that_cannot_be_created_says_to_pass_another(tmp_path):
  (tmp_path / "file").write_text("")
  config = load_config("finetune", "smoke")
  message = _exit_message(config, tmp_path / "file" / "run")
  assert "cannot create the workdir" in message and "--workdir" in message


def test_a_workdir_that_cannot_be_written_says_so(tmp_path):
  (tmp_path / "run" / "log.txt").mkdir(parents=True)  # (tests run as root: no chmod)
  message = _exit_message(load_config("finetune", "smoke"), tmp_path / "run")
  assert "cannot write into the workdir" in message


def test_a_full_disk_during_a_save_keeps_what_was_saved(tmp_path, monkeypatch):
  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  message = _exit_message(load_config("finetune", "smoke"), tmp_path / "run")
  assert "is full" in message and "while writing checkpoint 1" in message
  assert "run the same command again" in message
  assert (tmp_path / "run" / "config.json").exists()
  assert "OSError: [Errno 28]" in _logged_traceback(tmp_path / "run")


def test_a_config_mismatch_on_resume_names_the_keys(tmp_path):
  _, done = shared_run("finetune")
  shutil.copytree(done, tmp_path / "run")
  message = _exit_message(load_config("finetune", "smoke", seed=7), tmp_path / "run")
  assert "seed" in message and "--config.resume=false" in message


def test_corrupted_checkpoints_are_named_and_kept(tmp_path):
  _, done = shared_run("finetune")
  shutil.copytree(done, tmp_path / "run")
  ckpt = checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints"))
  steps = ckpt.steps()
  ckpt.close()
  for s in steps:
    truncate_largest_array_file(tmp_path / "run" / "checkpoints" / str(s))
  message = _exit_message(load_config("finetune", "smoke"), tmp_path / "run")
  assert "nothing was deleted" in message
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == sorted(map(str, steps))


def test_a_nan_loss_stops_with_what_to_change(tmp_path, monkeypatch):
  nan_loss_at_step(monkeypatch, 2)
  message = _exit_message(load_config("finetune", "smoke"), tmp_path / "run")
  assert "non-finite loss at step 2" in message and "train.nan_policy='skip'" in message
  assert "NonFiniteLoss" in _logged_traceback(tmp_path / "run")


def test_a_bug_is_not_dressed_up_as_bad_input(tmp_path, monkeypatch):
  def broken(config, workdir):
    raise RuntimeError("a bug in jaxcl")

  monkeypatch.setattr(cil_run, "run", broken)
  with pytest.raises(RuntimeError, match="a bug in jaxcl"):  # its traceback, not exit status 1
    main.run_in_workdir(load_config("finetune", "smoke"), str(tmp_path / "run"))
  assert "RuntimeError: a bug in jaxcl" in _logged_traceback(tmp_path / "run")


def test_missing_or_foreign_text_weights_are_bad_input(tmp_path):
  with pytest.raises(user_errors.MissingInput, match=r"gpt2\.safetensors not found"):
    text_loading.read_checkpoint(str(tmp_path / "gpt2.safetensors"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(user_errors.MissingInput, match="no .safetensors file"):
    text_loading.read_checkpoint(str(tmp_path / "empty"))
