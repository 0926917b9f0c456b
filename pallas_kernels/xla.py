"""Blocked attention in plain jnp: visit only the key blocks the mask needs.

For each query block the block table lists the key blocks to visit. Query
blocks are grouped by how many blocks they visit (so one global row does not
make every row dense) and then by their element mask; per group we gather the
visited key blocks and run one softmax per query block over them. Time and
memory follow the number of visited tiles, not `Lq x Lk`. Element masks are
evaluated on the host, once per visited tile, from the same `Mask.tile_allowed`
the Pallas kernel uses, and enter the scores as an additive bias.

The softmax is written for XLA:CPU's fused kernels (`_softmax_attention`):
spelled that way, each query block's dot-softmax-dot runs as one fusion with
its score tile in cache, several times faster than the same maths written
freely. The backward pass is a custom VJP in the same spirit; the gathers'
own transposes (scatter-adds) come from autodiff.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.block_table import BlockTable, block_table
from pallas_kernels.masks import Mask

_HIGHEST = jax.lax.Precision.HIGHEST
# At most this many row groups (each is its own set of dots): padding waste vs op count.
_MAX_GROUPS = 4
# Score bias of a masked key. Finite, so the softmax needs no select (which would
# split XLA's fusion); rows left with no allowed key are zeroed by `row_ok` instead.
_MASKED = -1e30
# At most this many distinct element-mask patterns get their own group (and a shared bias).
_MAX_PATTERNS = 8


def blocked_attention(
    q,
    k,
    v,
    mask: Mask,
    *,
    kv_lengths,
    q_segment_ids,
    kv_segment_ids,
    scale: float,
    block_sizes: BlockSizes,
) -> jax.Array:
  """`[B, Lq, H, D]` attention over the tiles `mask` visits; see `pallas_kernels.attention`.

  `kv_lengths` may be None (no padding), which keeps unpadded inputs free of masking work.
  """
  q_len, kv_len = q.shape[1], k.shape[1]
  table = block_table(mask, q_len, kv_len, block_sizes.block_q, block_sizes.block_k, q.shape[2])
  if table.num_visits == 0:
    return jnp.zeros_like(q)

  # Compute in float32 (CPU matmuls in bf16 are slow and the contract wants f32 statistics).
  f32 = jnp.float32
  blocks = _Blocks(
      q=_to_blocks(q.astype(f32) * scale, table.block_q),
      k=_to_blocks(k.astype(f32), table.block_k),
      v=_to_blocks(v.astype(f32), table.block_k),
      kv_len=kv_len,
      kv_lengths=kv_lengths,
      q_segments=_pad_segments(q_segment_ids, table.num_q_blocks * table.block_q),
      kv_segments=_pad_segments(kv_segment_ids, table.num_kv_blocks * table.block_k),
  )
  if _visits_every_block_in_order(table):
    out = _dense(mask, table, blocks)
  else:
    out = _sparse(mask, table, blocks)
  return _from_blocks(out, q_len).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class _Blocks:
  """The blocked inputs and what masking needs beyond the mask itself."""

  q: jax.Array  # [B, H, nqb, bq, D]
  k: jax.Array  # [B, H, nkb, bk, D]
  v: jax.Array
  kv_len: int
  kv_lengths: jax.Array | None  # [B]
  q_segments: jax.Array | None  # [B, Lq_pad]
  kv_segments: jax.Array | None  # [B, Lk_pad]


def _dense(mask: Mask, table: BlockTable, x: _Blocks):
  """Every query block sees all key blocks in order: no gather, one visit of width Lk_pad."""
  batch, heads, nqb, block_q, dim = x.q.shape
  q_blocks = np.arange(nqb)
  q_pos = _q_positions(q_blocks, block_q)
  kv_pos = np.arange(table.num_kv_blocks * table.block_k)[None, None, :]  # [1, 1, Lk_pad]
  cells = table.kv_cells[0][:, None].repeat(table.block_k, axis=2)  # [nqb, 1, Lk_pad, words]
  static = _static_allowed(
      mask, table, table.any_partial, q_pos, kv_pos, cells, np.ones((1, 1), bool), x.kv_len
  )
  view = (batch, heads, nqb, block_q, kv_pos.shape[-1])
  bias, row_ok = _masking(static, q_pos, kv_pos, q_blocks, x)
  # Scores are [B * H, Lq_pad, Lk_pad]: one dot per head.
  bias = None if bias is None else _merge_axes(bias, view, ((0, 1), (2, 3), (4,)))
  return _attend(
      x.q.reshape(batch * heads, -1, dim),
      x.k.reshape(batch * heads, -1, dim),
      x.v.reshape(batch * heads, -1, dim),
      view,
      bias,
      row_ok,
  )


def _sparse(mask: Mask, table: BlockTable, x: _Blocks):
  """Query blocks grouped by visit count and mask pattern; each group gathers only what it visits."""
  batch, heads, nqb, block_q, dim = x.q.shape
  block_k = table.block_k
  per_head = table.kv_index.shape[0] > 1
  width = table.kv_index.shape[-1]
  index = table.kv_index.reshape(-1, width)  # rows are (h', qb) pairs
  count = table.kv_count.reshape(-1)
  cells = table.kv_cells.reshape(-1, width, table.kv_cells.shape[-1])
  partial = table.kv_partial.reshape(-1, width)
  outs, order = [], []
  for rows, visits in _row_groups(count):
    if visits == 0:  # rows with nothing to visit output zeros
      order.append(rows)
      outs.append(
          jnp.zeros((batch, 1 if per_head else heads, len(rows), block_q, dim), jnp.float32)
      )
      continue
    _, qb = np.divmod(rows, nqb)
    kv_pos = (index[rows, :visits, None] * block_k + np.arange(block_k)).reshape(
        len(rows), 1, -1
    )  # [R, 1, W]
    static = _static_allowed(
        mask,
        table,
        bool(partial[rows, :visits].any()),
        _q_positions(qb, block_q),
        kv_pos,
        cells[rows, :visits].repeat(block_k, axis=1)[:, None],  # [R, 1, W, words]
        (np.arange(visits) < count[rows, None]).repeat(block_k, -1),
        x.kv_len,
    )
    for part, part_static in _pattern_groups(static):
      order.append(rows[part])
      outs.append(
          _attend_rows(
              rows[part], index[rows[part], :visits], kv_pos[part], part_static, nqb, per_head, x
          )
      )
  # Put the groups' rows back in (h', qb) order.
  out = jnp.concatenate(outs, axis=2)[:, :, np.argsort(np.concatenate(order))]
  if per_head:
    return out.reshape(batch, heads, nqb, block_q, dim)
  return out


def _attend_rows(rows, visited, kv_pos, static, nqb: int, per_head: bool, x: _Blocks):
  """Rows `rows` of the table (`(h', qb)` pairs) attend over their `visited [R, V]` key blocks.

  Returns `[B, H | 1, R, bq, D]`: per-head tables give one row per (head, query block).
  """
  block_q, dim = x.q.shape[3:]
  head, qb = np.divmod(rows, nqb)
  if per_head:
    queries = x.q[:, head, qb][:, None]  # [B, 1, R, bq, D]
    keys, values = (
        blocks[:, head[:, None], visited][:, None] for blocks in (x.k, x.v)
    )  # [B, 1, R, V, bk, D]
  else:
    queries = x.q[:, :, qb]  # [B, H, R, bq, D]
    keys, values = x.k[:, :, visited], x.v[:, :, visited]  # [B, H, R, V, bk, D]
  view = (*queries.shape[:3], block_q, kv_pos.shape[-1])
  bias, row_ok = _masking(static, _q_positions(qb, block_q), kv_pos, qb, x)
  # Scores are [B * H * R, bq, W]: one small dot per (batch, head, query block).
  bias = None if bias is None else _merge_axes(bias, view, ((0, 1, 2), (3,), (4,)))
  return _attend(
      queries.reshape(-1, block_q, dim),
      keys.reshape(-1, view[-1], dim),
      values.reshape(-1, view[-1], dim),
      view,
      bias,
      row_ok,
  )


def _row_groups(count: np.ndarray) -> list[tuple[np.ndarray, int]]:
  """Rows grouped by visit count: `(rows, visits)` with `visits` the group's largest count.

  Adjacent counts merge, cheapest padding first, until at most `_MAX_GROUPS` remain;
  rows that visit nothing form a group of their own.
  """
  groups = [(np.flatnonzero(count == c), int(c)) for c in np.unique(count) if c]
  while len(groups) > _MAX_GROUPS:
    # Merging group i into i + 1 pads group i's rows up to group i + 1's count.
    waste = [
        len(rows) * (groups[i + 1][1] - visits) for i, (rows, visits) in enumerate(groups[:-1])
    ]
    i = int(np.argmin(waste))
    merged = (np.concatenate([groups[i][0], groups[i + 1][0]]), groups[i + 1][1])
    groups[i : i + 2] = [merged]
  empty = np.flatnonzero(count == 0)  # kept apart: they cost nothing
  return groups + [(empty, 0)] if empty.size else groups


def _pattern_groups(static: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
  """Split rows by their element mask `static [R|1, bq|1, W]`: `(part, part_static)` pairs.

  Rows that share a pattern (the interior of a local window, say) share one
  `[1, bq, W]` bias, which XLA:CPU broadcasts inside its fused softmax for free;
  a per-row bias must be materialised at the size of the scores. Past
  `_MAX_PATTERNS` distinct patterns the rows stay together with a per-row bias.
  """
  rows = np.arange(static.shape[0])
  if static.shape[0] == 1:
    return [(rows, static)]
  patterns, which = np.unique(static.reshape(len(rows), -1), axis=0, return_inverse=True)
  if len(patterns) > _MAX_PATTERNS:
    return [(rows, static)]
  which = which.ravel()
  return [(rows[which == i], static[which == i][:1]) for i in range(len(patterns))]


def _attend(queries, keys, values, view, bias, row_ok):
  """Softmax attention of `queries [N, bq, D]` over `keys, values [N, W, D]`.

  `view` is the 5-D view `[B, H, R, bq, W]` of the scores; `bias` (0 or
  `_MASKED`, or None) is 3-D and broadcasts to the scores, `row_ok` (5-D) zeroes
  query rows with no allowed key.
  """
  out = _softmax_attention(queries, keys, values, jnp.float32(0) if bias is None else bias)
  out = out.reshape(*view[:-1], out.shape[-1])
  return out if row_ok is None else jnp.where(row_ok, out, 0.0)


# XLA:CPU (its YNNPACK fusions) is fast on this code only in certain forms, so
# both passes are spelled out: 3-D operands with one leading batch dim, reductions
# over the last axis, no select on the scores, and no dot that contracts the
# first non-batch dim of its left operand.
@jax.custom_vjp
def _softmax_attention(queries, keys, values, bias):
  """`softmax(q k^T + bias) v` on `[N, bq, D]`, `[N, W, D]`, `[N, W, D]`, bias broadcast to `[N, bq, W]`.

  Forward, this dot-softmax-dot chain becomes one fusion that keeps each `[bq, W]`
  score tile in cache: several times faster than materialising the scores.
  """
  weights = _unnormalized_weights(queries, keys, bias)
  return _batched_dot(weights, values, contract=(2, 1)) / weights.sum(axis=-1, keepdims=True)


def _unnormalized_weights(queries, keys, bias):
  scores = _batched_dot(queries, keys, contract=(2, 2)) + bias
  return jnp.exp(scores - scores.max(axis=-1, keepdims=True))


def _softmax_attention_fwd(queries, keys, values, bias):
  out = _softmax_attention(queries, keys, values, bias)
  return out, (queries, keys, values, bias, out)


def _softmax_attention_bwd(residuals, d_out):
  queries, keys, values, bias, out = residuals
  # Recomputed, not stored; the normalisation 1/l is folded into small operands
  # so the normalised weights are never materialised.
  weights = _unnormalized_weights(queries, keys, bias)
  inv_total = 1.0 / weights.sum(axis=-1, keepdims=True)  # [N, bq, 1]
  d_weights = _batched_dot(d_out, values, contract=(2, 2))
  d_scores = weights * ((d_weights - (d_out * out).sum(axis=-1, keepdims=True)) * inv_total)
  d_queries = _batched_dot(d_scores, keys, contract=(2, 1))
  # dk = ds^T q and dv = p^T do contract over queries, a form XLA:CPU runs several
  # times slower; computing dk^T = q^T ds from a materialised q^T avoids it (the
  # barriers stop XLA folding the transposes back into the dots).
  queries_t, d_out_t = jax.lax.optimization_barrier(
      (queries.swapaxes(1, 2), (d_out * inv_total).swapaxes(1, 2))
  )
  d_keys_t = _batched_dot(queries_t, d_scores, contract=(2, 1))
  d_values_t = _batched_dot(d_out_t, weights, contract=(2, 1))
  d_keys_t, d_values_t = jax.lax.optimization_barrier((d_keys_t, d_values_t))
  return d_queries, d_keys_t.swapaxes(1, 2), d_values_t.swapaxes(1, 2), None


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def _batched_dot(a, b, contract: tuple[int, int]):
  """`a [N, m, k]` times `b [N, ., .]` over one contracting dim each, batched over N."""
  return jax.lax.dot_general(
      a, b, (((contract[0],), (contract[1],)), ((0,), (0,))), precision=_HIGHEST
  )


def _q_positions(q_blocks: np.ndarray, block_q: int) -> np.ndarray:
  return q_blocks[:, None] * block_q + np.arange(block_q)  # [R, bq]


def _static_allowed(
    mask: Mask, table: BlockTable, any_partial: bool, q_pos, kv_pos, cells, real, kv_len: int
) -> np.ndarray:
  """What the host knows: `[R|1, bq|1, W]` bool for query positions `q_pos [R, bq]`.

  The rows visit key positions `kv_pos [R|1, 1, W]` of `table`'s tiles, whose
  cell words are `cells [R, 1, W, words]`; `real [R|1, W]` is False on table
  padding; keys at or past `kv_len` are padding.
  """
  static = real[:, None] & (kv_pos < kv_len)
  if any_partial:
    words = np.moveaxis(cells, -1, 0)  # words[w]: word w of every position's tile
    tile = (table.block_q, table.block_k)
    static = static & mask.tile_allowed(q_pos[:, :, None], kv_pos, words, tile, xp=np)
  return static


def _masking(static, q_pos, kv_pos, q_blocks, x: _Blocks):
  """`(bias, row_ok)` for rows of query blocks `q_blocks`, each None when it changes nothing.

  `bias` broadcasts to the scores' view `[B, H, R, bq, W]` (0 allowed, `_MASKED`
  not); `row_ok` to `[B, H, R, bq, 1]` (the query has an allowed key). The host's
  `static [R|1, bq|1, W]` is one constant; `kv_lengths` and segment ids add terms.
  """
  bias = None if static.all() else _bias(static)[None, None]
  has_key = static.any(axis=-1)  # [R|1, bq|1]
  row_ok = None if has_key.all() else has_key[None, None, ..., None]
  key_ok = None
  if x.kv_lengths is not None:
    key_ok = jnp.asarray(kv_pos) < x.kv_lengths[:, None, None, None]  # [B, R|1, 1, W]
    bias = _add(bias, _bias(key_ok)[:, None])
  if x.q_segments is not None:
    q_seg = x.q_segments.reshape(x.q_segments.shape[0], -1, q_pos.shape[-1])[
        :, q_blocks
    ]  # [B, R, bq]
    same = q_seg[..., None] == x.kv_segments[:, kv_pos[:, 0]][:, :, None]  # [B, R, bq, W]
    bias = _add(bias, _bias(same)[:, None])
    allowed = _and(same & jnp.asarray(static), key_ok)
    row_ok = allowed.any(axis=-1)[:, None, ..., None]
  elif key_ok is not None:
    # A query keeps a key iff its first statically allowed key lies inside the length.
    first = np.where(static, kv_pos, np.iinfo(np.int32).max).min(axis=-1)  # [R|1, bq|1]
    row_ok = _and(row_ok, (first < x.kv_lengths[:, None, None])[:, None, ..., None])
  return bias, row_ok


def _bias(allowed):
  """0 where allowed, `_MASKED` elsewhere, float32; numpy in, numpy out."""
  xp = np if isinstance(allowed, np.ndarray) else jnp
  return xp.where(allowed, np.float32(0), np.float32(_MASKED))


def _merge_axes(a, view: tuple[int, ...], groups: tuple[tuple[int, ...], ...]):
  """Reshape `a` (broadcastable to `view`) to one axis per group of `view`'s axes.

  A group along which `a` is constant stays size 1 (broadcast later, for free);
  otherwise `a` is broadcast along the whole group first.
  """
  xp = np if isinstance(a, np.ndarray) else jnp
  shape = list(a.shape)
  for group in groups:
    if any(shape[axis] != 1 for axis in group):
      for axis in group:
        shape[axis] = view[axis]
  merged = [int(np.prod([shape[axis] for axis in group])) for group in groups]
  return xp.broadcast_to(a, shape).reshape(merged)


def _add(a, b):
  return b if a is None else a + b


def _and(a, b):
  return b if a is None else a & b


def _to_blocks(x, block: int):
  """`[B, L, H, D]` -> `[B, H, nb, block, D]`, zero-padding L to a multiple of `block`."""
  batch, length, heads, dim = x.shape
  padded = -(-length // block) * block
  x = jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0)))
  return x.reshape(batch, padded // block, block, heads, dim).transpose(0, 3, 1, 2, 4)


def _from_blocks(x, length: int):
  """`[B, H, nb, block, D]` -> `[B, length, H, D]`."""
  batch, heads, nb, block, dim = x.shape
  return x.transpose(0, 2, 3, 1, 4).reshape(batch, nb * block, heads, dim)[:, :length]


def _visits_every_block_in_order(table: BlockTable) -> bool:
  full_rows = table.kv_count == table.num_kv_blocks
  return (
      bool(full_rows.all())
      and table.kv_index.shape[0] == 1
      and table.kv_index.shape[-1] == table.num_kv_blocks
  )


def _pad_segments(ids, length: int):
  if ids is None:
    return None
  return jnp.pad(ids, ((0, 0), (0, length - ids.shape[1])), constant_values=-1)
