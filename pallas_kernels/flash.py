"""Block-sparse FlashAttention in Pallas: Triton on GPU, `interpret=True` anywhere.

Three kernels share one walk over the host block tables (`Mask.block_table`):

- forward, one program per (query block, batch, head): online softmax over the
  key blocks listed in `kv_index`; writes the output and the row logsumexp;
- dq, one program per (query block, batch, head), the same walk with its own tiles;
- dk/dv, one program per (key block, batch, head), walking the transposed
  table (`q_index`).

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
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.block_sizes import MIN_TRITON_BLOCK, BlockSizes
from pallas_kernels.masks import BlockTable, Mask

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
          f"got {block_sizes}")
  if block_sizes.num_warps & (block_sizes.num_warps - 1) or block_sizes.num_warps > 32:
    raise ValueError(f"block_sizes: num_warps must be a power of two <= 32, got {block_sizes.num_warps}")


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


@dataclasses.dataclass(frozen=True)
class _Walk:
  """How a kernel walks one direction of a block table (static part)."""

  block_q: int
  block_k: int
  per_head: bool     # one table row set per head (else shared by all heads)
  contiguous: bool   # every row's visited blocks are consecutive: index = first + step
  any_partial: bool  # some visited tile needs the mask's element predicate
  has_bits: bool     # the mask has block-sparse leaves (tile_allowed reads their bits)


@dataclasses.dataclass(frozen=True, eq=False)
class _Tables:
  """One direction of a block table, rows padded to the padded length (as int32 numpy)."""

  walk: _Walk
  index: np.ndarray
  count: np.ndarray
  partial: np.ndarray
  bits: np.ndarray

  def arrays(self) -> list[jax.Array]:
    return [jnp.asarray(a) for a in (self.index, self.count, self.partial, self.bits)]


def _tables(table: BlockTable, direction: str, rows: int, mask: Mask) -> _Tables:
  """The per-query-block (`"kv"`) or per-key-block (`"q"`) side of `table`, padded to `rows`."""
  index, count, partial, bits = (getattr(table, f"{direction}_{name}")
                                 for name in ("index", "count", "partial", "bits"))
  steps = np.arange(index.shape[-1])
  listed = steps < count[..., None]
  contiguous = bool(np.all(~listed | (index == index[..., :1] + steps)))
  walk = _Walk(block_q=table.block_q, block_k=table.block_k, per_head=index.shape[0] > 1,
               contiguous=contiguous, any_partial=bool(partial.any()),
               has_bits=bool(mask.layout_leaves()))
  extra = rows - count.shape[1]  # fully padded blocks: nothing to visit

  def pad(a):
    a = np.asarray(a, np.int32)
    return np.pad(a, [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2)) if extra else a

  return _Tables(walk, pad(index), pad(count), pad(partial), pad(bits))


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
  problem: _Problem
  forward: _Tables   # per query block, (block_q, block_k)
  dkv: _Tables       # per key block, (block_q_dkv, block_k_dkv)
  dq: _Tables        # per query block, (block_q_dq, block_k_dq)


def _plan(problem: _Problem) -> _Plan:
  p, bs = problem, problem.block_sizes

  def table(block_q, block_k):
    return p.mask.block_table(p.q_len, p.kv_len, block_q, block_k, p.num_heads)

  return _Plan(
      problem=p,
      forward=_tables(table(bs.block_q, bs.block_k), "kv", p.q_len_padded // bs.block_q, p.mask),
      dkv=_tables(table(bs.block_q_dkv, bs.block_k_dkv), "q", p.kv_len_padded // bs.block_k_dkv, p.mask),
      dq=_tables(table(bs.block_q_dq, bs.block_k_dq), "kv", p.q_len_padded // bs.block_q_dq, p.mask),
  )


# -- Pieces shared by the kernels. -----------------------------------------------


def _dot(a, b, precision, *, transpose_a: bool = False, transpose_b: bool = False):
  """`a @ b` (optionally transposed operands) with float32 accumulation."""
  dims = (((0 if transpose_a else 1,), (1 if transpose_b else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


class _Visits:
  """Reads one table row inside a kernel: how many tiles, and tile `step`'s block and flags."""

  def __init__(self, refs, walk: _Walk, head, row):
    self.index_ref, count_ref, self.partial_ref, self.bits_ref = refs
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
    """`(partial, bits)` of tile `step`; None where the walk never needs them."""
    if not self.walk.any_partial:
      return None, None
    partial = self.partial_ref[self.head, self.row, step]
    bits = self.bits_ref[self.head, self.row, step] if self.walk.has_bits else None
    return partial, bits


def _mask_scores(s, problem: _Problem, walk: _Walk, q_start, kv_start, length, partial, bits,
                 q_seg, kv_seg):
  """`s` (the tile at `q_start`, `kv_start`) with disallowed pairs set to MASKED.

  The element work runs only on tiles that need it: partial tiles, tiles that
  reach past `length`, and every tile when segments are given.
  """

  def masked(s):
    q_pos = q_start + lax.iota(jnp.int32, walk.block_q)
    kv_pos = kv_start + lax.iota(jnp.int32, walk.block_k)
    allowed = (kv_pos < length)[None, :]
    if walk.any_partial:
      allowed = allowed & problem.mask.tile_allowed(q_pos[:, None], kv_pos[None, :], bits)
    if q_seg is not None:
      allowed = allowed & (q_seg[:, None] == kv_seg[None, :])
    return jnp.where(allowed, s, MASKED)

  if q_seg is not None:
    return masked(s)  # segments can split any tile
  needs_mask = kv_start + walk.block_k > length
  if walk.any_partial:
    needs_mask = needs_mask | (partial != 0)
  return lax.cond(needs_mask, masked, lambda s: s, s)


# -- Kernels. ----------------------------------------------------------------------


def _forward_kernel(*refs, plan: _Plan):
  problem, walk = plan.problem, plan.forward.walk
  table_refs, (lengths_ref, q_ref, k_ref, v_ref), rest = refs[:4], refs[4:8], refs[8:]
  if problem.has_segments:
    q_seg_ref, kv_seg_ref, o_ref, lse_ref = rest
  else:
    o_ref, lse_ref = rest
  q_block, b, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  block_q, block_k = walk.block_q, walk.block_k
  visits = _Visits(table_refs, walk, h, q_block)
  length = lengths_ref[b]
  q = q_ref[...]
  q_start = q_block * block_q
  q_seg = q_seg_ref[...] if problem.has_segments else None
  scale = problem.scale * LOG2_E

  def body(step, carry):
    acc, row_max, row_sum = carry
    kv_start = visits.block(step) * block_k
    kv_slice = pl.ds(kv_start, block_k)
    k = k_ref[kv_slice, :]
    s = _dot(q, k, problem.precision, transpose_b=True) * scale
    partial, bits = visits.flags(step)
    kv_seg = kv_seg_ref[kv_slice] if problem.has_segments else None
    s = _mask_scores(s, problem, walk, q_start, kv_start, length, partial, bits, q_seg, kv_seg)
    new_max = jnp.maximum(row_max, s.max(axis=1))
    correction = jnp.exp2(row_max - new_max)
    p = jnp.exp2(s - new_max[:, None])
    v = v_ref[kv_slice, :]
    acc = acc * correction[:, None] + _dot(p.astype(v.dtype), v, problem.precision)
    return acc, new_max, row_sum * correction + p.sum(axis=1)

  init = (jnp.zeros((block_q, q.shape[-1]), jnp.float32),
          jnp.full((block_q,), MASKED, jnp.float32), jnp.zeros((block_q,), jnp.float32))
  acc, row_max, row_sum = lax.fori_loop(0, visits.count, body, init)
  # A row whose max never rose above MASKED saw no allowed key.
  has_key = row_max > MASKED / 2
  row_sum = jnp.where(has_key, row_sum, 1.0)
  o_ref[...] = jnp.where(has_key[:, None], acc / row_sum[:, None], 0.0).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(has_key, row_max + jnp.log2(row_sum), EMPTY_ROW_LSE)


def _dkv_kernel(*refs, plan: _Plan):
  problem, walk = plan.problem, plan.dkv.walk
  table_refs, inputs, rest = refs[:4], refs[4:11], refs[11:]
  lengths_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = inputs
  if problem.has_segments:
    q_seg_ref, kv_seg_ref, dk_ref, dv_ref = rest
  else:
    dk_ref, dv_ref = rest
  kv_block, b, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  block_q, block_k = walk.block_q, walk.block_k
  visits = _Visits(table_refs, walk, h, kv_block)
  length = lengths_ref[b]
  k, v = k_ref[...], v_ref[...]
  kv_start = kv_block * block_k
  kv_seg = kv_seg_ref[...] if problem.has_segments else None
  scale = problem.scale * LOG2_E

  def body(step, carry):
    dk, dv = carry
    q_start = visits.block(step) * block_q
    q_slice = pl.ds(q_start, block_q)
    q = q_ref[q_slice, :]
    s = _dot(q, k, problem.precision, transpose_b=True) * scale
    partial, bits = visits.flags(step)
    q_seg = q_seg_ref[q_slice] if problem.has_segments else None
    s = _mask_scores(s, problem, walk, q_start, kv_start, length, partial, bits, q_seg, kv_seg)
    p = jnp.exp2(s - lse_ref[q_slice][:, None])
    do = do_ref[q_slice, :]
    dv = dv + _dot(p.astype(do.dtype), do, problem.precision, transpose_a=True)
    dp = _dot(do, v, problem.precision, transpose_b=True)
    ds = p * (dp - delta_ref[q_slice][:, None])
    dk = dk + _dot(ds.astype(q.dtype), q, problem.precision, transpose_a=True)
    return dk, dv

  zeros = jnp.zeros((block_k, k.shape[-1]), jnp.float32)
  dk, dv = lax.fori_loop(0, visits.count, body, (zeros, zeros))
  dk_ref[...] = (dk * problem.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(*refs, plan: _Plan):
  problem, walk = plan.problem, plan.dq.walk
  table_refs, inputs, rest = refs[:4], refs[4:11], refs[11:]
  lengths_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = inputs
  if problem.has_segments:
    q_seg_ref, kv_seg_ref, dq_ref = rest
  else:
    (dq_ref,) = rest
  q_block, b, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  block_q, block_k = walk.block_q, walk.block_k
  visits = _Visits(table_refs, walk, h, q_block)
  length = lengths_ref[b]
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  q_start = q_block * block_q
  q_seg = q_seg_ref[...] if problem.has_segments else None
  scale = problem.scale * LOG2_E

  def body(step, dq):
    kv_start = visits.block(step) * block_k
    kv_slice = pl.ds(kv_start, block_k)
    k = k_ref[kv_slice, :]
    s = _dot(q, k, problem.precision, transpose_b=True) * scale
    partial, bits = visits.flags(step)
    kv_seg = kv_seg_ref[kv_slice] if problem.has_segments else None
    s = _mask_scores(s, problem, walk, q_start, kv_start, length, partial, bits, q_seg, kv_seg)
    p = jnp.exp2(s - lse[:, None])
    v = v_ref[kv_slice, :]
    dp = _dot(do, v, problem.precision, transpose_b=True)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k, problem.precision)

  dq = lax.fori_loop(0, visits.count, body, jnp.zeros((block_q, q.shape[-1]), jnp.float32))
  dq_ref[...] = (dq * problem.scale).astype(dq_ref.dtype)


# -- pallas_call wrappers. ------------------------------------------------------------


def _whole(array) -> pl.BlockSpec:
  """A BlockSpec giving every program the whole (small) array: tables and lengths."""
  return pl.BlockSpec(array.shape, lambda *_: (0,) * array.ndim)


def _compiler_params(problem: _Problem) -> plgpu.CompilerParams:
  # Triton compiler params also keep jax off the Mosaic GPU path.
  bs = problem.block_sizes
  return plgpu.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages)


def _seq_block(block: int, dim: int) -> pl.BlockSpec:
  """`[B, L, H, D]` tiled `block` rows at a time along L; the grid is (row block, b, h)."""
  return pl.BlockSpec((None, block, None, dim), lambda i, b, h: (b, i, h, 0))


def _seq_whole(length: int, dim: int) -> pl.BlockSpec:
  """All of `[B, L, H, D]`'s rows of one (b, h); kernels slice the blocks they visit."""
  return pl.BlockSpec((None, length, None, dim), lambda i, b, h: (b, 0, h, 0))


def _segment_specs(problem: _Problem, block: int, q_whole: bool) -> list[pl.BlockSpec]:
  lq, lk = problem.q_len_padded, problem.kv_len_padded
  if q_whole:  # dk/dv pass: the grid walks key blocks
    return [pl.BlockSpec((None, lq), lambda i, b, h: (b, 0)),
            pl.BlockSpec((None, block), lambda i, b, h: (b, i))]
  return [pl.BlockSpec((None, block), lambda i, b, h: (b, i)),
          pl.BlockSpec((None, lk), lambda i, b, h: (b, 0))]


def _forward_call(plan: _Plan, q, k, v, lengths, segments):
  problem, tables = plan.problem, plan.forward
  block_q, dim, lk = tables.walk.block_q, problem.head_dim_padded, problem.kv_len_padded
  table_arrays = tables.arrays()
  in_specs = [*map(_whole, table_arrays), _whole(lengths), _seq_block(block_q, dim),
              _seq_whole(lk, dim), _seq_whole(lk, dim)]
  if problem.has_segments:
    in_specs += _segment_specs(problem, block_q, q_whole=False)
  batch, lq, heads, _ = q.shape
  return pl.pallas_call(
      functools.partial(_forward_kernel, plan=plan),
      grid=(lq // block_q, batch, heads),
      in_specs=in_specs,
      out_specs=[_seq_block(block_q, dim),
                 pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, heads, lq), jnp.float32)],
      compiler_params=_compiler_params(problem),
      interpret=problem.interpret,
      name="flash_forward",
  )(*table_arrays, lengths, q, k, v, *segments)


def _dkv_call(plan: _Plan, q, k, v, d_out, lse, delta, lengths, segments):
  problem, tables = plan.problem, plan.dkv
  block_k, dim, lq = tables.walk.block_k, problem.head_dim_padded, problem.q_len_padded
  table_arrays = tables.arrays()
  row_whole = pl.BlockSpec((None, None, lq), lambda i, b, h: (b, h, 0))
  in_specs = [*map(_whole, table_arrays), _whole(lengths), _seq_whole(lq, dim),
              _seq_block(block_k, dim), _seq_block(block_k, dim), _seq_whole(lq, dim),
              row_whole, row_whole]
  if problem.has_segments:
    in_specs += _segment_specs(problem, block_k, q_whole=True)
  batch, lk, heads, _ = k.shape
  return pl.pallas_call(
      functools.partial(_dkv_kernel, plan=plan),
      grid=(lk // block_k, batch, heads),
      in_specs=in_specs,
      out_specs=[_seq_block(block_k, dim), _seq_block(block_k, dim)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=_compiler_params(problem),
      interpret=problem.interpret,
      name="flash_backward_dkv",
  )(*table_arrays, lengths, q, k, v, d_out, lse, delta, *segments)


def _dq_call(plan: _Plan, q, k, v, d_out, lse, delta, lengths, segments):
  problem, tables = plan.problem, plan.dq
  block_q, dim, lk = tables.walk.block_q, problem.head_dim_padded, problem.kv_len_padded
  table_arrays = tables.arrays()
  row_block = pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))
  in_specs = [*map(_whole, table_arrays), _whole(lengths), _seq_block(block_q, dim),
              _seq_whole(lk, dim), _seq_whole(lk, dim), _seq_block(block_q, dim),
              row_block, row_block]
  if problem.has_segments:
    in_specs += _segment_specs(problem, block_q, q_whole=False)
  batch, lq, heads, _ = q.shape
  return pl.pallas_call(
      functools.partial(_dq_kernel, plan=plan),
      grid=(lq // block_q, batch, heads),
      in_specs=in_specs,
      out_specs=_seq_block(block_q, dim),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=_compiler_params(problem),
      interpret=problem.interpret,
      name="flash_backward_dq",
  )(*table_arrays, lengths, q, k, v, d_out, lse, delta, *segments)


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
      segments = (_pad_to(q_seg.astype(jnp.int32), {1: lq}), _pad_to(kv_seg.astype(jnp.int32), {1: lk}))
    return q, k, v, segments

  def unpad(x, length):
    return x[:, :length, :, :problem.head_dim]

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
    return (unpad(dq, problem.q_len), unpad(dk, problem.kv_len), unpad(dv, problem.kv_len),
            None, None, None)

  attend.defvjp(forward, backward)
  return attend


def flash_attention(q, k, v, mask: Mask, *, kv_lengths, q_segment_ids=None, kv_segment_ids=None,
                    scale: float, block_sizes: BlockSizes, interpret: bool = False) -> jax.Array:
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
  problem = _Problem(batch=batch, q_len=q_len, kv_len=k.shape[1], num_heads=num_heads,
                     head_dim=head_dim, dtype=jnp.dtype(q.dtype).name, mask=mask, scale=float(scale),
                     block_sizes=block_sizes, has_segments=q_segment_ids is not None,
                     interpret=bool(interpret))
  lengths = jnp.asarray(kv_lengths, jnp.int32)
  return _attention_fn(problem)(q, k, v, lengths, q_segment_ids, kv_segment_ids)
