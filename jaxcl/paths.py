"""The one path layer: every path jaxcl accepts may be local or a URL (`gs://bucket/...`).

Files are read and listed through `etils.epath` (gcsfs behind `gs://`). Readers that need a
real local file (memory-mapped token files, tokenizer models) get `local_copy(path)`: the path
itself when it is local, else a copy downloaded once into `$JAXCL_CACHE` (default
`~/.cache/jaxcl`).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import re
import shutil

from etils import epath

_WILDCARD = re.compile(r"[*?\[]")


def is_remote(path) -> bool:
  """`gs://...` and other URLs (not local files)."""
  return "://" in str(path)


def absolute(path) -> str:
  """A local path made absolute (orbax needs that), with `~` expanded; URLs as they are."""
  return str(path) if is_remote(path) else os.path.abspath(os.path.expanduser(str(path)))


def path(p) -> epath.Path:
  """An `epath.Path` of a local path (with `~` expanded) or a URL."""
  return epath.Path(absolute(p))


def glob(pattern: str) -> list[str]:
  """The files and directories matching `pattern`, sorted: local (`**` recursive) or a URL
  (`*` only: epath refuses `**` on buckets, one listing per directory)."""
  if not is_remote(pattern):
    return sorted(globlib.glob(os.path.expanduser(pattern), recursive=True))
  parts = pattern.split("/")
  first = next((i for i, part in enumerate(parts) if _WILDCARD.search(part)), len(parts))
  root, rest = "/".join(parts[:first]), "/".join(parts[first:])
  if not rest:
    return [root] if epath.Path(root).exists() else []
  return sorted(str(p) for p in epath.Path(root).glob(rest))


def local_copy(p: str) -> str:
  """A local file with the content of `p`: `p` itself when local, else a cached download."""
  if not is_remote(p):
    return os.path.expanduser(p)
  source = epath.Path(p)
  cache = os.path.expanduser(os.environ.get("JAXCL_CACHE", "~/.cache/jaxcl"))
  digest = hashlib.sha256(p.encode()).hexdigest()[:16]
  local = os.path.join(cache, digest, source.name)
  size = source.stat().length
  if not os.path.exists(local) or os.path.getsize(local) != size:
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = f"{local}.{os.getpid()}.tmp"
    with source.open("rb") as src, open(tmp, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 24)
    os.replace(tmp, local)
  return local
