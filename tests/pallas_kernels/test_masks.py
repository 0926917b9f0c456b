"""Masks: block tables and densities against dense masks built from docs/DESIGN.md's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import formula_mask, random_layout

from pallas_kernels import (
    BlockSizes,
    BlockSparseMask,
    DenseMask,
    LocalMask,
    attended_fraction,
    block_table,
    random_for_density,
)
from pallas_kernels.masks import _uniforms


def _random_case(rng: np.random.Generator):
  """A random mask with its formula mask `[H', Lq, Lk]`, shapes and kernel tiles."""
  q_len, kv_len = int(rng.integers(1, 90)), int(rng.integers(1, 90))
  heads = int(rng.integers(1, 4))
  block_q, block_k = (int(b) for b in rng.choice([4, 8, 16], size=2))
  kind = rng.choice(["dense", "local", "block_sparse", "and", "or"])

  def local():
    left = None if rng.random() < 0.2 else int(rng.integers(0, 40))
    right = None if rng.random() < 0.2 else int(rng.integers(0, 40))
    return LocalMask(left, right), formula_mask("local", q_len, kv_len, left=left, right=right)

  def block_sparse():
    # Layout cells nest with the kernel tiles (kernels require it): a tile lies
    # inside one cell or spans several.
    cell_q, cell_k = (
        max(1, int(tile * rng.choice([0.25, 0.5, 1, 2]))) for tile in (block_q, block_k)
    )
    shape = (-(-q_len // cell_q), -(-kv_len // cell_k))
    if rng.random() < 0.5:
      shape = (heads,) + shape
    layout = random_layout(rng, shape, float(rng.uniform(0.1, 0.9)))
    return (
        BlockSparseMask(layout, cell_q, cell_k),
        formula_mask("block_sparse", q_len, kv_len, layout=layout, block_q=cell_q, block_k=cell_k),
    )

  if kind == "dense":
    mask, dense = DenseMask(), formula_mask("dense", q_len, kv_len)
  elif kind == "local":
    mask, dense = local()
  elif kind == "block_sparse":
    mask, dense = block_sparse()
  else:
    (a, da), (b, db) = local(), block_sparse()
    mask, dense = (a & b, da & db) if kind == "and" else (a | b, da | db)
  return mask, dense, q_len, kv_len, heads, block_q, block_k


@pytest.mark.parametrize("seed", range(200))
def test_block_table_matches_formula_mask(seed):
  mask, dense, q_len, kv_len, heads, block_q, block_k = _random_case(np.random.default_rng(seed))
  dense = np.broadcast_to(dense, (heads, q_len, kv_len))
  table = block_table(mask, q_len, kv_len, block_q, block_k, heads)
  nqb, nkb = -(-q_len // block_q), -(-kv_len // block_k)
  assert table.kv_count.shape[1:] == (nqb,) and table.q_count.shape[1:] == (nkb,)
  for h in range(heads):
    th = min(h, table.kv_index.shape[0] - 1)
    tile = lambda qb, kb, h=h: dense[
        h, qb * block_q : (qb + 1) * block_q, kb * block_k : (kb + 1) * block_k
    ]
    for qb in range(nqb):
      count = table.kv_count[th, qb]
      visits = list(table.kv_index[th, qb, :count])
      assert visits == sorted(visits)
      assert visits == [kb for kb in range(nkb) if tile(qb, kb).any()], (h, qb)
      for slot, kb in enumerate(visits):
        # A tile not marked partial must be fully allowed (over its real positions).
        assert table.kv_partial[th, qb, slot] or tile(qb, kb).all(), (h, qb, kb)
        cells = [int(word) for word in table.kv_cells[th, qb, slot]]
        q_pos = np.arange(qb * block_q, min(q_len, (qb + 1) * block_q))[:, None]
        kv_pos = np.arange(kb * block_k, min(kv_len, (kb + 1) * block_k))[None, :]
        allowed = mask.tile_allowed(q_pos, kv_pos, cells, (block_q, block_k), xp=np)
        np.testing.assert_array_equal(np.asarray(allowed), tile(qb, kb))
      # Padding repeats the last valid index (or a visited block) and is never partial.
      assert not table.kv_partial[th, qb, count:].any()
    for kb in range(nkb):
      count = table.q_count[th, kb]
      assert list(table.q_index[th, kb, :count]) == [qb for qb in range(nqb) if tile(qb, kb).any()]
  assert mask.density(q_len, kv_len, heads) == pytest.approx(dense.mean())


def test_local_window_partial_only_at_edges():
  table = block_table(LocalMask(32, 32), 256, 256, 16, 16)
  # A 16-row block away from the ends visits blocks qb-2 .. qb+2; only the outer two are partial.
  middle = 8
  assert list(table.kv_index[0, middle, : table.kv_count[0, middle]]) == [6, 7, 8, 9, 10]
  assert list(table.kv_partial[0, middle, :5]) == [True, False, False, False, True]


def _fixed(nqb, nkb, local=1, global_=1):
  qb, kb = np.indices((nqb, nkb))
  return (np.abs(qb - kb) <= local) | (qb < global_) | (kb < global_)


def test_pattern_structure_and_determinism():
  pattern = BlockSparseMask.pattern(16, local=1, global_=1, random=0.3, seed=3)
  layout = pattern.layout(320, 320)[0]  # 20 x 20 blocks
  fixed = _fixed(20, 20)
  assert layout[fixed].all()
  assert 0 < (layout & ~fixed).sum() < (~fixed).sum()
  again = BlockSparseMask.pattern(16, local=1, global_=1, random=0.3, seed=3).layout(320, 320)[0]
  np.testing.assert_array_equal(layout, again)
  assert not np.array_equal(
      layout, BlockSparseMask.pattern(16, random=0.3, seed=4).layout(320, 320)[0]
  )
  per_head = BlockSparseMask.pattern(16, random=0.3, per_head=True).layout(320, 320, 4)
  assert per_head.shape == (4, 20, 20) and not np.array_equal(per_head[0], per_head[1])
  assert BlockSparseMask.pattern(16, random=0.3).layout(320, 320, 4).shape == (1, 20, 20)


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("seed", [0, 7])
def test_pattern_layout_does_not_depend_on_padding(per_head, seed):
  pattern = BlockSparseMask.pattern(8, local=1, global_=1, random=0.4, seed=seed, per_head=per_head)
  lengths = [1, 7, 8, 9, 77, 96, 100, 128, 200, 333]
  for short in lengths:
    n1 = -(-short // 8)
    expected = pattern.layout(short, short, 3)
    for long in (n for n in lengths if n > short):
      np.testing.assert_array_equal(
          pattern.layout(long, long, 3)[:, :n1, :n1], expected, err_msg=f"{short} in {long}"
      )
  # Rectangular problems and the element mask agree with the square prefix too.
  np.testing.assert_array_equal(pattern.layout(77, 200, 3), pattern.layout(200, 200, 3)[:, :10, :])
  np.testing.assert_array_equal(
      pattern.dense(100, 100, 3), pattern.dense(128, 128, 3)[:, :100, :100]
  )


def test_pattern_random_zero_and_one():
  for local, global_ in ((1, 1), (0, 0), (2, 3)):
    fixed = BlockSparseMask.pattern(16, local=local, global_=global_, random=0).layout(500, 500)[0]
    np.testing.assert_array_equal(fixed, _fixed(32, 32, local, global_))
    full = BlockSparseMask.pattern(16, local=local, global_=global_, random=1, per_head=True)
    assert full.layout(500, 500, 2).all()


def test_pattern_random_is_the_active_fraction_of_free_blocks():
  layout = BlockSparseMask.pattern(1, random=0.3, seed=5).layout(128, 128)[0]
  free = ~_fixed(128, 128)
  assert abs(layout[free].mean() - 0.3) < 0.03
  heads = BlockSparseMask.pattern(1, random=0.3, per_head=True).layout(128, 128, 2)
  assert all(abs(h[free].mean() - 0.3) < 0.03 for h in heads)


def test_attended_fraction_matches_brute_force():
  lengths = [100, 128, 128, 77, 3, 16, 100]
  for mask, heads in (
      (BlockSparseMask.pattern(8, random=0.3, seed=1), 1),
      (BlockSparseMask.pattern(8, random=0.3, per_head=True), 3),
      (LocalMask(5, 9), 1),
      (DenseMask(), 2),
  ):
    allowed = sum(mask.dense(n, n, heads).mean(axis=0).sum() for n in lengths)
    expected = allowed / sum(n * n for n in lengths)
    assert attended_fraction(mask, lengths, heads) == pytest.approx(expected, rel=1e-12)
  assert attended_fraction(DenseMask(), np.array([5, 9])) == 1.0


@pytest.mark.parametrize("lengths", [[], [10, 0], [-3], [[4, 5]], [2.5]])
def test_attended_fraction_rejects_bad_lengths(lengths):
  with pytest.raises(ValueError, match="lengths"):
    attended_fraction(DenseMask(), lengths)


def _closest_achievable(density, lengths, block, num_heads=1, **kw):
  """Brute force: every distinct layout over `lengths` comes from 0, 1 or a midpoint of sorted thresholds."""
  fixed = BlockSparseMask.pattern(block, **kw)
  nb, heads = -(-max(lengths) // block), num_heads if fixed.per_head else 1
  free = np.broadcast_to(~fixed.layout(max(lengths), max(lengths), num_heads), (heads, nb, nb))
  u = np.unique(_uniforms(fixed.seed, heads, nb, nb)[free])  # sorted
  candidates = [0.0, 1.0, *((u[1:] + u[:-1]) / 2)]
  return min(
      abs(
          attended_fraction(BlockSparseMask.pattern(block, random=r, **kw), lengths, num_heads)
          - density
      )
      for r in candidates
  )


@pytest.mark.parametrize(
    "density,num_heads,kw",
    [
        (0.6, 1, {}),
        (0.72, 2, dict(per_head=True)),
        (0.3, 1, dict(local=0, global_=0, seed=3)),
        (1.0, 1, {}),
    ],
)
def test_random_for_density_is_the_closest_achievable(density, num_heads, kw):
  lengths, block = [40, 33, 40, 9], 4
  random = random_for_density(density, lengths, block=block, num_heads=num_heads, **kw)
  got = attended_fraction(BlockSparseMask.pattern(block, random=random, **kw), lengths, num_heads)
  assert abs(got - density) <= _closest_achievable(density, lengths, block, num_heads, **kw) + 1e-12
  if density == 1.0:
    assert random == 1.0 and got == 1.0


@pytest.mark.parametrize("density", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("global_", [0, 1])
def test_random_for_density_hits_targets_over_mixed_lengths(density, global_):
  lengths = [100, 128, 128, 77]
  block = 8 if global_ == 0 else 4  # the band and one global block of 8 alone attend 0.32
  random = random_for_density(density, lengths, block=block, global_=global_)
  assert 0.0 <= random <= 1.0
  mask = BlockSparseMask.pattern(block, global_=global_, random=random)
  assert abs(attended_fraction(mask, lengths) - density) < 0.02


def test_random_for_density_floor_error():
  with pytest.raises(
      ValueError,
      match=r"density: requested 0\.1.*alone attend 0\.531.*block size 16.*"
      r"local=1.*1 global blocks.*length 128.*fewer band or global blocks",
  ):
    random_for_density(0.1, [128], block=16, local=1, global_=1)
  # Right at the floor is fine: random 0.
  floor = attended_fraction(BlockSparseMask.pattern(16), [128, 64])
  assert random_for_density(floor, [128, 64], block=16) == 0.0


@pytest.mark.parametrize("density", [0.0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_random_for_density_rejects_bad_density(density):
  with pytest.raises(ValueError, match="density: expected a fraction in"):
    random_for_density(density, [64], block=8)


def test_pattern_has_no_density_argument():
  with pytest.raises(TypeError, match="density"):
    BlockSparseMask.pattern(16, density=0.5)  # pylint: disable=unexpected-keyword-arg


def test_masks_are_hashable_and_comparable():
  layout = random_layout(np.random.default_rng(0), (3, 3))
  assert BlockSparseMask(layout, 16) == BlockSparseMask(layout.copy(), 16)
  assert hash(BlockSparseMask(layout, 16)) == hash(BlockSparseMask(layout.copy(), 16))
  assert BlockSparseMask(layout, 16) != BlockSparseMask(~layout, 16)
  assert LocalMask(2, 3) & DenseMask() == LocalMask(2, 3) & DenseMask()
  assert len({LocalMask(1, 1), LocalMask(1, 1), BlockSparseMask.pattern(16, random=0.5)}) == 2
  assert BlockSparseMask.pattern(16, random=1) == BlockSparseMask.pattern(16, random=1.0)
  assert hash(BlockSparseMask.pattern(16, random=1)) == hash(
      BlockSparseMask.pattern(16, random=1.0)
  )
  layout[0, 0] = not layout[0, 0]  # the mask keeps its own copy
  assert BlockSparseMask(layout, 16) != BlockSparseMask(~layout, 16)


def test_block_sizes_fit_keeps_tiles_that_nest_with_the_layout():
  tiles = BlockSizes(128, 64, 64, 64, 64, 64)
  # 16-token cells: 128 x 64 tiles span 8 x 4 cells, masked per cell in-kernel.
  assert tiles.fit(BlockSparseMask.pattern(16), 512, 512) == tiles
  assert tiles.fit(LocalMask(3, 3), 512, 512) == tiles
  # Short sequences: the smallest power of two >= 16 that covers them.
  assert tiles.fit(DenseMask(), 40, 20) == BlockSizes(64, 32, 64, 32, 64, 32)
  # Query cells of 48 and 64 do not both nest with 128 or 64: those tiles shrink
  # to the gcd, 16; key cells of 32 and 64 nest with 64-wide tiles, which stay.
  mixed = BlockSparseMask(np.ones((11, 16), bool), 48, 32) | BlockSparseMask.pattern(64)
  assert tiles.fit(mixed, 512, 512) == BlockSizes(16, 64, 16, 64, 16, 64)
  # Cells of 2: a 128-wide tile would span 64 cells, more than one word holds.
  assert tiles.fit(BlockSparseMask.pattern(2), 512, 512).block_q == 64


def test_cpu_default_tiles_for_fine_layouts():
  # Measured at the study's shapes (benchmarks/RESULTS.md): 64 x 64 on the CPU for
  # cells under 128 tokens; coarser layouts and the GPU keep their tiles.
  assert BlockSizes.default(32, backend="cpu", mask=BlockSparseMask.pattern(16)) == BlockSizes(
      64, 64, 64, 64, 64, 64
  )
  assert BlockSizes.default(32, backend="cpu", mask=BlockSparseMask.pattern(64)).block_q == 64
  coarse = BlockSizes.default(32, backend="cpu", mask=BlockSparseMask.pattern(128))
  assert coarse == BlockSizes.default(32, backend="cpu") == BlockSizes(128, 64, 128, 64, 128, 64)
  assert BlockSizes.default(32, backend="gpu", mask=BlockSparseMask.pattern(16)) == BlockSizes()


def test_tiles_must_nest_with_layout_cells():
  mask = BlockSparseMask(np.ones((11, 16), bool), 48, 32)
  with pytest.raises(ValueError, match="must nest"):
    block_table(mask, 512, 512, 64, 32)
  with pytest.raises(ValueError, match="at most 32"):
    block_table(BlockSparseMask.pattern(1), 128, 128, 64, 64)


def test_fine_cells_make_tiles_partial_and_travel_as_words():
  # Cells of 16 on 32 x 32 tiles: each tile spans 2 x 2 cells.
  layout = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], bool)
  table = block_table(BlockSparseMask(layout, 16), 64, 64, 32, 32)
  assert list(table.kv_count[0]) == [1, 1]
  assert list(table.kv_index[0, :, 0]) == [0, 1]
  assert list(table.kv_partial[0, :, 0]) == [True, True]
  # Tile (0, 0): row 0 of cells is 0b01, row 1 is 0b11; tile (1, 1): row 0 empty, row 1 0b11.
  np.testing.assert_array_equal(table.kv_cells[0, :, 0], [[0b01, 0b11], [0b00, 0b11]])
  # The dk/dv side lists the same tiles per key block, with the same words.
  np.testing.assert_array_equal(table.q_cells[0, :, 0], table.kv_cells[0, :, 0])


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: LocalMask(-1, 2), "LocalMask.left"),
        (lambda: LocalMask(2, 1.5), "LocalMask.right"),
        (lambda: BlockSparseMask(np.ones(4, bool), 16), "BlockSparseMask.layout"),
        (lambda: BlockSparseMask(np.full((2, 2), 3), 16), "BlockSparseMask.layout"),
        (lambda: BlockSparseMask(np.ones((2, 2), bool), 0), "BlockSparseMask.block_q"),
        (lambda: BlockSparseMask.pattern(16, random=1.5), "BlockSparseMask.pattern: random"),
        (lambda: BlockSparseMask.pattern(16, random=2), "BlockSparseMask.pattern: random"),
        (lambda: BlockSparseMask.pattern(16, random=-0.1), "BlockSparseMask.pattern: random"),
        (lambda: BlockSparseMask.pattern(16, random="0.3"), "BlockSparseMask.pattern: random"),
        (lambda: BlockSparseMask.pattern(16, local=-1), "local"),
        (lambda: LocalMask(1, 1) & np.ones((2, 2)), "right operand of &"),
        (
            lambda: block_table(BlockSparseMask(np.ones((2, 2), bool), 16), 64, 32, 16, 16),
            "BlockSparseMask.layout",
        ),
        (
            lambda: block_table(BlockSparseMask(np.ones((3, 2, 2), bool), 16), 32, 32, 16, 16, 2),
            "heads",
        ),
        (
            lambda: block_table(BlockSparseMask(np.ones((2, 2), bool), 48), 64, 64, 32, 32),
            "block sizes",
        ),
    ],
)
def test_bad_masks_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()
