"""The TPU path: JAX's splash-attention kernel (interpreted on the CPU) against the float64 oracle.

Expected masks come from docs/DESIGN.md's formulas (`oracle.formula_mask`), never
from `masks.py`. Splash runs interpreted here (seconds per call), so the kernel
cases are few and tiny; the mask conversion and segment-id mapping, which are
pure host/jnp code, are checked on many more cases.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import BlockSparseMask, DenseMask, LocalMask, splash
from tests.pallas_kernels import oracle

# Max abs error against the float64 oracle, by dtype: (output, gradients).
TOLERANCE = {jnp.float32: (2e-5, 1e-4), jnp.bfloat16: (3e-2, 1e-1)}


@dataclasses.dataclass(frozen=True)
class Case:
  """A kernel case: our mask and the same mask from the formulas."""

  name: str
  mask: pallas_kernels.Mask
  expected: np.ndarray  # bool [H or 1, Lq, Lk]
  q_len: int
  kv_len: int
  dtype: type = jnp.float32


def _kernel_cases() -> list[Case]:
  rng = np.random.default_rng(0)
  heads = 2
  # Lengths not multiples of 128 (splash pads to 256) and Lq != Lk.
  q_len, kv_len = 200, 160
  layout = oracle.random_layout(rng, (heads, 4, 5), density=0.5, empty_rows=1)  # blocks of 64 x 32
  layout_mask = oracle.formula_mask(
      "block_sparse", q_len, kv_len, layout=layout, block_q=64, block_k=32
  )
  local = oracle.formula_mask("local", q_len, kv_len, left=9, right=3)
  # 16-token cells, as the study's layouts: many cells per splash tile.
  fine = oracle.random_layout(rng, (13, 10), density=0.3, empty_rows=1)
  fine_mask = oracle.formula_mask(
      "block_sparse", q_len, kv_len, layout=fine, block_q=16, block_k=16
  )
  return [
      Case("block_sparse_16_cells", BlockSparseMask(fine, 16, 16), fine_mask, q_len, kv_len),
      Case("dense", DenseMask(), oracle.formula_mask("dense", q_len, kv_len), q_len, kv_len),
      Case("local", LocalMask(9, 3), local, q_len, kv_len),
      Case("block_sparse", BlockSparseMask(layout, 64, 32), layout_mask, q_len, kv_len),
      Case(
          "local_and_block_sparse_bf16",
          LocalMask(9, 3) & BlockSparseMask(layout, 64, 32),
          local & layout_mask,
          q_len,
          kv_len,
          jnp.bfloat16,
      ),
  ]


def _inputs(rng, batch, q_len, kv_len, heads, head_dim, dtype):
  shapes = (
      (batch, q_len, heads, head_dim),
      (batch, kv_len, heads, head_dim),
      (batch, kv_len, heads, head_dim),
      (batch, q_len, heads, head_dim),
  )
  return [jnp.asarray(rng.standard_normal(shape), dtype) for shape in shapes]


def _splash_vjp(q, k, v, d_out, mask, **kwargs):
  """Output and (dq, dk, dv) of `attention(implementation="splash")` for cotangent `d_out`."""
  out, vjp = jax.vjp(
      lambda q, k, v: pallas_kernels.attention(q, k, v, mask, implementation="splash", **kwargs),
      q,
      k,
      v,
  )
  return (out, *vjp(d_out))


def _max_error(got, expected) -> float:
  return float(np.abs(np.asarray(got, np.float64) - expected).max())


@pytest.mark.slow
@pytest.mark.parametrize("case", _kernel_cases(), ids=lambda case: case.name)
def test_splash_matches_oracle(case: Case):
  rng = np.random.default_rng(1)
  batch, heads, head_dim = 2, 2, 32
  q, k, v, d_out = _inputs(rng, batch, case.q_len, case.kv_len, heads, head_dim, case.dtype)
  # A length of 0 (every row fully masked) and a ragged one.
  kv_lengths = jnp.array([0, case.kv_len - 37], jnp.int32)
  scale = 0.3
  got = _splash_vjp(q, k, v, d_out, case.mask, kv_lengths=kv_lengths, scale=scale)
  allowed = oracle.full_mask(case.expected, kv_lengths=kv_lengths)
  expected = oracle.oracle_vjp(q, k, v, allowed, scale, d_out)

  out_tol, grad_tol = TOLERANCE[case.dtype]
  for name, g, e, tol in zip(
      ("out", "dq", "dk", "dv"), got, expected, (out_tol,) + (grad_tol,) * 3
  ):
    assert g.dtype == case.dtype, name
    assert g.shape == e.shape, name
    assert _max_error(g, e) <= tol, f"{name}: max error {_max_error(g, e):.3g} > {tol}"

  # Rows with no allowed key: exact zeros, and exactly no gradient to their q.
  empty = ~np.broadcast_to(allowed, (batch, heads, case.q_len, case.kv_len)).any(-1)  # [B, H, Lq]
  empty = empty.transpose(0, 2, 1)  # [B, Lq, H]
  assert empty[0].all() and not empty[1].all()  # kv_lengths[0] == 0 empties every row of example 0
  out, dq = np.asarray(got[0], np.float32), np.asarray(got[1], np.float32)
  assert np.all(out[empty] == 0.0)
  assert np.all(dq[empty] == 0.0)
  # Keys past kv_lengths get no gradient at all.
  dk, dv = np.asarray(got[2], np.float32), np.asarray(got[3], np.float32)
  assert np.all(dk[0] == 0.0) and np.all(dv[0] == 0.0)
  assert np.all(dk[1, case.kv_len - 37 :] == 0.0) and np.all(dv[1, case.kv_len - 37 :] == 0.0)


@pytest.mark.slow
def test_splash_packed_segments_and_pattern():
  """Packed segments (arbitrary int32 ids) on a block-sparse recipe, lengths already on the 128 grid."""
  rng = np.random.default_rng(2)
  batch, length, heads, head_dim = 1, 256, 2, 64
  q, k, v, d_out = _inputs(rng, batch, length, length, heads, head_dim, jnp.float32)
  # Segments: three packed runs with extreme ids; the key ids use one id no query has.
  bounds = np.array([0, 90, 170, length])
  ids = np.array([np.iinfo(np.int32).min, 7, np.iinfo(np.int32).max])
  q_segments = np.repeat(ids, np.diff(bounds))[None]
  kv_segments = q_segments.copy()
  kv_segments[0, 100:120] = 5
  mask = BlockSparseMask.pattern(64, local=1, global_=1)
  qb, kb = np.arange(4)[:, None], np.arange(4)[None, :]
  layout = (np.abs(qb - kb) <= 1) | (qb < 1) | (kb < 1)
  expected_mask = oracle.formula_mask("block_sparse", length, length, layout=layout, block_q=64)
  kv_lengths = jnp.array([length], jnp.int32)

  got = _splash_vjp(
      q,
      k,
      v,
      d_out,
      mask,
      kv_lengths=kv_lengths,
      q_segment_ids=jnp.asarray(q_segments),
      kv_segment_ids=jnp.asarray(kv_segments),
  )
  allowed = oracle.full_mask(
      expected_mask, kv_lengths=kv_lengths, q_segment_ids=q_segments, kv_segment_ids=kv_segments
  )
  expected = oracle.oracle_vjp(q, k, v, allowed, head_dim**-0.5, d_out)
  out_tol, grad_tol = TOLERANCE[jnp.float32]
  for name, g, e, tol in zip(
      ("out", "dq", "dk", "dv"), got, expected, (out_tol,) + (grad_tol,) * 3
  ):
    assert _max_error(g, e) <= tol, f"{name}: max error {_max_error(g, e):.3g} > {tol}"


# -- Host-side pieces: fast, many cases. ---------------------------------------------


def _splash_dense(mask: pallas_kernels.Mask, q_len: int, kv_len: int, heads: int) -> np.ndarray:
  """The converted splash mask over the real region, bool `[H, Lq, Lk]`."""
  tiling = splash.SplashTiling.fit(q_len, kv_len)
  multi = splash.splash_mask(mask, q_len, kv_len, heads, tiling)
  assert multi.shape == (heads, tiling.q_len, tiling.kv_len)
  return np.stack([multi.masks[h][(slice(0, q_len), slice(0, kv_len))] for h in range(heads)])


def _random_local(rng) -> tuple[int | None, int | None]:
  return tuple(None if rng.random() < 0.2 else int(rng.integers(0, 300)) for _ in range(2))


@pytest.mark.parametrize("seed", range(12))
def test_splash_mask_conversion_matches_formulas(seed):
  rng = np.random.default_rng(seed)
  heads = int(rng.integers(1, 4))
  q_len, kv_len = (int(n) for n in rng.integers(1, 400, size=2))
  block_q, block_k = (int(b) for b in rng.choice([16, 32, 64, 128], size=2))
  layout_shape = ((heads,) if rng.random() < 0.5 else ()) + (
      -(-q_len // block_q),
      -(-kv_len // block_k),
  )
  layout = oracle.random_layout(
      rng, layout_shape, density=float(rng.random()), empty_rows=int(rng.integers(0, 2))
  )
  left, right = _random_local(rng)

  local = LocalMask(left, right)
  sparse = BlockSparseMask(layout, block_q, block_k)
  local_expected = oracle.formula_mask("local", q_len, kv_len, left=left, right=right)
  sparse_expected = oracle.formula_mask(
      "block_sparse", q_len, kv_len, layout=layout, block_q=block_q, block_k=block_k
  )
  cases = [
      (DenseMask(), oracle.formula_mask("dense", q_len, kv_len)),
      (local, local_expected),
      (sparse, sparse_expected),
      (local & sparse, local_expected & sparse_expected),
      (local | sparse, local_expected | sparse_expected),
      ((local | DenseMask()) & sparse, sparse_expected),
  ]
  for mask, expected in cases:
    got = _splash_dense(mask, q_len, kv_len, heads)
    np.testing.assert_array_equal(got, np.broadcast_to(expected, got.shape), err_msg=repr(mask))


def test_layout_mask_is_lazy_and_masks_padding():
  layout = np.array([[True, False], [False, True]])
  tiling = splash.SplashTiling.fit(100, 100)  # pads to 128 x 128; the layout covers 2 x 64
  multi = splash.splash_mask(BlockSparseMask(layout, 64, 64), 100, 100, 1, tiling)
  head = multi.masks[0]
  assert not isinstance(head, np.ndarray) and head.shape == (128, 128)
  tile = head[(slice(64, 128), slice(0, 128))]
  assert tile.shape == (64, 128)
  np.testing.assert_array_equal(tile[:, :64], False)
  np.testing.assert_array_equal(tile[:, 64:], True)
  # Equal layouts make equal (deduplicated) splash masks; different ones do not.
  again = splash.splash_mask(BlockSparseMask(layout.copy(), 64, 64), 100, 100, 1, tiling).masks[0]
  other = splash.splash_mask(BlockSparseMask(~layout, 64, 64), 100, 100, 1, tiling).masks[0]
  assert head == again and hash(head) == hash(again)
  assert head != other
  # Splash padding past the layout's last block (3 x 64 = 192 of 256) is masked, so never visited.
  tiling = splash.SplashTiling.fit(130, 130)
  head = splash.splash_mask(
      BlockSparseMask(np.ones((3, 3), bool), 64, 64), 130, 130, 1, tiling
  ).masks[0]
  np.testing.assert_array_equal(head[(slice(0, 256), slice(192, 256))], False)
  np.testing.assert_array_equal(head[(slice(192, 256), slice(0, 256))], False)
  np.testing.assert_array_equal(head[(slice(0, 192), slice(0, 192))], True)


@pytest.mark.parametrize("seed", range(3))
def test_layout_mask_slices_match_formula(seed):
  """Splash reads masks a tile at a time: every slice must equal the same part of the formula mask."""
  rng = np.random.default_rng(seed)
  q_len, kv_len = (int(n) for n in rng.integers(128, 700, size=2))
  block_q, block_k = (int(b) for b in rng.choice([32, 128, 256], size=2))
  layout = oracle.random_layout(rng, (-(-q_len // block_q), -(-kv_len // block_k)), density=0.5)
  expected = oracle.formula_mask(
      "block_sparse", q_len, kv_len, layout=layout, block_q=block_q, block_k=block_k
  )[0]
  tiling = splash.SplashTiling.fit(q_len, kv_len)
  head = splash.splash_mask(
      BlockSparseMask(layout, block_q, block_k), q_len, kv_len, 1, tiling
  ).masks[0]
  for _ in range(50):
    (q0, q1), (k0, k1) = (np.sort(rng.integers(0, n + 1, size=2)) for n in (q_len, kv_len))
    q1, k1 = max(q1, q0 + 1), max(k1, k0 + 1)
    tile = rng.random() < 0.5  # half of the slices are tile-aligned, as splash asks
    if tile:
      q0, k0 = (int(rng.integers(0, n // b)) * b for n, b in ((q_len, 128), (kv_len, 128)))
      q1, k1 = q0 + 128, k0 + 128
    got = head[(slice(q0, q1), slice(k0, k1))]
    np.testing.assert_array_equal(got, expected[q0:q1, k0:k1])


@pytest.mark.parametrize("length", [1, 127, 128, 129, 300, 384, 640, 1000, 1024, 4096])
def test_tiling_fits_splash(length):
  tiling = splash.SplashTiling.fit(length, 2 * length + 5)
  for padded, block, real in (
      (tiling.q_len, tiling.block_q, length),
      (tiling.kv_len, tiling.block_kv, 2 * length + 5),
  ):
    assert padded >= real and padded - real < splash.LANES
    assert block % splash.LANES == 0 and padded % block == 0 and block <= 512


def test_segment_ids_encode_lengths_and_segments():
  rng = np.random.default_rng(3)
  batch, q_len, kv_len = 3, 50, 70
  extremes = np.array([np.iinfo(np.int32).min, -1, 0, 5, np.iinfo(np.int32).max], np.int32)
  q_seg = rng.choice(extremes[:4], size=(batch, q_len)).astype(np.int32)
  kv_seg = rng.choice(extremes, size=(batch, kv_len)).astype(np.int32)
  kv_lengths = np.array([0, 33, kv_len], np.int32)
  tiling = splash.SplashTiling.fit(q_len, kv_len)
  for segments in ((None, None), (q_seg, kv_seg)):
    q_ids, kv_ids = splash.splash_segment_ids(
        jnp.asarray(kv_lengths),
        *(None if s is None else jnp.asarray(s) for s in segments),
        q_len,
        kv_len,
        tiling,
    )
    assert q_ids.shape == (batch, tiling.q_len) and kv_ids.shape == (batch, tiling.kv_len)
    assert q_ids.dtype == kv_ids.dtype == jnp.int32
    same = np.asarray(q_ids)[:, :q_len, None] == np.asarray(kv_ids)[:, None, :]
    expected = oracle.full_mask(
        np.ones((1, q_len, kv_len), bool),
        kv_lengths=kv_lengths,
        q_segment_ids=segments[0],
        kv_segment_ids=segments[1],
    )[:, 0]
    np.testing.assert_array_equal(same[:, :, :kv_len], expected)
    assert not same[:, :, kv_len:].any()  # padded keys are seen by no query


def test_splash_runs_interpreted_off_tpu(monkeypatch):
  """`interpret=False` off TPU must still run (interpreted), not try to lower for Mosaic TPU."""
  built = []
  original = splash.splash_lib.make_splash_mha

  def spy(*args, **kwargs):
    built.append(kwargs["interpret"])
    return original(*args, **kwargs)

  monkeypatch.setattr(splash.splash_lib, "make_splash_mha", spy)
  splash._splash_kernel.cache_clear()
  rng = np.random.default_rng(4)
  q, k, v, _ = _inputs(rng, 1, 128, 128, 1, 32, jnp.float32)
  expected = oracle.oracle_attention(
      q, k, v, oracle.formula_mask("local", 128, 128, left=3, right=3), 32**-0.5
  )
  out = pallas_kernels.attention(q, k, v, LocalMask(3, 3), implementation="splash", interpret=False)
  assert built == [jax.default_backend() != "tpu"]
  assert _max_error(out, expected) <= TOLERANCE[jnp.float32][0]
  # Without lengths, segments or padding, splash runs with no segment ids at all.
  out = splash.splash_attention(q, k, v, LocalMask(3, 3), scale=32**-0.5)
  assert _max_error(out, expected) <= TOLERANCE[jnp.float32][0]
