"""Block-sparse and local attention: one entry point, several implementations.

    out = attention(q, k, v, mask, kv_lengths=..., implementation=None)

`q`: `[B, Lq, H, D]`, `k`, `v`: `[B, Lk, H, D]` (the layout of
`jax.nn.dot_product_attention`). Implementations:

- "pallas":    the block-sparse FlashAttention kernel (`flash.py`), Triton on GPU;
               `interpret=True` runs it anywhere.
- "xla":       a blocked jnp path that gathers only the visited key blocks (`xla.py`).
- "splash":    JAX's TPU splash-attention kernel given the equivalent mask (`splash.py`).
- "reference": dense attention with an explicit mask (`reference.py`), the oracle.

`implementation=None` picks "pallas" on GPU, "splash" on TPU, "xla" elsewhere.
With `sharding=AttentionSharding(mesh, batch_axes, head_axes)` the implementation
runs per device shard under `shard_map` (`sharding.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.block_table import BlockTable, block_table, visited_fraction
from pallas_kernels.masks import (
    AndMask,
    BlockSparseMask,
    BlockSparsePattern,
    DenseMask,
    LocalMask,
    Mask,
    OrMask,
    attended_fraction,
    random_for_density,
)
from pallas_kernels.reference import reference_attention
from pallas_kernels.sharding import AttentionSharding, run_sharded

__all__ = [
    "attention",
    "reference_attention",
    "Mask",
    "DenseMask",
    "LocalMask",
    "BlockSparseMask",
    "BlockSparsePattern",
    "AndMask",
    "OrMask",
    "BlockSizes",
    "AttentionSharding",
    "BlockTable",
    "block_table",
    "visited_fraction",
    "IMPLEMENTATIONS",
    "attended_fraction",
    "random_for_density",
]

IMPLEMENTATIONS = ("pallas", "xla", "splash", "reference")
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def default_implementation(backend: str | None = None) -> str:
  backend = backend or jax.default_backend()
  return {"gpu": "pallas", "cuda": "pallas", "rocm": "pallas", "tpu": "splash"}.get(backend, "xla")


def attention(
    q,
    k,
    v,
    mask: Mask = DenseMask(),
    *,
    kv_lengths=None,
    q_segment_ids=None,
    kv_segment_ids=None,
    scale: float | None = None,
    block_sizes: BlockSizes | None = None,
    implementation: str | None = None,
    interpret: bool = False,
    sharding: AttentionSharding | None = None,
) -> jax.Array:
  """Masked multi-head attention; see docs/DESIGN.md ("pallas_kernels") for the contract.

  Args:
    q: `[B, Lq, H, D]`, float32 or bfloat16.
    k, v: `[B, Lk, H, D]`, the dtype of `q`.
    mask: a `Mask` (`DenseMask()`, `LocalMask(left, right)`, `BlockSparseMask(...)`, `a & b`, `a | b`).
    kv_lengths: int `[B]`; keys at positions `>= kv_lengths[b]` are padding.
    q_segment_ids, kv_segment_ids: int `[B, Lq]`, `[B, Lk]`; queries see only keys of their segment.
    scale: softmax scale, default `D ** -0.5`.
    block_sizes: kernel tiles; default `BlockSizes.default(D, dtype, backend, mask)`, fitted to the mask.
    implementation: None, "pallas", "xla", "splash" or "reference".
    interpret: run Pallas kernels in interpret mode (CPU).
    sharding: the mesh axes the batch and heads lie on; the implementation then
      runs on each device's shard (no gather of q, k, v).

  Returns:
    `[B, Lq, H, D]` in the dtype of `q`. Query rows with no allowed key are zeros.
  """
  implementation = _check_inputs(
      q, k, v, mask, kv_lengths, q_segment_ids, kv_segment_ids, block_sizes, implementation
  )
  if sharding is not None:
    if not isinstance(sharding, AttentionSharding):
      raise ValueError(f"sharding: expected an AttentionSharding, got {type(sharding).__name__}")
    # Each shard runs this function again on its own rows and heads, without a sharding.
    per_row = dict(
        kv_lengths=kv_lengths, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids
    )
    arrays = dict(q=q, k=k, v=v, **{name: x for name, x in per_row.items() if x is not None})

    def attend(q, k, v, **rows):
      return attention(
          q,
          k,
          v,
          mask,
          scale=scale,
          block_sizes=block_sizes,
          implementation=implementation,
          interpret=interpret,
          **rows,
      )

    return run_sharded(attend, sharding, arrays, per_head_mask=mask.per_head)
  batch, q_len, num_heads, head_dim = q.shape
  kv_len = k.shape[1]
  scale = float(head_dim**-0.5 if scale is None else scale)
  if implementation == "reference":
    return reference_attention(
        q,
        k,
        v,
        mask,
        kv_lengths=kv_lengths,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        scale=scale,
    )

  if kv_lengths is not None:
    kv_lengths = jnp.minimum(jnp.asarray(kv_lengths, jnp.int32), kv_len)
  backend = {"xla": "cpu", "splash": "tpu"}.get(implementation, "gpu")
  if block_sizes is None:
    block_sizes = BlockSizes.default(head_dim, q.dtype, backend, mask)
  block_sizes = block_sizes.fit(mask, q_len, kv_len)
  segments = dict(q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)

  if implementation == "xla":
    from pallas_kernels import xla

    return xla.blocked_attention(
        q, k, v, mask, kv_lengths=kv_lengths, scale=scale, block_sizes=block_sizes, **segments
    )
  if implementation == "pallas":
    from pallas_kernels import flash

    if kv_lengths is None:  # the kernel takes lengths always
      kv_lengths = jnp.full((batch,), kv_len, jnp.int32)
    return flash.flash_attention(
        q,
        k,
        v,
        mask,
        kv_lengths=kv_lengths,
        scale=scale,
        block_sizes=block_sizes,
        interpret=interpret,
        **segments,
    )
  from pallas_kernels import splash

  return splash.splash_attention(
      q,
      k,
      v,
      mask,
      kv_lengths=kv_lengths,
      scale=scale,
      block_sizes=block_sizes,
      interpret=interpret,
      **segments,
  )


def _check_inputs(
    q, k, v, mask, kv_lengths, q_segment_ids, kv_segment_ids, block_sizes, implementation
) -> str:
  """Raises ValueError naming the argument, before anything is traced; returns the implementation."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    if getattr(x, "ndim", None) != 4:
      raise ValueError(
          f"{name}: expected a [batch, length, heads, head_dim] array, got shape "
          f"{getattr(x, 'shape', type(x).__name__)}"
      )
    if jnp.dtype(x.dtype) not in _DTYPES:
      raise ValueError(f"{name}: expected float32 or bfloat16, got {x.dtype}")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"q, k, v: expected one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
  if k.shape != v.shape:
    raise ValueError(f"k, v: expected the same shape, got {k.shape} and {v.shape}")
  batch, q_len, num_heads, head_dim = q.shape
  for axis, name in ((0, "batch"), (2, "heads"), (3, "head_dim")):
    if k.shape[axis] != q.shape[axis]:
      raise ValueError(f"k: {name} {k.shape[axis]} does not match q's {q.shape[axis]}")
  if min(q_len, k.shape[1], head_dim) < 1:
    raise ValueError(f"q, k: expected non-empty lengths and head_dim, got {q.shape} and {k.shape}")
  if not isinstance(mask, Mask):
    raise ValueError(f"mask: expected a pallas_kernels Mask, got {type(mask).__name__}")
  mask.validate(q_len, k.shape[1], num_heads)
  if kv_lengths is not None:
    shape = np.shape(kv_lengths)
    if shape != (batch,) or not jnp.issubdtype(jnp.result_type(kv_lengths), jnp.integer):
      raise ValueError(
          f"kv_lengths: expected an int array of shape ({batch},), got "
          f"{jnp.result_type(kv_lengths)} {shape}"
      )
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("q_segment_ids, kv_segment_ids: give both or neither")
  if q_segment_ids is not None:
    for name, ids, length in (
        ("q_segment_ids", q_segment_ids, q_len),
        ("kv_segment_ids", kv_segment_ids, k.shape[1]),
    ):
      if np.shape(ids) != (batch, length) or not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
        raise ValueError(
            f"{name}: expected an int array of shape ({batch}, {length}), got "
            f"{jnp.result_type(ids)} {np.shape(ids)}"
        )
  if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes: expected a BlockSizes, got {type(block_sizes).__name__}")
  if implementation is None:
    implementation = default_implementation()
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"implementation: expected None or one of {IMPLEMENTATIONS}, got {implementation!r}"
    )
  return implementation
