"""JAX's TPU splash-attention kernel behind the jxr `attention` contract.

`jax.experimental.pallas.ops.tpu.splash_attention` differs from our contract
in five ways, and this module bridges each:

- **Masks.** Splash takes its own mask objects for one `[H, Lq, Lk]` problem
  and builds its block metadata from them on the host. `splash_mask` maps ours
  onto them head by head: `DenseMask` -> `FullMask`, `LocalMask(left, right)`
  -> `LocalMask(window_size=(left, right), offset=0)` (inclusive on both sides,
  as ours; computed in-kernel when it is the only mask), block-sparse layouts
  -> `_LayoutMask` (lazy: splash slices it one tile at a time, so no `Lq x Lk`
  array is ever built), `&` / `|` -> `LogicalAnd` / `LogicalOr`, all wrapped in
  a `MultiHeadMask`.
- **Block multiples.** Splash tiles are multiples of 128 and must divide the
  lengths, so q, k and v are zero-padded (`SplashTiling`).
- **Padding, `kv_lengths` and packed segments** all become splash segment ids
  (`splash_segment_ids`): keys past `kv_lengths` or in the padding get id -1,
  which no query has.
- **Scale.** Splash applies no softmax scale: q is scaled here.
- **Rows with no allowed key.** Splash starts each row's running max at a
  finite mask value, so a row whose visited keys are all masked would average
  them, and a query block with no key block to visit would divide by zero. A
  per-head attention sink with logit `_SINK_LOGIT` fixes both: it sits above
  the mask value and far below any real logit, so it takes the whole softmax
  weight of a row with no allowed key (output 0, gradients 0: its value is
  zero) and none of any other row (`exp(-1e30 - m) == 0` in float32).

The batch is vmapped over splash's unbatched `[H, S, D]` kernel. Splash has
its own custom VJP, so the result is differentiable in q, k and v. Off TPU the
kernel runs in interpret mode (slow: for tests only).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib

from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.masks import (
    AndMask,
    BlockSparseMask,
    BlockSparsePattern,
    DenseMask,
    LocalMask,
    Mask,
    OrMask,
)

# Splash tiles are multiples of the TPU lane width.
LANES = 128
# Candidate tile sizes, largest first: big tiles amortise per-step overhead.
_TILE_CHOICES = (512, 256, 128)
# Logit of the per-head attention sink: above splash's mask value (-0.7 * float32 max),
# and so far below any real logit that it vanishes from rows with an allowed key.
_SINK_LOGIT = -1e30
# Segment id of keys no query may see (padding, positions >= kv_lengths).
_NO_SEGMENT = -1


@dataclasses.dataclass(frozen=True)
class SplashTiling:
  """Padded lengths and splash tiles: each tile a multiple of 128 that divides its padded length."""

  q_len: int
  kv_len: int
  block_q: int
  block_kv: int

  @classmethod
  def fit(cls, q_len: int, kv_len: int) -> SplashTiling:
    """Pads each length to a multiple of 128 and takes the largest tile dividing it (<= 512)."""
    q_padded, kv_padded = _round_up(q_len, LANES), _round_up(kv_len, LANES)
    return cls(q_padded, kv_padded, _largest_tile(q_padded), _largest_tile(kv_padded))

  def block_sizes(self) -> splash_lib.BlockSizes:
    return splash_lib.BlockSizes(
        block_q=self.block_q,
        block_kv=self.block_kv,
        block_kv_compute=self.block_kv,
        block_q_dkv=self.block_q,
        block_kv_dkv=self.block_kv,
        block_kv_dkv_compute=self.block_kv,
        block_q_dq=self.block_q,
        block_kv_dq=self.block_kv,
    )


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _largest_tile(padded_len: int) -> int:
  return next(tile for tile in _TILE_CHOICES if padded_len % tile == 0)


# -- Masks. ------------------------------------------------------------------------


class _LayoutMask(splash_lib.Mask):
  """One head's block layout, expanded to elements only for the slices splash asks for.

  Positions past the layout's last block (splash's padding) are masked.
  """

  def __init__(self, layout: np.ndarray, block_q: int, block_k: int, shape: tuple[int, int]):
    # A False row and column past the end stand for every position beyond the layout.
    self._layout = np.pad(np.asarray(layout, bool), ((0, 1), (0, 1)))
    self._layout.setflags(write=False)
    self._blocks = (block_q, block_k)
    self._shape = shape
    self._hash = hash((self._blocks, shape, self._layout.shape, self._layout.tobytes()))

  @property
  def shape(self) -> tuple[int, int]:
    return self._shape

  def __getitem__(self, index) -> np.ndarray:
    rows, cols = index
    if not isinstance(rows, slice) or not isinstance(cols, slice):
      raise NotImplementedError(f"_LayoutMask supports slices only, got {index}")
    q_cells, q_counts = self._cell_runs(rows, 0)
    kv_cells, kv_counts = self._cell_runs(cols, 1)
    cells = self._layout[np.ix_(q_cells, kv_cells)]
    if cells.size == 1:  # the usual case: a splash tile inside one layout cell
      return np.broadcast_to(cells, (int(q_counts[0]), int(kv_counts[0])))
    return np.repeat(np.repeat(cells, q_counts, axis=0), kv_counts, axis=1)

  def _cell_runs(self, positions: slice, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The layout cells a slice crosses along `axis`, and how many positions fall in each."""
    start, stop, _ = positions.indices(self._shape[axis])
    block = self._blocks[axis]
    if stop <= start:
      return np.zeros(1, np.int64), np.zeros(1, np.int64)
    first, last = start // block, (stop - 1) // block
    edges = np.clip(np.arange(first, last + 2) * block, start, stop)
    cells = np.minimum(np.arange(first, last + 1), self._layout.shape[axis] - 1)
    return cells, np.diff(edges)

  def __eq__(self, other) -> bool:
    return (
        isinstance(other, _LayoutMask)
        and self._hash == other._hash
        and self._blocks == other._blocks
        and self._shape == other._shape
        and np.array_equal(self._layout, other._layout)
    )

  def __hash__(self) -> int:
    return self._hash


def splash_mask(
    mask: Mask, q_len: int, kv_len: int, num_heads: int, tiling: SplashTiling
) -> splash_lib.MultiHeadMask:
  """Our mask as splash's `MultiHeadMask` over the padded `[H, tiling.q_len, tiling.kv_len]` problem.

  Inside the real `q_len x kv_len` region it allows exactly what `mask` allows.
  Outside it the values do not matter (padded keys are cut by segment ids,
  padded queries are dropped), so local windows simply run on.
  """
  shape = (tiling.q_len, tiling.kv_len)
  if not mask.per_head:
    head_mask = _head_mask(mask, 0, q_len, kv_len, num_heads, shape)
    return splash_lib.MultiHeadMask([head_mask] * num_heads)
  return splash_lib.MultiHeadMask(
      [_head_mask(mask, head, q_len, kv_len, num_heads, shape) for head in range(num_heads)]
  )


def _head_mask(
    mask: Mask, head: int, q_len: int, kv_len: int, num_heads: int, shape: tuple[int, int]
) -> splash_lib.Mask:
  if isinstance(mask, DenseMask) or (
      isinstance(mask, LocalMask) and mask.left is None and mask.right is None
  ):
    return splash_lib.FullMask(shape)
  if isinstance(mask, LocalMask):
    return splash_lib.LocalMask(shape, window_size=(mask.left, mask.right), offset=0)
  if isinstance(mask, (BlockSparseMask, BlockSparsePattern)):
    layout = mask.layout(q_len, kv_len, num_heads)
    return _LayoutMask(
        layout[head if layout.shape[0] > 1 else 0], mask.block_q, mask.block_k, shape
    )
  if isinstance(mask, (AndMask, OrMask)):
    left = _head_mask(mask.left, head, q_len, kv_len, num_heads, shape)
    right = _head_mask(mask.right, head, q_len, kv_len, num_heads, shape)
    return left & right if isinstance(mask, AndMask) else left | right
  raise ValueError(f"mask: the splash implementation does not support {type(mask).__name__}")


@functools.lru_cache(maxsize=64)
def _splash_kernel(
    mask: Mask, q_len: int, kv_len: int, num_heads: int, tiling: SplashTiling, interpret: bool
) -> splash_lib.splash_attention_kernel.SplashAttentionKernel:
  """Builds (on the host, once per shape) splash's kernel and its block metadata."""
  # The kernel keeps its block metadata as arrays; make them concrete even when
  # first built under a trace, so the cached kernel never holds a tracer.
  with jax.ensure_compile_time_eval():
    return splash_lib.make_splash_mha(
        splash_mask(mask, q_len, kv_len, num_heads, tiling),
        block_sizes=tiling.block_sizes(),
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


# -- Segment ids. ------------------------------------------------------------------


def splash_segment_ids(
    kv_lengths: jax.Array,
    q_segment_ids: jax.Array | None,
    kv_segment_ids: jax.Array | None,
    q_len: int,
    kv_len: int,
    tiling: SplashTiling,
) -> tuple[jax.Array, jax.Array]:
  """int32 `[B, tiling.q_len]`, `[B, tiling.kv_len]`: padding, lengths and segments as splash segment ids.

  Query `i` may see key `j` exactly when the ids are equal. User ids are
  replaced by their rank among the query ids (so any int32 values work); keys
  of a segment no query has, keys past `kv_lengths` and padded keys get -1.
  """
  batch = kv_lengths.shape[0]
  if q_segment_ids is None:
    q_ids = jnp.zeros((batch, q_len), jnp.int32)
    kv_ids = jnp.zeros((batch, kv_len), jnp.int32)
  else:
    q_ids, kv_ids = jax.vmap(_rank_segments)(
        jnp.asarray(q_segment_ids), jnp.asarray(kv_segment_ids)
    )
  kv_ids = jnp.where(jnp.arange(kv_len)[None, :] < kv_lengths[:, None], kv_ids, _NO_SEGMENT)
  q_ids = jnp.pad(q_ids, ((0, 0), (0, tiling.q_len - q_len)))
  kv_ids = jnp.pad(kv_ids, ((0, 0), (0, tiling.kv_len - kv_len)), constant_values=_NO_SEGMENT)
  return q_ids, kv_ids


def _rank_segments(q_ids: jax.Array, kv_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Ids as the index of their first occurrence among the sorted query ids; -1 for keys no query shares."""
  sorted_q = jnp.sort(q_ids)
  q_rank = jnp.searchsorted(sorted_q, q_ids)
  kv_rank = jnp.minimum(jnp.searchsorted(sorted_q, kv_ids), q_ids.shape[0] - 1)
  kv_rank = jnp.where(sorted_q[kv_rank] == kv_ids, kv_rank, _NO_SEGMENT)
  return q_rank.astype(jnp.int32), kv_rank.astype(jnp.int32)


# -- Attention. --------------------------------------------------------------------


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: Mask,
    *,
    kv_lengths: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    scale: float,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:
  """Masked attention through splash for `[B, L, H, D]` inputs; see the module docstring.

  Inputs are validated by `pallas_kernels.attention`. `kv_lengths` is int32
  `[B]` clipped to `Lk`, or None (no padding). `block_sizes` (tiles of the GPU
  kernel) is ignored: splash gets its own tiles, multiples of 128
  (`SplashTiling.fit`). Off TPU the kernel always runs interpreted.
  """
  del block_sizes
  batch, q_len, num_heads, head_dim = q.shape
  kv_len = k.shape[1]
  interpret = bool(interpret) or jax.default_backend() != "tpu"
  tiling = SplashTiling.fit(q_len, kv_len)
  kernel = _splash_kernel(mask, q_len, kv_len, num_heads, tiling, interpret)
  if kv_lengths is None and q_segment_ids is None and tiling.kv_len == kv_len:
    # Nothing to cut: let splash skip its segment comparison.
    segment_ids = None
  else:
    if kv_lengths is None:
      kv_lengths = jnp.full((batch,), kv_len, jnp.int32)
    q_ids, kv_ids = splash_segment_ids(
        jnp.asarray(kv_lengths, jnp.int32), q_segment_ids, kv_segment_ids, q_len, kv_len, tiling
    )
    segment_ids = splash_lib.SegmentIds(q=q_ids, kv=kv_ids)
  sinks = jnp.full((num_heads,), _SINK_LOGIT, jnp.float32)

  def heads_major(x: jax.Array, padded_len: int) -> jax.Array:
    x = jnp.pad(x, ((0, 0), (0, padded_len - x.shape[1]), (0, 0), (0, 0)))
    return x.transpose(0, 2, 1, 3)  # [B, H, S, D], splash's layout per batch element

  def one_example(q, k, v, segment_ids):
    return kernel(q, k, v, segment_ids=segment_ids, sinks=sinks)

  # Splash applies no softmax scale; scale in float32 so bfloat16 q is rounded once.
  scaled_q = (q.astype(jnp.float32) * scale).astype(q.dtype)
  out = jax.vmap(one_example)(
      heads_major(scaled_q, tiling.q_len),
      heads_major(k, tiling.kv_len),
      heads_major(v, tiling.kv_len),
      segment_ids,
  )
  return out[:, :, :q_len].transpose(0, 2, 1, 3).astype(q.dtype)
