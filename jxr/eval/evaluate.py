"""`evaluate`: the LAReQA report (multilingual mAP, language bias, language matrices).

The report is a plain JSON-serialisable dict (lists, floats, `None` for an
undefined mean):

- `dataset`, `languages` (task order: the matrices' rows and columns),
  `num_queries`, `num_candidates`;
- `multilingual`: the pooled ranking over every candidate (LAReQA): `map`,
  `map_at_20`, `mrr`, `ndcg_at_10`, `recall` {k: ...} and `per_language`
  {lang: {`map`, `map_at_20`, `recall`, `num_queries`}} by query language;
- `bias`: `rank_distance` (mean over query languages of the mean distance
  between a query's best and worst relevant rank), `rank_distance_normalised`
  (the same over `num_candidates`, so pools of different sizes compare),
  `rank_distance_per_language`, `top1_same_language`;
- `matrices`: query x candidate language cells, each ranking only the
  candidates of its column's language: `languages`, `map`, `mrr`,
  `recall` {"1", "10"}, `num_queries`;
- `summary` (arXiv 2408.10536): `mono` (mean diagonal mAP), `cross` (mean
  off-diagonal mAP), `multi_macro` (the paper's Mul.: mean over query
  languages of pooled mAP) and `multi_micro` (pooled mAP over all queries,
  LAReQA's mAP; differs from the macro one when languages have unequal
  numbers of queries);
- `per_query`, lists over query rows: `query_id`, `lang`, `article`,
  `paragraph` (see `paragraph_keys`), `ap` (pooled), `rank_distance` and
  `ap_by_language` (AP within each language's candidates, in `languages`
  order, `None` without a relevant candidate there: the values the
  `matrices.map` cells average).

`evaluate_pools` gives the report of several language pools from one set of
embeddings. Metrics come from the ranks of relevant candidates only (see
`jxr.eval.metrics` for the rank, tie and AP conventions); scores are exact
float32 cosines computed in query chunks by `jxr.eval.scoring`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jxr.data.splits import select
from jxr.data.task import RetrievalTask
from jxr.eval import metrics, schema
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
    raise ValueError(
        f"{name}: {len(bad)} rows are zero vectors, cosine is undefined (first: row {bad[0]})"
    )
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
      raise ValueError(
          f"task.{field}: languages {unknown} are not in task.languages {list(task.languages)}"
      )
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
    ranks: RelevantRanks,
    query_lang: np.ndarray,
    languages: Sequence[str],
    k_values: tuple[int, ...],
) -> tuple[schema.Multilingual, np.ndarray]:
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
    ranks: RelevantRanks,
    query_lang: np.ndarray,
    cand_lang: np.ndarray,
    languages: Sequence[str],
    num_candidates: int,
) -> tuple[schema.Bias, np.ndarray]:
  distance = metrics.rank_distance(ranks.pooled, ranks.valid)
  per_language = {lang: _mean(distance[query_lang == i]) for i, lang in enumerate(languages)}
  present = [v for v in per_language.values() if v is not None]
  mean_distance = _mean(np.array(present))
  summary = {
      "rank_distance": mean_distance,
      # Distances grow with the pool; over its size they compare across pools.
      "rank_distance_normalised": None if mean_distance is None else mean_distance / num_candidates,
      "rank_distance_per_language": per_language,
      "top1_same_language": _mean(cand_lang[ranks.top1] == query_lang),
  }
  return summary, distance


def _matrices(
    ranks: RelevantRanks, query_lang: np.ndarray, cand_lang: np.ndarray, languages: Sequence[str]
) -> tuple[schema.Matrices, np.ndarray]:
  """Query language x candidate language cells, each over its own language pool.

  Also returns the per-query AP within each language's candidates, float64
  [Q, len(languages)], NaN where the query has no relevant candidate there:
  cell (i, j) of `map` is the mean of column j over the queries of language i.
  """
  n = len(languages)
  cells = {"map": [[None] * n for _ in range(n)], "mrr": [[None] * n for _ in range(n)]}
  recall = {str(k): [[None] * n for _ in range(n)] for k in MATRIX_RECALL_K}
  counts = [[0] * n for _ in range(n)]
  ap_by_language = np.full((len(query_lang), n), np.nan)
  rel_lang = cand_lang[ranks.candidate]
  for col in range(n):
    in_pool = ranks.valid & (rel_lang == col)
    m = metrics.query_metrics(ranks.within_language, in_pool, k_values=MATRIX_RECALL_K)
    has_relevant = in_pool.any(axis=1)
    ap_by_language[:, col] = np.where(has_relevant, m["ap"], np.nan)
    for row in range(n):
      rows = has_relevant & (query_lang == row)
      counts[row][col] = int(rows.sum())
      cells["map"][row][col] = _mean(m["ap"][rows])
      cells["mrr"][row][col] = _mean(m["rr"][rows])
      for k in MATRIX_RECALL_K:
        recall[str(k)][row][col] = _mean(m["recall"][k][rows])
  matrices = {"languages": list(languages), **cells, "recall": recall, "num_queries": counts}
  return matrices, ap_by_language


def _summary(matrices: schema.Matrices, multilingual: schema.Multilingual) -> schema.Summary:
  """Mo., Cr. and Mul. as arXiv 2408.10536 defines them, plus LAReQA's pooled mAP."""
  grid = matrices["map"]
  n = len(grid)
  mono = [grid[i][i] for i in range(n) if grid[i][i] is not None]
  cross = [grid[i][j] for i in range(n) for j in range(n) if i != j and grid[i][j] is not None]
  per_language = [
      row["map"] for row in multilingual["per_language"].values() if row["map"] is not None
  ]
  return {
      "mono": _mean(np.array(mono)),
      "cross": _mean(np.array(cross)),
      "multi_macro": _mean(np.array(per_language)),
      "multi_micro": multilingual["map"],
  }


def paragraph_keys(task: RetrievalTask) -> list[str]:
  """A key of each query's answer paragraph, the same for every language of its question id.

  The key is `f"{article}/{k}"`, where the question's relevant candidate in the
  first language of `task.languages` in which it has a query lies in the k-th
  distinct `cand_context` (order of first appearance) among that language's
  candidates of `article` (the candidate's `cand_article`). Should that query
  have no relevant candidate of its own language, the next language is tried,
  then the first query's first relevant candidate. The keys let a cluster
  bootstrap resample paragraphs where a pool holds too few articles.
  """
  lang_order = {lang: i for i, lang in enumerate(task.languages)}
  query_lang = np.asarray(task.query_lang).tolist()
  cand_lang = np.asarray(task.cand_lang).tolist()
  cand_article = np.asarray(task.cand_article).tolist()
  cand_context = np.asarray(task.cand_context).tolist()
  paragraph_index: dict[tuple[str, str], dict[str, int]] = {}
  for lang, article, context in zip(cand_lang, cand_article, cand_context):
    contexts = paragraph_index.setdefault((lang, article), {})
    contexts.setdefault(context, len(contexts))

  rows_of: dict[str, list[int]] = {}
  for row, qid in enumerate(np.asarray(task.query_id).tolist()):
    rows_of.setdefault(qid, []).append(row)
  key_of: dict[str, str] = {}
  for qid, rows in rows_of.items():
    rows = sorted(rows, key=lambda r: lang_order.get(query_lang[r], len(lang_order)))
    own = (c for r in rows for c in task.relevant(r).tolist() if cand_lang[c] == query_lang[r])
    chosen = next(own, None)
    if chosen is None:
      chosen = int(task.relevant(rows[0])[0])
    article = cand_article[chosen]
    k = paragraph_index[(cand_lang[chosen], article)][cand_context[chosen]]
    key_of[qid] = f"{article}/{k}"
  return [key_of[qid] for qid in np.asarray(task.query_id).tolist()]


def _nullable_rows(values: np.ndarray) -> list[list[float | None]]:
  """A [n, m] float array as lists of floats, NaN as None (JSON has no NaN)."""
  return [[None if math.isnan(v) else v for v in row] for row in values.tolist()]


def embed_task(
    encoder,
    task: RetrievalTask,
    *,
    query_length: int | None = None,
    passage_length: int | None = None,
    contexts: bool = True,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
  """`(query_emb, cand_emb)` of a task from an encoder with `jxr.model.Encoder.encode`.

  Lengths default to the encoder's own; `contexts` encodes each candidate sentence with its
  paragraph (LAReQA's setting). Every caller that embeds a task goes through here, so a run and
  its re-evaluation (`python -m jxr.eval --run`) embed alike.
  """
  queries = encoder.encode(
      list(task.query_text), kind="query", batch_size=batch_size, max_length=query_length
  )
  cands = encoder.encode(
      list(task.cand_text),
      kind="passage",
      contexts=list(task.cand_context) if contexts else None,
      batch_size=batch_size,
      max_length=passage_length,
  )
  return np.asarray(queries), np.asarray(cands)


def evaluate(
    task: RetrievalTask,
    query_emb: np.ndarray,
    cand_emb: np.ndarray,
    *,
    k_values: Sequence[int] = (1, 5, 10, 20),
    chunk_size: int | None = None,
) -> schema.Report:
  """Evaluates embeddings on a retrieval task; returns the report (`jxr.eval.schema.Report`).

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
  _check_task(task)
  ks = _check_k_values(k_values)
  if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
    raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
  queries, cands = check_pair(task, query_emb, cand_emb)
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
  bias, distance = _bias(ranks, query_lang, cand_lang, languages, task.num_candidates)
  matrices, ap_by_language = _matrices(ranks, query_lang, cand_lang, languages)
  return {
      "dataset": task.name,
      "languages": languages,
      "num_queries": task.num_queries,
      "num_candidates": task.num_candidates,
      "multilingual": multilingual,
      "bias": bias,
      "matrices": matrices,
      "summary": _summary(matrices, multilingual),
      "per_query": {
          "query_id": [str(q) for q in np.asarray(task.query_id).tolist()],
          "lang": [str(lang) for lang in np.asarray(task.query_lang).tolist()],
          "article": [str(a) for a in np.asarray(task.query_article).tolist()],
          "paragraph": paragraph_keys(task),
          "ap": ap.tolist(),
          "rank_distance": distance.tolist(),
          "ap_by_language": _nullable_rows(ap_by_language),
      },
  }


def _check_task(task: Any) -> None:
  if not isinstance(task, RetrievalTask):
    raise ValueError(f"task: expected a jxr.data.RetrievalTask, got {type(task).__name__}")


def check_pair(
    task: RetrievalTask,
    query_emb: Any,
    cand_emb: Any,
    *,
    names: tuple[str, str] = ("query_emb", "cand_emb"),
) -> tuple[np.ndarray, np.ndarray]:
  """The two embedding arrays, or a ValueError naming (by `names`) the one that does not fit."""
  queries = _check_embeddings(names[0], query_emb, task.num_queries, "task.num_queries")
  cands = _check_embeddings(names[1], cand_emb, task.num_candidates, "task.num_candidates")
  if queries.shape[1] != cands.shape[1]:
    raise ValueError(
        f"{names[1]}: expected dimension {queries.shape[1]} (as {names[0]}), "
        f"got {cands.shape[1]}"
    )
  return queries, cands


def _pool_rows(task: RetrievalTask, languages: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Rows of the given languages, language-major in the given order (as `RetrievalTask.restrict`)."""
  query_lang, cand_lang = np.asarray(task.query_lang), np.asarray(task.cand_lang)
  query_rows = np.concatenate([np.flatnonzero(query_lang == lang) for lang in languages])
  cand_rows = np.concatenate([np.flatnonzero(cand_lang == lang) for lang in languages])
  return query_rows.astype(np.int64), cand_rows.astype(np.int64)


def _check_pools(task: RetrievalTask, pools: Any) -> dict[str, tuple[str, ...]]:
  """Each pool's languages in `task.languages` order; ValueErrors name `pools`."""
  if not isinstance(pools, Mapping):
    raise ValueError(
        f"pools: expected a mapping of pool name to language codes, got {type(pools).__name__}"
    )
  query_counts = {lang: int(np.sum(np.asarray(task.query_lang) == lang)) for lang in task.languages}
  checked = {}
  for name, langs in pools.items():
    if isinstance(langs, str) or not isinstance(langs, (Sequence, np.ndarray)):
      raise ValueError(f"pools[{name!r}]: expected a sequence of language codes, got {langs!r}")
    langs = tuple(langs)
    if not langs:
      raise ValueError(f"pools[{name!r}]: expected at least one language, got an empty pool")
    unknown = [lang for lang in langs if lang not in query_counts]
    if unknown:
      known = list(task.languages)
      raise ValueError(f"pools[{name!r}]: languages {unknown} are not in task.languages {known}")
    if len(set(langs)) != len(langs):
      raise ValueError(f"pools[{name!r}]: expected distinct language codes, got {list(langs)}")
    empty = [lang for lang in langs if query_counts[lang] == 0]
    if empty:
      raise ValueError(f"pools[{name!r}]: languages {empty} have no queries in the task")
    checked[name] = tuple(lang for lang in task.languages if lang in langs)
  return checked


def evaluate_pools(
    task: RetrievalTask,
    query_emb: np.ndarray,
    cand_emb: np.ndarray,
    pools: Mapping[str, Sequence[str]],
    **evaluate_kwargs: Any,
) -> dict[str, schema.Report]:
  """The `evaluate` report of each named language pool, from one set of embeddings.

  Pool `name` is the task restricted to the queries and candidates of
  `pools[name]` (as `jxr.data.restrict(task, languages=...)`, languages in
  `task.languages` order, relevance re-indexed); its embeddings are the
  matching rows of `query_emb` and `cand_emb`, so nothing is re-encoded.

  Args:
    task: queries, candidates and relevance of every language.
    query_emb: [task.num_queries, dim] query embeddings.
    cand_emb: [task.num_candidates, dim] candidate embeddings.
    pools: pool name -> language codes, e.g. {"2": ("en", "de"), "4": ("en", "de", "ru", "zh")}.
    **evaluate_kwargs: passed to `evaluate` (`k_values`, `chunk_size`).

  Raises:
    ValueError: as `evaluate`; `pools` with an empty pool, a language not in
      `task.languages` or a language without queries.
  """
  _check_task(task)
  checked = _check_pools(task, pools)
  queries, cands = check_pair(task, query_emb, cand_emb)
  reports = {}
  for name, languages in checked.items():
    query_rows, cand_rows = _pool_rows(task, languages)
    sub = select(task, query_rows, cand_rows, languages=languages)
    reports[name] = evaluate(sub, queries[query_rows], cands[cand_rows], **evaluate_kwargs)
  return reports
