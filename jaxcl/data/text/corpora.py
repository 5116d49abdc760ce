"""Offline documents, as (id, text) pairs in a fixed order: the running Python's stdlib
(docstrings as prose, source without docstrings as code, the `pydoc_data` topics), text files
by glob, and tfds text datasets prepared as ArrayRecord (DESIGN.md §5)."""

from __future__ import annotations

import ast
import functools
import inspect
import os
import sysconfig
import tokenize

from jaxcl import paths, user_errors

# Directories never read: test suites, IDLE and demos, installed packages, codec tables and
# the generated pydoc topics (prose, read through its import instead).
_SKIP_DIRS = frozenset(
  "test tests idlelib turtledemo site-packages dist-packages __pycache__ encodings pydoc_data "
  "ensurepip".split()
)
_DOC_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
TOPICS_ID = "pydoc_data.topics:"  # the id prefix of the `help()` topics


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def python_files(root: str = "") -> list[str]:
  """Sorted `/`-separated paths (relative to `root`, default the stdlib) of its `.py` files."""
  root = root or stdlib_root()
  out = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith("config-")]
    rel = os.path.relpath(folder, root)
    for f in files:
      if f.endswith(".py") and not f.startswith(("test_", "_sysconfigdata")):
        out.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
  return sorted(out)


_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")  # fields holding statements


def docstring_exprs(tree: ast.Module) -> list[tuple[ast.AST, ast.Expr]]:
  """(owner, docstring expression) of every module/class/function docstring, in file order.

  Walks statements only (a def can sit in any block, never inside an expression).
  """
  out, todo = [], [tree]
  while todo:
    node = todo.pop()
    first = node.body[0] if isinstance(node, _DOC_OWNERS) and node.body else None
    if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
      out.append((node, first))  # a str Constant: f-strings are JoinedStr, never docstrings
    for field in _BLOCKS:
      todo += getattr(node, field, ())
  return sorted(out, key=lambda pair: pair[1].lineno)


def strip_docstrings(source: str, tree: ast.Module | None = None, found=None) -> str:
  """`source` without module/class/function docstrings; comments and layout are kept.

  A docstring that is a body's only statement becomes `pass`. If a cut leaves code on the
  docstring's lines (`"doc"; x = 1`) and the result does not parse, the tree is unparsed
  instead (no comments). `found` = `docstring_exprs(tree)` when already computed.
  """
  tree = tree or ast.parse(source)
  found = docstring_exprs(tree) if found is None else found
  lines = source.encode("utf-8").splitlines(keepends=True)  # \n, \r, \r\n: ast's lines
  risky = False
  for owner, doc in reversed(found):
    a, b = doc.lineno - 1, doc.end_lineno - 1  # ast columns are UTF-8 byte offsets
    head, tail = lines[a][: doc.col_offset], lines[b][doc.end_col_offset :]
    risky |= bool(head.strip()) or not (tail.strip() == b"" or tail.lstrip().startswith(b"#"))
    merged = head + (b"pass" if len(owner.body) == 1 else b"") + tail
    lines[a : b + 1] = [] if not merged.strip() else [merged]
  out = b"".join(lines).decode("utf-8")
  if risky:
    try:
      ast.parse(out)
    except SyntaxError:
      for owner, _ in found:
        owner.body = owner.body[1:] or [ast.Pass()]
      out = ast.unparse(tree) + "\n"
  return out


@functools.lru_cache(maxsize=8)
def stdlib_documents(subdir: str = "") -> tuple[tuple[tuple[str, str], ...], ...]:
  """(prose, code) documents of the stdlib, or of its folder `subdir` (e.g. `email`).

  prose: (`<file>:<line>`, docstring) for every module/class/function docstring in file
  order, then, for the whole stdlib only, (`pydoc_data.topics:<key>`, text) per topic.
  code: (`<file>`, source without docstrings) per file. Paths are sorted, so the corpus is
  the same in every run and process on the same Python version. Cached per process.
  """
  root = os.path.join(stdlib_root(), subdir)
  if not os.path.isdir(root):
    raise user_errors.MissingInput(
      f"no stdlib folder {root} (data.domains prose:<folder> / code:<folder>); use a folder "
      "of the Python standard library, e.g. prose:json, or prose alone for all of it"
    )
  prose, code = [], []
  for rel in python_files(root):
    try:
      with tokenize.open(os.path.join(root, rel)) as f:
        source = f.read()
      tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue  # not readable as Python source: skipped
    found = docstring_exprs(tree)
    for node, doc in found:
      if body := inspect.cleandoc(doc.value.value):
        prose.append((f"{rel}:{getattr(node, 'lineno', 0)}", body))
    code.append((rel, strip_docstrings(source, tree, found)))
  return tuple(prose + ([] if subdir else pydoc_topics())), tuple(code)


def pydoc_topics() -> list[tuple[str, str]]:
  """(`pydoc_data.topics:<key>`, text) for every topic of `help()`, sorted by key."""
  from pydoc_data import topics  # noqa: PLC0415

  return [(f"{TOPICS_ID}{k}", topics.topics[k]) for k in sorted(topics.topics)]


def glob_documents(pattern: str) -> list[tuple[str, str]]:
  """(path, text) for every file matching `pattern` (`paths.glob`: local or gs://), sorted."""
  files = [p for p in paths.glob(pattern) if paths.path(p).is_file()]
  if not files:
    raise user_errors.MissingInput(
      f"no file matches the text domain glob:{pattern} (data.domains); check the pattern "
      "(quote it in the shell so it is not expanded there; ** matches subfolders)"
    )
  return [(p, paths.path(p).read_bytes().decode("utf-8", errors="replace")) for p in files]


def tfds_documents(name: str, *, split: str, text_key: str, data_dir: str = "") -> list:
  """(example index, text) of a tfds text dataset prepared as ArrayRecord; no TensorFlow."""
  from jaxcl.data import sources  # noqa: PLC0415

  builder = sources.tfds_builder(name, data_dir)  # raises naming how to prepare it
  if text_key not in (features := builder.info.features):
    raise KeyError(f"tfds {name!r} has no feature {text_key!r} (data.text_key): {list(features)}")
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError as e:
    raise FileNotFoundError(
      f"tfds {name!r} is prepared without ArrayRecord files: run `tfds build {name} "
      f"--file_format=array_record` and point data.dir (or $TFDS_DATA_DIR) at it ({e})"
    ) from e
  out, n = [], len(source)
  for start in range(0, n, 1024):
    for i, ex in enumerate(source.__getitems__(list(range(start, min(start + 1024, n))))):
      text = ex[text_key]
      out.append((start + i, text.decode("utf-8", "replace") if isinstance(text, bytes) else text))
  return out
