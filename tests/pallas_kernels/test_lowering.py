"""The Pallas kernels lower for CUDA through Triton, forward and backward, on the CPU machine.

Lowering only (no `.compile()`): it checks the kernels trace, pass the Pallas
Triton lowering (power-of-two tiles, supported ops) and come out as Triton
custom calls rather than Mosaic GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import BlockSparseMask, DenseMask, LocalMask, attention

TRITON_CALL = "__gpu$xla.gpu.triton"

MASKS = {
    "dense": DenseMask(),
    "local": LocalMask(100, 37),
    "block_sparse": BlockSparseMask.pattern(128, random=0.3),
    # 16-token cells on the default 128 x 64 tiles: per-cell masking in-kernel.
    "block_sparse_16_cells": BlockSparseMask.pattern(16, random=0.3),
    "local_and_per_head_block_sparse": LocalMask(256, 256)
    & BlockSparseMask.pattern(128, random=0.2, per_head=True),
}


def _lower(fn, *args) -> str:
  return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("head_dim", [64, 128])
def test_forward_and_backward_lower_to_triton(mask_name, dtype, head_dim):
  mask = MASKS[mask_name]
  x = jax.ShapeDtypeStruct((2, 1000, 4, head_dim), jnp.dtype(dtype))
  lengths = jax.ShapeDtypeStruct((2,), jnp.int32)

  def forward(q, k, v, kv_lengths):
    return attention(q, k, v, mask, kv_lengths=kv_lengths, implementation="pallas")

  def loss(q, k, v, kv_lengths):
    return forward(q, k, v, kv_lengths).astype(jnp.float32).sum()

  assert _lower(forward, x, x, x, lengths).count(TRITON_CALL) == 1
  # Backward: forward (for the residuals), dk/dv and dq kernels.
  assert _lower(jax.grad(loss, argnums=(0, 1, 2)), x, x, x, lengths).count(TRITON_CALL) == 3


def test_segments_and_ragged_head_dim_lower():
  x = jax.ShapeDtypeStruct((1, 300, 2, 40), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((1, 300), jnp.int32)

  def loss(q, k, v, q_seg, kv_seg):
    out = attention(
        q,
        k,
        v,
        LocalMask(20, 20),
        q_segment_ids=q_seg,
        kv_segment_ids=kv_seg,
        implementation="pallas",
    )
    return out.astype(jnp.float32).sum()

  assert _lower(jax.grad(loss, argnums=(0, 1, 2)), x, x, x, seg, seg).count(TRITON_CALL) == 3
