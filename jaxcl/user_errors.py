"""Failures the user caused and can fix: the command line's catalogue of bad input.

`jaxcl.main` turns a `UserError` into exit status 1 and its message, one paragraph naming the
input, what was expected and what to do; the traceback goes to the workdir's `log.txt` only.
Each class also derives from the builtin exception it refines, so library callers can keep
catching `FileNotFoundError`, `ValueError` or `OSError`. The catalogue with its tests is the
README's "When something goes wrong" section.
"""

from __future__ import annotations

import errno


class UserError(Exception):
  """Bad input, not a bug in jaxcl: reported without a traceback."""


class MissingInput(UserError, FileNotFoundError):
  """A file or directory the config names (weights, dataset, tokenizer, text) is not there."""


class BadInput(UserError, ValueError):
  """A file is there but not in the expected format, or its names or shapes do not fit."""


class BadConfig(UserError, ValueError):
  """The config file cannot be loaded, or an override names an unknown key or a bad value."""


class WorkdirError(UserError, OSError):
  """The workdir cannot be created or written, or its disk filled up."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: OSError, what: str, where: str) -> WorkdirError:
  """The message for an `OSError(ENOSPC)` (or quota) while writing `what` under `where`."""
  return WorkdirError(
    error.errno,
    f"the disk holding {where} is full ({error.strerror or error}) while writing {what}; "
    "everything saved before is intact. Free some space (or point --workdir at a larger "
    "disk and copy the workdir there) and run the same command again: it resumes from the "
    "last checkpoint.",
  )


def message(error: UserError) -> str:
  """The one paragraph a `UserError` shows on the console."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror  # OSError(errno, text): the text alone
  return str(error)
