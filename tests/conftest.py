"""Test set-up, before anything imports jax: 8 fake CPU devices, a persistent XLA compilation
cache, a directory for the runs tests share (helpers.shared_run), parsed absl flags.

The cache lives in `JAX_COMPILATION_CACHE_DIR` (.ci/run makes one per CI run; otherwise the
session makes a temporary one and removes it at the end). It is set through the environment, so
the xdist workers and every `python -m jaxcl.main` subprocess or notebook kernel share it: a step
that another test or process already compiled is read from disk instead of compiled again.
Tracing still happens, so a run's `step.Traces` and `train_compiles` count the same as without it.
"""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_MADE = []  # the directories this process made (the xdist controller; workers inherit them)
for _name, _prefix in (("JAX_COMPILATION_CACHE_DIR", "xla-cache"), ("JAXCL_TEST_RUNS", "runs")):
  if not os.environ.get(_name):
    _MADE.append(tempfile.mkdtemp(prefix=f"jaxcl-{_prefix}-"))
    os.environ[_name] = _MADE[-1]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # cache every program

from absl import flags  # noqa: E402


def pytest_configure(config):
  del config
  flags.FLAGS.mark_as_parsed()


def pytest_unconfigure(config):
  del config
  for path in _MADE:
    shutil.rmtree(path, ignore_errors=True)
