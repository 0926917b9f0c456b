"""Per-query retrieval metrics from the ranks of the relevant candidates (numpy).

A candidate's *rank* is one plus the number of candidates scoring strictly
higher, so tied candidates share a rank. When several relevant candidates tie,
they are placed in consecutive *positions* from their shared rank (the tie is
broken in favour of relevant candidates, among themselves in any order): ranks
`[1, 1, 5]` become positions `[1, 2, 5]`. The precision at the i-th relevant
candidate is `i / position`; the tied relevant candidates' precisions average
to one shared value, so AP is unchanged by how they are ordered. Without
relevant-relevant ties this is docs/DESIGN.md's `#(relevant with rank <= r) / r`;
with them it stays <= 1 (the literal formula gives 11 for 11 tied answers).

Rank distance (arXiv 2408.10536) uses the ranks themselves: the largest minus
the smallest rank among a query's relevant candidates.

Inputs are padded `[n, R]` arrays with a `valid` mask, rows in any order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Sorts after every real rank; also keeps padded positions beyond every cutoff.
_PAD = np.iinfo(np.int64).max // 4


def positions(ranks: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Sorted positions `[n, R]` of the relevant candidates; padding sorts last.

  Args:
    ranks: int [n, R], 1 + #candidates scoring strictly higher.
    valid: bool [n, R].
  """
  sorted_ranks = np.sort(np.where(valid, ranks, _PAD), axis=1)
  slot = np.arange(sorted_ranks.shape[1])
  starts_group = np.ones(sorted_ranks.shape, dtype=bool)
  starts_group[:, 1:] = sorted_ranks[:, 1:] != sorted_ranks[:, :-1]
  group_start = np.maximum.accumulate(np.where(starts_group, slot, 0), axis=1)
  return sorted_ranks + (slot - group_start)


def _ideal_dcg(num_relevant: np.ndarray, cutoff: int) -> np.ndarray:
  gains = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, cutoff + 2)))])
  return gains[np.minimum(num_relevant, cutoff)]


def query_metrics(
    ranks: np.ndarray,
    valid: np.ndarray,
    *,
    k_values: Sequence[int] = (1, 5, 10, 20),
    map_cutoff: int = 20,
    ndcg_cutoff: int = 10,
) -> dict[str, np.ndarray | dict[int, np.ndarray]]:
  """AP, AP@cutoff, reciprocal rank, recall@k and nDCG@cutoff per query (float64 [n]).

  Rows without a valid entry get NaN. `ap_at_cutoff` divides by
  `min(#relevant, map_cutoff)` (XTREME-R's mAP@20); recall@k is the share of
  the relevant candidates at positions <= k.
  """
  num_relevant = valid.sum(axis=1)
  pos = positions(ranks, valid)
  slot_valid = np.arange(pos.shape[1])[None, :] < num_relevant[:, None]
  precision = np.where(slot_valid, (np.arange(pos.shape[1]) + 1) / pos, 0.0)
  with np.errstate(invalid="ignore", divide="ignore"):
    denom = num_relevant.astype(np.float64)
    ap = precision.sum(axis=1) / denom
    ap_cut = np.where(pos <= map_cutoff, precision, 0.0).sum(axis=1) / np.minimum(denom, map_cutoff)
    rr = np.where(num_relevant > 0, 1.0 / pos[:, 0], np.nan)
    recall = {int(k): (slot_valid & (pos <= k)).sum(axis=1) / denom for k in k_values}
    gain = np.where(slot_valid & (pos <= ndcg_cutoff), 1.0 / np.log2(pos + 1.0), 0.0)
    ndcg = gain.sum(axis=1) / _ideal_dcg(num_relevant, ndcg_cutoff)
  return {"ap": ap, "ap_at_cutoff": ap_cut, "rr": rr, "recall": recall, "ndcg": ndcg}


def rank_distance(ranks: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Largest minus smallest rank among each query's relevant candidates (float64 [n])."""
  top = np.where(valid, ranks, -_PAD).max(axis=1, initial=-_PAD)
  bottom = np.where(valid, ranks, _PAD).min(axis=1, initial=_PAD)
  return np.where(valid.any(axis=1), (top - bottom).astype(np.float64), np.nan)
