"""Attention on a device mesh: every implementation runs per shard under `shard_map`.

Inside an auto-sharded `jit`, a `pallas_call` is one opaque custom call: XLA
either runs it replicated (every device computes the global batch) or cannot
partition it at all. Attention needs no communication across batch rows, nor
across heads when the mask is the same for every head, so it splits exactly:
`AttentionSharding` names the mesh axes that the batch and the heads lie on, and
`attention(..., sharding=...)` runs the implementation on each device's shard of
q, k, v (and `kv_lengths`, segment ids), whatever the implementation.

A dimension splits over its axes only when their total size divides it; heads
stay whole under a per-head mask (each head has its own block table, and a
shard's heads are known only at run time). Axes a dimension does not use see
replicated inputs and compute the same result.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
from jax.sharding import AbstractMesh, Mesh, PartitionSpec


@dataclasses.dataclass(frozen=True)
class AttentionSharding:
  """The mesh axes that attention's batch and heads are split over.

  `AttentionSharding(mesh, batch_axes=("data", "fsdp"), head_axes=("model",))`.
  Hashable, so it can be a static argument of `jax.jit`.
  """

  mesh: Mesh | AbstractMesh
  batch_axes: tuple[str, ...] = ()
  head_axes: tuple[str, ...] = ()

  def __post_init__(self):
    if not isinstance(self.mesh, (Mesh, AbstractMesh)):
      raise ValueError(
          f"AttentionSharding.mesh: expected a jax.sharding.Mesh, got {type(self.mesh).__name__}"
      )
    for name in ("batch_axes", "head_axes"):
      axes = getattr(self, name)
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      unknown = [axis for axis in axes if axis not in self.mesh.axis_names]
      if unknown:
        raise ValueError(
            f"AttentionSharding.{name}: {unknown} are not axes of the mesh "
            f"{tuple(self.mesh.axis_names)}"
        )
      object.__setattr__(self, name, axes)
    shared = set(self.batch_axes) & set(self.head_axes)
    if shared:
      raise ValueError(f"AttentionSharding: axes {sorted(shared)} split both batch and heads")

  def split(self, axes: tuple[str, ...], size: int) -> tuple[str, ...] | None:
    """The axes (of size > 1) that split a dimension of `size`, or None to keep it whole."""
    used = tuple(axis for axis in axes if self.mesh.shape[axis] > 1)
    if not used or size % math.prod(self.mesh.shape[axis] for axis in used):
      return None
    return used


def run_sharded(
    attend: Callable[..., jax.Array],
    sharding: AttentionSharding,
    arrays: dict[str, jax.Array],
    *,
    per_head_mask: bool,
) -> jax.Array:
  """`attend(**arrays)` run per shard; `arrays` holds q, k, v and the optional per-row inputs.

  q, k, v are `[B, L, H, D]`; `kv_lengths` `[B]`; segment ids `[B, L]`.
  """
  batch, _, heads, _ = arrays["q"].shape
  rows = sharding.split(sharding.batch_axes, batch)
  cols = None if per_head_mask else sharding.split(sharding.head_axes, heads)
  if rows is None and cols is None:
    return attend(**arrays)
  heads_spec = PartitionSpec(rows, None, cols, None)
  specs = {
      name: heads_spec if x.ndim == 4 else PartitionSpec(rows, *([None] * (x.ndim - 1)))
      for name, x in arrays.items()
  }
  # check_vma off: Pallas calls carry no varying-axis types; the out spec's promise
  # (equal results along the unused axes) holds, as their inputs are replicated.
  return jax.shard_map(
      lambda kwargs: attend(**kwargs),
      mesh=sharding.mesh,
      in_specs=(specs,),
      out_specs=heads_spec,
      check_vma=False,
  )(arrays)
