"""The Pallas flash kernel (interpret mode on the CPU) against the float64 formula oracle.

Expected masks come from `oracle.formula_mask` (DESIGN.md's formulas in numpy),
never from `masks.py`, so a mask bug cannot hide in both sides.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oracle import formula_mask, full_mask, oracle_vjp, random_layout
from pallas_kernels import BlockSizes, BlockSparseMask, DenseMask, LocalMask, attention
from pallas_kernels import flash

# Max |got - want| allowed, relative to max(1, max |want|), per input dtype.
TOLERANCE = {"float32": 2e-5, "bfloat16": 3e-2}

# Small tiles that differ per pass: several blocks per sequence at test sizes,
# and every pass walks its own table.
SMALL_TILES = BlockSizes(block_q=32, block_k=16, block_q_dkv=16, block_k_dkv=32,
                         block_q_dq=32, block_k_dq=32)


@dataclasses.dataclass(frozen=True)
class Case:
  """One comparison: shapes, a mask and the formula that must match it."""

  name: str
  mask: object
  formula: dict
  batch: int = 2
  q_len: int = 50
  kv_len: int = 50
  heads: int = 2
  head_dim: int = 32
  dtype: str = "float32"
  kv_lengths: tuple[int, ...] | None = None
  block_sizes: BlockSizes | None = SMALL_TILES
  segments: bool = False


def _layout(seed, shape, density=0.5, empty_rows=0):
  return random_layout(np.random.default_rng(seed), shape, density, empty_rows)


_LAYOUT = _layout(1, (4, 4), 0.5, empty_rows=1)             # 64 x 64, cells 16 x 16
_HEAD_LAYOUTS = _layout(2, (3, 2, 4), 0.6)                    # per head, 64 x 64, cells 32 x 16
_WIDE_LAYOUT = _layout(3, (2, 2), 0.7)                        # 64 x 64, cells 32 x 32
# BigBird's global row and column plus the diagonal, 8 x 8 cells of 16: row 0
# and column 0 are "heavy" and launch first (flash.HEAVY_ROW_FACTOR).
_GLOBAL_LAYOUT = np.eye(8, dtype=bool)
_GLOBAL_LAYOUT[0, :] = _GLOBAL_LAYOUT[:, 0] = True


def _bsm(layout, block_q, block_k):
  return (BlockSparseMask(layout, block_q, block_k),
          dict(kind="block_sparse", layout=layout, block_q=block_q, block_k=block_k))


CASES = [
    Case("dense", DenseMask(), dict(kind="dense")),
    Case("dense_default_tiles", DenseMask(), dict(kind="dense"), block_sizes=None),
    Case("dense_d64_cross_lengths", DenseMask(), dict(kind="dense"), q_len=33, kv_len=70, head_dim=64,
         batch=1),
    Case("dense_d128_lengths", DenseMask(), dict(kind="dense"), batch=3, head_dim=128,
         kv_lengths=(50, 0, 21)),
    Case("dense_d40_padded_head_dim", DenseMask(), dict(kind="dense"), head_dim=40, heads=3, batch=1),
    Case("local_asymmetric", LocalMask(7, 2), dict(kind="local", left=7, right=2), kv_lengths=(50, 13)),
    Case("local_window_0", LocalMask(0, 0), dict(kind="local", left=0, right=0)),
    Case("local_wider_than_sequence", LocalMask(100, 80), dict(kind="local", left=100, right=80),
         kv_lengths=(0, 37)),
    Case("local_causal", LocalMask(None, 0), dict(kind="local", left=None, right=0), q_len=40, kv_len=64),
    Case("local_right_only", LocalMask(0, None), dict(kind="local", left=0, right=None), kv_lengths=(44, 5)),
    Case("block_sparse_empty_rows", *_bsm(_LAYOUT, 16, 16), q_len=64, kv_len=64, kv_lengths=(64, 20)),
    Case("block_sparse_per_head", *_bsm(_HEAD_LAYOUTS, 32, 16), q_len=64, kv_len=64, heads=3),
    Case("block_sparse_ragged", *_bsm(_layout(4, (2, 4), 0.5), 32, 16), q_len=40, kv_len=57, batch=1),
    Case("block_sparse_global_row", *_bsm(_GLOBAL_LAYOUT, 16, 16), q_len=128, kv_len=128, batch=2,
         heads=3, head_dim=16, kv_lengths=(128, 70)),
    Case("dense_segments", DenseMask(), dict(kind="dense"), segments=True, kv_lengths=(50, 31)),
    Case("bf16_dense", DenseMask(), dict(kind="dense"), dtype="bfloat16", kv_lengths=(50, 9)),
    Case("bf16_local", LocalMask(5, 11), dict(kind="local", left=5, right=11), dtype="bfloat16",
         head_dim=64),
    Case("bf16_block_sparse_per_head", *_bsm(_HEAD_LAYOUTS, 32, 16), q_len=64, kv_len=64, heads=3,
         dtype="bfloat16", head_dim=128, kv_lengths=(64, 0)),
]


def _combined_cases():
  # local & block-sparse, local | block-sparse: formulas combined in numpy.
  bsm, bsm_formula = _bsm(_WIDE_LAYOUT, 32, 32)
  local, local_formula = LocalMask(6, 20), dict(kind="local", left=6, right=20)
  return [
      Case("local_and_block_sparse", local & bsm, ("and", local_formula, bsm_formula), q_len=64,
           kv_len=64, kv_lengths=(60, 33)),
      Case("local_or_block_sparse", local | bsm, ("or", local_formula, bsm_formula), q_len=64,
           kv_len=64, dtype="bfloat16"),
  ]


CASES += _combined_cases()


def _expected_mask(case: Case) -> np.ndarray:
  def one(formula):
    return formula_mask(formula["kind"], case.q_len, case.kv_len,
                        **{k: v for k, v in formula.items() if k != "kind"})

  if isinstance(case.formula, tuple):
    op, a, b = case.formula
    return one(a) & one(b) if op == "and" else one(a) | one(b)
  return one(case.formula)


def _inputs(case: Case, seed: int = 0):
  rng = np.random.default_rng(seed)
  dtype = jnp.dtype(case.dtype)

  def draw(length):
    return jnp.asarray(rng.normal(size=(case.batch, length, case.heads, case.head_dim)), dtype)

  q, k, v, d_out = draw(case.q_len), draw(case.kv_len), draw(case.kv_len), draw(case.q_len)
  segments = {}
  if case.segments:
    # Sorted random segment ids: packed sequences of random lengths.
    segments = dict(q_segment_ids=jnp.asarray(np.sort(rng.integers(0, 3, (case.batch, case.q_len)))),
                    kv_segment_ids=jnp.asarray(np.sort(rng.integers(0, 3, (case.batch, case.kv_len)))))
  return q, k, v, d_out, segments


def _flash_vjp(case: Case, q, k, v, d_out, segments):
  lengths = None if case.kv_lengths is None else jnp.asarray(case.kv_lengths, jnp.int32)

  @jax.jit
  def run(q, k, v, d_out):
    def f(q, k, v):
      return attention(q, k, v, case.mask, kv_lengths=lengths, block_sizes=case.block_sizes,
                       implementation="pallas", interpret=True, **segments)
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(d_out))

  return run(q, k, v, d_out)


def _allowed(case: Case, segments) -> np.ndarray:
  return full_mask(_expected_mask(case), kv_lengths=case.kv_lengths,
                   q_segment_ids=segments.get("q_segment_ids"),
                   kv_segment_ids=segments.get("kv_segment_ids"))


def _assert_close(got, want, dtype: str, what: str):
  got = np.asarray(got, np.float64)
  assert np.all(np.isfinite(got)), f"{what}: non-finite values"
  error = float(np.abs(got - want).max())
  bound = TOLERANCE[dtype] * max(1.0, float(np.abs(want).max()))
  assert error <= bound, f"{what}: max error {error:.3g} > {bound:.3g}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_oracle_forward_and_gradients(case: Case):
  q, k, v, d_out, segments = _inputs(case)
  got = _flash_vjp(case, q, k, v, d_out, segments)
  allowed = _allowed(case, segments)
  want = oracle_vjp(q, k, v, allowed, case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert g.dtype == q.dtype, f"{name}: dtype {g.dtype}, expected {q.dtype}"
    _assert_close(g, w, case.dtype, name)
  # Rows with no allowed key: exactly zero output and zero dq.
  empty = ~np.broadcast_to(allowed, (case.batch, case.heads, case.q_len, case.kv_len)).any(-1)
  empty = empty.transpose(0, 2, 1)  # [B, Lq, H]
  np.testing.assert_array_equal(np.asarray(got[0], np.float32)[empty], 0.0)
  np.testing.assert_array_equal(np.asarray(got[1], np.float32)[empty], 0.0)


def test_fully_masked_rows_zero_output_and_gradients():
  # Layout row 0 empty, and batch 1 has kv_length 0: every row of it is empty.
  case = Case("empty", *_bsm(_LAYOUT, 16, 16), q_len=64, kv_len=64, kv_lengths=(64, 0))
  q, k, v, d_out, _ = _inputs(case, seed=5)
  out, dq, dk, dv = _flash_vjp(case, q, k, v, d_out, {})
  assert np.all(np.asarray(out[1]) == 0) and np.all(np.asarray(out[0, :16]) == 0)
  assert np.all(np.asarray(dq[1]) == 0) and np.all(np.asarray(dq[0, :16]) == 0)
  assert np.all(np.asarray(dk[1]) == 0) and np.all(np.asarray(dv[1]) == 0)
  # Keys that only the empty rows could see get no gradient from them.
  want = oracle_vjp(q, k, v, _allowed(case, {}), case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), want):
    _assert_close(g, w, case.dtype, name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unvisited_key_blocks_are_never_loaded(dtype):
  # Layout columns 1 and 3 (keys 16..31 and 48..63) are off for every row and
  # head: fill them with NaN. Outputs and gradients must stay finite and equal
  # the oracle on clean inputs.
  layout = _layout(6, (2, 4, 4), 0.6)
  layout[:, :, [1, 3]] = False
  layout[:, :, 0] = True
  case = Case("nan", *_bsm(layout, 16, 16), q_len=64, kv_len=64, dtype=dtype, kv_lengths=(64, 40))
  q, k, v, d_out, _ = _inputs(case, seed=7)
  poisoned = np.zeros(64, bool)
  poisoned[16:32] = poisoned[48:64] = True
  k_nan = k.at[:, poisoned].set(jnp.nan)
  v_nan = v.at[:, poisoned].set(jnp.nan)
  got = _flash_vjp(case, q, k_nan, v_nan, d_out, {})
  want = oracle_vjp(q, k, v, _allowed(case, {}), case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    _assert_close(g, w, dtype, name)
  assert np.all(np.asarray(got[2])[:, poisoned] == 0) and np.all(np.asarray(got[3])[:, poisoned] == 0)


def test_default_block_sizes_plain_call():
  # No kv_lengths, no block sizes: the path models take.
  case = Case("plain", LocalMask(3, 3), dict(kind="local", left=3, right=3), q_len=20, kv_len=20,
              block_sizes=None, batch=1)
  q, k, v, _, _ = _inputs(case, seed=3)
  out = attention(q, k, v, case.mask, implementation="pallas", interpret=True)
  want = oracle_vjp(q, k, v, _allowed(case, {}), case.head_dim**-0.5, np.zeros(q.shape))[0]
  _assert_close(out, want, "float32", "out")


@pytest.mark.parametrize("block_sizes", [
    BlockSizes(block_q=48),            # not a power of two
    BlockSizes(block_k_dq=8),          # below Triton's 16
])
def test_unusable_block_sizes_raise(block_sizes):
  q = jnp.zeros((1, 64, 1, 32))
  with pytest.raises(ValueError, match="block_sizes"):
    attention(q, q, q, DenseMask(), block_sizes=block_sizes, implementation="pallas", interpret=True)


def test_layout_block_below_16_raises():
  # Tiles must lie inside layout cells, so an 8-wide layout would force 8-wide tiles.
  q = jnp.zeros((1, 32, 1, 32))
  mask = BlockSparseMask(np.ones((4, 4), bool), 8, 8)
  with pytest.raises(ValueError, match="block_sizes"):
    attention(q, q, q, mask, implementation="pallas", interpret=True)


def test_tables_walked_per_pass():
  # Each pass builds its own table; a dense mask walks consecutive blocks
  # (no index loads), a random layout does not.
  plan = flash._plan(flash._Problem(1, 64, 64, 1, 32, "float32", DenseMask(), 1.0, SMALL_TILES, False, True))
  assert plan.forward.walk.contiguous and plan.dkv.walk.contiguous and plan.dq.walk.contiguous
  assert (plan.forward.walk.block_q, plan.dkv.walk.block_k, plan.dq.walk.block_k) == (32, 32, 32)
  sparse = BlockSparseMask(_LAYOUT, 16, 16)
  tiles = SMALL_TILES.fit(sparse, 64, 64)
  plan = flash._plan(flash._Problem(1, 64, 64, 1, 32, "float32", sparse, 1.0, tiles, False, True))
  assert not plan.forward.walk.contiguous
  assert plan.forward.count.shape == (1, 4)
  # Lq = 40 pads to 64 (the largest q tile, 32): the dq pass's fourth 16-row
  # block lies wholly in the padding and visits nothing.
  tiles = BlockSizes(32, 16, 16, 32, 16, 16)
  plan = flash._plan(flash._Problem(1, 40, 40, 1, 32, "float32", DenseMask(), 1.0, tiles, False, True))
  assert plan.dq.count.tolist() == [[3, 3, 3, 0]]
  assert plan.dq.walk.heavy == 0 and plan.dq.order.tolist() == [0, 1, 2, 3]


def test_heavy_rows_launch_first():
  mask = BlockSparseMask(_GLOBAL_LAYOUT, 16, 16)
  tiles = SMALL_TILES.fit(mask, 128, 128)
  plan = flash._plan(flash._Problem(1, 128, 128, 1, 32, "float32", mask, 1.0, tiles, False, True))
  for tables in (plan.forward, plan.dkv, plan.dq):
    assert tables.walk.heavy == 1 and tables.order.tolist() == list(range(8))


# -- Compiled kernels on a real GPU (skipped without one; run by the lead on an H100). --

GPU_CASES = [
    Case("gpu_dense_bf16_d64", DenseMask(), dict(kind="dense"), batch=2, q_len=1024, kv_len=1024,
         heads=2, head_dim=64, dtype="bfloat16", block_sizes=None, kv_lengths=(1024, 700)),
    Case("gpu_dense_bf16_d128", DenseMask(), dict(kind="dense"), batch=1, q_len=1024, kv_len=1024,
         heads=2, head_dim=128, dtype="bfloat16", block_sizes=None),
    Case("gpu_local_f32_d64", LocalMask(100, 37), dict(kind="local", left=100, right=37), batch=1,
         q_len=1000, kv_len=1000, heads=2, head_dim=64, dtype="float32", block_sizes=None,
         kv_lengths=(999,)),
    Case("gpu_block_sparse_bf16_d128", *_bsm(_layout(8, (2, 8, 8), 0.4, empty_rows=1), 128, 128),
         batch=1, q_len=1024, kv_len=1024, heads=2, head_dim=128, dtype="bfloat16", block_sizes=None),
    Case("gpu_segments_bf16_d64", DenseMask(), dict(kind="dense"), batch=2, q_len=512, kv_len=512,
         heads=2, head_dim=64, dtype="bfloat16", block_sizes=None, segments=True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_compiled_kernel_on_gpu(case: Case):
  q, k, v, d_out, segments = _inputs(case)
  lengths = None if case.kv_lengths is None else jnp.asarray(case.kv_lengths, jnp.int32)

  @jax.jit
  def run(q, k, v, d_out):
    def f(q, k, v):
      return attention(q, k, v, case.mask, kv_lengths=lengths, implementation="pallas", **segments)
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(d_out))

  got = run(q, k, v, d_out)
  want = oracle_vjp(q, k, v, _allowed(case, segments), case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    _assert_close(g, w, case.dtype, name)
