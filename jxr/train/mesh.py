"""Device meshes, logical-axis sharding rules and multi-host start-up.

    mesh = make_mesh("data=-1,model=1")          # or "fsdp", "data=4,model=2"
    params = jax.device_put(params, param_shardings(params, mesh))
    rows = batch_sharding(mesh)                   # batch rows over data (and fsdp)

The encoder's parameters carry logical axis names (`vocab`, `embed`, `heads`,
`mlp`); `LOGICAL_RULES` maps them to mesh axes: tensor parallelism shards the
heads / mlp / vocab dimensions over `model`, FSDP shards the `embed` dimension
over `fsdp`, and the batch goes over `data` and `fsdp` together. A dimension that
does not divide by its mesh axis stays replicated (XLM-R's 250,002-row vocabulary
on an even `model` axis, say), so any mesh works for any model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jxr._files import is_primary  # noqa: F401  (meshlib.is_primary, for the trainer)
from pallas_kernels import AttentionSharding

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")
# Logical axis name -> mesh axis (None = replicated).
LOGICAL_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "model"),
    ("heads", "model"),
    ("mlp", "model"),
    ("embed", "fsdp"),
)

_log = logging.getLogger(__name__)


def parse_mesh_spec(spec: str) -> dict[str, int]:
  """`"data=-1,model=2"` -> `{"data": -1, "model": 2}`; a bare name means `=-1`.

  Axes must come from `MESH_AXES`; at most one size may be -1 (the rest of the devices).
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"mesh: expected a spec like 'data=-1,model=1', got {spec!r}")
  sizes: dict[str, int] = {}
  for part in spec.replace(" ", "").split(","):
    name, _, size = part.partition("=")
    if name not in MESH_AXES:
      raise ValueError(f"mesh: unknown axis {name!r} in {spec!r}; expected some of {MESH_AXES}")
    if name in sizes:
      raise ValueError(f"mesh: axis {name!r} given twice in {spec!r}")
    try:
      value = int(size) if size else -1
    except ValueError:
      raise ValueError(f"mesh: size of {name!r} in {spec!r} is not an integer") from None
    if value == 0 or value < -1:
      raise ValueError(f"mesh: size of {name!r} in {spec!r} must be >= 1 or -1 (the rest)")
    sizes[name] = value
  if sum(v == -1 for v in sizes.values()) > 1:
    raise ValueError(f"mesh: at most one axis may be -1 in {spec!r}")
  return sizes


def mesh_shape(spec: str, num_devices: int) -> dict[str, int]:
  """All of `MESH_AXES` with sizes whose product is `num_devices`, in `MESH_AXES` order."""
  sizes = parse_mesh_spec(spec)
  fixed = int(np.prod([v for v in sizes.values() if v != -1]))
  if -1 in sizes.values():
    if num_devices % fixed:
      raise ValueError(
          f"mesh: {spec!r} needs a multiple of {fixed} devices, there are {num_devices}"
      )
    sizes = {k: (num_devices // fixed if v == -1 else v) for k, v in sizes.items()}
  elif fixed != num_devices:
    raise ValueError(f"mesh: {spec!r} covers {fixed} devices, there are {num_devices}")
  return {axis: sizes.get(axis, 1) for axis in MESH_AXES}


def make_mesh(spec: str = "data=-1", devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with axes `("data", "fsdp", "model")` over `devices` (default: all
  devices of all processes), Auto axis types (sharding by annotation + jit)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(spec, len(devices))
  return jax.make_mesh(
      tuple(shape.values()),
      MESH_AXES,
      axis_types=(AxisType.Auto,) * len(MESH_AXES),
      devices=devices,
  )


def attention_sharding(mesh: Mesh) -> AttentionSharding:
  """Attention split as the activations are: rows over the batch axes, heads over theirs."""
  rules = dict(LOGICAL_RULES)
  return AttentionSharding(mesh, rules["batch"], rules["heads"])


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split (the `data` x `fsdp` axes)."""
  return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def logical_to_mesh(
    logical: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[tuple[str, str | tuple[str, ...] | None]] = LOGICAL_RULES,
) -> PartitionSpec:
  """The mesh `PartitionSpec` of an array with logical axis names `logical`.

  A dimension is sharded only when its size divides by the mesh axes' size and
  no earlier dimension already took those axes; otherwise it is replicated.
  """
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name, size in zip(logical, shape):
    axes = table.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
    ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if not axes or size % ways:
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def param_shardings(params: nnx.State, mesh: Mesh) -> nnx.State:
  """`NamedSharding`s for an encoder's parameters, from their logical axis names."""
  logical = nnx.get_partition_spec(params)
  is_spec = lambda x: isinstance(x, PartitionSpec)

  def one(spec, array):
    names = tuple(spec) if spec is not None else ()
    names = names + (None,) * (array.ndim - len(names))
    return NamedSharding(mesh, logical_to_mesh(names, array.shape, mesh))

  specs = jax.tree.leaves(logical, is_leaf=is_spec)
  arrays = jax.tree.leaves(params)
  if len(specs) != len(arrays):
    raise ValueError("params: expected logical axis names on every parameter")
  return jax.tree.unflatten(jax.tree.structure(params), [one(s, a) for s, a in zip(specs, arrays)])


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (row) axis over the batch mesh axes, the rest replicated."""
  axes = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
  lead = axes[0] if len(axes) == 1 else (axes or None)
  return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from each process's rows (its slice of the global batch)."""
  return {
      name: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x)), x)
      for name, x in local.items()
  }


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize()` when the environment describes a multi-process run.

  Explicit: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (all
  three). Automatic (JAX detects the rest): Slurm with more than one task
  (`SLURM_NTASKS`), a multi-host Cloud TPU slice (`TPU_WORKER_HOSTNAMES` listing
  several hosts), or `JXR_DISTRIBUTED=1`. Otherwise (one process) nothing
  happens. Returns whether it initialised. Must run before any other jax call.
  """
  env = os.environ
  explicit = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  given = [name for name in explicit if env.get(name)]
  if jax.distributed.is_initialized():
    return False
  if given and len(given) != len(explicit):
    missing = sorted(set(explicit) - set(given))
    raise ValueError(
        f"environment: {given} set but {missing} missing; a multi-process run " "needs all three"
    )
  if given:
    num = int(env["JAX_NUM_PROCESSES"])
    if num <= 1:
      return False
    jax.distributed.initialize(
        coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
        num_processes=num,
        process_id=int(env["JAX_PROCESS_ID"]),
    )
  elif (
      int(env.get("SLURM_NTASKS", "1") or 1) > 1
      or len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
      or env.get("JXR_DISTRIBUTED") == "1"
  ):
    jax.distributed.initialize()
  else:
    return False
  _log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
  return True
