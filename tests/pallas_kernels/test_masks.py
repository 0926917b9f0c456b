"""Masks: block tables and densities against dense masks built from DESIGN.md's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from oracle import formula_mask, random_layout
from pallas_kernels import BlockSparseMask, DenseMask, LocalMask
from pallas_kernels.masks import layout_block_sizes


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
    # Layout cells are multiples of the kernel tiles (kernels require it).
    cell_q, cell_k = block_q * int(rng.integers(1, 3)), block_k * int(rng.integers(1, 3))
    shape = (-(-q_len // cell_q), -(-kv_len // cell_k))
    if rng.random() < 0.5:
      shape = (heads,) + shape
    layout = random_layout(rng, shape, float(rng.uniform(0.1, 0.9)))
    return (BlockSparseMask(layout, cell_q, cell_k),
            formula_mask("block_sparse", q_len, kv_len, layout=layout, block_q=cell_q, block_k=cell_k))

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
  table = mask.block_table(q_len, kv_len, block_q, block_k, heads)
  nqb, nkb = -(-q_len // block_q), -(-kv_len // block_k)
  assert table.kv_count.shape[1:] == (nqb,) and table.q_count.shape[1:] == (nkb,)
  for h in range(heads):
    th = min(h, table.kv_index.shape[0] - 1)
    tile = lambda qb, kb: dense[h, qb * block_q:(qb + 1) * block_q, kb * block_k:(kb + 1) * block_k]
    for qb in range(nqb):
      count = table.kv_count[th, qb]
      visits = list(table.kv_index[th, qb, :count])
      assert visits == sorted(visits)
      assert visits == [kb for kb in range(nkb) if tile(qb, kb).any()], (h, qb)
      for slot, kb in enumerate(visits):
        # A tile not marked partial must be fully allowed (over its real positions).
        assert table.kv_partial[th, qb, slot] or tile(qb, kb).all(), (h, qb, kb)
        bits = int(table.kv_bits[th, qb, slot])
        q_pos = np.arange(qb * block_q, min(q_len, (qb + 1) * block_q))[:, None]
        kv_pos = np.arange(kb * block_k, min(kv_len, (kb + 1) * block_k))[None, :]
        np.testing.assert_array_equal(np.asarray(mask.tile_allowed(q_pos, kv_pos, bits, xp=np)), tile(qb, kb))
      # Padding repeats the last valid index (or a visited block) and is never partial.
      assert not table.kv_partial[th, qb, count:].any()
    for kb in range(nkb):
      count = table.q_count[th, kb]
      assert list(table.q_index[th, kb, :count]) == [qb for qb in range(nqb) if tile(qb, kb).any()]
  assert mask.density(q_len, kv_len, heads) == pytest.approx(dense.mean())


def test_local_window_partial_only_at_edges():
  table = LocalMask(32, 32).block_table(256, 256, 16, 16)
  # A 16-row block away from the ends visits blocks qb-2 .. qb+2; only the outer two are partial.
  middle = 8
  assert list(table.kv_index[0, middle, : table.kv_count[0, middle]]) == [6, 7, 8, 9, 10]
  assert list(table.kv_partial[0, middle, :5]) == [True, False, False, False, True]


def test_pattern_structure_and_determinism():
  pattern = BlockSparseMask.pattern(16, local=1, global_=1, random=2, seed=3)
  layout = pattern.layout(320, 320)[0]  # 20 x 20 blocks
  qb, kb = np.indices(layout.shape)
  fixed = (np.abs(qb - kb) <= 1) | (qb < 1) | (kb < 1)
  assert layout[fixed].all()
  extra = (layout & ~fixed).sum(axis=1)
  assert np.all(extra == np.minimum(2, (~fixed).sum(axis=1)))
  np.testing.assert_array_equal(layout, BlockSparseMask.pattern(16, local=1, global_=1, random=2, seed=3).layout(320, 320)[0])
  assert not np.array_equal(layout, BlockSparseMask.pattern(16, random=2, seed=4).layout(320, 320)[0])
  per_head = BlockSparseMask.pattern(16, random=2, per_head=True).layout(320, 320, 4)
  assert per_head.shape == (4, 20, 20) and not np.array_equal(per_head[0], per_head[1])


@pytest.mark.parametrize("target", [0.25, 0.4, 0.6, 1.0])
def test_pattern_density_is_nearest_achievable(target):
  pattern = BlockSparseMask.pattern(16, density=target)
  got = pattern.layout(1024, 1024)[0].mean()
  assert abs(got - target) <= 1.5 / 64  # within a block per row
  low = BlockSparseMask.pattern(16, density=0.01).layout(1024, 1024)[0]
  fixed_only = BlockSparseMask.pattern(16).layout(1024, 1024)[0]
  np.testing.assert_array_equal(low, fixed_only)  # never below local + global


def test_masks_are_hashable_and_comparable():
  layout = random_layout(np.random.default_rng(0), (3, 3))
  assert BlockSparseMask(layout, 16) == BlockSparseMask(layout.copy(), 16)
  assert hash(BlockSparseMask(layout, 16)) == hash(BlockSparseMask(layout.copy(), 16))
  assert BlockSparseMask(layout, 16) != BlockSparseMask(~layout, 16)
  assert LocalMask(2, 3) & DenseMask() == LocalMask(2, 3) & DenseMask()
  assert len({LocalMask(1, 1), LocalMask(1, 1), BlockSparseMask.pattern(16, density=0.5)}) == 2
  layout[0, 0] = not layout[0, 0]  # the mask keeps its own copy
  assert BlockSparseMask(layout, 16) != BlockSparseMask(~layout, 16)


def test_layout_block_sizes():
  assert layout_block_sizes(LocalMask(3, 3)) == (0, 0)
  mask = LocalMask(3, 3) & BlockSparseMask(np.ones((2, 3), bool), 48, 32) | BlockSparseMask.pattern(64)
  assert layout_block_sizes(mask) == (16, 32)


@pytest.mark.parametrize("make,match", [
    (lambda: LocalMask(-1, 2), "LocalMask.left"),
    (lambda: LocalMask(2, 1.5), "LocalMask.right"),
    (lambda: BlockSparseMask(np.ones(4, bool), 16), "BlockSparseMask.layout"),
    (lambda: BlockSparseMask(np.full((2, 2), 3), 16), "BlockSparseMask.layout"),
    (lambda: BlockSparseMask(np.ones((2, 2), bool), 0), "BlockSparseMask.block_q"),
    (lambda: BlockSparseMask.pattern(16, density=1.5), "density"),
    (lambda: BlockSparseMask.pattern(16, local=-1), "local"),
    (lambda: LocalMask(1, 1) & np.ones((2, 2)), "right operand of &"),
    (lambda: BlockSparseMask(np.ones((2, 2), bool), 16).block_table(64, 32, 16, 16), "BlockSparseMask.layout"),
    (lambda: BlockSparseMask(np.ones((3, 2, 2), bool), 16).block_table(32, 32, 16, 16, 2), "heads"),
    (lambda: BlockSparseMask(np.ones((2, 2), bool), 32).block_table(64, 64, 64, 32), "block sizes"),
])
def test_bad_masks_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()
