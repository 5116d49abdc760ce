"""The planner: its search and arithmetic on CPU devices; a TPU topology when libtpu is here."""

from __future__ import annotations

import importlib.util
import os
import re

import jax
import numpy as np
import pytest
from helpers import ROOT, load_config

from jaxcl import plan


def test_largest_fitting_doubles_then_bisects():
  calls = []

  def fits(limit):
    return lambda n: calls.append(n) or n <= limit

  assert plan.largest_fitting(fits(37), 256) == 37
  assert len(calls) <= 2 * 6 + 1  # about 2 log2(37) compiles
  assert plan.largest_fitting(fits(0), 256) == 0
  assert plan.largest_fitting(fits(1000), 100) == 100  # the limit
  assert plan.largest_fitting(fits(64), 256) == 64
  for start in (1, 3, 16, 37, 38, 100, 256, 400):  # from the configured batch, up or down
    for answer in (0, 1, 20, 37, 64, 255, 256):
      assert plan.largest_fitting(fits(answer), 256, start) == answer, (start, answer)
  calls.clear()
  plan.largest_fitting(fits(37), 256)
  from_one = len(calls)
  calls.clear()
  plan.largest_fitting(fits(37), 256, start=32)
  assert len(calls) < from_one - 3  # starting near the answer skips the doublings below it


def test_per_device_microbatch_divides_the_global_batch():
  assert plan.per_device_microbatch(1104, 16, 8) == 3  # 69 rows per device = 23 x 3
  assert plan.per_device_microbatch(1024, 16, 8) == 8
  assert plan.per_device_microbatch(1104, 16, 2) == 1
  assert plan.per_device_microbatch(1104, 16, 0) == 0


@pytest.mark.parametrize("name", ["cpt", "l2p"])
def test_plan_on_cpu_devices_counts_the_batch_and_the_state(name):
  config = load_config(name, "smoke")
  planner = plan.Planner(config, jax.devices())
  devices = planner.batch_devices
  train, evaluate = planner.compile()
  assert train.rows_per_device * devices == planner.train_rows and train.microbatches == 1
  assert evaluate.rows_per_device * devices == config.data.eval_batch_size
  for m in (train, evaluate):
    parts = m.arguments + m.outputs - m.aliased + m.temporaries + m.code
    assert m.total == parts > 0 and m.flops > 0
  # Twice the rows: the arguments grow by exactly the extra batch bytes of one device.
  large, _ = planner.compile(rows=2 * planner.train_rows, evaluate=False)
  if name == "cpt":
    row_bytes = (config.data.seq_len + 1) * 4  # int32 tokens [T + 1]
  else:
    row_bytes = config.data.image_size**2 * config.data.channels + 4  # uint8 image, int32 label
  assert large.arguments - train.arguments == train.rows_per_device * row_bytes
  compiles = planner.traces["train"]
  per_device = large.rows_per_device
  assert planner.fits(per_device, hbm_bytes=large.total)
  assert not planner.fits(per_device, hbm_bytes=large.total - 1)
  assert planner.traces["train"] == compiles  # the search reuses a batch's compile
  printed = plan.format_plan("this machine", planner, train, evaluate, hbm=2 * train.total)
  row = next(line.split() for line in printed.splitlines() if line.startswith("train "))
  assert row[1:3] == [str(train.rows_per_device), "1"] and row[7] == "50%"


def test_microbatches_shrink_the_rows_a_step_holds():
  config = load_config("cpt", "smoke", **{"train.microbatches": 2, "data.batch_size": 16})
  planner = plan.Planner(config, jax.devices())
  train, _ = planner.compile(evaluate=False)
  assert (train.microbatches, train.rows_per_device) == (2, 1)  # 16 rows, 8 devices, 2 pieces


def _readme_405m_overrides() -> list[str]:
  """The `--config.*` flags of tpu/README.md's 405M command."""
  with open(os.path.join(ROOT, "tpu", "README.md")) as f:
    text = f.read()
  command = re.search(
    r"tpu/run\.sh configs/cpt\.py:pile_slimpajama_405m(?:[^\n]*\\\n)*[^\n]*", text
  )
  assert command, "tpu/README.md has no 405M command"
  return re.findall(r"--config\.(\S+)", command.group(0))


HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install 'jaxcl[tpu]')")
def test_readme_405m_command_fits_a_v5e_16():
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  overrides = dict(flag.split("=", 1) for flag in _readme_405m_overrides())  # str values
  config = load_config("cpt", "pile_slimpajama_405m", **overrides)
  planner = plan.Planner(config, plan.topology_devices("v5e:4x4"))
  train, _ = planner.compile(evaluate=False)
  assert not train.error, train.error
  assert train.microbatches * train.rows_per_device * 16 == 1104  # the paper's global batch
  assert train.total <= plan.HBM_GIB["TPU v5 lite"] * plan.GIB
  assert np.isfinite(train.flops)
