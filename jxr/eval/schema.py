"""The report `evaluate` returns (and `results.json` stores), as types.

A report is plain JSON (dicts, lists, numbers, None), so it is written and read without
conversion; these TypedDicts say what each level holds, and `check_report` holds a dict read
back from disk to them. Means are None where no query counts (e.g. a language pool with no
relevant candidate). See docs/DESIGN.md, "jxr.eval".
"""

from __future__ import annotations

import types
import typing
from typing import Any, NotRequired, TypedDict, Union

Mean = Union[float, None]
Grid = list[list[Mean]]  # [query language][candidate language]


class LanguageRetrieval(TypedDict):
  """Multilingual-pool retrieval of one query language's queries."""

  map: Mean
  map_at_20: Mean
  recall: dict[str, Mean]  # str(k) -> recall@k
  num_queries: int


class Multilingual(TypedDict):
  """Retrieval from the pool of every language's candidates (LAReQA's setting)."""

  map: Mean
  map_at_20: Mean
  mrr: Mean
  ndcg_at_10: Mean
  recall: dict[str, Mean]
  per_language: dict[str, LanguageRetrieval]


class Bias(TypedDict):
  """Language bias: how far the relevant candidates of other languages rank below."""

  rank_distance: Mean
  rank_distance_normalised: Mean  # over the number of candidates, comparable across pools
  rank_distance_per_language: dict[str, Mean]
  top1_same_language: Mean


class Matrices(TypedDict):
  """Query language x candidate language cells, each over its own language's candidates."""

  languages: list[str]
  map: Grid
  mrr: Grid
  recall: dict[str, Grid]
  num_queries: list[list[int]]


class Summary(TypedDict):
  """arXiv 2408.10536's Mo. (diagonal), Cr. (off-diagonal), Mul. (macro over query
  languages), and LAReQA's pooled mAP over all queries (micro)."""

  mono: Mean
  cross: Mean
  multi_macro: Mean
  multi_micro: Mean


class PerQuery(TypedDict):
  """One entry per query, in the task's query order (what the study's intervals resample)."""

  query_id: list[str]
  lang: list[str]
  article: list[str]
  paragraph: list[str]
  ap: list[float]
  rank_distance: list[float]
  ap_by_language: list[list[Mean]]  # [query][candidate language], None: no relevant there


class Report(TypedDict):
  dataset: str
  languages: list[str]
  num_queries: int
  num_candidates: int
  multilingual: Multilingual
  bias: Bias
  matrices: Matrices
  summary: Summary
  per_query: PerQuery


class StageReport(Report):
  """A report as `experiments.run` stores it per stage and dataset (`results.json`'s
  `zero_shot` / `fine_tuned` / `eval_only`): with the language pools' own reports."""

  pools: NotRequired[dict[str, Report]]  # pool size (as a string) -> its report


def check_report(report: Any, where: str = "report", kind: type = Report) -> Report:
  """`report` if it has the keys and value types of `kind` (`Report` or `StageReport`; lists
  and dicts checked through their elements); else a ValueError naming the first path that
  differs."""
  _check(report, kind, where)
  return report


def _check(value: Any, expected: Any, where: str) -> None:
  if typing.is_typeddict(expected):
    if not isinstance(value, dict):
      raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    hints = typing.get_type_hints(expected)
    missing = sorted(expected.__required_keys__ - set(value))
    extra = sorted(set(value) - set(hints))
    if missing or extra:
      raise ValueError(f"{where}: missing keys {missing}, unknown keys {extra}")
    for key, item in value.items():
      _check(item, hints[key], f"{where}.{key}")
    return
  origin, args = typing.get_origin(expected), typing.get_args(expected)
  if origin in (Union, types.UnionType):
    errors = []
    for option in args:
      try:
        return _check(value, option, where)
      except ValueError as err:
        errors.append(str(err))
    raise ValueError(errors[0])
  if origin is list:
    if not isinstance(value, list):
      raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    for i, item in enumerate(value):
      _check(item, args[0], f"{where}[{i}]")
    return
  if origin is dict:
    if not isinstance(value, dict):
      raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    for key, item in value.items():
      _check(item, args[1], f"{where}.{key}")
    return
  if expected is type(None):
    ok = value is None
  elif expected is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  else:
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
  if not ok:
    raise ValueError(
        f"{where}: expected {getattr(expected, '__name__', expected)}, got "
        f"{type(value).__name__}"
    )
