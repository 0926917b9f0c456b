"""`RetrievalTask`: queries, candidates and their relevance, as numpy columns."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class RetrievalTask:
  """A cross-lingual retrieval task (LAReQA layout; see docs/DESIGN.md, jxr.data).

  One row per (question, language) query and one row per candidate sentence.
  Rows are ordered by language (the order of `languages`), then file order.
  The relevant candidates of query `q` are
  `rel_indices[rel_indptr[q]:rel_indptr[q + 1]]` (sorted).
  """

  name: str
  languages: tuple[str, ...]
  query_id: np.ndarray  # str [Q]: the question id, shared across languages
  query_lang: np.ndarray  # str [Q]
  query_text: np.ndarray  # str [Q]
  query_article: np.ndarray  # str [Q]: article title
  cand_lang: np.ndarray  # str [C]
  cand_text: np.ndarray  # str [C]: the sentence
  cand_context: np.ndarray  # str [C]: its paragraph
  cand_article: np.ndarray  # str [C]
  rel_indptr: np.ndarray  # int64 [Q + 1]
  rel_indices: np.ndarray  # int64 [nnz]

  def __post_init__(self):
    q, c = len(self.query_id), len(self.cand_lang)
    for field in ("query_lang", "query_text", "query_article"):
      if len(getattr(self, field)) != q:
        raise ValueError(
            f"RetrievalTask.{field}: expected {q} rows (as query_id), got {len(getattr(self, field))}"
        )
    for field in ("cand_text", "cand_context", "cand_article"):
      if len(getattr(self, field)) != c:
        raise ValueError(
            f"RetrievalTask.{field}: expected {c} rows (as cand_lang), got {len(getattr(self, field))}"
        )
    if self.rel_indptr.shape != (q + 1,) or self.rel_indptr[-1] != len(self.rel_indices):
      raise ValueError(
          f"RetrievalTask.rel_indptr: expected shape ({q + 1},) ending at len(rel_indices)"
      )

  @property
  def num_queries(self) -> int:
    return len(self.query_id)

  @property
  def num_candidates(self) -> int:
    return len(self.cand_lang)

  def relevant(self, query: int) -> np.ndarray:
    """Indices of the candidates relevant to query row `query` (sorted)."""
    return self.rel_indices[self.rel_indptr[query] : self.rel_indptr[query + 1]]
