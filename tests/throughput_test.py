"""MFU's denominator: the peak of the devices used, named in results.json."""

from __future__ import annotations

from typing import NamedTuple

import jax
import pytest

from jaxcl.engine import throughput


class _Device(NamedTuple):
  device_kind: str


@pytest.mark.parametrize(
  "kind, dtype, name, tflops",
  [
    ("TPU v4", "bfloat16", "TPU v4 bfloat16", 275.0),
    ("TPU v5 lite", "bfloat16", "TPU v5e bfloat16", 197.0),
    ("TPU v5", "bfloat16", "TPU v5p bfloat16", 459.0),
    ("TPU v5p", "float32", "TPU v5p float32", 459.0),
    ("TPU v6 lite", "bfloat16", "TPU v6e bfloat16", 918.0),
    ("NVIDIA A100-SXM4-80GB", "float32", "A100 float32", 156.0),
    ("NVIDIA H100 80GB HBM3", "bfloat16", "H100 SXM bfloat16", 989.4),
    ("NVIDIA H100 PCIe", "bfloat16", "H100 PCIe bfloat16", 756.0),
    ("NVIDIA H200", "float32", "H200 float32", 494.7),
  ],
)
def test_vendor_peaks(kind, dtype, name, tflops):
  assert throughput.vendor_peak(kind, dtype) == (name, tflops)
  peak = throughput.find_peak(0.0, [_Device(kind)] * 4, dtype)
  assert (peak.source, peak.name, peak.devices) == ("vendor", name, 4)
  assert peak.flops == pytest.approx(4 * tflops * 1e12)


def test_a_given_peak_wins_and_a_cpu_is_measured():
  given = throughput.find_peak(2.5, [_Device("TPU v4")] * 2, "bfloat16")
  assert (given.source, given.flops) == ("config", 5e12)
  assert throughput.vendor_peak("cpu", "float32") is None
  measured = throughput.find_peak(0.0, jax.devices()[:1], "float32")
  assert measured.source == "measured" and measured.name.startswith("measured float32 matmul")
  assert 1e8 < measured.flops < 1e14  # a CPU core's FLOP/s, not a vendor accelerator's
  assert measured.to_json()["per_device_tflops"] == pytest.approx(measured.flops / 1e12)
