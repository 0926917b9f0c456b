"""Blocked attention in plain jnp: visit only the key blocks the mask needs.

For each query block the block table lists the key blocks to visit. Query
blocks are grouped by how many blocks they visit (so one global row does not
make every row dense); per group we gather the visited key blocks
(`[B, H, rows, visits, block_k, D]`) and run one masked softmax per query block
over them. Time and memory follow the number of visited tiles, not `Lq x Lk`,
and autodiff gives the backward pass (gathers transpose to scatter-adds).
Element masks are evaluated on the host, once per visited tile, from the same
`Mask.tile_allowed` the Pallas kernel uses.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.masks import BlockTable, Mask

_HIGHEST = jax.lax.Precision.HIGHEST
# At most this many row groups (each is its own set of dots): padding waste vs op count.
_MAX_GROUPS = 4


def blocked_attention(q, k, v, mask: Mask, *, kv_lengths, q_segment_ids, kv_segment_ids,
                      scale: float, block_sizes: BlockSizes) -> jax.Array:
  """`[B, Lq, H, D]` attention over the tiles `mask` visits; see `pallas_kernels.attention`.

  `kv_lengths` may be None (no padding), which keeps unpadded inputs free of masking work.
  """
  q_len, kv_len = q.shape[1], k.shape[1]
  table = mask.block_table(q_len, kv_len, block_sizes.block_q, block_sizes.block_k, q.shape[2])
  if table.num_visits == 0:
    return jnp.zeros_like(q)

  # Compute in float32 (CPU matmuls in bf16 are slow and the contract wants f32 statistics).
  f32 = jnp.float32
  blocks = _Blocks(q=_to_blocks(q.astype(f32) * scale, table.block_q),
                   k=_to_blocks(k.astype(f32), table.block_k),
                   v=_to_blocks(v.astype(f32), table.block_k),
                   kv_len=kv_len, kv_lengths=kv_lengths,
                   q_segments=_pad_segments(q_segment_ids, table.num_q_blocks * table.block_q),
                   kv_segments=_pad_segments(kv_segment_ids, table.num_kv_blocks * table.block_k))
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
  block_k = table.block_k
  kv_pos = np.arange(table.num_kv_blocks * block_k)[None, None, :]  # [1, 1, Lk_pad]
  bits = table.kv_bits[0][:, None, :].repeat(block_k, axis=-1)  # [nqb, 1, Lk_pad]
  allowed = _allowed(mask, table.any_partial, _q_positions(np.arange(nqb), block_q), kv_pos, bits,
                     np.ones((1, 1), bool), np.arange(nqb), x)
  out = _attend(x.q.reshape(batch * heads, -1, dim), x.k.reshape(batch * heads, -1, dim),
                x.v.reshape(batch * heads, -1, dim), (batch, heads, nqb, block_q, 1, kv_pos.shape[-1]),
                allowed)
  return out


def _sparse(mask: Mask, table: BlockTable, x: _Blocks):
  """Query blocks grouped by visit count; each group gathers only what it visits."""
  batch, heads, nqb, block_q, dim = x.q.shape
  block_k = table.block_k
  per_head = table.kv_index.shape[0] > 1
  width = table.kv_index.shape[-1]
  index = table.kv_index.reshape(-1, width)  # rows are (h', qb) pairs
  count = table.kv_count.reshape(-1)
  bits = table.kv_bits.reshape(-1, width)
  partial = table.kv_partial.reshape(-1, width)
  outs, order = [], []
  for rows, visits in _row_groups(count):
    order.append(rows)
    head, qb = np.divmod(rows, nqb)
    if visits == 0:  # rows with nothing to visit output zeros
      outs.append(jnp.zeros((batch, 1 if per_head else heads, len(rows), block_q, dim), jnp.float32))
      continue
    visited = index[rows, :visits]  # [R, V]
    if per_head:
      queries = x.q[:, head, qb][:, None]  # [B, 1, R, bq, D]
      keys, values = (blocks[:, head[:, None], visited][:, None] for blocks in (x.k, x.v))  # [B, 1, R, V, bk, D]
    else:
      queries = x.q[:, :, qb]  # [B, H, R, bq, D]
      keys, values = x.k[:, :, visited], x.v[:, :, visited]  # [B, H, R, V, bk, D]
    kv_pos = visited[..., None] * block_k + np.arange(block_k)  # [R, V, bk]
    real = np.arange(visits) < count[rows, None]  # [R, V]
    allowed = _allowed(mask, bool(partial[rows, :visits].any()), _q_positions(qb, block_q), kv_pos,
                       bits[rows, :visits, None], real, qb, x)
    shape = (*queries.shape[:3], block_q, visits, block_k)
    outs.append(_attend(queries.reshape(-1, block_q, dim), keys.reshape(-1, visits * block_k, dim),
                        values.reshape(-1, visits * block_k, dim), shape, allowed))
  # Put the groups' rows back in (h', qb) order.
  out = jnp.concatenate(outs, axis=2)[:, :, np.argsort(np.concatenate(order))]
  if per_head:
    return out.reshape(batch, heads, nqb, block_q, dim)
  return out


def _row_groups(count: np.ndarray) -> list[tuple[np.ndarray, int]]:
  """Rows grouped by visit count: `(rows, visits)` with `visits` the group's largest count.

  Adjacent counts merge, cheapest padding first, until at most `_MAX_GROUPS` remain;
  rows that visit nothing form a group of their own.
  """
  groups = [(np.flatnonzero(count == c), int(c)) for c in np.unique(count) if c]
  while len(groups) > _MAX_GROUPS:
    # Merging group i into i + 1 pads group i's rows up to group i + 1's count.
    waste = [len(rows) * (groups[i + 1][1] - visits) for i, (rows, visits) in enumerate(groups[:-1])]
    i = int(np.argmin(waste))
    merged = (np.concatenate([groups[i][0], groups[i + 1][0]]), groups[i + 1][1])
    groups[i:i + 2] = [merged]
  empty = np.flatnonzero(count == 0)  # kept apart: they cost nothing
  return groups + [(empty, 0)] if empty.size else groups


def _attend(queries, keys, values, shape, allowed):
  """Masked softmax attention on 3-D operands; `shape` is the 6-D view of the scores.

  Dots on 3-D operands (one batch dim, one contracting dim): XLA:CPU runs these
  several times faster than the same einsum with several batch dims.
  """
  scores = _batched_dot(queries, keys, contract=(2, 2)).reshape(shape)  # [B, H, R, bq, V, W]
  if allowed is not None:
    scores = jnp.where(allowed, scores, -jnp.inf)
  row_max = scores.max(axis=(-2, -1), keepdims=True)
  # Rows with no allowed key: max is -inf; shift by 0 so exp gives exact zeros.
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  weights = jnp.exp(scores - row_max)
  total = weights.sum(axis=(-2, -1))[..., None]
  out = _batched_dot(weights.reshape(queries.shape[0], queries.shape[1], -1), values, contract=(2, 1))
  out = out.reshape(*shape[:4], queries.shape[-1])
  return out / jnp.where(total > 0, total, 1.0)


def _batched_dot(a, b, contract: tuple[int, int]):
  """`a [N, m, k]` times `b [N, ., .]` over one contracting dim each, batched over N."""
  return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((0,), (0,))), precision=_HIGHEST)


def _q_positions(q_blocks: np.ndarray, block_q: int) -> np.ndarray:
  return q_blocks[:, None] * block_q + np.arange(block_q)  # [R, bq]


def _allowed(mask: Mask, any_partial: bool, q_pos, kv_pos, bits, real, q_blocks, x: _Blocks):
  """bool broadcastable to the scores `[B, H, R, bq, V, W]`, or None when nothing is masked.

  Rows `R` are query blocks `q_blocks` (positions `q_pos [R, bq]`) visiting key
  positions `kv_pos [R|1, V, W]` with layout bits `bits [R, V, W|1]` and
  `real [R|1, V]` (a real visit, not table padding). What is known on the host
  (the mask's predicate on partial tiles, table padding, keys past `kv_len`)
  is folded into one constant.
  """
  static = real[:, None, :, None] & (kv_pos < x.kv_len)[:, None]  # [R, 1, V, W]
  if any_partial:
    static = static & mask.tile_allowed(q_pos[:, :, None, None], kv_pos[:, None], bits[:, None], xp=np)
  allowed = None if static.all() else jnp.asarray(static)[None, None]
  if x.kv_lengths is not None:
    key_ok = jnp.asarray(kv_pos) < x.kv_lengths[:, None, None, None]  # [B, R|1, V, W]
    allowed = _and(allowed, key_ok[:, None, :, None])
  if x.q_segments is not None:
    q_seg = x.q_segments.reshape(x.q_segments.shape[0], -1, q_pos.shape[-1])[:, q_blocks]  # [B, R, bq]
    kv_seg = x.kv_segments[:, kv_pos]  # [B, R|1, V, W]
    allowed = _and(allowed, q_seg[:, None, :, :, None, None] == kv_seg[:, None, :, None])
  return allowed


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
  return (bool(full_rows.all()) and table.kv_index.shape[0] == 1
          and table.kv_index.shape[-1] == table.num_kv_blocks)


def _pad_segments(ids, length: int):
  if ids is None:
    return None
  return jnp.pad(ids, ((0, 0), (0, length - ids.shape[1])), constant_values=-1)
