"""Device mesh, logical-axis rules, and the shardings of learner states and batches.

The mesh has three axes, ("data", "fsdp", "tensor"), sized by `config.mesh` with -1 meaning
"the devices left over". Multi-slice jobs (several TPU slices joined over the data-centre
network) give each axis an ICI size within a slice and a DCN size across slices
(`mesh.dcn_data` ...), as MaxText does; the axis is their product.

Model parameters carry logical axis names as metadata (`layers.with_axes` in the language
models, `vit.AXES` for the ViT). `RULES` maps those names to mesh axes, MaxText-style: batches
go over ("data", "fsdp"), the model dimension over "fsdp" (ZeRO-3 / FSDP), MLP, head and
vocabulary dimensions over "tensor" (Megatron). A dimension that a mesh axis does not divide is
replicated instead, so tiny test models run on any mesh. Leaves without names (prompt pools,
method state, counters) are replicated.

Class-incremental (prompt) methods run data-parallel: their frozen backbone is replicated
whatever the mesh. Language models are sharded as the mesh says (FSDP by default). Meshes use
`AxisType.Auto` axes (GSPMD), so one jitted step runs on one CPU, 8 fake CPU devices or a pod.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

P = PartitionSpec
AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes (a name, a tuple of names, or None = replicated).
RULES = (
  ("batch", ("data", "fsdp")),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("vocab", "tensor"),
  ("classes", "tensor"),
  ("kv", None),
  ("layers", None),
  ("patch", None),
)


def _fill(sizes: Sequence[int], total: int, names: Sequence[str], *, exact: bool) -> list[int]:
  """Replaces the (at most one) -1 in `sizes` so their product is `total`.

  Without a -1 the product must be `total` when `exact`, else at most `total`.
  """
  sizes = [int(s) for s in sizes]
  shown = dict(zip(names, sizes, strict=True))
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes {shown}: positive, at most one -1 (fill)")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if total % known:
      raise ValueError(f"mesh sizes {shown} do not divide {total} devices")
    sizes[sizes.index(-1)] = total // known
  elif known > total or (exact and known != total):
    raise ValueError(f"mesh sizes {shown} need {known} devices, but {total} are available")
  return sizes


def mesh_shape(
  ici: Sequence[int], dcn: Sequence[int], num_devices: int, num_slices: int = 1
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(ICI sizes per slice, DCN sizes across slices) of ("data", "fsdp", "tensor").

  -1 fills: the ICI sizes multiply to the devices of one slice (or fewer on one slice, which
  then uses the first devices only), the DCN sizes to the number of slices.
  """
  if num_devices % num_slices:
    raise ValueError(f"{num_devices} devices do not split into {num_slices} equal slices")
  dcn_shape = _fill(dcn, num_slices, [f"dcn_{a}" for a in AXES], exact=True)
  ici_shape = _fill(ici, num_devices // num_slices, AXES, exact=num_slices > 1)
  return tuple(ici_shape), tuple(dcn_shape)


def make_mesh(
  data: int = -1,
  fsdp: int = 1,
  tensor: int = 1,
  *,
  dcn_data: int = -1,
  dcn_fsdp: int = 1,
  dcn_tensor: int = 1,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh; `make_mesh(4)` is a data-parallel mesh of 4 devices.

  On TPUs and GPUs the device order follows the physical topology (`mesh_utils`); several
  slices (`device.slice_index`) are joined with `create_hybrid_device_mesh`, DCN sizes outer.
  """
  devices = list(jax.devices() if devices is None else devices)
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  ici, dcn = mesh_shape(
    (data, fsdp, tensor), (dcn_data, dcn_fsdp, dcn_tensor), len(devices), num_slices
  )
  n = math.prod(ici) * math.prod(dcn)
  if n < len(devices) and jax.process_count() > 1:
    raise ValueError(f"a multi-process job must use all {len(devices)} devices, the mesh has {n}")
  if num_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
  elif devices[0].platform in ("tpu", "gpu") and n == len(devices):
    grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  else:
    grid = np.asarray(devices[:n]).reshape(ici)
  return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def mesh_from_config(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of a config's `mesh` section (jaxcl/config_lib.py) over `devices` (default all;
  jaxcl/plan.py passes a TPU topology's)."""
  m = mesh_config
  return make_mesh(
    m.data,
    m.fsdp,
    m.tensor,
    dcn_data=m.dcn_data,
    dcn_fsdp=m.dcn_fsdp,
    dcn_tensor=m.dcn_tensor,
    devices=devices,
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _mesh_axes(logical: str | None, mesh: Mesh, rules) -> tuple[str, ...]:
  table = dict(rules)
  if logical is not None and logical not in table:
    raise ValueError(f"logical axis {logical!r} has no rule; known: {sorted(table)}")
  axes = table.get(logical) if logical is not None else None
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)


def logical_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=RULES) -> P:
  """PartitionSpec of an array with logical axis `names` (one per dimension) on `mesh`.

  A dimension keeps the longest prefix of its mesh axes that divides it and that no earlier
  dimension took (a mesh axis shards one dimension at most); otherwise it is replicated.
  """
  if len(names) != len(shape):
    raise ValueError(f"logical names {tuple(names)} do not match the shape {tuple(shape)}")
  used, out = set(), []
  for name, dim in zip(names, shape, strict=True):
    axes = tuple(a for a in _mesh_axes(name, mesh, rules) if a not in used)
    while axes and dim % math.prod(mesh.shape[a] for a in axes):
      axes = axes[:-1]
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def batch_sharding(mesh: Mesh, rules=RULES) -> NamedSharding:
  """Leading (batch) axis split over the "batch" rule's mesh axes (data x fsdp)."""
  axes = tuple(a for a in dict(rules)["batch"] if a in mesh.shape)
  return NamedSharding(mesh, P(axes))


def batch_devices(mesh: Mesh, rules=RULES) -> int:
  """How many ways a batch is split."""
  return math.prod(mesh.shape[a] for a in dict(rules)["batch"] if a in mesh.shape)


def logical_names(variable: nnx.Variable) -> tuple | None:
  """The logical axis names a parameter was annotated with, or None."""
  meta = variable.get_metadata()
  names = meta.get("out_sharding", meta.get("sharding_names", meta.get("sharding")))
  return tuple(names) if names is not None else None


def tree_shardings(tree, mesh: Mesh, rules=RULES):
  """NamedShardings with the structure of `tree`: nnx Variables by their logical names (through
  `rules`), every other leaf replicated. Works on parameter states and on optimizer states,
  whose moments keep the parameters' Variables and metadata."""
  is_var = lambda x: isinstance(x, nnx.Variable)
  out = []
  for node in jax.tree.leaves(tree, is_leaf=is_var):
    leaves = jax.tree.leaves(node)
    names = logical_names(node) if is_var(node) else None
    for leaf in leaves:
      spec = P() if names is None else logical_spec(names, np.shape(leaf), mesh, rules)
      out.append(NamedSharding(mesh, spec))
  return jax.tree.unflatten(jax.tree.structure(tree), out)


def state_shardings(state, mesh: Mesh, rules=RULES, *, replicate_frozen: bool):
  """Shardings of a `LearnerState`: trainable parameters and their optimizer state by the
  rules; frozen parameters too unless `replicate_frozen` (data-parallel prompt methods); the
  rest (step, masks, method extras, rng) replicated."""
  repl = replicated(mesh)
  out = jax.tree.map(lambda _: repl, state)
  frozen = out.frozen if replicate_frozen else tree_shardings(state.frozen, mesh, rules)
  return out.replace(
    params=tree_shardings(state.params, mesh, rules),
    opt=tree_shardings(state.opt, mesh, rules),
    frozen=frozen,
  )


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings`: an orbax restore target."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
  )


def check_batch(global_batch: int, mesh: Mesh, what: str = "data.batch_size") -> None:
  """Raises ValueError unless the batch splits evenly over its devices and its processes, each
  process holding rows no other process holds.

  Every process reads its own rows of the batch (DESIGN.md §5). A mesh whose batch axes
  (data x fsdp) do not separate the processes, e.g. `tensor` across hosts, would replicate rows
  across processes, which then disagree about what those rows are.
  """
  n, pc = batch_devices(mesh), jax.process_count()
  if global_batch % n or global_batch % pc:
    raise ValueError(
      f"{what}={global_batch} must be divisible by the {n} devices the batch is split over "
      f"(mesh data x fsdp) and by the {pc} processes"
    )
  rows = {}  # process -> the batch rows its devices hold
  for device, index in batch_sharding(mesh).devices_indices_map((global_batch,)).items():
    rows.setdefault(device.process_index, set()).update(range(*index[0].indices(global_batch)))
  if sum(map(len, rows.values())) > global_batch:
    raise ValueError(
      f"mesh {describe(mesh)} replicates {what} rows across processes (its batch axes data x "
      "fsdp do not separate the hosts): give the hosts to mesh.data or mesh.fsdp and keep "
      "mesh.tensor within a host"
    )


def describe(mesh: Mesh) -> str:
  return " x ".join(f"{a}={n}" for a, n in mesh.shape.items()) + f" ({mesh.size} devices)"


def assert_same_on_all_processes(what: str, value) -> None:
  """Raises ValueError unless every process passes the same JSON-able `value` (a no-op on one
  process): the hosts of a pod must agree on the config, the class order, the domains."""
  if jax.process_count() == 1:
    return
  text = json.dumps(value, sort_keys=True, default=str)
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
  try:
    multihost_utils.assert_equal(digest, f"{what} differs between processes")
  except AssertionError as e:
    raise ValueError(
      f"process {jax.process_index()}: {what} differs between the {jax.process_count()} "
      "processes; run the same command (same config, data and jaxcl version) on every host"
    ) from e
