"""Model FLOP utilisation, counted the way MaxText counts it.

MFU = model FLOPs per second / peak FLOPs per second of the devices used. Model FLOPs are the
matmul FLOPs of forward + backward (3 x forward) from the model's shapes, not the FLOPs the
hardware executes (rematerialisation would inflate those); for a decoder LM that is
6 N_matmul + 6 L H d_head S per token with causal attention halved (MaxText
`calculate_tflops_training_per_device`; Chowdhery et al. 2022 Appendix B count the attention
non-causally). The peak per device is, in this order: the user's (`train.peak_tflops`), the
vendor's dense matmul peak of a known accelerator for the compute dtype (`VENDOR_PEAKS`), or,
on a CPU or an unknown device, measured here with a large jitted matmul. `Peak.to_json` names
the one used, so an MFU can be compared between machines.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Dense (no sparsity) peak TFLOP/s per chip, by device_kind substring (first match wins), for
# bfloat16 and float32 matmuls as JAX runs them by default. TPUs: float32 matmuls run on the
# MXU in bfloat16 passes at default precision, and Google publishes only the bf16 figure
# (v4 275, v5e 197, v5p 459, v6e 918). GPUs: XLA runs float32 matmuls on the tensor cores as
# TF32 by default, so float32 is the TF32 figure (A100 312 / 156; H100 SXM and H200 989 / 495;
# H100 PCIe 756 / 378); NVIDIA data sheets, without sparsity.
VENDOR_PEAKS: tuple[tuple[str, str, dict[str, float]], ...] = (
  ("tpu v6 lite", "TPU v6e", {"bfloat16": 918.0, "float32": 918.0}),
  ("tpu v6e", "TPU v6e", {"bfloat16": 918.0, "float32": 918.0}),
  ("tpu v5 lite", "TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
  ("tpu v5e", "TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
  ("tpu v5", "TPU v5p", {"bfloat16": 459.0, "float32": 459.0}),  # "TPU v5" / "TPU v5p"
  ("tpu v4", "TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
  ("h200", "H200", {"bfloat16": 989.4, "float32": 494.7}),
  ("h100 pcie", "H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
  ("h100", "H100 SXM", {"bfloat16": 989.4, "float32": 494.7}),
  ("a100", "A100", {"bfloat16": 312.0, "float32": 156.0}),
)


class Peak(NamedTuple):
  """The peak FLOP/s an MFU divides by, and where it came from."""

  flops: float  # total FLOP/s of the devices used
  per_device_tflops: float
  devices: int
  source: str  # config (train.peak_tflops) | vendor | measured
  name: str  # e.g. "TPU v5e bfloat16", "measured float32 matmul on cpu"

  def to_json(self) -> dict:
    return self._asdict()


def vendor_peak(device_kind: str, dtype: str) -> tuple[str, float] | None:
  """(name, TFLOP/s per chip) of `VENDOR_PEAKS` for a device kind and dtype, or None."""
  kind = device_kind.lower()
  for key, name, by_dtype in VENDOR_PEAKS:
    if key in kind and dtype in by_dtype:
      return f"{name} {dtype}", by_dtype[dtype]
  return None


def find_peak(per_device_tflops: float, devices, dtype: str = "float32") -> Peak:
  """The peak of `devices` (e.g. `jax.devices()`) for compute dtype `dtype`: the given
  per-device figure (> 0), the vendor table, or a matmul measured on the first device."""
  n, kind = len(devices), devices[0].device_kind
  if per_device_tflops > 0:
    return Peak(per_device_tflops * 1e12 * n, per_device_tflops, n, "config", "train.peak_tflops")
  found = vendor_peak(kind, dtype)
  if found is not None:
    return Peak(found[1] * 1e12 * n, found[1], n, "vendor", found[0])
  measured = measured_peak_flops(jnp.dtype(dtype))
  name = f"measured {dtype} matmul on {kind}"
  return Peak(measured * n, measured / 1e12, n, "measured", name)


def measured_peak_flops(dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of one device on an [n, n] @ [n, n] matmul chain (best of `repeats`)."""
  device = jax.devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype) / n, device)

  @jax.jit
  def chain(x):
    for _ in range(4):
      x = x @ a
    return x

  jax.block_until_ready(chain(a))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(chain(a))
    best = min(best, time.perf_counter() - start)
  return 4 * 2 * n**3 / best


def peak_flops(per_device_tflops: float, num_devices: int, dtype=jnp.float32) -> float:
  """Total peak FLOP/s of the first `num_devices` devices (`find_peak`)."""
  return find_peak(per_device_tflops, jax.devices()[:num_devices], jnp.dtype(dtype).name).flops


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled function from XLA's cost analysis (0 when unavailable)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def mfu(model_flops_per_step: float, seconds_per_step: float, peak: float) -> float:
  """Model FLOP utilisation in [0, 1]."""
  return model_flops_per_step / max(seconds_per_step, 1e-12) / peak
