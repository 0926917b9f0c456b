"""Test oracle: masks built straight from docs/DESIGN.md's formulas, attention in float64 numpy.

Nothing here imports `pallas_kernels`, so a bug in `masks.py` or the
reference cannot hide in the expected values too.

    allowed = formula_mask("local", 40, 40, left=3, right=0)          # bool [1, Lq, Lk]
    allowed = full_mask(allowed, kv_lengths=lengths)                   # bool [B, H', Lq, Lk]
    out = oracle_attention(q, k, v, allowed, scale)                    # float64 [B, Lq, H, D]
    out, dq, dk, dv = oracle_vjp(q, k, v, allowed, scale, d_out)       # float64

Formulas (head h, query i, key j):
  dense                          true
  local(left, right)             (left is None or j >= i - left) and (right is None or j <= i + right)
  block_sparse(layout, bq, bk)   layout[h, i // bq, j // bk]   (layout [nqb, nkb] or [H, nqb, nkb])
then `and j < kv_lengths[b]` and `and q_seg[b, i] == kv_seg[b, j]` when given.
"""

from __future__ import annotations

import numpy as np


def formula_mask(
    kind: str,
    q_len: int,
    kv_len: int,
    *,
    left: int | None = None,
    right: int | None = None,
    layout=None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> np.ndarray:
  """bool `[H or 1, Lq, Lk]` for `kind` in ("dense", "local", "block_sparse")."""
  i = np.arange(q_len)[:, None]
  j = np.arange(kv_len)[None, :]
  if kind == "dense":
    return np.ones((1, q_len, kv_len), bool)
  if kind == "local":
    ok = np.ones((q_len, kv_len), bool)
    if left is not None:
      ok &= j >= i - left
    if right is not None:
      ok &= j <= i + right
    return ok[None]
  if kind == "block_sparse":
    layout = np.asarray(layout, bool)
    if layout.ndim == 2:
      layout = layout[None]
    block_k = block_q if block_k is None else block_k
    return layout[:, i // block_q, j // block_k]
  raise ValueError(f"kind: expected 'dense', 'local' or 'block_sparse', got {kind!r}")


def full_mask(
    mask: np.ndarray, *, kv_lengths=None, q_segment_ids=None, kv_segment_ids=None
) -> np.ndarray:
  """bool `[B or 1, H', Lq, Lk]`: a `formula_mask` with padding and segments applied."""
  allowed = np.asarray(mask, bool)[None]
  kv_len = allowed.shape[-1]
  if kv_lengths is not None:
    lengths = np.asarray(kv_lengths)
    allowed = allowed & (np.arange(kv_len)[None, None, None, :] < lengths[:, None, None, None])
  if q_segment_ids is not None:
    q_seg, kv_seg = np.asarray(q_segment_ids), np.asarray(kv_segment_ids)
    allowed = allowed & (q_seg[:, None, :, None] == kv_seg[:, None, None, :])
  return allowed


def _as_f64(*arrays):
  return [np.asarray(np.asarray(x, np.float32), np.float64) for x in arrays]


def _probs(q, k, allowed, scale):
  """Masked softmax `[B, H, Lq, Lk]` in float64; rows with no allowed key are zero."""
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  allowed = np.broadcast_to(np.asarray(allowed, bool), scores.shape)
  scores = np.where(allowed, scores, -np.inf)
  row_max = scores.max(axis=-1, keepdims=True)
  row_max = np.where(np.isfinite(row_max), row_max, 0.0)
  weights = np.where(allowed, np.exp(scores - row_max), 0.0)
  total = weights.sum(axis=-1, keepdims=True)
  return weights / np.where(total > 0, total, 1.0)


def oracle_attention(q, k, v, allowed, scale: float) -> np.ndarray:
  """`softmax(q k^T * scale, allowed) v` in float64 for `[B, L, H, D]` inputs.

  `allowed` is bool broadcastable to `[B, H, Lq, Lk]` (e.g. from `full_mask`).
  Inputs of any float dtype (bfloat16 included) are read exactly.
  """
  q, k, v = _as_f64(q, k, v)
  return np.einsum("bhqk,bkhd->bqhd", _probs(q, k, allowed, scale), v)


def oracle_vjp(q, k, v, allowed, scale: float, d_out):
  """`(out, dq, dk, dv)` in float64: the output and its vjp with cotangent `d_out`.

  Rows with no allowed key have zero probabilities, so they give zero gradient
  to q and send none to k and v.
  """
  q, k, v, d_out = _as_f64(q, k, v, d_out)
  probs = _probs(q, k, allowed, scale)
  out = np.einsum("bhqk,bkhd->bqhd", probs, v)
  d_probs = np.einsum("bqhd,bkhd->bhqk", d_out, v)
  d_scores = probs * (d_probs - (d_probs * probs).sum(axis=-1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", d_scores, k) * scale
  dk = np.einsum("bhqk,bqhd->bkhd", d_scores, q) * scale
  dv = np.einsum("bhqk,bqhd->bkhd", probs, d_out)
  return out, dq, dk, dv


def random_layout(
    rng: np.random.Generator, shape, density: float = 0.5, empty_rows: int = 0
) -> np.ndarray:
  """A random bool layout `[..., nqb, nkb]`; the first `empty_rows` query-block rows all False."""
  layout = rng.random(shape) < density
  if empty_rows:
    layout[..., :empty_rows, :] = False
  return layout
