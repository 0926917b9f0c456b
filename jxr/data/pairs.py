"""Training pairs: (query, positive passage) rows from a task or from JSON lines.

Pairs index into two text tables, `query_text` and `passage_text` (for a task:
its queries and candidates, so indices are the task's own). A pair is `"mono"`
when its query and positive share a language, else `"cross"`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np

from jxr.data.task import RetrievalTask

_FIELDS = {"query", "positive", "query_lang", "positive_lang", "negatives", "id"}


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingPairs:
  """Columns of P pairs plus the text tables they index."""

  query_index: np.ndarray  # int64 [P]: row of query_text
  positive_index: np.ndarray  # int64 [P]: row of passage_text
  question_id: np.ndarray  # str [P]: pairs of one question share it
  query_lang: np.ndarray  # str [P]
  positive_lang: np.ndarray  # str [P]
  kind: np.ndarray  # str [P]: "mono" | "cross"
  query_text: np.ndarray  # object [Nq]
  passage_text: np.ndarray  # object [Np]
  passage_context: np.ndarray  # object [Np]: the paragraph, "" when there is none
  negative_indptr: np.ndarray  # int64 [P + 1]: CSR of hard negatives, rows of passage_text
  negative_index: np.ndarray  # int64 [nnz]

  def __post_init__(self):
    p = len(self.query_index)
    for field in ("positive_index", "question_id", "query_lang", "positive_lang", "kind"):
      if len(getattr(self, field)) != p:
        raise ValueError(
            f"TrainingPairs.{field}: expected {p} rows (as query_index), got {len(getattr(self, field))}"
        )
    if len(self.passage_context) != len(self.passage_text):
      raise ValueError("TrainingPairs.passage_context: expected one row per passage_text row")
    if self.negative_indptr.shape != (p + 1,) or self.negative_indptr[-1] != len(
        self.negative_index
    ):
      raise ValueError(
          f"TrainingPairs.negative_indptr: expected shape ({p + 1},) ending at len(negative_index)"
      )

  def __len__(self) -> int:
    return len(self.query_index)

  @property
  def languages(self) -> tuple[str, ...]:
    """Every query or positive language, sorted."""
    return tuple(
        sorted(
            {
                str(lang)
                for column in (self.query_lang, self.positive_lang)
                for lang in np.unique(column)
            }
        )
    )

  def negatives(self, pair: int) -> np.ndarray:
    """Rows of `passage_text` given as hard negatives of pair `pair`."""
    return self.negative_index[self.negative_indptr[pair] : self.negative_indptr[pair + 1]]


def _kind(query_lang: np.ndarray, positive_lang: np.ndarray) -> np.ndarray:
  return np.where(query_lang == positive_lang, "mono", "cross")


def training_pairs(task: RetrievalTask) -> TrainingPairs:
  """Every (query, relevant candidate) pair of `task`, in query order.

  The relevant candidates of a LAReQA query are its question's answer
  sentences in every language, so each query yields one mono pair and one
  cross pair per other language where the question exists.
  """
  sizes = np.diff(task.rel_indptr)
  query_index = np.repeat(np.arange(task.num_queries, dtype=np.int64), sizes)
  positive_index = task.rel_indices.astype(np.int64)
  query_lang = task.query_lang[query_index]
  positive_lang = task.cand_lang[positive_index]
  return TrainingPairs(
      query_index=query_index,
      positive_index=positive_index,
      question_id=task.query_id[query_index],
      query_lang=query_lang,
      positive_lang=positive_lang,
      kind=_kind(query_lang, positive_lang),
      query_text=task.query_text,
      passage_text=task.cand_text,
      passage_context=task.cand_context,
      negative_indptr=np.zeros(len(query_index) + 1, np.int64),
      negative_index=np.zeros(0, np.int64),
  )


def read_pairs(path: str | os.PathLike) -> TrainingPairs:
  """Reads pairs from JSON lines, one object per line (blank lines skipped):

  `{"query": str, "positive": str, "query_lang": str, "positive_lang": str,
  "negatives"?: [str, ...], "id"?: str}`

  Equal texts share one table row. Pairs with the same `id` belong to one
  question (e.g. its translations) and never meet in a batch; without an `id`,
  pairs are grouped by their query text.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"path: no pairs file at {path} (expected JSON lines)")
  queries: dict[str, int] = {}
  passages: dict[str, int] = {}
  columns = {key: [] for key in ("query", "positive", "id", "query_lang", "positive_lang")}
  negative_counts, negatives = [], []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      record = _parse_line(line, path, line_number)
      query = queries.setdefault(record["query"], len(queries))
      columns["query"].append(query)
      columns["positive"].append(passages.setdefault(record["positive"], len(passages)))
      columns["id"].append(str(record["id"]) if "id" in record else f"query:{query}")
      columns["query_lang"].append(record["query_lang"])
      columns["positive_lang"].append(record["positive_lang"])
      row_negatives = [
          passages.setdefault(text, len(passages)) for text in record.get("negatives", ())
      ]
      negative_counts.append(len(row_negatives))
      negatives += row_negatives
  if not columns["query"]:
    raise ValueError(f"{path}: no pairs (expected one JSON object per line)")
  query_lang = np.asarray(columns["query_lang"], dtype=str)
  positive_lang = np.asarray(columns["positive_lang"], dtype=str)
  negative_indptr = np.zeros(len(negative_counts) + 1, np.int64)
  np.cumsum(negative_counts, out=negative_indptr[1:])
  passage_text = _object_array(list(passages))
  return TrainingPairs(
      query_index=np.asarray(columns["query"], np.int64),
      positive_index=np.asarray(columns["positive"], np.int64),
      question_id=np.asarray(columns["id"], dtype=str),
      query_lang=query_lang,
      positive_lang=positive_lang,
      kind=_kind(query_lang, positive_lang),
      query_text=_object_array(list(queries)),
      passage_text=passage_text,
      passage_context=_object_array([""] * len(passage_text)),
      negative_indptr=negative_indptr,
      negative_index=np.asarray(negatives, np.int64),
  )


def _parse_line(line: str, path: pathlib.Path, line_number: int) -> dict:
  where = f"{path}:{line_number}"
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
  unknown = sorted(set(record) - _FIELDS)
  if unknown:
    raise ValueError(f"{where}: unknown field(s) {unknown}; expected {sorted(_FIELDS)}")
  for key in ("query", "positive", "query_lang", "positive_lang"):
    if not isinstance(record.get(key), str) or not record[key].strip():
      raise ValueError(
          f"{where}: field {key!r} must be a non-empty string, got {record.get(key)!r}"
      )
  if "negatives" in record and (
      not isinstance(record["negatives"], list)
      or not all(isinstance(t, str) and t.strip() for t in record["negatives"])
  ):
    raise ValueError(f"{where}: field 'negatives' must be a list of non-empty strings")
  if "id" in record and (
      isinstance(record["id"], bool) or not isinstance(record["id"], (str, int))
  ):
    raise ValueError(f"{where}: field 'id' must be a string, got {record['id']!r}")
  return record


def _object_array(items: list[str]) -> np.ndarray:
  out = np.empty(len(items), dtype=object)
  out[:] = items
  return out
