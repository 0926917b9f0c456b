"""`evaluate`: the LAReQA report (multilingual mAP, language bias, language matrices).

The report is a plain JSON-serialisable dict laid out as in DESIGN.md
("jxr.eval"). Metrics come from the ranks of relevant candidates only (see
`jxr.eval.metrics` for the rank, tie and AP conventions); scores are exact
float32 cosines computed in query chunks by `jxr.eval.scoring`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jxr.data.task import RetrievalTask
from jxr.eval import metrics
from jxr.eval.scoring import RelevantRanks, l2_normalise, relevant_ranks

MATRIX_RECALL_K = (1, 10)


def _check_embeddings(name: str, emb: Any, rows: int, rows_from: str) -> np.ndarray:
  x = np.asarray(emb)
  if x.ndim != 2:
    raise ValueError(f"{name}: expected a 2-D array [rows, dim], got shape {x.shape}")
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
  if x.shape[0] != rows:
    raise ValueError(f"{name}: expected {rows} rows ({rows_from}), got {x.shape[0]}")
  if x.shape[1] == 0:
    raise ValueError(f"{name}: expected a positive embedding dimension, got shape {x.shape}")
  finite = np.isfinite(x).all(axis=1)
  if not finite.all():
    bad = np.flatnonzero(~finite)
    raise ValueError(f"{name}: {len(bad)} rows hold NaN or inf (first: row {bad[0]})")
  zero = ~np.any(x != 0, axis=1)
  if zero.any():
    bad = np.flatnonzero(zero)
    raise ValueError(f"{name}: {len(bad)} rows are zero vectors, cosine is undefined (first: row {bad[0]})")
  return x


def _check_k_values(k_values: Sequence[int]) -> tuple[int, ...]:
  try:
    ks = tuple(int(k) for k in k_values)
  except (TypeError, ValueError):
    raise ValueError(f"k_values: expected a sequence of positive ints, got {k_values!r}") from None
  if not ks or any(k < 1 for k in ks) or any(int(k) != k for k in k_values):
    raise ValueError(f"k_values: expected a non-empty sequence of positive ints, got {k_values!r}")
  return tuple(sorted(set(ks)))


def _language_ids(task: RetrievalTask) -> tuple[np.ndarray, np.ndarray]:
  index = {lang: i for i, lang in enumerate(task.languages)}
  ids = []
  for field in ("query_lang", "cand_lang"):
    column = np.asarray(getattr(task, field))
    unknown = sorted(set(column.tolist()) - set(index))
    if unknown:
      raise ValueError(f"task.{field}: languages {unknown} are not in task.languages {list(task.languages)}")
    ids.append(np.array([index[lang] for lang in column.tolist()], dtype=np.int64))
  return ids[0], ids[1]


def _check_relevance(task: RetrievalTask) -> None:
  if task.num_queries == 0 or task.num_candidates == 0:
    raise ValueError(
        f"task: expected queries and candidates, got {task.num_queries} queries and {task.num_candidates} candidates"
    )
  indices = np.asarray(task.rel_indices)
  if len(indices) and (indices.min() < 0 or indices.max() >= task.num_candidates):
    raise ValueError(f"task.rel_indices: expected candidate indices in [0, {task.num_candidates})")
  empty = np.flatnonzero(np.diff(task.rel_indptr) == 0)
  if len(empty):
    raise ValueError(
        f"task: {len(empty)} queries have no relevant candidate (first: row {empty[0]},"
        f" id {str(task.query_id[empty[0]])!r}); AP is undefined for them"
    )


def _mean(values: np.ndarray) -> float | None:
  return float(np.mean(values)) if len(values) else None


def _multilingual(
    ranks: RelevantRanks, query_lang: np.ndarray, languages: Sequence[str], k_values: tuple[int, ...]
) -> tuple[dict[str, Any], np.ndarray]:
  m = metrics.query_metrics(ranks.pooled, ranks.valid, k_values=k_values)
  per_language = {}
  for i, lang in enumerate(languages):
    rows = query_lang == i
    per_language[lang] = {
        "map": _mean(m["ap"][rows]),
        "map_at_20": _mean(m["ap_at_cutoff"][rows]),
        "recall": {str(k): _mean(m["recall"][k][rows]) for k in k_values},
        "num_queries": int(rows.sum()),
    }
  summary = {
      "map": _mean(m["ap"]),
      "map_at_20": _mean(m["ap_at_cutoff"]),
      "mrr": _mean(m["rr"]),
      "ndcg_at_10": _mean(m["ndcg"]),
      "recall": {str(k): _mean(m["recall"][k]) for k in k_values},
      "per_language": per_language,
  }
  return summary, m["ap"]


def _bias(
    ranks: RelevantRanks, query_lang: np.ndarray, cand_lang: np.ndarray, languages: Sequence[str]
) -> tuple[dict[str, Any], np.ndarray]:
  distance = metrics.rank_distance(ranks.pooled, ranks.valid)
  per_language = {lang: _mean(distance[query_lang == i]) for i, lang in enumerate(languages)}
  present = [v for v in per_language.values() if v is not None]
  summary = {
      "rank_distance": _mean(np.array(present)),
      "rank_distance_per_language": per_language,
      "top1_same_language": _mean(cand_lang[ranks.top1] == query_lang),
  }
  return summary, distance


def _matrices(ranks: RelevantRanks, query_lang: np.ndarray, cand_lang: np.ndarray, languages: Sequence[str]):
  """Query language x candidate language cells, each over its own language pool."""
  n = len(languages)
  cells = {"map": [[None] * n for _ in range(n)], "mrr": [[None] * n for _ in range(n)]}
  recall = {str(k): [[None] * n for _ in range(n)] for k in MATRIX_RECALL_K}
  counts = [[0] * n for _ in range(n)]
  rel_lang = cand_lang[ranks.candidate]
  for col in range(n):
    in_pool = ranks.valid & (rel_lang == col)
    m = metrics.query_metrics(ranks.within_language, in_pool, k_values=MATRIX_RECALL_K)
    has_relevant = in_pool.any(axis=1)
    for row in range(n):
      rows = has_relevant & (query_lang == row)
      counts[row][col] = int(rows.sum())
      cells["map"][row][col] = _mean(m["ap"][rows])
      cells["mrr"][row][col] = _mean(m["rr"][rows])
      for k in MATRIX_RECALL_K:
        recall[str(k)][row][col] = _mean(m["recall"][k][rows])
  return {"languages": list(languages), **cells, "recall": recall, "num_queries": counts}


def _summary(matrices: dict[str, Any], multi_map: float | None) -> dict[str, float | None]:
  grid = matrices["map"]
  n = len(grid)
  mono = [grid[i][i] for i in range(n) if grid[i][i] is not None]
  cross = [grid[i][j] for i in range(n) for j in range(n) if i != j and grid[i][j] is not None]
  return {"mono": _mean(np.array(mono)), "cross": _mean(np.array(cross)), "multi": multi_map}


def evaluate(
    task: RetrievalTask,
    query_emb: np.ndarray,
    cand_emb: np.ndarray,
    *,
    k_values: Sequence[int] = (1, 5, 10, 20),
    chunk_size: int | None = None,
) -> dict[str, Any]:
  """Evaluates embeddings on a retrieval task; returns the report dict (DESIGN.md).

  Args:
    task: queries, candidates and relevance.
    query_emb: [task.num_queries, dim] query embeddings (any scale; cosine is used).
    cand_emb: [task.num_candidates, dim] candidate embeddings.
    k_values: cutoffs of the multilingual recall@k.
    chunk_size: queries scored per device per step (default: a ~8 MiB score block).

  Raises:
    ValueError: embeddings of the wrong shape, with NaN/inf or zero rows;
      a task with queries without relevant candidates or unknown languages.
  """
  if not isinstance(task, RetrievalTask):
    raise ValueError(f"task: expected a jxr.data.RetrievalTask, got {type(task).__name__}")
  ks = _check_k_values(k_values)
  if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
    raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
  queries = _check_embeddings("query_emb", query_emb, task.num_queries, "task.num_queries")
  cands = _check_embeddings("cand_emb", cand_emb, task.num_candidates, "task.num_candidates")
  if queries.shape[1] != cands.shape[1]:
    raise ValueError(f"cand_emb: expected dimension {queries.shape[1]} (as query_emb), got {cands.shape[1]}")
  query_lang, cand_lang = _language_ids(task)
  _check_relevance(task)

  ranks = relevant_ranks(
      l2_normalise(queries),
      l2_normalise(cands),
      cand_lang,
      np.asarray(task.rel_indptr),
      np.asarray(task.rel_indices),
      chunk_size=chunk_size,
  )
  languages = list(task.languages)
  multilingual, ap = _multilingual(ranks, query_lang, languages, ks)
  bias, distance = _bias(ranks, query_lang, cand_lang, languages)
  matrices = _matrices(ranks, query_lang, cand_lang, languages)
  return {
      "dataset": task.name,
      "languages": languages,
      "num_queries": task.num_queries,
      "num_candidates": task.num_candidates,
      "multilingual": multilingual,
      "bias": bias,
      "matrices": matrices,
      "summary": _summary(matrices, multilingual["map"]),
      "per_query": {
          "query_id": [str(q) for q in np.asarray(task.query_id).tolist()],
          "lang": [str(lang) for lang in np.asarray(task.query_lang).tolist()],
          "ap": ap.tolist(),
          "rank_distance": distance.tolist(),
      },
  }
