"""Shared cases for the attention tests: shapes, masks and the formulas that must match them.

Every implementation (`pallas` interpreted, `xla`, `reference`) is checked
against the float64 oracle on these cases. Expected masks come from
`oracle.formula_mask` (docs/DESIGN.md's formulas in numpy), never from `masks.py`,
so a mask bug cannot hide in both sides.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from oracle import formula_mask, full_mask, random_layout

from pallas_kernels import BlockSizes, BlockSparseMask, DenseMask, LocalMask, attention

# Max |got - want| allowed, relative to max(1, max |want|), per input dtype.
TOLERANCE = {"float32": 2e-5, "bfloat16": 3e-2}

# Small tiles that differ per pass: several blocks per sequence at test sizes,
# and every pass walks its own table.
SMALL_TILES = BlockSizes(
    block_q=32, block_k=16, block_q_dkv=16, block_k_dkv=32, block_q_dq=32, block_k_dq=32
)


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


def make_layout(seed, shape, density=0.5, empty_rows=0):
  return random_layout(np.random.default_rng(seed), shape, density, empty_rows)


LAYOUT = make_layout(1, (4, 4), 0.5, empty_rows=1)  # 64 x 64, cells 16 x 16
HEAD_LAYOUTS = make_layout(2, (3, 2, 4), 0.6)  # per head, 64 x 64, cells 32 x 16
WIDE_LAYOUT = make_layout(3, (2, 2), 0.7)  # 64 x 64, cells 32 x 32
# BigBird's global row and column plus the diagonal, 8 x 8 cells of 16: row 0
# and column 0 are "heavy" and launch first (flash.HEAVY_ROW_FACTOR).
GLOBAL_LAYOUT = np.eye(8, dtype=bool)
GLOBAL_LAYOUT[0, :] = GLOBAL_LAYOUT[:, 0] = True


def block_sparse(layout, block_q, block_k):
  return (
      BlockSparseMask(layout, block_q, block_k),
      dict(kind="block_sparse", layout=layout, block_q=block_q, block_k=block_k),
  )


CASES = [
    Case("dense", DenseMask(), dict(kind="dense")),
    Case("dense_default_tiles", DenseMask(), dict(kind="dense"), block_sizes=None),
    Case(
        "dense_d64_cross_lengths",
        DenseMask(),
        dict(kind="dense"),
        q_len=33,
        kv_len=70,
        head_dim=64,
        batch=1,
    ),
    Case(
        "dense_d128_lengths",
        DenseMask(),
        dict(kind="dense"),
        batch=3,
        head_dim=128,
        kv_lengths=(50, 0, 21),
    ),
    Case(
        "dense_d40_padded_head_dim", DenseMask(), dict(kind="dense"), head_dim=40, heads=3, batch=1
    ),
    Case(
        "local_asymmetric",
        LocalMask(7, 2),
        dict(kind="local", left=7, right=2),
        kv_lengths=(50, 13),
    ),
    Case("local_window_0", LocalMask(0, 0), dict(kind="local", left=0, right=0)),
    Case(
        "local_wider_than_sequence",
        LocalMask(100, 80),
        dict(kind="local", left=100, right=80),
        kv_lengths=(0, 37),
    ),
    Case(
        "local_causal",
        LocalMask(None, 0),
        dict(kind="local", left=None, right=0),
        q_len=40,
        kv_len=64,
    ),
    Case(
        "local_right_only",
        LocalMask(0, None),
        dict(kind="local", left=0, right=None),
        kv_lengths=(44, 5),
    ),
    Case(
        "block_sparse_empty_rows",
        *block_sparse(LAYOUT, 16, 16),
        q_len=64,
        kv_len=64,
        kv_lengths=(64, 20),
    ),
    Case(
        "block_sparse_per_head", *block_sparse(HEAD_LAYOUTS, 32, 16), q_len=64, kv_len=64, heads=3
    ),
    Case(
        "block_sparse_ragged",
        *block_sparse(make_layout(4, (2, 4), 0.5), 32, 16),
        q_len=40,
        kv_len=57,
        batch=1,
    ),
    Case(
        "block_sparse_global_row",
        *block_sparse(GLOBAL_LAYOUT, 16, 16),
        q_len=128,
        kv_len=128,
        batch=2,
        heads=3,
        head_dim=16,
        kv_lengths=(128, 70),
    ),
    Case("dense_segments", DenseMask(), dict(kind="dense"), segments=True, kv_lengths=(50, 31)),
    Case(
        "local_segments",
        LocalMask(9, 4),
        dict(kind="local", left=9, right=4),
        segments=True,
        kv_lengths=(47, 30),
    ),
    Case("bf16_dense", DenseMask(), dict(kind="dense"), dtype="bfloat16", kv_lengths=(50, 9)),
    Case(
        "bf16_local",
        LocalMask(5, 11),
        dict(kind="local", left=5, right=11),
        dtype="bfloat16",
        head_dim=64,
    ),
    Case(
        "bf16_block_sparse_per_head",
        *block_sparse(HEAD_LAYOUTS, 32, 16),
        q_len=64,
        kv_len=64,
        heads=3,
        dtype="bfloat16",
        head_dim=128,
        kv_lengths=(64, 0),
    ),
]


# Layout cells finer than the kernel tiles: 16-token cells on 64- and 128-token
# tiles (each tile spans several cells and is masked cell by cell), and 8-token
# cells on the small tiles. Row 0 of cells is empty in every head.
FINE_LAYOUT = make_layout(8, (3, 9, 9), 0.35, empty_rows=1)  # per head, 144 x 144, cells 16
TILES_64 = BlockSizes(64, 64, 64, 64, 64, 64)
TILES_128 = BlockSizes(128, 128, 128, 64, 64, 128)


def _fine_cell_cases():
  bsm, bsm_formula = block_sparse(FINE_LAYOUT, 16, 16)
  local, local_formula = LocalMask(20, 40), dict(kind="local", left=20, right=40)
  return [
      Case(
          "block_sparse_16_cells_on_64_tiles",
          bsm,
          bsm_formula,
          q_len=140,
          kv_len=140,
          heads=3,
          kv_lengths=(140, 61),
          block_sizes=TILES_64,
      ),
      Case(
          "local_and_block_sparse_16_cells_on_128_tiles",
          local & bsm,
          ("and", local_formula, bsm_formula),
          q_len=140,
          kv_len=140,
          heads=3,
          kv_lengths=(131, 140),
          block_sizes=TILES_128,
      ),
      Case(
          "block_sparse_8_cells_on_small_tiles",
          *block_sparse(make_layout(9, (7, 6), 0.5), 8, 8),
          q_len=50,
          kv_len=45,
          kv_lengths=(45, 30),
      ),
  ]


def _combined_cases():
  # local & block-sparse, local | block-sparse: formulas combined in numpy.
  bsm, bsm_formula = block_sparse(WIDE_LAYOUT, 32, 32)
  local, local_formula = LocalMask(6, 20), dict(kind="local", left=6, right=20)
  return [
      Case(
          "local_and_block_sparse",
          local & bsm,
          ("and", local_formula, bsm_formula),
          q_len=64,
          kv_len=64,
          kv_lengths=(60, 33),
      ),
      Case(
          "local_or_block_sparse",
          local | bsm,
          ("or", local_formula, bsm_formula),
          q_len=64,
          kv_len=64,
          dtype="bfloat16",
      ),
  ]


CASES += _combined_cases() + _fine_cell_cases()


def expected_mask(case: Case) -> np.ndarray:
  def one(formula):
    return formula_mask(
        formula["kind"],
        case.q_len,
        case.kv_len,
        **{k: v for k, v in formula.items() if k != "kind"},
    )

  if isinstance(case.formula, tuple):
    op, a, b = case.formula
    return one(a) & one(b) if op == "and" else one(a) | one(b)
  return one(case.formula)


def make_inputs(case: Case, seed: int = 0):
  rng = np.random.default_rng(seed)
  dtype = jnp.dtype(case.dtype)

  def draw(length):
    return jnp.asarray(rng.normal(size=(case.batch, length, case.heads, case.head_dim)), dtype)

  q, k, v, d_out = draw(case.q_len), draw(case.kv_len), draw(case.kv_len), draw(case.q_len)
  segments = {}
  if case.segments:
    # Sorted random segment ids: packed sequences of random lengths.
    segments = dict(
        q_segment_ids=jnp.asarray(np.sort(rng.integers(0, 3, (case.batch, case.q_len)))),
        kv_segment_ids=jnp.asarray(np.sort(rng.integers(0, 3, (case.batch, case.kv_len)))),
    )
  return q, k, v, d_out, segments


def run_vjp(
    case: Case,
    implementation: str,
    q,
    k,
    v,
    d_out,
    segments,
    *,
    interpret: bool = True,
    block_sizes="case",
):
  """`(out, dq, dk, dv)` of `attention` for `case`, jitted, with cotangent `d_out`."""
  lengths = None if case.kv_lengths is None else jnp.asarray(case.kv_lengths, jnp.int32)
  tiles = case.block_sizes if block_sizes == "case" else block_sizes

  @jax.jit
  def run(q, k, v, d_out):
    def f(q, k, v):
      return attention(
          q,
          k,
          v,
          case.mask,
          kv_lengths=lengths,
          block_sizes=tiles,
          implementation=implementation,
          interpret=interpret,
          **segments,
      )

    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(d_out))

  return run(q, k, v, d_out)


def allowed_for(case: Case, segments) -> np.ndarray:
  return full_mask(
      expected_mask(case),
      kv_lengths=case.kv_lengths,
      q_segment_ids=segments.get("q_segment_ids"),
      kv_segment_ids=segments.get("kv_segment_ids"),
  )


def assert_close(got, want, dtype: str, what: str):
  got = np.asarray(got, np.float64)
  assert np.all(np.isfinite(got)), f"{what}: non-finite values"
  error = float(np.abs(got - want).max())
  bound = TOLERANCE[dtype] * max(1.0, float(np.abs(want).max()))
  assert error <= bound, f"{what}: max error {error:.3g} > {bound:.3g}"
