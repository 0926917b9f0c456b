"""Toy retrieval tasks and a brute-force reference for the jxr.eval tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jxr.data import RetrievalTask


def make_task(
    query_id: Sequence[str],
    query_lang: Sequence[str],
    cand_lang: Sequence[str],
    relevant: Sequence[Sequence[int]],
    languages: Sequence[str] | None = None,
    name: str = "toy",
) -> RetrievalTask:
  """A RetrievalTask from plain lists; texts are placeholders."""
  languages = tuple(languages or dict.fromkeys([*query_lang, *cand_lang]))
  indptr = np.cumsum([0, *(len(r) for r in relevant)]).astype(np.int64)
  indices = np.array([i for r in relevant for i in sorted(r)], dtype=np.int64)
  nq, nc = len(query_id), len(cand_lang)
  return RetrievalTask(
      name=name,
      languages=languages,
      query_id=np.array(query_id),
      query_lang=np.array(query_lang),
      query_text=np.array([f"question {i}" for i in range(nq)]),
      query_article=np.array(["article"] * nq),
      cand_lang=np.array(cand_lang),
      cand_text=np.array([f"sentence {i}" for i in range(nc)]),
      cand_context=np.array([f"paragraph {i}" for i in range(nc)]),
      cand_article=np.array(["article"] * nc),
      rel_indptr=indptr,
      rel_indices=indices,
  )


def parallel_task(
    num_questions: int, languages: Sequence[str], distractors: int = 0
) -> RetrievalTask:
  """Every question in every language; candidates per language: the answers, then distractors.

  Query (i, l) is relevant to the answer of question i in every language.
  Query rows: language-major; candidate rows: language-major, answers first.
  """
  per_lang = num_questions + distractors
  query_id, query_lang, relevant = [], [], []
  for lang in languages:
    for i in range(num_questions):
      query_id.append(f"q{i}")
      query_lang.append(lang)
      relevant.append([li * per_lang + i for li in range(len(languages))])
  cand_lang = [lang for lang in languages for _ in range(per_lang)]
  return make_task(query_id, query_lang, cand_lang, relevant, languages)


def lattice_embeddings(rng: np.random.Generator, rows: int, dim: int = 12) -> np.ndarray:
  """Unit rows with four entries of +-0.5: exact in float32, cosines are exact multiples of 1/4 (many ties)."""
  emb = np.zeros((rows, dim), np.float32)
  for row in emb:
    row[rng.choice(dim, size=4, replace=False)] = rng.choice([-0.5, 0.5], size=4)
  return emb


def brute_force(scores: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
  """Metrics of one query by sorting its full score vector (ties: relevant first).

  Returns AP, AP@20 (XTREME-R divisor), RR, recall@{1,5,10,20}, nDCG@10 and
  the rank distance (rank = 1 + #strictly higher scores).
  """
  is_rel = np.zeros(len(scores), bool)
  is_rel[relevant] = True
  order = np.lexsort((~is_rel, -scores))  # by score, descending; relevant first within a tie
  pos = np.flatnonzero(is_rel[order]) + 1  # 1-based positions of the relevant candidates
  precision = np.arange(1, len(pos) + 1) / pos
  n = len(pos)
  ascending = np.sort(scores)
  ranks = len(scores) - np.searchsorted(ascending, scores[relevant], side="right") + 1
  idcg = sum(1 / np.log2(i + 2) for i in range(min(n, 10)))
  return {
      "ap": precision.mean(),
      "ap20": precision[pos <= 20].sum() / min(n, 20),
      "rr": 1 / pos[0],
      **{f"r{k}": np.mean(pos <= k) for k in (1, 5, 10, 20)},
      "ndcg10": sum(1 / np.log2(p + 1) for p in pos if p <= 10) / idcg,
      "rank_distance": float(ranks.max() - ranks.min()),
  }
