"""Block tables: the tiles a kernel visits, built on the host from a mask's tile states.

Kept apart from the masks (`masks.py` says what a query may see; this says which tiles
a kernel walks and in what order), as splash attention keeps its mask info apart from
its masks. Tables are cached per (mask, shapes): masks are hashable and tables read-only.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from pallas_kernels.masks import (
    EMPTY,
    FULL,
    PARTIAL,
    Mask,
    _check_int,
    _check_lengths,
    _Combined,
    _Tiling,
)

# Elements evaluated at once when deciding a combined mask's partial tiles on the host.
_CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True, eq=False)
class BlockTable:
  """Which tiles a kernel visits. `H'` is 1 for head-independent masks.

  Forward / dq pass, per query block:
    kv_index   int32 [H', nqb, max_kv_visits]     key blocks to visit (padded with the last valid one)
    kv_count   int32 [H', nqb]                    how many entries of kv_index are real
    kv_partial bool  [H', nqb, max_kv_visits]     the tile needs element masking
    kv_cells   int32 [H', nqb, max_kv_visits, W]  the tile's layout cells, as `Mask.tile_allowed`
                                                  reads them (W = max(1, mask.cell_words(tile)))
  dk/dv pass, per key block: q_index, q_count, q_partial, q_cells, likewise (the same tiles).
  """

  q_len: int
  kv_len: int
  block_q: int
  block_k: int
  kv_index: np.ndarray
  kv_count: np.ndarray
  kv_partial: np.ndarray
  kv_cells: np.ndarray
  q_index: np.ndarray
  q_count: np.ndarray
  q_partial: np.ndarray
  q_cells: np.ndarray

  @property
  def num_q_blocks(self) -> int:
    return self.kv_count.shape[1]

  @property
  def num_kv_blocks(self) -> int:
    return self.q_count.shape[1]

  @property
  def any_partial(self) -> bool:
    return bool(self.kv_partial.any())

  @property
  def num_visits(self) -> int:
    return int(self.kv_count.sum())


def _compress(states: np.ndarray, cells: np.ndarray, fill: int):
  """Per row of `states [H, R, C]`: the visited columns, padded; their flags and cell words."""
  visited = states != EMPTY
  count = visited.sum(axis=-1).astype(np.int32)
  width = max(1, int(count.max(initial=0)))
  # Stable sort puts visited columns first, in increasing order.
  order = np.argsort(~visited, axis=-1, kind="stable")[..., :width].astype(np.int32)
  valid = np.arange(width) < count[..., None]
  last = np.take_along_axis(order, np.maximum(count - 1, 0)[..., None], axis=-1)
  last = np.where(count[..., None] > 0, last, fill)
  index = np.where(valid, order, last).astype(np.int32)
  partial = np.take_along_axis(states, index, axis=-1) == PARTIAL
  tile_cells = np.take_along_axis(cells, index[..., None], axis=-2).astype(np.int32)
  return index, count, partial & valid, tile_cells


def _cell_words(mask: Mask, tiling: _Tiling, heads: int) -> np.ndarray:
  """int32 `[heads, nqb, nkb, W]`: every leaf's words, in `layout_leaves()` order.

  A mask without layout gets one zero word, so the array is never empty.
  """
  shape = (heads, tiling.num_q_blocks, tiling.num_kv_blocks)
  words = [
      np.broadcast_to(words, shape + words.shape[-1:])
      for words in (leaf.tile_cell_words(tiling) for leaf in mask.layout_leaves())
  ]
  return np.concatenate(words, axis=-1) if words else np.zeros(shape + (1,), np.int32)


def _decide_partial_tiles(mask: Mask, tiling: _Tiling, states: np.ndarray, cells: np.ndarray):
  """`states` with each partial tile of a combination decided element by element.

  Joining tile states is exact for leaves but not for `a & b` of two partial
  tiles (it may allow nothing) or `a | b` of two (it may allow everything), so
  such tiles are evaluated on their real positions: never visit an empty tile,
  never mask a full one.
  """
  states = np.array(np.broadcast_to(states, cells.shape[:-1]))
  heads, q_blocks, kv_blocks = np.nonzero(states == PARTIAL)
  tile = (tiling.block_q, tiling.block_k)
  rows = max(1, _CHUNK_ELEMENTS // (tiling.block_q * tiling.block_k))
  for start in range(0, len(heads), rows):
    part = slice(start, start + rows)
    q_pos = q_blocks[part, None, None] * tiling.block_q + np.arange(tiling.block_q)[:, None]
    kv_pos = kv_blocks[part, None, None] * tiling.block_k + np.arange(tiling.block_k)[None, :]
    words = cells[heads[part], q_blocks[part], kv_blocks[part]].T[:, :, None, None]  # [W, n, 1, 1]
    allowed = mask.tile_allowed(q_pos, kv_pos, words, tile, xp=np)
    real = (q_pos < tiling.q_len) & (kv_pos < tiling.kv_len)
    full = (allowed | ~real).all(axis=(1, 2))
    some = (allowed & real).any(axis=(1, 2))
    decided = np.where(full, FULL, np.where(some, PARTIAL, EMPTY))
    states[heads[part], q_blocks[part], kv_blocks[part]] = decided
  return states


def _readonly(*arrays):
  for array in arrays:
    array.setflags(write=False)
  return arrays


@functools.lru_cache(maxsize=512)
def block_table(
    mask: Mask, q_len: int, kv_len: int, block_q: int, block_k: int, num_heads: int = 1
) -> BlockTable:
  """The tiles kernels visit, forward (per query block) and transposed (per key block)."""
  _check_lengths(q_len, kv_len)
  _check_int(block_q, "block_q", 1)
  _check_int(block_k, "block_k", 1)
  mask.validate(q_len, kv_len, num_heads)
  tiling = _Tiling(q_len, kv_len, block_q, block_k, num_heads)
  states = mask._tile_states(tiling)
  heads = states.shape[0]
  cells = _cell_words(mask, tiling, heads)
  if isinstance(mask, _Combined):
    states = _decide_partial_tiles(mask, tiling, states, cells)
  # Rows with nothing to visit still need a safe index to pad with: one that
  # some row visits, so padded loads never touch a block no one reads.
  visited_kv = np.flatnonzero((states != EMPTY).any(axis=(0, 1)))
  visited_q = np.flatnonzero((states != EMPTY).any(axis=(0, 2)))
  kv = _compress(states, cells, int(visited_kv[0]) if visited_kv.size else 0)
  q = _compress(
      states.transpose(0, 2, 1),
      cells.transpose(0, 2, 1, 3),
      int(visited_q[0]) if visited_q.size else 0,
  )
  return BlockTable(q_len, kv_len, block_q, block_k, *_readonly(*kv), *_readonly(*q))


def visited_fraction(
    mask: Mask, q_len: int, kv_len: int, block_q: int, block_k: int, num_heads: int = 1
) -> float:
  """Fraction of `block_q x block_k` tiles a kernel visits: its cost relative to dense."""
  table = block_table(mask, q_len, kv_len, block_q, block_k, num_heads)
  return float(table.kv_count.sum()) / (table.kv_count.size * table.num_kv_blocks)
