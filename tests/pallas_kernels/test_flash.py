"""The Pallas flash kernel: its tile checks, its table walks, and compiled runs on a GPU.

Its agreement with the oracle on every case is in `test_attention.py`, with the
other implementations.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from cases import (
    GLOBAL_LAYOUT,
    LAYOUT,
    SMALL_TILES,
    Case,
    allowed_for,
    assert_close,
    block_sparse,
    make_inputs,
    make_layout,
    run_vjp,
)
from oracle import oracle_vjp

from pallas_kernels import BlockSizes, BlockSparseMask, DenseMask, LocalMask, attention, flash


def test_default_block_sizes_plain_call():
  # No kv_lengths, no block sizes: the path models take.
  case = Case(
      "plain",
      LocalMask(3, 3),
      dict(kind="local", left=3, right=3),
      q_len=20,
      kv_len=20,
      block_sizes=None,
      batch=1,
  )
  q, k, v, _, _ = make_inputs(case, seed=3)
  out = attention(q, k, v, case.mask, implementation="pallas", interpret=True)
  want = oracle_vjp(q, k, v, allowed_for(case, {}), case.head_dim**-0.5, np.zeros(q.shape))[0]
  assert_close(out, want, "float32", "out")


@pytest.mark.parametrize(
    "block_sizes",
    [
        BlockSizes(block_q=48),  # not a power of two
        BlockSizes(block_k_dq=8),  # below Triton's 16
    ],
)
def test_unusable_block_sizes_raise(block_sizes):
  q = jnp.zeros((1, 64, 1, 32))
  with pytest.raises(ValueError, match="block_sizes"):
    attention(
        q, q, q, DenseMask(), block_sizes=block_sizes, implementation="pallas", interpret=True
    )


def test_tiles_span_fine_layout_cells():
  # 8-token cells need no 8-wide Triton tile: the default tiles are kept and
  # masked per cell, and every tile the layout leaves empty is skipped.
  layout = np.zeros((16, 16), bool)
  layout[:8, :8] = np.eye(8, dtype=bool)
  mask = BlockSparseMask(layout, 8, 8)
  plan = flash._plan(
      flash._Problem(
          1, 128, 128, 1, 32, "float32", mask, 1.0, BlockSizes().fit(mask, 128, 128), False, True
      )
  )
  assert (plan.forward.walk.block_q, plan.forward.walk.block_k) == (128, 64)
  assert list(plan.forward.count[0]) == [1] and plan.forward.walk.any_partial
  assert plan.forward.walk.cell_words == 16


def test_tables_walked_per_pass():
  # Each pass builds its own table; a dense mask walks consecutive blocks
  # (no index loads), a random layout does not.
  plan = flash._plan(
      flash._Problem(1, 64, 64, 1, 32, "float32", DenseMask(), 1.0, SMALL_TILES, False, True)
  )
  assert plan.forward.walk.contiguous and plan.dkv.walk.contiguous and plan.dq.walk.contiguous
  assert (plan.forward.walk.block_q, plan.dkv.walk.block_k, plan.dq.walk.block_k) == (32, 32, 32)
  sparse = BlockSparseMask(LAYOUT, 16, 16)
  tiles = SMALL_TILES.fit(sparse, 64, 64)
  plan = flash._plan(flash._Problem(1, 64, 64, 1, 32, "float32", sparse, 1.0, tiles, False, True))
  assert not plan.forward.walk.contiguous
  assert tiles == SMALL_TILES  # they nest with the 16-token cells, so they are kept
  assert plan.forward.count.shape == (1, 2)
  # Lq = 40 pads to 64 (the largest q tile, 32): the dq pass's fourth 16-row
  # block lies wholly in the padding and visits nothing.
  tiles = BlockSizes(32, 16, 16, 32, 16, 16)
  plan = flash._plan(
      flash._Problem(1, 40, 40, 1, 32, "float32", DenseMask(), 1.0, tiles, False, True)
  )
  assert plan.dq.count.tolist() == [[3, 3, 3, 0]]
  assert plan.dq.walk.heavy == 0 and plan.dq.order.tolist() == [0, 1, 2, 3]


def test_heavy_rows_launch_first():
  mask = BlockSparseMask(GLOBAL_LAYOUT, 16, 16)
  tiles = BlockSizes(16, 16, 16, 16, 16, 16)  # one tile per cell: row 0 visits 8 of 8
  plan = flash._plan(flash._Problem(1, 128, 128, 1, 32, "float32", mask, 1.0, tiles, False, True))
  for tables in (plan.forward, plan.dkv, plan.dq):
    assert tables.walk.heavy == 1 and tables.order.tolist() == list(range(8))


# -- Compiled kernels on a real GPU (skipped without one; run by the lead on an H100). --

GPU_CASES = [
    Case(
        "gpu_dense_bf16_d64",
        DenseMask(),
        dict(kind="dense"),
        batch=2,
        q_len=1024,
        kv_len=1024,
        heads=2,
        head_dim=64,
        dtype="bfloat16",
        block_sizes=None,
        kv_lengths=(1024, 700),
    ),
    Case(
        "gpu_dense_bf16_d128",
        DenseMask(),
        dict(kind="dense"),
        batch=1,
        q_len=1024,
        kv_len=1024,
        heads=2,
        head_dim=128,
        dtype="bfloat16",
        block_sizes=None,
    ),
    Case(
        "gpu_local_f32_d64",
        LocalMask(100, 37),
        dict(kind="local", left=100, right=37),
        batch=1,
        q_len=1000,
        kv_len=1000,
        heads=2,
        head_dim=64,
        dtype="float32",
        block_sizes=None,
        kv_lengths=(999,),
    ),
    Case(
        "gpu_block_sparse_bf16_d128",
        *block_sparse(make_layout(8, (2, 8, 8), 0.4, empty_rows=1), 128, 128),
        batch=1,
        q_len=1024,
        kv_len=1024,
        heads=2,
        head_dim=128,
        dtype="bfloat16",
        block_sizes=None,
    ),
    Case(
        "gpu_segments_bf16_d64",
        DenseMask(),
        dict(kind="dense"),
        batch=2,
        q_len=512,
        kv_len=512,
        heads=2,
        head_dim=64,
        dtype="bfloat16",
        block_sizes=None,
        segments=True,
    ),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_compiled_kernel_on_gpu(case: Case):
  q, k, v, d_out, segments = make_inputs(case)
  got = run_vjp(case, "pallas", q, k, v, d_out, segments, interpret=False)
  want = oracle_vjp(q, k, v, allowed_for(case, segments), case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert_close(g, w, case.dtype, name)
