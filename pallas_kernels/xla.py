"""Blocked attention in plain jnp: visit only the key blocks the mask needs.

For each query block the block table lists the key blocks to visit; we gather
those blocks (`[B, H, nqb, visits, block_k, D]`) and run one masked softmax per
query block over its gathered keys. Time and memory follow the number of
visited tiles, not `Lq x Lk`, and autodiff gives the backward pass (the gather
transposes to a scatter-add). Element masks are evaluated on the host, once per
visited tile, from the same `Mask.tile_allowed` the Pallas kernel uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.masks import BlockTable, Mask

_HIGHEST = jax.lax.Precision.HIGHEST


def blocked_attention(q, k, v, mask: Mask, *, kv_lengths, q_segment_ids, kv_segment_ids,
                      scale: float, block_sizes: BlockSizes) -> jax.Array:
  """`[B, Lq, H, D]` attention over the tiles `mask` visits; see `pallas_kernels.attention`.

  `kv_lengths` may be None (no padding), which keeps unpadded inputs free of masking work.
  """
  batch, q_len, num_heads, head_dim = q.shape
  kv_len = k.shape[1]
  block_q, block_k = block_sizes.block_q, block_sizes.block_k
  table = mask.block_table(q_len, kv_len, block_q, block_k, num_heads)
  if table.num_visits == 0:
    return jnp.zeros_like(q)

  # Compute in float32 (CPU matmuls in bf16 are slow and the contract wants f32 statistics).
  f32 = jnp.float32
  q_blocks = _to_blocks(q.astype(f32) * scale, block_q)  # [B, H, nqb, bq, D]
  k_blocks = _to_blocks(k.astype(f32), block_k)  # [B, H, nkb, bk, D]
  v_blocks = _to_blocks(v.astype(f32), block_k)

  num_q_blocks = table.num_q_blocks
  if _visits_every_block_in_order(table):
    # Dense: every query block sees all key blocks; a gather would only copy K per block.
    # Treat the whole key range as one visit of width Lk_pad.
    keys = k_blocks.reshape(batch * num_heads, -1, head_dim)
    values = v_blocks.reshape(batch * num_heads, -1, head_dim)
    queries = q_blocks.reshape(batch * num_heads, -1, head_dim)
    kv_pos = np.arange(table.num_kv_blocks * block_k)[None, None, None, :]  # [1, 1, 1, Lk_pad]
    bits = table.kv_bits[:, :, None, :].repeat(block_k, axis=-1)  # [H', nqb, 1, Lk_pad]
    real = np.ones((1, 1, 1), bool)
  else:
    visits = table.kv_index.shape[-1]
    keys = _gather_visited(k_blocks, table).reshape(-1, visits * block_k, head_dim)
    values = _gather_visited(v_blocks, table).reshape(-1, visits * block_k, head_dim)
    queries = q_blocks.reshape(-1, block_q, head_dim)
    kv_pos = table.kv_index[..., None] * block_k + np.arange(block_k)  # [H', nqb, V, bk]
    bits = table.kv_bits[..., None]  # [H', nqb, V, 1]
    real = np.arange(visits) < table.kv_count[..., None]  # [H', nqb, V]

  # Dots on 3-D operands (one batch dim, one contracting dim): XLA:CPU runs
  # these several times faster than the same einsum with several batch dims.
  scores = _batched_dot(queries, keys, contract=(2, 2))
  scores = scores.reshape(batch, num_heads, num_q_blocks, block_q, *kv_pos.shape[-2:])
  allowed = _allowed(mask, table, kv_pos, bits, real, kv_len, kv_lengths, q_segment_ids, kv_segment_ids)
  if allowed is not None:
    scores = jnp.where(allowed, scores, -jnp.inf)
  row_max = scores.max(axis=(-2, -1), keepdims=True)
  # Rows with no allowed key: max is -inf; shift by 0 so exp gives exact zeros.
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  weights = jnp.exp(scores - row_max)
  total = weights.sum(axis=(-2, -1))[..., None]
  weights = weights.reshape(queries.shape[0], queries.shape[1], -1)
  out = _batched_dot(weights, values, contract=(2, 1))
  out = out.reshape(batch, num_heads, num_q_blocks, block_q, head_dim)
  out = out / jnp.where(total > 0, total, 1.0)
  return _from_blocks(out, q_len).astype(q.dtype)


def _batched_dot(a, b, contract: tuple[int, int]):
  """`a [N, m, k]` times `b [N, ., .]` over one contracting dim each, batched over N."""
  return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((0,), (0,))), precision=_HIGHEST)


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
  return bool(full_rows.all()) and table.kv_index.shape[-1] == table.num_kv_blocks


def _gather_visited(blocks, table: BlockTable):
  """`[B, H, nkb, bk, D]` -> `[B, H, nqb, V, bk, D]`: the key blocks each query block visits."""
  index = table.kv_index  # [H', nqb, V]
  if index.shape[0] == 1:
    return jnp.take(blocks, index[0], axis=2)
  heads = np.arange(index.shape[0])[:, None, None]
  return blocks[:, heads, index]


def _allowed(mask: Mask, table: BlockTable, kv_pos, bits, real, kv_len: int, kv_lengths,
             q_segment_ids, kv_segment_ids):
  """bool broadcastable to the scores `[B, H, nqb, bq, V, W]`, or None when nothing is masked.

  `kv_pos [H'|1, nqb|1, V, W]` are the key positions of each visit, `bits` their
  layout bits, `real [H'|1, nqb|1, V]` whether a visit is real or table padding.
  Whatever is known on the host (the mask's own predicate on partial tiles,
  table padding, keys past `kv_len`) is folded into one constant.
  """
  block_q = table.block_q
  q_pos = (np.arange(table.num_q_blocks) * block_q)[:, None] + np.arange(block_q)  # [nqb, bq]
  static = real[:, :, None, :, None] & (kv_pos < kv_len)[:, :, None, :, :]
  if table.any_partial:
    static = static & mask.tile_allowed(q_pos[None, :, :, None, None], kv_pos[:, :, None, :, :],
                                        bits[:, :, None, :, :], xp=np)
  allowed = None if static.all() else jnp.asarray(static)[None]  # [1, H'|1, nqb|1, bq|1, V, W]
  if kv_lengths is not None:
    key_ok = jnp.asarray(kv_pos)[None] < kv_lengths[:, None, None, None, None]  # [B, ., ., V, W]
    allowed = _and(allowed, key_ok[:, :, :, None, :, :])
  if q_segment_ids is not None:
    q_seg = _pad_to(q_segment_ids, table.num_q_blocks * block_q).reshape(-1, table.num_q_blocks, block_q)
    kv_seg = _pad_to(kv_segment_ids, table.num_kv_blocks * table.block_k)[:, kv_pos]  # [B, ., ., V, W]
    allowed = _and(allowed, q_seg[:, None, :, :, None, None] == kv_seg[:, :, :, None, :, :])
  return allowed


def _and(a, b):
  return b if a is None else a & b


def _pad_to(ids, length: int):
  return jnp.pad(ids, ((0, 0), (0, length - ids.shape[1])), constant_values=-1)
