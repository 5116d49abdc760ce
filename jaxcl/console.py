"""What a run shows: jaxcl's own lines on the console, every log record in `<workdir>/log.txt`.

By default the console holds the config -> workdir line, one progress bar per task or domain,
one line per finished task or domain and the final summary. INFO records of the libraries
(orbax's checkpoint chatter, grain, jax, absl) go to the log file only, beside jaxcl's own
records and the traceback of a failed run. absl's own `--verbosity` flag, when given, leaves the
console as absl makes it (everything at that level), e.g. `--verbosity=0` for all INFO records.
A remote workdir (gs://) gets no log file, nor do the processes other than 0 of a multi-host
job (the workdir's files are process 0's).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from absl import logging as absl_logging

from jaxcl import paths, user_errors

LOG_FILE = "log.txt"
_JAXCL_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def from_jaxcl(record: logging.LogRecord) -> bool:
  """Whether jaxcl code made `record` (absl names the calling file in `pathname`)."""
  return os.path.abspath(record.pathname).startswith(_JAXCL_DIR)


def on_console(record: logging.LogRecord) -> bool:
  """jaxcl's records and every library warning or error; `extra={"console": False}` never."""
  if not getattr(record, "console", True):
    return False
  return record.levelno >= logging.WARNING or from_jaxcl(record)


class ConsoleFormatter(logging.Formatter):
  """jaxcl's INFO records as the bare message; the rest in absl's format (level, file, line)."""

  def __init__(self):
    super().__init__()
    self._absl = absl_logging.PythonFormatter()

  def format(self, record: logging.LogRecord) -> str:
    if record.levelno == logging.INFO and from_jaxcl(record):
      return record.getMessage()
    return self._absl.format(record)


def log_path(workdir: str, process_index: int = 0) -> str | None:
  """`<workdir>/log.txt` of process 0; None for the other processes of a multi-host job (they
  log warnings only, to their own stderr) and for a remote workdir."""
  if paths.is_remote(workdir) or process_index != 0:
    return None
  return os.path.join(paths.absolute(workdir), LOG_FILE)


def make_workdir(workdir: str) -> None:
  """Creates `workdir` (and its parents); a `WorkdirError` saying what to do when it cannot."""
  try:
    paths.path(workdir).mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise user_errors.WorkdirError(
      e.errno,
      f"cannot create the workdir {workdir} ({e.strerror or e}); pass a --workdir in a place "
      "you can write to (by default runs/<config>-<preset> under the current directory)",
    ) from e


@contextlib.contextmanager
def routed(workdir: str, *, quiet: bool = True, process_index: int = 0) -> Iterator[str | None]:
  """Sends every record to the workdir's log file and, with `quiet`, only `on_console` records
  to the console (absl's handler). Yields the log file's path; undone on exit."""
  path = log_path(workdir, process_index)
  handlers = []
  if path is not None:
    try:
      file_handler = logging.FileHandler(path)
    except OSError as e:
      raise user_errors.WorkdirError(
        e.errno,
        f"cannot write into the workdir {workdir} ({e.strerror or e}: {path}); pass a "
        "--workdir you can write to, or fix its permissions",
      ) from e
    file_handler.setFormatter(absl_logging.PythonFormatter())
    handlers.append(file_handler)
  root = logging.getLogger()
  for handler in handlers:
    root.addHandler(handler)
  console = absl_logging.get_absl_handler().python_handler
  formatter = console.formatter
  if quiet:
    console.addFilter(on_console)
    console.setFormatter(ConsoleFormatter())
  try:
    yield path
  finally:
    if quiet:
      console.removeFilter(on_console)
      console.setFormatter(formatter)
    for handler in handlers:
      root.removeHandler(handler)
      handler.close()
