"""Device mesh and the shardings of learner states and batches.

Class-incremental methods run data-parallel: the batch is split over the `data`
mesh axis and the learner state is replicated (the frozen ViT is small next to a
TPU's HBM). Meshes use `AxisType.Auto` axes (GSPMD), so the same jitted step runs
on one CPU, 8 fake CPU devices or a v5e-256 slice.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

P = PartitionSpec


def make_mesh(data: int = -1) -> Mesh:
  """A 1-D `data` mesh over `data` devices (-1 = all)."""
  devices = jax.devices()
  n = len(devices) if data == -1 else data
  if n < 1 or n > len(devices):
    raise ValueError(f"mesh.data={data} but {len(devices)} devices are available")
  return Mesh(np.asarray(devices[:n]), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`."""
  return NamedSharding(mesh, P("data"))


def check_batch(global_batch: int, mesh: Mesh, what: str = "data.batch_size") -> None:
  n = mesh.shape["data"]
  per_process = global_batch // jax.process_count()
  if global_batch % n or per_process * jax.process_count() != global_batch:
    raise ValueError(
      f"{what}={global_batch} must be divisible by the {n} devices of the data axis "
      f"and by the {jax.process_count()} processes"
    )
