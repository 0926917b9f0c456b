"""Block-sparse FlashAttention in Pallas: Triton on GPU, `interpret=True` anywhere.

Three kernels share one walk over the host block tables (`Mask.block_table`):

- forward, one program per (query block, batch, head): online softmax over the
  key blocks listed in `kv_index`; writes the output and the row logsumexp;
- dq, one program per (query block, batch, head), the same walk with its own tiles;
- dk/dv, one program per (key block, batch, head), walking the transposed
  table (`q_index`).

Each kernel runs on a flat grid and reads whole-array refs, slicing its own
(batch, head) and blocks: table rows much heavier than the mean (BigBird's
global rows and columns) launch first for every (batch, head), so none starts
last and runs alone at the end; the other rows follow, row fastest, so
programs that run together share their keys in L2.

Key blocks that a row does not list are never loaded. Element masking (the
mask's own predicate on partial tiles, padding past `kv_lengths`, segments)
runs under a `lax.cond`, so tiles that need none pay one scalar compare.

Scores live in base 2 (`s = q.k * scale * log2(e)`, `exp2`). A masked pair
scores `MASKED`, a large finite negative, so no `inf - inf` arises; a row whose
running max is still `MASKED` at the end has no allowed key: it outputs zeros
and stores `EMPTY_ROW_LSE`, which makes every backward probability exactly 0.

Sequence lengths are padded to a multiple of the largest tile, head dims to a
power of two (>= 16) with zeros. Padded keys lie past `kv_lengths` (masked);
padded queries get a zero cotangent, so they add nothing to dk/dv.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.block_sizes import MIN_TRITON_BLOCK, BlockSizes
from pallas_kernels.block_table import BlockTable, block_table
from pallas_kernels.masks import Mask

LOG2_E = math.log2(math.e)
# Score (log2 units) of a masked pair: far below any real score, yet finite.
MASKED = -1e30
# Logsumexp stored for a row with no allowed key: exp2(s - EMPTY_ROW_LSE) == 0.
EMPTY_ROW_LSE = 1e30


# -- Static configuration. ------------------------------------------------------


def check_block_sizes(block_sizes: BlockSizes) -> None:
  """Raises ValueError unless every tile is a power of two >= 16 (what Triton's dot needs)."""
  for name in ("block_q", "block_k", "block_q_dkv", "block_k_dkv", "block_q_dq", "block_k_dq"):
    value = getattr(block_sizes, name)
    if value < MIN_TRITON_BLOCK or value & (value - 1):
      raise ValueError(
          f"block_sizes: {name}={value}: the Pallas Triton kernel needs power-of-two tiles "
          f">= {MIN_TRITON_BLOCK} (a block-sparse layout block must be a multiple of 16 too); "
          f"got {block_sizes}"
      )
  if block_sizes.num_warps & (block_sizes.num_warps - 1) or block_sizes.num_warps > 32:
    raise ValueError(
        f"block_sizes: num_warps must be a power of two <= 32, got {block_sizes.num_warps}"
    )


@dataclasses.dataclass(frozen=True)
class _Problem:
  """Everything static about one call: shapes, mask, tiles. Hashable (a cache key)."""

  batch: int
  q_len: int
  kv_len: int
  num_heads: int
  head_dim: int
  dtype: str
  mask: Mask
  scale: float
  block_sizes: BlockSizes
  has_segments: bool
  interpret: bool

  @property
  def q_len_padded(self) -> int:
    return _round_up(self.q_len, max(self.block_sizes.q_blocks))

  @property
  def kv_len_padded(self) -> int:
    return _round_up(self.kv_len, max(self.block_sizes.k_blocks))

  @property
  def head_dim_padded(self) -> int:
    return max(MIN_TRITON_BLOCK, pl.next_power_of_2(self.head_dim))

  @property
  def precision(self):
    # Triton would run float32 dots in TF32 otherwise.
    return lax.Precision.HIGHEST if jnp.dtype(self.dtype) == jnp.float32 else None


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


# A row whose visit count is at least this multiple of the mean is "heavy"
# (a BigBird global row, say): such rows launch first, across all (batch,
# head), so none of them starts last and runs alone at the end of the grid.
HEAVY_ROW_FACTOR = 2.0


@dataclasses.dataclass(frozen=True)
class _Walk:
  """How a kernel walks one direction of a block table, and in what order its programs run."""

  block_q: int
  block_k: int
  rows: int  # table rows (query blocks, or key blocks for dk/dv), padding included
  heavy: int  # how many rows launch first (`order[:heavy]`); 0: plain row order
  per_head: bool  # one table row set per head (else shared by all heads)
  contiguous: bool  # every row's visited blocks are consecutive: index = first + step
  any_partial: bool  # some visited tile needs the mask's element predicate
  cell_words: int  # words per tile that tile_allowed reads (0: the mask has no layout)


@dataclasses.dataclass(frozen=True, eq=False)
class _Tables:
  """One direction of a block table, rows padded to the padded length (int32 numpy).

  `order` lists the rows in launch order: the heavy ones, heaviest first, then
  the rest in increasing order.
  """

  walk: _Walk
  index: np.ndarray
  count: np.ndarray
  partial: np.ndarray
  cells: np.ndarray
  order: np.ndarray

  def arrays(self) -> list[jax.Array]:
    return [jnp.asarray(a) for a in (self.index, self.count, self.partial, self.cells, self.order)]


def _launch_order(count: np.ndarray) -> tuple[np.ndarray, int]:
  """Rows in launch order, and how many of them are heavy (see HEAVY_ROW_FACTOR)."""
  weight = count.max(axis=0)
  heavy = weight >= HEAVY_ROW_FACTOR * max(weight.mean(), 1e-9)
  heavy_rows = np.flatnonzero(heavy)
  heavy_rows = heavy_rows[np.argsort(-weight[heavy_rows], kind="stable")]
  order = np.concatenate([heavy_rows, np.flatnonzero(~heavy)]).astype(np.int32)
  return order, len(heavy_rows)


def _tables(table: BlockTable, direction: str, rows: int, mask: Mask) -> _Tables:
  """The per-query-block (`"kv"`) or per-key-block (`"q"`) side of `table`, padded to `rows`."""
  index, count, partial, cells = (
      getattr(table, f"{direction}_{name}") for name in ("index", "count", "partial", "cells")
  )
  steps = np.arange(index.shape[-1])
  listed = steps < count[..., None]
  extra = rows - count.shape[1]  # fully padded blocks: nothing to visit

  def pad(a):
    a = np.asarray(a, np.int32)
    return np.pad(a, [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2)) if extra else a

  order, heavy = _launch_order(pad(count))
  walk = _Walk(
      block_q=table.block_q,
      block_k=table.block_k,
      rows=rows,
      heavy=heavy,
      per_head=index.shape[0] > 1,
      contiguous=bool(np.all(~listed | (index == index[..., :1] + steps))),
      any_partial=bool(partial.any()),
      cell_words=mask.cell_words(table.block_q, table.block_k),
  )
  return _Tables(walk, pad(index), pad(count), pad(partial), pad(cells), order)


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
  problem: _Problem
  forward: _Tables  # per query block, (block_q, block_k)
  dkv: _Tables  # per key block, (block_q_dkv, block_k_dkv)
  dq: _Tables  # per query block, (block_q_dq, block_k_dq)


def _plan(problem: _Problem) -> _Plan:
  p, bs = problem, problem.block_sizes

  def table(block_q, block_k):
    return block_table(p.mask, p.q_len, p.kv_len, block_q, block_k, p.num_heads)

  return _Plan(
      problem=p,
      forward=_tables(table(bs.block_q, bs.block_k), "kv", p.q_len_padded // bs.block_q, p.mask),
      dkv=_tables(
          table(bs.block_q_dkv, bs.block_k_dkv), "q", p.kv_len_padded // bs.block_k_dkv, p.mask
      ),
      dq=_tables(
          table(bs.block_q_dq, bs.block_k_dq), "kv", p.q_len_padded // bs.block_q_dq, p.mask
      ),
  )


# -- Pieces shared by the kernels. -----------------------------------------------


def _dot(a, b, precision, *, transpose_a: bool = False, transpose_b: bool = False):
  """`a @ b` (optionally transposed operands) with float32 accumulation."""
  dims = (((0 if transpose_a else 1,), (1 if transpose_b else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _program(walk: _Walk, order_ref, problem: _Problem):
  """`(row, b, h)` of this program of the flat grid.

  Programs `[0, heavy * B * H)` run the heavy rows for every (b, h); the rest
  run the other rows, row fastest, so programs that run together share their
  (b, h)'s keys in L2.
  """
  p = pl.program_id(0)
  batch_heads = problem.batch * problem.num_heads
  if walk.heavy:
    light_rows = walk.rows - walk.heavy
    split = walk.heavy * batch_heads
    in_heavy = p < split
    p_light = jnp.maximum(p - split, 0)
    rank = jnp.where(in_heavy, lax.div(p, batch_heads), walk.heavy + lax.rem(p_light, light_rows))
    bh = jnp.where(in_heavy, lax.rem(p, batch_heads), lax.div(p_light, light_rows))
    row = order_ref[rank]
  else:
    row, bh = lax.rem(p, walk.rows), lax.div(p, walk.rows)
  return row, lax.div(bh, problem.num_heads), lax.rem(bh, problem.num_heads)


class _Visits:
  """Reads one table row inside a kernel: how many tiles, and tile `step`'s block and flags."""

  def __init__(self, refs, walk: _Walk, head, row):
    self.index_ref, count_ref, self.partial_ref, self.cells_ref = refs
    self.walk = walk
    self.head = head if walk.per_head else 0
    self.row = row
    self.count = count_ref[self.head, row]
    self.first = self.index_ref[self.head, row, 0] if walk.contiguous else None

  def block(self, step):
    if self.walk.contiguous:
      return self.first + step
    return self.index_ref[self.head, self.row, step]

  def flags(self, step):
    """`(partial, cells)` of tile `step`; None where the walk never needs them."""
    if not self.walk.any_partial:
      return None, None
    partial = self.partial_ref[self.head, self.row, step]
    cells = [self.cells_ref[self.head, self.row, step, w] for w in range(self.walk.cell_words)]
    return partial, cells


def _mask_scores(
    s, problem: _Problem, walk: _Walk, q_start, kv_start, length, partial, cells, q_seg, kv_seg
):
  """`s` (the tile at `q_start`, `kv_start`) with disallowed pairs set to MASKED.

  The element work runs only on tiles that need it: partial tiles, tiles that
  reach past `length`, and every tile when segments are given.
  """

  def masked(s):
    q_pos = q_start + lax.iota(jnp.int32, walk.block_q)
    kv_pos = kv_start + lax.iota(jnp.int32, walk.block_k)
    allowed = (kv_pos < length)[None, :]
    if walk.any_partial:
      tile = (walk.block_q, walk.block_k)
      allowed = allowed & problem.mask.tile_allowed(q_pos[:, None], kv_pos[None, :], cells, tile)
    if q_seg is not None:
      allowed = allowed & (q_seg[:, None] == kv_seg[None, :])
    return jnp.where(allowed, s, MASKED)

  if q_seg is not None:
    return masked(s)  # segments can split any tile
  needs_mask = kv_start + walk.block_k > length
  if walk.any_partial:
    needs_mask = needs_mask | (partial != 0)
  return lax.cond(needs_mask, masked, lambda s: s, s)


def _unpack(refs, num_inputs: int, problem: _Problem):
  """Splits kernel refs into (table refs, order, inputs, segment refs or Nones, outputs)."""
  tables, order, rest = refs[:4], refs[4], refs[5:]
  inputs, rest = rest[:num_inputs], rest[num_inputs:]
  segments = (None, None)
  if problem.has_segments:
    segments, rest = rest[:2], rest[2:]
  return tables, order, inputs, segments, rest


# -- Kernels. ----------------------------------------------------------------------
# Every array ref is whole ([B, L, H, D], [B, H, L], [B, L]); a program slices
# its own (b, h) and the blocks it visits.


def _forward_kernel(*refs, plan: _Plan):
  problem, walk = plan.problem, plan.forward.walk
  tables, order_ref, inputs, (q_seg_ref, kv_seg_ref), (o_ref, lse_ref) = _unpack(refs, 4, problem)
  lengths_ref, q_ref, k_ref, v_ref = inputs
  q_block, b, h = _program(walk, order_ref, problem)
  block_q, block_k = walk.block_q, walk.block_k
  visits = _Visits(tables, walk, h, q_block)
  length = lengths_ref[b]
  q_start = pl.multiple_of(q_block * block_q, block_q)
  q_slice = pl.ds(q_start, block_q)
  q = q_ref[b, q_slice, h, :]
  q_seg = q_seg_ref[b, q_slice] if problem.has_segments else None
  scale = problem.scale * LOG2_E

  def body(step, carry):
    acc, row_max, row_sum = carry
    kv_start = pl.multiple_of(visits.block(step) * block_k, block_k)
    kv_slice = pl.ds(kv_start, block_k)
    k = k_ref[b, kv_slice, h, :]
    s = _dot(q, k, problem.precision, transpose_b=True) * scale
    partial, cells = visits.flags(step)
    kv_seg = kv_seg_ref[b, kv_slice] if problem.has_segments else None
    s = _mask_scores(s, problem, walk, q_start, kv_start, length, partial, cells, q_seg, kv_seg)
    new_max = jnp.maximum(row_max, s.max(axis=1))
    correction = jnp.exp2(row_max - new_max)
    p = jnp.exp2(s - new_max[:, None])
    v = v_ref[b, kv_slice, h, :]
    acc = acc * correction[:, None] + _dot(p.astype(v.dtype), v, problem.precision)
    return acc, new_max, row_sum * correction + p.sum(axis=1)

  init = (
      jnp.zeros((block_q, q.shape[-1]), jnp.float32),
      jnp.full((block_q,), MASKED, jnp.float32),
      jnp.zeros((block_q,), jnp.float32),
  )
  acc, row_max, row_sum = lax.fori_loop(0, visits.count, body, init)
  # A row whose max never rose above MASKED saw no allowed key.
  has_key = row_max > MASKED / 2
  row_sum = jnp.where(has_key, row_sum, 1.0)
  o_ref[b, q_slice, h, :] = jnp.where(has_key[:, None], acc / row_sum[:, None], 0.0).astype(
      o_ref.dtype
  )
  lse_ref[b, h, q_slice] = jnp.where(has_key, row_max + jnp.log2(row_sum), EMPTY_ROW_LSE)


def _tile_gradients(problem, walk, tile, q, k, v, do, lse, delta, q_seg, kv_seg):
  """What both backward kernels recompute on a visited tile: the probabilities `p` (from the
  forward's log2-sum-exp) and the score gradients `ds = p * (dp - delta)`.

  `tile` is `(q_start, kv_start, length, partial, cells)`: where the tile lies, the batch
  row's key length and its table flags.
  """
  q_start, kv_start, length, partial, cells = tile
  s = _dot(q, k, problem.precision, transpose_b=True) * (problem.scale * LOG2_E)
  s = _mask_scores(s, problem, walk, q_start, kv_start, length, partial, cells, q_seg, kv_seg)
  p = jnp.exp2(s - lse[:, None])
  dp = _dot(do, v, problem.precision, transpose_b=True)
  return p, p * (dp - delta[:, None])


def _dkv_kernel(*refs, plan: _Plan):
  problem, walk = plan.problem, plan.dkv.walk
  tables, order_ref, inputs, (q_seg_ref, kv_seg_ref), (dk_ref, dv_ref) = _unpack(refs, 7, problem)
  lengths_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = inputs
  kv_block, b, h = _program(walk, order_ref, problem)
  block_q, block_k = walk.block_q, walk.block_k
  visits = _Visits(tables, walk, h, kv_block)
  length = lengths_ref[b]
  kv_start = pl.multiple_of(kv_block * block_k, block_k)
  kv_slice = pl.ds(kv_start, block_k)
  k, v = k_ref[b, kv_slice, h, :], v_ref[b, kv_slice, h, :]
  kv_seg = kv_seg_ref[b, kv_slice] if problem.has_segments else None

  def body(step, carry):
    dk, dv = carry
    q_start = pl.multiple_of(visits.block(step) * block_q, block_q)
    q_slice = pl.ds(q_start, block_q)
    q, do = q_ref[b, q_slice, h, :], do_ref[b, q_slice, h, :]
    q_seg = q_seg_ref[b, q_slice] if problem.has_segments else None
    tile = (q_start, kv_start, length, *visits.flags(step))
    p, ds = _tile_gradients(
        problem,
        walk,
        tile,
        q,
        k,
        v,
        do,
        lse_ref[b, h, q_slice],
        delta_ref[b, h, q_slice],
        q_seg,
        kv_seg,
    )
    dv = dv + _dot(p.astype(do.dtype), do, problem.precision, transpose_a=True)
    dk = dk + _dot(ds.astype(q.dtype), q, problem.precision, transpose_a=True)
    return dk, dv

  zeros = jnp.zeros((block_k, k.shape[-1]), jnp.float32)
  dk, dv = lax.fori_loop(0, visits.count, body, (zeros, zeros))
  dk_ref[b, kv_slice, h, :] = (dk * problem.scale).astype(dk_ref.dtype)
  dv_ref[b, kv_slice, h, :] = dv.astype(dv_ref.dtype)


def _dq_kernel(*refs, plan: _Plan):
  problem, walk = plan.problem, plan.dq.walk
  tables, order_ref, inputs, (q_seg_ref, kv_seg_ref), (dq_ref,) = _unpack(refs, 7, problem)
  lengths_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = inputs
  q_block, b, h = _program(walk, order_ref, problem)
  block_q, block_k = walk.block_q, walk.block_k
  visits = _Visits(tables, walk, h, q_block)
  length = lengths_ref[b]
  q_start = pl.multiple_of(q_block * block_q, block_q)
  q_slice = pl.ds(q_start, block_q)
  q, do = q_ref[b, q_slice, h, :], do_ref[b, q_slice, h, :]
  lse, delta = lse_ref[b, h, q_slice], delta_ref[b, h, q_slice]
  q_seg = q_seg_ref[b, q_slice] if problem.has_segments else None

  def body(step, dq):
    kv_start = pl.multiple_of(visits.block(step) * block_k, block_k)
    kv_slice = pl.ds(kv_start, block_k)
    k, v = k_ref[b, kv_slice, h, :], v_ref[b, kv_slice, h, :]
    kv_seg = kv_seg_ref[b, kv_slice] if problem.has_segments else None
    tile = (q_start, kv_start, length, *visits.flags(step))
    _, ds = _tile_gradients(problem, walk, tile, q, k, v, do, lse, delta, q_seg, kv_seg)
    return dq + _dot(ds.astype(k.dtype), k, problem.precision)

  dq = lax.fori_loop(0, visits.count, body, jnp.zeros((block_q, q.shape[-1]), jnp.float32))
  dq_ref[b, q_slice, h, :] = (dq * problem.scale).astype(dq_ref.dtype)


# -- pallas_call wrappers. ------------------------------------------------------------


def _whole(shape) -> pl.BlockSpec:
  """A BlockSpec handing every program the whole array; kernels slice what they need."""
  return pl.BlockSpec(tuple(shape), lambda p: (0,) * len(shape))


def _call(kernel, plan: _Plan, tables: _Tables, inputs, segments, out_shape, name: str):
  """One flat-grid pallas_call: a program per (table row, batch, head)."""
  problem = plan.problem
  args = [*tables.arrays(), *inputs, *segments]
  bs = problem.block_sizes
  return pl.pallas_call(
      functools.partial(kernel, plan=plan),
      grid=(tables.walk.rows * problem.batch * problem.num_heads,),
      in_specs=[_whole(a.shape) for a in args],
      out_specs=[_whole(o.shape) for o in out_shape],
      out_shape=out_shape,
      # Triton compiler params also keep jax off the Mosaic GPU path.
      compiler_params=plgpu.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages),
      interpret=problem.interpret,
      name=name,
  )(*args)


def _forward_call(plan: _Plan, q, k, v, lengths, segments):
  batch, lq, heads, _ = q.shape
  out_shape = [
      jax.ShapeDtypeStruct(q.shape, q.dtype),
      jax.ShapeDtypeStruct((batch, heads, lq), jnp.float32),
  ]
  return _call(
      _forward_kernel, plan, plan.forward, (lengths, q, k, v), segments, out_shape, "flash_forward"
  )


def _dkv_call(plan: _Plan, q, k, v, d_out, lse, delta, lengths, segments):
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  return _call(
      _dkv_kernel,
      plan,
      plan.dkv,
      (lengths, q, k, v, d_out, lse, delta),
      segments,
      out_shape,
      "flash_backward_dkv",
  )


def _dq_call(plan: _Plan, q, k, v, d_out, lse, delta, lengths, segments):
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
  return _call(
      _dq_kernel,
      plan,
      plan.dq,
      (lengths, q, k, v, d_out, lse, delta),
      segments,
      out_shape,
      "flash_backward_dq",
  )[0]


# -- Padding and the differentiable function. ---------------------------------------


def _pad_to(x, axis_lengths: dict[int, int]):
  """Zero-pads `x` at the end of the given axes up to the given lengths (no copy if none)."""
  widths = [(0, axis_lengths.get(axis, n) - n) for axis, n in enumerate(x.shape)]
  return jnp.pad(x, widths) if any(w for _, w in widths) else x


@functools.lru_cache(maxsize=128)
def _attention_fn(problem: _Problem) -> Callable:
  """The custom-vjp attention function for one static problem (tables built once)."""
  plan = _plan(problem)
  lq, lk, dim = problem.q_len_padded, problem.kv_len_padded, problem.head_dim_padded

  def pad_inputs(q, k, v, q_seg, kv_seg):
    q = _pad_to(q, {1: lq, 3: dim})
    k, v = (_pad_to(x, {1: lk, 3: dim}) for x in (k, v))
    segments = ()
    if problem.has_segments:
      segments = (
          _pad_to(q_seg.astype(jnp.int32), {1: lq}),
          _pad_to(kv_seg.astype(jnp.int32), {1: lk}),
      )
    return q, k, v, segments

  def unpad(x, length):
    return x[:, :length, :, : problem.head_dim]

  def forward(q, k, v, lengths, q_seg, kv_seg):
    q, k, v, segments = pad_inputs(q, k, v, q_seg, kv_seg)
    out, lse = _forward_call(plan, q, k, v, lengths, segments)
    return unpad(out, problem.q_len), (q, k, v, lengths, segments, out, lse)

  @jax.custom_vjp
  def attend(q, k, v, lengths, q_seg, kv_seg):
    return forward(q, k, v, lengths, q_seg, kv_seg)[0]

  def backward(residuals, d_out):
    q, k, v, lengths, segments, out, lse = residuals
    d_out = _pad_to(d_out.astype(q.dtype), {1: lq, 3: dim})
    # delta_i = sum_d o_id * do_id: the softmax-backward row term, [B, H, Lq].
    delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), d_out.astype(jnp.float32))
    dk, dv = _dkv_call(plan, q, k, v, d_out, lse, delta, lengths, segments)
    dq = _dq_call(plan, q, k, v, d_out, lse, delta, lengths, segments)
    return (
        unpad(dq, problem.q_len),
        unpad(dk, problem.kv_len),
        unpad(dv, problem.kv_len),
        None,
        None,
        None,
    )

  attend.defvjp(forward, backward)
  return attend


def flash_attention(
    q,
    k,
    v,
    mask: Mask,
    *,
    kv_lengths,
    q_segment_ids=None,
    kv_segment_ids=None,
    scale: float,
    block_sizes: BlockSizes,
    interpret: bool = False,
) -> jax.Array:
  """Masked attention with the Pallas kernels; differentiable in q, k, v.

  Called by `pallas_kernels.attention(..., implementation="pallas")`, which has
  validated the inputs, clipped `kv_lengths` (int32 `[B]`) to `Lk` and fitted
  `block_sizes` to the mask (every tile inside one layout cell).

  Args:
    q: `[B, Lq, H, D]`; k, v: `[B, Lk, H, D]`; float32 or bfloat16.
    mask: the attention pattern; its block tables drive the kernels.
    kv_lengths: int32 `[B]`, keys at positions `>= kv_lengths[b]` are padding.
    q_segment_ids, kv_segment_ids: int `[B, Lq]`, `[B, Lk]`, or both None.
    scale: the softmax scale.
    block_sizes: tiles of the three passes (powers of two >= 16).
    interpret: run the kernels in Pallas interpret mode (CPU).

  Returns:
    `[B, Lq, H, D]` in q's dtype; rows with no allowed key are zeros.
  """
  check_block_sizes(block_sizes)
  batch, q_len, num_heads, head_dim = q.shape
  problem = _Problem(
      batch=batch,
      q_len=q_len,
      kv_len=k.shape[1],
      num_heads=num_heads,
      head_dim=head_dim,
      dtype=jnp.dtype(q.dtype).name,
      mask=mask,
      scale=float(scale),
      block_sizes=block_sizes,
      has_segments=q_segment_ids is not None,
      interpret=bool(interpret),
  )
  lengths = jnp.asarray(kv_lengths, jnp.int32)
  return _attention_fn(problem)(q, k, v, lengths, q_segment_ids, kv_segment_ids)
