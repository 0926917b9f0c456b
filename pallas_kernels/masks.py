"""Attention masks as data: what each query may see.

A mask is a frozen, hashable description, never an `Lq x Lk` array. Kernels tile
the score matrix into `block_q x block_k` tiles; on the host, a mask tells which
tiles are empty, partial or full (`_tile_states`, which `block_table.py` turns
into the tables kernels walk). Inside a tile, `tile_allowed` evaluates the exact predicate from
iota positions with `jnp` ops, so the same code serves the Pallas kernel and the
blocked XLA path.

Block-sparse layouts are constant over their cells, and kernel tiles nest with
them along each axis: a tile lies inside one cell, or spans whole cells (at most
`MAX_CELLS_PER_TILE` per axis). A tile is visited when any cell it spans is
active, and is partial when some but not all are. The cells' values travel in
the table (`kv_cells`): per layout leaf, one int32 word per row of cells the tile
spans, bit `c` for its `c`-th column of cells; `tile_allowed` reads them back.

Formulas (head `h`, query `i`, key `j`):
  DenseMask()                    true
  LocalMask(left, right)         (left is None or j >= i - left) and (right is None or j <= i + right)
  BlockSparseMask(layout, bq, bk) layout[h, i // bq, j // bk]
  BlockSparseMask.pattern(b, local=w, global_=g, random=r, seed=s, per_head=p)
                                 with qb = i // b, kb = j // b, h' = h if p else 0:
                                 |qb - kb| <= w or qb < g or kb < g or u(s, h', qb, kb) < r
  a & b, a | b                   logical and / or

`u` is a uniform in [0, 1) hashed from its four integers (`_uniforms`), so a
pattern's block `(qb, kb)` does not depend on how long the padded sequence is.
`attended_fraction` and `random_for_density` relate a pattern's `random` to the
fraction of real-token pairs it attends over a set of sequence lengths.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import numbers
import operator
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

# Tile states in block tables.
EMPTY, PARTIAL, FULL = 0, 1, 2
# Layout cells one tile may span along an axis: a row of cells is one int32 word.
MAX_CELLS_PER_TILE = 32


class Mask(abc.ABC):
  """Base of all masks: combinable with `&` and `|`."""

  def __and__(self, other: Mask) -> Mask:
    return AndMask(_check_mask(self, "left operand of &"), _check_mask(other, "right operand of &"))

  def __or__(self, other: Mask) -> Mask:
    return OrMask(_check_mask(self, "left operand of |"), _check_mask(other, "right operand of |"))

  # -- What subclasses define. ------------------------------------------------

  def dense(self, q_len: int, kv_len: int, num_heads: int = 1) -> np.ndarray:
    """The explicit mask, bool `[H', q_len, kv_len]` (`H'` is 1 when head-independent).

    For references and tests only: it is quadratic in the length.
    """
    _check_lengths(q_len, kv_len)
    self.validate(q_len, kv_len, num_heads)
    return self._dense_at(
        np.arange(q_len)[:, None], np.arange(kv_len)[None, :], q_len, kv_len, num_heads
    )

  @abc.abstractmethod
  def _dense_at(self, q_pos, kv_pos, q_len: int, kv_len: int, num_heads: int) -> np.ndarray:
    """The mask at positions `q_pos [r, 1]`, `kv_pos [1, c]` of a `q_len x kv_len` problem."""

  @abc.abstractmethod
  def _tile_states(self, tiling: _Tiling) -> np.ndarray:
    """int8 `[H', nqb, nkb]` of EMPTY / PARTIAL / FULL for the kernel tiles."""

  @abc.abstractmethod
  def _tile_allowed(self, q_pos, kv_pos, cells, word: int, tile, xp) -> tuple[Any, int]:
    """The element predicate on a tile; returns it and the next leaf's first word in `cells`."""

  def layout_leaves(self) -> tuple[BlockSparseMask | BlockSparsePattern, ...]:
    """The block-sparse parts of this mask, in the order of their words in `kv_cells`."""
    return ()

  def cell_words(self, block_q: int, block_k: int) -> int:
    """How many int32 words describe a `block_q x block_k` tile's layout cells (see `tile_allowed`)."""
    return sum(leaf.cells_per_tile(block_q, block_k)[0] for leaf in self.layout_leaves())

  @property
  def per_head(self) -> bool:
    return any(leaf.per_head for leaf in self.layout_leaves())

  def validate(self, q_len: int, kv_len: int, num_heads: int) -> None:
    """Raises ValueError if the mask cannot apply to these shapes."""
    for leaf in self.layout_leaves():
      leaf.validate(q_len, kv_len, num_heads)

  # -- Derived. -----------------------------------------------------------------

  def tile_allowed(self, q_pos, kv_pos, cells, tile: tuple[int, int], xp=jnp):
    """bool array broadcast from `q_pos [bq, 1]` and `kv_pos [1, bk]` (absolute positions).

    The positions lie in one `tile = (block_q, block_k)` tile of the kernel's
    grid. `cells` is the tile's `kv_cells` entry: a sequence of
    `cell_words(*tile)` int32 values (scalars, or arrays that broadcast with the
    positions); per layout leaf, word `r` holds the leaf's cells in the tile's
    `r`-th row of cells, bit `c` its `c`-th column. `xp` is `jnp` inside
    kernels, `np` on the host.
    """
    allowed, _ = self._tile_allowed(q_pos, kv_pos, cells, 0, tile, xp)
    return allowed

  def density(self, q_len: int, kv_len: int, num_heads: int = 1) -> float:
    """Fraction of query-key pairs this mask allows (averaged over heads).

    Exact, computed a block of rows at a time, so memory stays O(kv_len).
    """
    _check_lengths(q_len, kv_len)
    self.validate(q_len, kv_len, num_heads)
    kv_pos = np.arange(kv_len)[None, :]
    rows = max(1, (1 << 22) // kv_len)
    allowed, heads = 0, 1
    for start in range(0, q_len, rows):
      q_pos = np.arange(start, min(q_len, start + rows))[:, None]
      chunk = self._dense_at(q_pos, kv_pos, q_len, kv_len, num_heads)
      allowed, heads = allowed + int(chunk.sum(dtype=np.int64)), chunk.shape[0]
    return allowed / (heads * q_len * kv_len)


def _check_mask(mask: Any, what: str) -> Mask:
  if not isinstance(mask, Mask):
    raise ValueError(f"{what}: expected a Mask, got {type(mask).__name__}")
  return mask


def _check_lengths(q_len: int, kv_len: int) -> None:
  for name, n in (("q_len", q_len), ("kv_len", kv_len)):
    if not isinstance(n, (int, np.integer)) or n < 1:
      raise ValueError(f"{name}: expected a positive int, got {n!r}")


# -- Tiling geometry. --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tiling:
  q_len: int
  kv_len: int
  block_q: int
  block_k: int
  num_heads: int

  @property
  def num_q_blocks(self) -> int:
    return -(-self.q_len // self.block_q)

  @property
  def num_kv_blocks(self) -> int:
    return -(-self.kv_len // self.block_k)

  def q_range(self) -> tuple[np.ndarray, np.ndarray]:
    """First and last real query position of each query block, `[nqb, 1]`."""
    start = np.arange(self.num_q_blocks) * self.block_q
    return start[:, None], np.minimum(start + self.block_q, self.q_len)[:, None] - 1

  def kv_range(self) -> tuple[np.ndarray, np.ndarray]:
    """First and last real key position of each key block, `[1, nkb]`."""
    start = np.arange(self.num_kv_blocks) * self.block_k
    return start[None, :], np.minimum(start + self.block_k, self.kv_len)[None, :] - 1


# -- Leaves. -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DenseMask(Mask):
  """Every query sees every key."""

  def _dense_at(self, q_pos, kv_pos, q_len, kv_len, num_heads):
    return np.ones((1,) + np.broadcast_shapes(q_pos.shape, kv_pos.shape), bool)

  def _tile_states(self, tiling):
    return np.full((1, tiling.num_q_blocks, tiling.num_kv_blocks), FULL, np.int8)

  def _tile_allowed(self, q_pos, kv_pos, cells, word, tile, xp):
    return xp.full(np.broadcast_shapes(q_pos.shape, kv_pos.shape), True), word


@dataclasses.dataclass(frozen=True)
class LocalMask(Mask):
  """Query `i` sees keys `i - left ..= i + right`; `None` leaves a side unbounded.

  `LocalMask(w, w)` is a symmetric window of `2w + 1` keys.
  """

  left: int | None
  right: int | None

  def __post_init__(self):
    for name in ("left", "right"):
      value = getattr(self, name)
      if value is not None:
        object.__setattr__(self, name, _check_int(value, f"LocalMask.{name} (or None)", 0))

  def _dense_at(self, q_pos, kv_pos, q_len, kv_len, num_heads):
    return self._allowed(q_pos, kv_pos, np)[None]

  def _allowed(self, q_pos, kv_pos, xp):
    shape = np.broadcast_shapes(q_pos.shape, kv_pos.shape)
    left_ok = True if self.left is None else kv_pos >= q_pos - self.left
    right_ok = True if self.right is None else kv_pos <= q_pos + self.right
    return xp.broadcast_to(xp.logical_and(left_ok, right_ok), shape)

  def _tile_states(self, tiling):
    # Over a tile, d = j - i spans [k_first - q_last, k_last - q_first]; the tile is
    # full when that span lies inside [-left, right], empty when it misses it.
    q_first, q_last = tiling.q_range()
    k_first, k_last = tiling.kv_range()
    d_min, d_max = k_first - q_last, k_last - q_first
    lo = -np.inf if self.left is None else -self.left
    hi = np.inf if self.right is None else self.right
    full = (d_min >= lo) & (d_max <= hi)
    empty = (d_max < lo) | (d_min > hi)
    states = np.where(full, FULL, np.where(empty, EMPTY, PARTIAL)).astype(np.int8)
    return states[None]

  def _tile_allowed(self, q_pos, kv_pos, cells, word, tile, xp):
    return self._allowed(q_pos, kv_pos, xp), word


def _as_layout(layout: Any) -> np.ndarray:
  array = np.asarray(layout)
  if array.ndim not in (2, 3) or array.size == 0:
    raise ValueError(
        f"BlockSparseMask.layout: expected a non-empty bool array [nqb, nkb] or [H, nqb, nkb], "
        f"got shape {array.shape}"
    )
  if array.dtype != bool:
    if not np.all((array == 0) | (array == 1)):
      raise ValueError("BlockSparseMask.layout: expected booleans (or 0/1)")
    array = array.astype(bool)
  array = np.array(array, copy=True)
  array.setflags(write=False)
  return array


def _check_int(value: Any, name: str, minimum: int) -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
  return int(value)


class _LayoutLeaf(Mask):
  """A mask constant on `block_q x block_k` cells, given by a layout per shape."""

  block_q: int
  block_k: int

  @abc.abstractmethod
  def layout(self, q_len: int, kv_len: int, num_heads: int = 1) -> np.ndarray:
    """bool `[H', ceil(q_len / block_q), ceil(kv_len / block_k)]`."""

  def layout_leaves(self):
    return (self,)

  def validate(self, q_len, kv_len, num_heads):
    del q_len, kv_len, num_heads  # a recipe fits any shape

  def _dense_at(self, q_pos, kv_pos, q_len, kv_len, num_heads):
    layout = self.layout(q_len, kv_len, num_heads)
    return layout[:, q_pos // self.block_q, kv_pos // self.block_k]

  def cells_per_tile(self, block_q: int, block_k: int) -> tuple[int, int]:
    """How many of this leaf's cells a `block_q x block_k` tile spans: `(rows, columns)`.

    Raises ValueError unless tiles and cells nest along each axis (one divides the
    other) and a tile spans at most `MAX_CELLS_PER_TILE` cells per axis.
    """

    def span(tile: int, cell: int, name: str) -> int:
      if tile % cell and cell % tile:
        raise ValueError(
            f"block sizes: kernel tile {name}={tile} and the layout cell {cell} of "
            f"{type(self).__name__} must nest (one divides the other)"
        )
      if tile // cell > MAX_CELLS_PER_TILE:
        raise ValueError(
            f"block sizes: kernel tile {name}={tile} spans {tile // cell} layout cells of "
            f"{cell}; at most {MAX_CELLS_PER_TILE} are supported"
        )
      return max(1, tile // cell)

    return span(block_q, self.block_q, "block_q"), span(block_k, self.block_k, "block_k")

  def _tile_states(self, tiling):
    return _leaf_cells(self, tiling)[0]

  def tile_cell_words(self, tiling: _Tiling) -> np.ndarray:
    """int32 `[H', nqb, nkb, rows]`: per tile, its rows of cells as words (see `tile_allowed`)."""
    return _leaf_cells(self, tiling)[1]

  def _tile_allowed(self, q_pos, kv_pos, cells, word, tile, xp):
    rows, columns = self.cells_per_tile(*tile)
    value = cells[word]
    if rows > 1:  # pick each query's row of cells; positions are absolute, tiles aligned
      row = (q_pos % tile[0]) // self.block_q
      for r in range(1, rows):
        value = xp.where(row == r, cells[word + r], value)
    if columns > 1:
      value = value >> ((kv_pos % tile[1]) // self.block_k)
    on = (value & 1) == 1
    shape = np.broadcast_shapes(np.shape(on), q_pos.shape, kv_pos.shape)
    return xp.broadcast_to(on, shape), word + rows


def _fit_axis(array: np.ndarray, axis: int, size: int) -> np.ndarray:
  """`array` cut or padded with False to `size` along `axis`."""
  if array.shape[axis] >= size:
    return np.take(array, np.arange(size), axis=axis)
  pad = [(0, 0)] * array.ndim
  pad[axis] = (0, size - array.shape[axis])
  return np.pad(array, pad)


@functools.lru_cache(maxsize=256)
def _leaf_cells(leaf: _LayoutLeaf, tiling: _Tiling) -> tuple[np.ndarray, np.ndarray]:
  """A layout leaf on a tiling: tile states `[H', nqb, nkb]` and cell words `[H', nqb, nkb, rows]`."""
  rows, columns = leaf.cells_per_tile(tiling.block_q, tiling.block_k)
  layout = leaf.layout(tiling.q_len, tiling.kv_len, tiling.num_heads)
  # The layout on a grid of units, the finer of tile and cell along each axis,
  # covering the tiles exactly; a tile is then `rows x columns` units.
  unit_q, unit_k = min(tiling.block_q, leaf.block_q), min(tiling.block_k, leaf.block_k)
  units = layout.repeat(leaf.block_q // unit_q, axis=1).repeat(leaf.block_k // unit_k, axis=2)
  units = _fit_axis(units, 1, tiling.num_q_blocks * rows)
  units = _fit_axis(units, 2, tiling.num_kv_blocks * columns)
  heads = units.shape[0]
  on = units.reshape(heads, tiling.num_q_blocks, rows, tiling.num_kv_blocks, columns)
  # Units past the sequence's end are padding: they make no tile partial.
  real_q = (np.arange(tiling.num_q_blocks * rows) * unit_q < tiling.q_len).reshape(-1, rows)
  real_k = (np.arange(tiling.num_kv_blocks * columns) * unit_k < tiling.kv_len).reshape(-1, columns)
  real = real_q[:, :, None, None] & real_k[None, None, :, :]
  full = (on | ~real).all(axis=(2, 4))
  some = (on & real).any(axis=(2, 4))
  states = np.where(full, FULL, np.where(some, PARTIAL, EMPTY)).astype(np.int8)
  weights = np.uint64(1) << np.arange(columns, dtype=np.uint64)
  words = (on.astype(np.uint64) * weights).sum(axis=-1, dtype=np.uint64)  # [H', nqb, rows, nkb]
  words = words.astype(np.uint32).view(np.int32).transpose(0, 1, 3, 2)
  for array in (states, words):
    array.setflags(write=False)
  return states, words


@dataclasses.dataclass(frozen=True, eq=False)
class BlockSparseMask(_LayoutLeaf):
  """Query `i` sees key `j` when `layout[h, i // block_q, j // block_k]`.

  `layout` is bool `[nqb, nkb]` (all heads) or `[H, nqb, nkb]` (per head), and
  must cover the sequence exactly: `nqb = ceil(Lq / block_q)`, `nkb = ceil(Lk / block_k)`.
  """

  layout_array: np.ndarray
  block_q: int
  block_k: int

  def __init__(self, layout: Any, block_q: int, block_k: int | None = None):
    object.__setattr__(self, "layout_array", _as_layout(layout))
    object.__setattr__(self, "block_q", _check_int(block_q, "BlockSparseMask.block_q", 1))
    object.__setattr__(
        self,
        "block_k",
        _check_int(block_q if block_k is None else block_k, "BlockSparseMask.block_k", 1),
    )

  @staticmethod
  def pattern(
      block: int,
      *,
      local: int = 1,
      global_: int = 1,
      random: float = 0.0,
      seed: int = 0,
      per_head: bool = False,
  ) -> BlockSparsePattern:
    """BigBird's local + global + random blocks, as a recipe for any length.

    `random` is the fraction of the other blocks that are active; to aim at an
    overall density over real sequence lengths, use `random_for_density`.
    """
    return BlockSparsePattern(
        block=block, local=local, global_=global_, random=random, seed=seed, per_head=per_head
    )

  @property
  def per_head(self) -> bool:
    return self.layout_array.ndim == 3

  def __eq__(self, other):
    return (
        isinstance(other, BlockSparseMask)
        and (self.block_q, self.block_k) == (other.block_q, other.block_k)
        and self.layout_array.shape == other.layout_array.shape
        and bool(np.array_equal(self.layout_array, other.layout_array))
    )

  def __hash__(self):
    return hash((self.block_q, self.block_k, self.layout_array.shape, self.layout_array.tobytes()))

  def __repr__(self):
    shape = "x".join(map(str, self.layout_array.shape))
    active = self.layout_array.mean()
    return f"BlockSparseMask(layout=<{shape}, {active:.0%} active>, block_q={self.block_q}, block_k={self.block_k})"

  def validate(self, q_len, kv_len, num_heads):
    expected = (-(-q_len // self.block_q), -(-kv_len // self.block_k))
    got = self.layout_array.shape
    if got[-2:] != expected:
      raise ValueError(
          f"BlockSparseMask.layout: expected shape [..., {expected[0]}, {expected[1]}] for "
          f"Lq={q_len}, Lk={kv_len} and blocks ({self.block_q}, {self.block_k}), got {list(got)}"
      )
    if len(got) == 3 and got[0] != num_heads:
      raise ValueError(
          f"BlockSparseMask.layout: per-head layout has {got[0]} heads, the inputs have {num_heads}"
      )

  def layout(self, q_len, kv_len, num_heads=1):
    self.validate(q_len, kv_len, num_heads)
    layout = self.layout_array
    return layout if layout.ndim == 3 else layout[None]


@dataclasses.dataclass(frozen=True)
class BlockSparsePattern(_LayoutLeaf):
  """BigBird-style layout recipe: local band + global rows/columns + hashed random blocks.

  With blocks of size `block`, block `(qb, kb)` is active when `|qb - kb| <= local`,
  or `qb < global_` or `kb < global_`, or `u(seed, h, qb, kb) < random` (`h` is
  the head when `per_head`, else 0), where `u` is a deterministic uniform in
  [0, 1) hashed from the four integers. No block depends on the number of
  blocks, so a sequence sees the same blocks however far it is padded, and
  training (padded to the longest sequence) agrees with evaluation (padded to
  buckets): `layout(L2)[:, :n1, :n1] == layout(L1)` for `n1 = ceil(L1 / block)`.
  `random=0` is the band and global blocks alone, `random=1` every block.
  """

  block: int
  local: int = 1
  global_: int = 1
  random: float = 0.0
  seed: int = 0
  per_head: bool = False

  def __post_init__(self):
    _check_int(self.block, "BlockSparsePattern.block", 1)
    for name in ("local", "global_", "seed"):
      _check_int(getattr(self, name), f"BlockSparsePattern.{name}", 0)
    random = self.random
    if (
        not isinstance(random, numbers.Real)
        or isinstance(random, (bool, np.bool_))
        or not 0.0 <= float(random) <= 1.0
    ):
      raise ValueError(
          f"BlockSparseMask.pattern: random: expected a fraction in [0, 1] of the blocks "
          f"outside the band and global blocks, got {random!r}"
      )
    object.__setattr__(self, "random", float(random))
    if not isinstance(self.per_head, (bool, np.bool_)):
      raise ValueError(f"BlockSparsePattern.per_head: expected a bool, got {self.per_head!r}")
    object.__setattr__(self, "per_head", bool(self.per_head))

  @property
  def block_q(self) -> int:
    return self.block

  @property
  def block_k(self) -> int:
    return self.block

  def layout(self, q_len, kv_len, num_heads=1):
    return _pattern_layout(
        self, -(-q_len // self.block), -(-kv_len // self.block), num_heads if self.per_head else 1
    )

  def _fixed(self, nqb: int, nkb: int) -> np.ndarray:
    """bool `[nqb, nkb]`: the band and global blocks, active whatever `random` is."""
    qb, kb = np.arange(nqb)[:, None], np.arange(nkb)[None, :]
    return (np.abs(qb - kb) <= self.local) | (qb < self.global_) | (kb < self.global_)


@functools.lru_cache(maxsize=256)
def _pattern_layout(pattern: BlockSparsePattern, nqb: int, nkb: int, heads: int) -> np.ndarray:
  layout = pattern._fixed(nqb, nkb)[None] | (
      _uniforms(pattern.seed, heads, nqb, nkb) < pattern.random
  )
  layout.setflags(write=False)
  return layout


_U64 = 0xFFFFFFFFFFFFFFFF


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's output function (Steele et al. 2014) on uint64 arrays, wrapping mod 2**64."""
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def _uniforms(seed: int, heads: int, nqb: int, nkb: int) -> np.ndarray:
  """float64 `[heads, nqb, nkb]`: `u(seed, h, qb, kb)` in [0, 1), a function of those four ints only.

  Chained SplitMix64, `mix(mix(mix(mix(seed) ^ h) ^ qb) ^ kb)`, top 53 bits, so
  values are exact multiples of 2**-53 and compare the same everywhere.
  """
  h = np.arange(heads, dtype=np.uint64)[:, None, None]
  qb = np.arange(nqb, dtype=np.uint64)[None, :, None]
  kb = np.arange(nkb, dtype=np.uint64)[None, None, :]
  x = _splitmix64(np.full((1, 1, 1), seed & _U64, np.uint64))
  x = _splitmix64(_splitmix64(_splitmix64(x ^ h) ^ qb) ^ kb)
  return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


# -- Densities over real sequence lengths. -------------------------------------------


def _check_sequence_lengths(lengths: Any) -> tuple[np.ndarray, np.ndarray]:
  """The distinct lengths and how often each occurs; ValueError unless positive ints."""
  array = np.asarray(lengths)
  if array.ndim != 1 or array.size == 0:
    raise ValueError(
        f"lengths: expected a non-empty list of sequence lengths, got shape {array.shape}"
    )
  if not np.issubdtype(array.dtype, np.integer) or array.min() < 1:
    raise ValueError(
        f"lengths: expected positive ints, got {array.dtype} with minimum {array.min()!r}"
    )
  return np.unique(array.astype(np.int64), return_counts=True)


def attended_fraction(mask: Mask, lengths: Sequence[int], num_heads: int = 1) -> float:
  """Allowed query-key pairs over all real-token pairs, summed over sequences of these lengths.

  Padding is never attended, so a sequence of `L` tokens contributes
  `mask.density(L, L, num_heads) * L**2` allowed pairs out of `L**2`: this is
  the cost a mask saves on real data, not on padded shapes. One density call
  per distinct length.
  """
  _check_mask(mask, "mask")
  _check_int(num_heads, "num_heads", 1)
  values, counts = _check_sequence_lengths(lengths)
  squares = values.astype(np.float64) ** 2
  allowed = sum(
      mask.density(int(n), int(n), num_heads) * sq * c for n, sq, c in zip(values, squares, counts)
  )
  return float(allowed / np.sum(counts * squares))


def random_for_density(
    density: float,
    lengths: Sequence[int],
    *,
    block: int,
    local: int = 1,
    global_: int = 1,
    seed: int = 0,
    per_head: bool = False,
    num_heads: int = 1,
) -> float:
  """The `random` of `BlockSparseMask.pattern` whose realised `attended_fraction` is closest to `density`.

  Over `lengths`, the attended fraction is a nondecreasing step function of
  `random` (a block turns on when its `u` falls below `random`), so this solves
  exactly: the free blocks inside the longest length, sorted by `u`, give every
  achievable fraction. Returns 0, 1, or a point strictly between two steps, so
  rounding cannot flip a block; on a tie the sparser side wins.

  Raises ValueError if the band and global blocks alone attend more than `density`.
  """
  if (
      not isinstance(density, numbers.Real)
      or isinstance(density, (bool, np.bool_))
      or not 0.0 < float(density) <= 1.0
  ):
    raise ValueError(f"density: expected a fraction in (0, 1], got {density!r}")
  density = float(density)
  pattern = BlockSparsePattern(
      block=block, local=local, global_=global_, random=0.0, seed=seed, per_head=per_head
  )
  _check_int(num_heads, "num_heads", 1)
  values, counts = _check_sequence_lengths(lengths)
  heads = num_heads if per_head else 1
  nb = -(-int(values.max()) // block)
  # Real pairs in block (qb, kb) summed over sequences: rows_L(qb) * rows_L(kb) * count_L,
  # with rows_L(b) = clip(L - b * block, 0, block); one matrix product over the distinct lengths.
  rows = np.clip(values[:, None] - np.arange(nb)[None, :] * block, 0, block).astype(np.float64)
  pairs = (rows * counts[:, None]).T @ rows  # [nb, nb], exact integers
  total = float(np.sum(counts * values.astype(np.float64) ** 2))
  fixed = pattern._fixed(nb, nb)
  floor = float(pairs[fixed].sum()) / total
  if floor > density + 1e-9:
    low, high = int(values.min()), int(values.max())
    span = f"length {low}" if low == high else f"lengths {low}..{high}"
    raise ValueError(
        f"density: requested {density}, but the band and global blocks alone attend {floor:.3f} of the "
        f"real-token pairs (block size {block}, band local={local}, {global_} global blocks, {span}); "
        f"lower the floor with fewer band or global blocks, or smaller blocks"
    )
  free = np.broadcast_to(~fixed & (pairs > 0), (heads, nb, nb))
  u = _uniforms(seed, heads, nb, nb)[free]
  weight = np.broadcast_to(pairs, (heads, nb, nb))[free] / heads
  order = np.argsort(u, kind="stable")
  u, weight = u[order], weight[order]
  # Steps at the distinct u values; achievable[k] is the fraction with the first k steps on.
  steps, first = np.unique(u, return_index=True)
  gained = np.add.reduceat(weight, first) if len(first) else np.zeros(0)
  achievable = (floor * total + np.concatenate([[0.0], np.cumsum(gained)])) / total
  k = int(np.searchsorted(achievable, density))  # achievable[k - 1] < density <= achievable[k]
  if k == len(achievable) or (k > 0 and density - achievable[k - 1] <= achievable[k] - density):
    k -= 1
  if k == 0:
    return 0.0
  if k == len(steps):
    return 1.0
  low, high = float(steps[k - 1]), float(steps[k])
  middle = low + (high - low) / 2
  return middle if low < middle < high else float(np.nextafter(low, 1.0))


# -- Combinations. -----------------------------------------------------------------


class _Combined(Mask):
  """Two masks joined element-wise by `_join`; tile states by `_join_states`."""

  left: Mask
  right: Mask

  @staticmethod
  @abc.abstractmethod
  def _join(a, b):
    """Combines two boolean arrays."""

  @staticmethod
  @abc.abstractmethod
  def _join_states(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Combines two tile-state arrays (EMPTY < PARTIAL < FULL)."""

  def _dense_at(self, q_pos, kv_pos, q_len, kv_len, num_heads):
    return self._join(
        self.left._dense_at(q_pos, kv_pos, q_len, kv_len, num_heads),
        self.right._dense_at(q_pos, kv_pos, q_len, kv_len, num_heads),
    )

  def layout_leaves(self):
    return self.left.layout_leaves() + self.right.layout_leaves()

  def _tile_states(self, tiling):
    return self._join_states(self.left._tile_states(tiling), self.right._tile_states(tiling))

  def _tile_allowed(self, q_pos, kv_pos, cells, word, tile, xp):
    a, word = self.left._tile_allowed(q_pos, kv_pos, cells, word, tile, xp)
    b, word = self.right._tile_allowed(q_pos, kv_pos, cells, word, tile, xp)
    return self._join(a, b), word


@dataclasses.dataclass(frozen=True)
class AndMask(_Combined):
  left: Mask
  right: Mask

  _join = staticmethod(operator.and_)
  # Empty if either side is, full if both are, else partial: the min of the states.
  _join_states = staticmethod(np.minimum)


@dataclasses.dataclass(frozen=True)
class OrMask(_Combined):
  left: Mask
  right: Mask

  _join = staticmethod(operator.or_)
  # Full if either side is, empty if both are, else partial: the max of the states.
  _join_states = staticmethod(np.maximum)
