"""Test set-up: 8 fake CPU devices and parsed absl flags, before anything imports jax."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402


def pytest_configure(config):
  del config
  flags.FLAGS.mark_as_parsed()
