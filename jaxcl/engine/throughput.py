"""Model FLOP utilisation, counted the way MaxText counts it.

MFU = model FLOPs per second / peak FLOPs per second of the devices used. Model FLOPs are the
matmul FLOPs of forward + backward (3 x forward) from the model's shapes, not the FLOPs the
hardware executes (rematerialisation would inflate those); for a decoder LM that is
6 N_matmul + 6 L H d_head S per token with causal attention halved (MaxText
`calculate_tflops_training_per_device`; Chowdhery et al. 2022 Appendix B count the attention
non-causally). The peak is given by the user (`train.peak_tflops`, per device) or measured here
with a large jitted matmul, which makes MFU on a CPU a meaningful fraction rather than a
vendor figure.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


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
  """Total peak FLOP/s: the given per-device figure, or a measured one when it is 0."""
  per_device = per_device_tflops * 1e12 if per_device_tflops > 0 else measured_peak_flops(dtype)
  return per_device * num_devices


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled function from XLA's cost analysis (0 when unavailable)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def mfu(model_flops_per_step: float, seconds_per_step: float, peak: float) -> float:
  """Model FLOP utilisation in [0, 1]."""
  return model_flops_per_step / max(seconds_per_step, 1e-12) / peak
