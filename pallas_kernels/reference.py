"""Dense attention with an explicit boolean mask: the oracle the kernels are tested against.

Quadratic in memory by design: it materialises the `Lq x Lk` mask from the mask
object (`Mask.dense`) and the full score matrix, in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.masks import DenseMask, Mask


def allowed_mask(
    mask: Mask,
    q_len: int,
    kv_len: int,
    num_heads: int,
    *,
    kv_lengths=None,
    q_segment_ids=None,
    kv_segment_ids=None,
) -> jax.Array:
  """bool `[B or 1, H or 1, Lq, Lk]`: the mask, padding and segments combined."""
  allowed = jnp.asarray(mask.dense(q_len, kv_len, num_heads))[None]
  if kv_lengths is not None:
    allowed = allowed & (jnp.arange(kv_len)[None, None, None, :] < kv_lengths[:, None, None, None])
  if q_segment_ids is not None:
    allowed = allowed & (q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :])
  return allowed


def reference_attention(
    q,
    k,
    v,
    mask: Mask = DenseMask(),
    *,
    kv_lengths=None,
    q_segment_ids=None,
    kv_segment_ids=None,
    scale: float | None = None,
) -> jax.Array:
  """`softmax(q k^T * scale, masked) v` for `[B, L, H, D]` inputs; rows with no key give zeros."""
  q_len, kv_len, num_heads, head_dim = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
  scale = head_dim**-0.5 if scale is None else scale
  allowed = allowed_mask(
      mask,
      q_len,
      kv_len,
      num_heads,
      kv_lengths=kv_lengths,
      q_segment_ids=q_segment_ids,
      kv_segment_ids=kv_segment_ids,
  )
  f32 = jnp.float32
  scores = (
      jnp.einsum(
          "bqhd,bkhd->bhqk", q.astype(f32), k.astype(f32), precision=jax.lax.Precision.HIGHEST
      )
      * scale
  )
  scores = jnp.where(allowed, scores, -jnp.inf)
  row_max = scores.max(axis=-1, keepdims=True)
  # A row with no allowed key has max -inf; shift it by 0 so exp gives exact zeros.
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  weights = jnp.exp(scores - row_max)
  total = weights.sum(axis=-1, keepdims=True)
  probs = weights / jnp.where(total > 0, total, 1.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(f32), precision=jax.lax.Precision.HIGHEST)
  return out.astype(q.dtype)
