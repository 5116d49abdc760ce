"""The console shows jaxcl's own records and library warnings; log.txt gets every record."""

import logging
import os

import orbax.checkpoint as ocp
from absl import logging as absl_logging

from jaxcl import console


def _record(pathname: str, level: int = logging.INFO, **extra) -> logging.LogRecord:
  record = logging.LogRecord("absl", level, pathname, 1, "a message %d", (7,), None)
  record.__dict__.update(extra)
  return record


LIBRARY = os.path.join(os.path.dirname(ocp.__file__), "checkpoint_manager.py")
OURS = os.path.join(os.path.dirname(console.__file__), "engine", "loop.py")


def test_library_info_stays_off_the_console_but_its_warnings_do_not():
  assert console.on_console(_record(OURS))
  assert not console.on_console(_record(LIBRARY))
  assert console.on_console(_record(LIBRARY, logging.WARNING))
  assert not console.on_console(_record(OURS, logging.ERROR, console=False))


def test_jaxcl_info_is_shown_bare_and_the_rest_in_absl_format():
  formatter = console.ConsoleFormatter()
  assert formatter.format(_record(OURS)) == "a message 7"
  shown = formatter.format(_record(LIBRARY, logging.WARNING))
  assert shown.startswith("W") and "checkpoint_manager.py:1] a message 7" in shown


def test_routed_writes_every_record_to_log_txt_and_undoes_itself(tmp_path):
  python_handler = absl_logging.get_absl_handler().python_handler
  before = (list(python_handler.filters), python_handler.formatter, list(logging.root.handlers))
  with console.routed(str(tmp_path)) as path:
    assert path == str(tmp_path / "log.txt")
    assert console.on_console in python_handler.filters
    logging.getLogger().warning("from a library")
    absl_logging.warning("from jaxcl")
  after = (list(python_handler.filters), python_handler.formatter, list(logging.root.handlers))
  assert after == before
  log = (tmp_path / "log.txt").read_text()
  assert "from a library" in log and "console_test.py" in log and "from jaxcl" in log


def test_routed_leaves_the_console_alone_when_verbosity_is_given(tmp_path):
  python_handler = absl_logging.get_absl_handler().python_handler
  with console.routed(str(tmp_path), quiet=False):
    assert console.on_console not in python_handler.filters
  assert console.log_path(str(tmp_path), 3) is None  # process 3 of a pod: process 0 writes it
  assert console.log_path("gs://bucket/run") is None


def test_the_progress_bar_shows_the_throughput_the_recipe_logged():
  from jaxcl.engine import loop  # noqa: PLC0415

  assert loop.throughput_shown({"examples_per_sec": 1234.4, "loss": 1.0}) == {"ex/s": "1,234"}
  assert loop.throughput_shown({"tokens_per_sec": 52.7, "lr": 0.1}) == {"tok/s": "53"}
  assert loop.throughput_shown({"loss": 1.0}) == {}
