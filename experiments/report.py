"""The study report: paired cluster-bootstrap contrasts, trends, tables, plots and findings.

Question: how far does cross-lingual retrieval degrade with block-sparse attention, against local
attention at a matched attended fraction (and against dense), as the number of languages grows,
along two axes: the languages a model is trained on and the languages of the evaluation pool?

Input: one `Cell` per finished run and the sweep's `Design` (matched pairs, the primary contrast).
`build_report` returns report.json's content (pure); `write_report` writes report.json, report.md
(findings first) and the PNG plots.

A contrast is arm a minus arm b on one dataset, training-language count, evaluation pool and
mono_prob group, for macro Mul. (mean over query languages of the per-language mean AP, as in
arXiv 2408.10536) or micro Mul. (mean over queries). Differences are per query, so the two arms
are compared on the same queries: seeds pair by number (same seed, same batches) and a query's
difference is the mean over the seeds both arms ran. Intervals are percentile intervals of a
bootstrap over clusters, articles (or paragraphs when a pool holds fewer than `MIN_ARTICLES`
articles): queries of one article share passages and distractors, so they are not independent and
resampling queries would make intervals too narrow. Trends (difference-in-differences along an
axis) resample the same clusters for both contrasts.

Contrast families (report.json `contrasts[*].family`), within each mono_prob group unless named:
  vs_dense    every trained sparse arm minus dense
  matched     block-sparse minus local of each `Design.matched` pair
  eval_only   "<kind> (eval only)" (the dense-fine-tuned model evaluated with that mask, no
              training) minus dense: what the mask costs without adaptation
  adaptation  the trained arm of that kind minus its eval-only arm: what training recovers
  mono        hybrid (mono_prob 0.5) minus the same kind trained X-X-mono (1.0) or X-Y (0.0), at
              the largest count both have; arms off 0.5 carry a tag ("dense [X-Y]")
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import pathlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from jxr._files import atomic_write

METRICS = ("mul_macro", "mul_micro")
# jxr.eval's summary keys for the same two numbers (learning-curve points carry these).
SUMMARY_KEYS = {"mul_macro": "multi_macro", "mul_micro": "multi_micro"}
METRIC_NAMES = {"mul_macro": "macro Mul.", "mul_micro": "micro Mul."}
DENSE = "dense"
HYBRID = 0.5
MIN_ARTICLES = 8
CONFIDENCE = 0.95
COMPARABLE_POOL = 7  # MLQA-R's full pool: XQuAD-R's pool-7 trend is like for like with it
FAMILIES = ("vs_dense", "matched", "eval_only", "adaptation", "mono")
FAMILY_TITLES = {
    "vs_dense": "Sparse minus dense",
    "matched": "Block-sparse minus local at matched attended fraction",
    "eval_only": "Eval-only mask (dense-fine-tuned model, no training) minus dense",
    "adaptation": "Trained with the mask minus eval-only mask",
    "mono": "Hybrid (mono_prob 0.5) minus X-X-mono / X-Y training",
}


# ---------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class Cell:
  """One finished run of the sweep."""

  name: str  # run directory name, e.g. "local-w17-L11-s0"
  kind: str  # attention label: "dense", "local-w17", ...
  attention: Mapping[str, Any]  # the attention spec JSON, e.g. {"kind": "local", ...}
  num_languages: int  # training languages
  training_languages: tuple[str, ...]
  seed: int
  mono_prob: float  # 0.5 hybrid, 1.0 X-X-mono, 0.0 X-Y
  results: Mapping[str, Any]  # the run's results.json


@dataclasses.dataclass(frozen=True)
class Design:
  """What the sweep was built to compare."""

  matched: tuple[tuple[str, str, float], ...]  # (block_sparse kind, local kind, level)
  primary: tuple[str, str]  # (block_sparse kind, local kind)
  primary_dataset: str = "mlqa-r"
  primary_metric: str = "mul_macro"
  primary_languages: int = 11

  def __post_init__(self):
    matched = tuple(tuple(m) for m in self.matched)
    for m in matched:
      if len(m) != 3 or not all(isinstance(k, str) for k in m[:2]):
        raise ValueError(
            f"matched: expected (block_sparse kind, local kind, level) triples, " f"got {m!r}"
        )
    object.__setattr__(self, "matched", tuple((a, b, float(level)) for a, b, level in matched))
    primary = tuple(self.primary)
    if len(primary) != 2 or not all(isinstance(k, str) for k in primary):
      raise ValueError(
          f"primary: expected a (block_sparse kind, local kind) pair, got " f"{self.primary!r}"
      )
    object.__setattr__(self, "primary", primary)
    if self.primary_metric not in METRICS:
      raise ValueError(f"primary_metric: expected one of {METRICS}, got {self.primary_metric!r}")
    if self.primary_languages < 1:
      raise ValueError(f"primary_languages: expected >= 1, got {self.primary_languages}")

  def to_json(self) -> dict[str, Any]:
    return {
        "matched": [list(m) for m in self.matched],
        "primary": list(self.primary),
        "primary_dataset": self.primary_dataset,
        "primary_metric": self.primary_metric,
        "primary_languages": self.primary_languages,
    }


# ---------------------------------------------------------------------- statistics


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate and its percentile bootstrap interval (None when undefined)."""

  estimate: float | None
  low: float | None
  high: float | None

  def excludes_zero(self) -> bool:
    return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


@dataclasses.dataclass(frozen=True)
class Term:
  """`weight` times the Mul. statistic of per-query `difference`s (a part of a trend)."""

  weight: float
  difference: np.ndarray  # [Q]
  language: np.ndarray  # [Q] query language
  cluster: np.ndarray  # [Q] cluster key (one type for every term of a bootstrap)


def resample_weights(num_clusters: int, num_samples: int, seed: int) -> np.ndarray:
  """[num_samples, num_clusters] multinomial counts: how often each cluster is drawn."""
  if num_clusters < 1:
    raise ValueError(f"num_clusters: expected >= 1, got {num_clusters}")
  if num_samples < 1:
    raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
  return _weights(int(num_clusters), int(num_samples), int(seed))


@functools.lru_cache(maxsize=8)
def _weights(num_clusters: int, num_samples: int, seed: int) -> np.ndarray:
  # Contrasts of one dataset mostly share a cluster count: drawing once is the main saving.
  rng = np.random.default_rng(seed)
  weights = rng.multinomial(
      num_clusters, np.full(num_clusters, 1.0 / num_clusters), size=num_samples
  ).astype(np.float64)
  weights.flags.writeable = False
  return weights


def cell_sums(
    values: np.ndarray, cluster: np.ndarray, group: np.ndarray, num_clusters: int, num_groups: int
) -> tuple[np.ndarray, np.ndarray]:
  """[clusters, groups] sums and counts of the finite `values` (what a resample reweights)."""
  values = np.asarray(values, np.float64)
  flat = np.asarray(cluster, np.int64) * num_groups + np.asarray(group, np.int64)
  ok = np.isfinite(values)
  size = num_clusters * num_groups
  sums = np.bincount(flat[ok], values[ok], minlength=size).reshape(num_clusters, num_groups)
  counts = np.bincount(flat[ok], minlength=size).astype(np.float64)
  return sums, counts.reshape(num_clusters, num_groups)


def group_means(sums: np.ndarray, counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """[samples, groups] weighted group means; NaN where a resample has no member of a group."""
  s, n = weights @ sums, weights @ counts
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n > 0, s / np.where(n > 0, n, 1.0), np.nan)


def mul_statistics(
    sums: np.ndarray, counts: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
  """Per resample: macro Mul. (mean over languages present in it) and micro Mul."""
  s, n = weights @ sums, weights @ counts
  total = n.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    micro = np.where(total > 0, s.sum(axis=1) / np.where(total > 0, total, 1.0), np.nan)
    per_language = np.where(n > 0, s / np.where(n > 0, n, 1.0), np.nan)
    present = np.isfinite(per_language)
    count = present.sum(axis=1)
    macro = np.where(
        count > 0, np.where(present, per_language, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan
    )
  return {"mul_macro": macro, "mul_micro": micro}


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
  kept = draws[np.isfinite(draws)]
  if not len(kept):
    return None, None
  tail = (1 - confidence) / 2
  low, high = np.quantile(kept, [tail, 1 - tail])
  return float(low), float(high)


def combined_bootstrap(
    terms: Sequence[Term], *, num_samples: int = 2000, seed: int = 0, confidence: float = CONFIDENCE
) -> dict[str, Interval]:
  """sum_i weight_i * Mul_i by metric, with one set of cluster resamples shared by all terms.

  Clusters are matched across terms by key, so a trend resamples the same articles for both of
  its contrasts; a cluster missing from a term contributes nothing to it.
  """
  if not terms:
    raise ValueError("terms: expected at least one term")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence: expected a fraction in (0, 1), got {confidence}")
  for t in terms:
    if not (len(t.difference) == len(t.language) == len(t.cluster)) or not len(t.difference):
      raise ValueError(
          f"terms: expected non-empty difference, language and cluster of one "
          f"length, got {len(t.difference)}, {len(t.language)}, {len(t.cluster)}"
      )
  keys, inverse = np.unique(
      np.concatenate([np.asarray(t.cluster) for t in terms]), return_inverse=True
  )
  splits = np.split(inverse, np.cumsum([len(t.cluster) for t in terms])[:-1])
  weights = resample_weights(len(keys), num_samples, seed)
  full = np.ones((1, len(keys)))
  estimate = {m: 0.0 for m in METRICS}
  draws = {m: np.zeros(num_samples) for m in METRICS}
  for term, cluster in zip(terms, splits):
    languages, language = np.unique(np.asarray(term.language), return_inverse=True)
    sums, counts = cell_sums(term.difference, cluster, language, len(keys), len(languages))
    point, resampled = mul_statistics(sums, counts, full), mul_statistics(sums, counts, weights)
    for m in METRICS:
      estimate[m] += term.weight * float(point[m][0])
      draws[m] += term.weight * resampled[m]
  out = {}
  for m in METRICS:
    low, high = _percentiles(draws[m], confidence)
    out[m] = Interval(None if math.isnan(estimate[m]) else estimate[m], low, high)
  return out


def cluster_bootstrap(
    difference: Sequence[float],
    language: Sequence[str],
    cluster: Sequence[Any],
    *,
    num_samples: int = 2000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Interval]:
  """Macro and micro Mul. of per-query differences with percentile intervals over clusters.

  Pass each query's own id as `cluster` for a per-query bootstrap.
  """
  term = Term(1.0, np.asarray(difference, np.float64), np.asarray(language), np.asarray(cluster))
  return combined_bootstrap([term], num_samples=num_samples, seed=seed, confidence=confidence)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
  """Spearman's rho (scipy's, ties averaged); None with fewer than 4 distinct values in either."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f"x, y: expected two 1-d arrays of one length, got {x.shape} and {y.shape}")
  if len(np.unique(x)) < 4 or len(np.unique(y)) < 4:
    return None
  from scipy import stats

  return float(stats.spearmanr(x, y).statistic)


def mul(ap: Sequence[float], language: Sequence[str]) -> dict[str, float | None]:
  """Macro Mul. (mean over languages of the per-language mean AP) and micro Mul. (mean AP)."""
  ap = np.asarray(ap, np.float64)
  if not len(ap):
    return {"mul_macro": None, "mul_micro": None}
  languages, index = np.unique(np.asarray(language), return_inverse=True)
  per = np.bincount(index, ap) / np.bincount(index)
  return {"mul_macro": float(per.mean()), "mul_micro": float(ap.mean())}


# ---------------------------------------------------------------------- per-query pairing


class Codes:
  """Integer codes of strings (query ids, languages, articles, ...) by namespace, shared by every
  report of a build so that codes from two reports match and set operations run on integers."""

  SHIFT = 2**31  # combines two codes into one int64 key

  def __init__(self):
    self._codes: dict[tuple[str, str], int] = {}

  def __call__(self, namespace: str, values: Sequence[Any]) -> np.ndarray:
    array = np.asarray(values)
    names, inverse = np.unique(
        array if array.dtype.kind == "U" else array.astype(str), return_inverse=True
    )
    codes = self._codes
    lookup = np.asarray(
        [codes.setdefault((namespace, v), len(codes)) for v in names.tolist()], np.int64
    )
    return lookup[inverse].reshape(-1) if len(values) else np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class Queries:
  """The per-query columns of one report (categorical columns as `Codes`)."""

  key: np.ndarray  # (query_id, lang)
  question: np.ndarray  # query_id
  lang: np.ndarray  # str
  article: np.ndarray | None
  paragraph: np.ndarray | None  # (article, paragraph): paragraph ids may repeat across articles
  ap: np.ndarray
  languages: tuple[str, ...]  # candidate languages of by_language (matrices.languages)
  by_language: np.ndarray | None  # [Q, languages], NaN where undefined


def queries_of(report: Mapping[str, Any], codes: Codes) -> Queries:
  pq = report["per_query"]
  qid, lang = pq["query_id"], pq["lang"]
  ap = np.asarray(pq["ap"], np.float64)
  if not len(qid) == len(lang) == len(ap):
    raise ValueError(
        f"per_query: expected query_id, lang and ap of one length, got "
        f"{len(qid)}, {len(lang)}, {len(ap)}"
    )
  has = lambda name: pq.get(name) is not None and len(pq[name]) == len(qid)  # noqa: E731
  question = codes("question", qid)
  key = question * Codes.SHIFT + codes("lang", lang)
  article = None
  if has("article"):
    # Clusters hold every language of a question. MLQA-R titles an article per language, so a
    # question's cluster is the article of its English row (both LAReQA sets are aligned to
    # English and every pool holds English), else of its first row.
    per_row = codes("article", pq["article"])
    english = np.asarray(lang).astype(str) == "en"
    order = np.lexsort((~english, question))  # per question: its English row first
    first = order[np.flatnonzero(np.r_[True, np.diff(question[order]) != 0])]
    canonical = dict(zip(question[first].tolist(), per_row[first].tolist()))
    article = np.array([canonical[q] for q in question.tolist()], dtype=per_row.dtype)
  paragraph = (
      article * Codes.SHIFT + codes("paragraph", pq["paragraph"])
      if article is not None and has("paragraph")
      else None
  )
  languages = tuple((report.get("matrices") or {}).get("languages") or ())
  by_language = None
  if has("ap_by_language") and languages:
    by_language = np.array(pq["ap_by_language"], dtype=np.float64).reshape(len(qid), -1)
    if by_language.shape[1] != len(languages):
      by_language = None
  return Queries(
      key, question, np.asarray(lang).astype(str), article, paragraph, ap, languages, by_language
  )


@dataclasses.dataclass(frozen=True)
class Paired:
  """Per-query differences arm a minus arm b, averaged over the paired seeds."""

  question: np.ndarray  # codes
  lang: np.ndarray  # str
  article: np.ndarray | None  # codes
  paragraph: np.ndarray | None  # codes
  difference: np.ndarray
  languages: tuple[str, ...]
  by_language: np.ndarray | None  # [Q, languages] seed-mean differences per candidate language
  seeds: tuple[int, ...]


class Parser:
  """Parses each report once per build (by identity), with one set of `Codes`."""

  def __init__(self):
    self.codes = Codes()
    self._items: dict[int, tuple[Mapping, Queries]] = {}

  def __call__(self, report: Mapping[str, Any]) -> Queries:
    hit = self._items.get(id(report))
    if hit is None or hit[0] is not report:
      hit = (report, queries_of(report, self.codes))
      self._items[id(report)] = hit
    return hit[1]


def _match(qa: Queries, qb: Queries) -> tuple[np.ndarray, np.ndarray]:
  if len(qa.key) == len(qb.key) and np.array_equal(qa.key, qb.key):  # the usual case
    index = np.arange(len(qa.key))
    return index, index
  _, ia, ib = np.intersect1d(qa.key, qb.key, return_indices=True)
  return ia, ib


def pair(
    arm: Mapping[int, Mapping[str, Any]],
    base: Mapping[int, Mapping[str, Any]],
    *,
    parse: Parser | None = None,
) -> Paired:
  """Per-query AP of `arm` minus `base` (reports by seed), seeds paired by number.

  Only seeds in both arms and, per seed, only (query_id, lang) pairs in both reports count; a
  query's difference is the mean of its per-seed differences.
  """
  parse = parse or Parser()
  seeds = sorted(set(arm) & set(base))
  if not seeds:
    raise ValueError(f"seeds: no seed in both arms (arm {sorted(arm)}, baseline {sorted(base)})")
  parts = []
  for s in seeds:
    qa, qb = parse(arm[s]), parse(base[s])
    ia, ib = _match(qa, qb)
    abl = None
    if qa.by_language is not None and qb.by_language is not None and qa.languages == qb.languages:
      abl = qa.by_language[ia] - qb.by_language[ib]
    parts.append((qa, ia, qa.ap[ia] - qb.ap[ib], abl))
  if not sum(len(ia) for _, ia, _, _ in parts):
    raise ValueError("per_query: the two arms share no (query_id, lang) pair")
  keys = np.concatenate([qa.key[ia] for qa, ia, _, _ in parts])
  _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
  count = np.bincount(inverse)
  difference = np.bincount(inverse, np.concatenate([d for _, _, d, _ in parts])) / count

  def meta(name):
    columns = [getattr(qa, name) for qa, _, _, _ in parts]
    if any(c is None for c in columns):
      return None
    return np.concatenate([c[ia] for c, (_, ia, _, _) in zip(columns, parts)])[first]

  by_language, languages = None, parts[0][0].languages
  if all(abl is not None for *_, abl in parts) and all(
      qa.languages == languages for qa, *_ in parts
  ):
    stacked = np.concatenate([abl for *_, abl in parts])
    ok = np.isfinite(stacked)
    sums = np.stack(
        [
            np.bincount(inverse, np.where(ok[:, j], stacked[:, j], 0.0), len(first))
            for j in range(len(languages))
        ],
        axis=1,
    )
    counts = np.stack(
        [np.bincount(inverse, ok[:, j], len(first)) for j in range(len(languages))], axis=1
    )
    with np.errstate(invalid="ignore"):
      by_language = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
  return Paired(
      meta("question"),
      meta("lang"),
      meta("article"),
      meta("paragraph"),
      difference,
      tuple(languages),
      by_language,
      tuple(seeds),
  )


def cluster_unit(paired: Sequence[Paired], min_articles: int = MIN_ARTICLES) -> str:
  """ "article", or "paragraph" when they hold fewer than `min_articles` articles ("question"
  when per_query has no article column)."""
  if any(p.article is None for p in paired):
    return "question"
  if len(np.unique(np.concatenate([p.article for p in paired]))) >= min_articles:
    return "article"
  return "question" if any(p.paragraph is None for p in paired) else "paragraph"


def cluster_keys(p: Paired, unit: str) -> np.ndarray:
  if unit not in ("article", "paragraph", "question"):
    raise ValueError(f"unit: expected article, paragraph or question, got {unit!r}")
  return getattr(p, unit)


def _sizes(paired: Sequence[Paired], unit: str) -> dict[str, Any]:
  distinct = lambda name: int(
      len(np.unique(np.concatenate([getattr(p, name) for p in paired])))  # noqa: E731
  )
  return {
      "questions": distinct("question"),
      "queries": int(sum(len(p.difference) for p in paired)),
      "articles": None if any(p.article is None for p in paired) else distinct("article"),
      "clusters": distinct(unit),
      "cluster_unit": unit,
      "seeds": sorted(set().union(*[p.seeds for p in paired])),
  }


def contrast_bootstrap(
    parts: Sequence[tuple[float, Paired]], *, num_samples: int, seed: int
) -> tuple[dict[str, Interval], dict[str, Any]]:
  """Intervals of sum_i w_i * Mul(paired_i) and the sample sizes (one unit for all parts)."""
  unit = cluster_unit([p for _, p in parts])
  terms = [Term(w, p.difference, p.lang, cluster_keys(p, unit)) for w, p in parts]
  return (
      combined_bootstrap(terms, num_samples=num_samples, seed=seed),
      _sizes([p for _, p in parts], unit),
  )


def grid_bootstrap(
    p: Paired, *, num_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean, low, high) [query language, candidate language] of the paired mAP differences."""
  if p.by_language is None:
    raise ValueError("paired: no ap_by_language differences to grid")
  languages = list(p.languages)
  n = len(languages)
  names, inverse = np.unique(p.lang, return_inverse=True)
  row = np.asarray([languages.index(x) if x in languages else -1 for x in names])[inverse]
  keep = row >= 0
  unit = cluster_unit([p])
  clusters, cluster = np.unique(cluster_keys(p, unit)[keep], return_inverse=True)
  values = p.by_language[keep]  # [Q, n]
  groups = row[keep][:, None] * n + np.arange(n)[None, :]  # [Q, n]
  sums, counts = cell_sums(
      values.ravel(), np.repeat(cluster, n), groups.ravel(), len(clusters), n * n
  )
  mean = group_means(sums, counts, np.ones((1, len(clusters))))[0].reshape(n, n)
  draws = group_means(sums, counts, resample_weights(len(clusters), num_samples, seed))
  tail = (1 - CONFIDENCE) / 2
  low, high = np.full(n * n, np.nan), np.full(n * n, np.nan)
  filled = np.isfinite(draws).any(axis=0)  # pairs with no query stay NaN
  if filled.any():
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      low[filled], high[filled] = np.nanquantile(draws[:, filled], [tail, 1 - tail], axis=0)
  return mean, low.reshape(n, n), high.reshape(n, n)


# ---------------------------------------------------------------------- arms


@dataclasses.dataclass(frozen=True)
class Arm:
  """Cells of one kind, training-language count and mono_prob (seeds), or a virtual eval-only
  arm (a dense-fine-tuned model evaluated with a sparse mask)."""

  name: str
  kind: str
  family: str  # "dense" | "local" | "block_sparse" | ...
  num_languages: int
  mono_prob: float
  eval_only: bool
  reports: Mapping[int, Mapping[str, Mapping[str, Any]]]  # seed -> dataset -> report
  cells: tuple[Cell, ...]  # the cells it comes from
  attention: Mapping[str, Any]
  attended_fraction: Mapping[str, float | None]  # dataset -> mean over seeds


def mono_tag(mono_prob: float) -> str:
  if mono_prob == HYBRID:
    return ""
  return {1.0: " [X-X-mono]", 0.0: " [X-Y]"}.get(float(mono_prob), f" [mono {mono_prob:g}]")


def arm_name(kind: str, mono_prob: float, eval_only: bool = False) -> str:
  return f"{kind}{' (eval only)' if eval_only else ''}{mono_tag(mono_prob)}"


def _family(kind: str, attention: Mapping[str, Any] | None) -> str:
  if attention and attention.get("kind"):
    return str(attention["kind"])
  return kind.split("-")[0]


def _mean(values: Iterable[float | None]) -> float | None:
  kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
  return float(np.mean(kept)) if kept else None


def collect_arms(cells: Sequence[Cell]) -> list[Arm]:
  """Trained arms by (kind, languages, mono_prob), then the eval-only arms of dense cells."""
  groups: dict[tuple[str, int, float], list[Cell]] = {}
  for cell in cells:
    if not isinstance(cell.results.get("fine_tuned"), Mapping):
      raise ValueError(f"cells: {cell.name} has no results['fine_tuned']")
    group = groups.setdefault((cell.kind, cell.num_languages, float(cell.mono_prob)), [])
    if any(c.seed == cell.seed for c in group):
      raise ValueError(
          f"cells: two cells of {cell.kind}, {cell.num_languages} languages, "
          f"mono_prob {cell.mono_prob}, seed {cell.seed} ({cell.name})"
      )
    group.append(cell)
  arms = []
  for (kind, n, p), members in groups.items():
    datasets = {d for c in members for d in c.results["fine_tuned"]}
    fraction = {
        d: _mean((c.results.get("attended_fraction") or {}).get(d) for c in members)
        for d in datasets
    }
    arms.append(
        Arm(
            arm_name(kind, p),
            kind,
            _family(kind, members[0].attention),
            n,
            p,
            False,
            {c.seed: dict(c.results["fine_tuned"]) for c in members},
            tuple(members),
            dict(members[0].attention or {}),
            fraction,
        )
    )
  virtual: dict[tuple[str, int, float], dict] = {}
  for cell in cells:
    for label, entry in (cell.results.get("eval_only") or {}).items():
      v = virtual.setdefault(
          (label, cell.num_languages, float(cell.mono_prob)),
          {"reports": {}, "cells": [], "attention": entry.get("attention") or {}, "fractions": []},
      )
      v["reports"][cell.seed] = dict(entry.get("reports") or {})
      v["cells"].append(cell)
      v["fractions"].append(entry.get("attended_fraction"))
  for (label, n, p), v in virtual.items():
    datasets = {d for r in v["reports"].values() for d in r}
    fraction = {}
    for d in datasets:  # the same mask on the same candidates: the trained arm's fraction
      own = _mean(f.get(d) for f in v["fractions"] if isinstance(f, Mapping))
      twins = [a for a in arms if a.kind == label and a.attended_fraction.get(d) is not None]
      twins.sort(key=lambda a: (a.num_languages != n, a.mono_prob != p))
      fraction[d] = own if own is not None else (twins[0].attended_fraction[d] if twins else None)
    arms.append(
        Arm(
            arm_name(label, p, True),
            label,
            _family(label, v["attention"]),
            n,
            p,
            True,
            v["reports"],
            tuple(v["cells"]),
            dict(v["attention"]),
            fraction,
        )
    )
  return sorted(arms, key=_arm_order)


def _arm_order(a: Arm):
  rank = {"dense": 0, "local": 1, "block_sparse": 2}.get(a.family, 3)
  fraction = _mean(a.attended_fraction.values())
  return (
      a.mono_prob != HYBRID,
      -a.mono_prob,
      a.eval_only,
      rank,
      fraction if fraction is not None else 2.0,
      a.kind,
      a.num_languages,
  )


def pools_of(report: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
  """Nested evaluation pools by language count (the report itself when it has none)."""
  pools = report.get("pools")
  if pools:
    return {int(k): v for k, v in pools.items()}
  languages = (report.get("matrices") or {}).get("languages") or report.get("languages") or []
  return {len(languages): report}


def _by_seed(arm: Arm, dataset: str, pool: int) -> dict[int, Mapping[str, Any]]:
  out = {}
  for seed, reports in arm.reports.items():
    if dataset in reports:
      pools = pools_of(reports[dataset])
      if pool in pools:
        out[seed] = pools[pool]
  return out


def _pools_of_arm(arm: Arm, dataset: str) -> set[int]:
  return {k for r in arm.reports.values() if dataset in r for k in pools_of(r[dataset])}


def datasets_of(cells: Sequence[Cell], design: Design) -> list[str]:
  names: list[str] = []
  for cell in cells:
    names += [n for n in cell.results["fine_tuned"] if n not in names]
  return sorted(names, key=lambda n: n != design.primary_dataset)


# ---------------------------------------------------------------------- contrasts


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Arm a minus arm b (same dataset and pool when evaluated)."""

  family: str
  a: Arm
  b: Arm
  level: float | None = None


def comparisons(arms: Sequence[Arm], design: Design) -> list[Comparison]:
  """Every contrast the design asks for (the families of the module docstring)."""
  index = {(a.kind, a.eval_only, a.num_languages, a.mono_prob): a for a in arms}
  groups = sorted({(a.num_languages, a.mono_prob) for a in arms})
  out = []
  for n, p in groups:
    dense = index.get((DENSE, False, n, p))
    group = [a for a in arms if (a.num_languages, a.mono_prob) == (n, p)]
    if dense is not None:
      out += [
          Comparison("vs_dense", a, dense) for a in group if not a.eval_only and a.kind != DENSE
      ]
    for bs, loc, level in design.matched:
      a, b = index.get((bs, False, n, p)), index.get((loc, False, n, p))
      if a is not None and b is not None:
        out.append(Comparison("matched", a, b, level))
    for e in (a for a in group if a.eval_only):
      if dense is not None:
        out.append(Comparison("eval_only", e, dense))
      trained = index.get((e.kind, False, n, p))
      if trained is not None:
        out.append(Comparison("adaptation", trained, e))
  kinds = sorted({a.kind for a in arms if not a.eval_only})
  for kind in kinds:
    for p in sorted({a.mono_prob for a in arms} - {HYBRID}, reverse=True):
      counts = [
          n for n, _ in groups if (kind, False, n, HYBRID) in index and (kind, False, n, p) in index
      ]
      if counts:
        n = max(counts)
        out.append(Comparison("mono", index[(kind, False, n, HYBRID)], index[(kind, False, n, p)]))
  return out


def _entry(
    c: Comparison, dataset: str, metric: str, interval: Interval, sizes: Mapping[str, Any], **keys
) -> dict[str, Any]:
  return {
      "dataset": dataset,
      "family": c.family,
      "a": c.a.name,
      "b": c.b.name,
      "kind_a": c.a.kind,
      "kind_b": c.b.kind,
      "level": c.level,
      **keys,
      "metric": metric,
      "difference": interval.estimate,
      "ci": [interval.low, interval.high],
      **sizes,
      "mono_prob": c.a.mono_prob,
      "mono_prob_b": c.b.mono_prob,
      "fraction_a": c.a.attended_fraction.get(dataset),
      "fraction_b": c.b.attended_fraction.get(dataset),
  }


def contrast_entries(
    comps: Sequence[Comparison],
    datasets: Sequence[str],
    *,
    num_samples: int,
    seed: int,
    parse: Parser | None = None,
) -> tuple[list[dict[str, Any]], dict[tuple, Paired]]:
  """Contrast entries (every common pool, both metrics) and the paired data behind them."""
  parse = parse or Parser()
  entries, paired = [], {}
  for dataset in datasets:
    for c in comps:
      for pool in sorted(_pools_of_arm(c.a, dataset) & _pools_of_arm(c.b, dataset)):
        arm, base = _by_seed(c.a, dataset, pool), _by_seed(c.b, dataset, pool)
        if not set(arm) & set(base):
          continue
        try:
          p = pair(arm, base, parse=parse)
        except ValueError:
          continue
        paired[(dataset, c.family, c.a.name, c.b.name, c.a.num_languages, pool)] = p
        intervals, sizes = contrast_bootstrap([(1.0, p)], num_samples=num_samples, seed=seed)
        for metric in METRICS:
          entries.append(
              _entry(
                  c,
                  dataset,
                  metric,
                  intervals[metric],
                  sizes,
                  num_languages=c.a.num_languages,
                  pool_languages=pool,
              )
          )
  return entries, paired


def trend_entries(
    comps: Sequence[Comparison], paired: Mapping[tuple, Paired], *, num_samples: int, seed: int
) -> list[dict[str, Any]]:
  """Difference-in-differences along the training and the pool axis (joint cluster bootstrap)."""
  series: dict[tuple, dict[int, dict[int, Paired]]] = {}
  for (dataset, family, a, b, n, pool), p in paired.items():
    series.setdefault((dataset, family, a, b), {}).setdefault(n, {})[pool] = p
  by_names = {(c.family, c.a.name, c.b.name): c for c in comps}
  out = []
  for (dataset, family, a, b), by_count in series.items():
    c = by_names[(family, a, b)]
    counts = sorted(by_count)
    steps = []
    if len(counts) > 1:
      common = set(by_count[counts[0]]) & set(by_count[counts[-1]])
      if common:
        pool = max(common)
        steps.append(
            (
                "training",
                counts[0],
                counts[-1],
                by_count[counts[0]][pool],
                by_count[counts[-1]][pool],
                {"num_languages": None, "pool_languages": pool},
            )
        )
    for n in counts:
      pools = sorted(by_count[n])
      targets = sorted({pools[-1]} | ({COMPARABLE_POOL} & set(pools)) - {pools[0]})
      for target in targets:
        steps.append(
            (
                "pool",
                pools[0],
                target,
                by_count[n][pools[0]],
                by_count[n][target],
                {"num_languages": n, "pool_languages": None},
            )
        )
    for axis, lo, hi, p_lo, p_hi, keys in steps:
      intervals, sizes = contrast_bootstrap(
          [(1.0, p_hi), (-1.0, p_lo)], num_samples=num_samples, seed=seed
      )
      at_lo, at_hi = mul(p_lo.difference, p_lo.lang), mul(p_hi.difference, p_hi.lang)
      for metric in METRICS:
        entry = _entry(c, dataset, metric, intervals[metric], sizes, **keys)
        entry.update(
            axis=axis,
            from_languages=lo,
            to_languages=hi,
            from_difference=at_lo[metric],
            to_difference=at_hi[metric],
        )
        out.append(entry)
  return out


# ---------------------------------------------------------------------- tables


def report_metrics(report: Mapping[str, Any]) -> dict[str, float | None]:
  """Mul. macro/micro (from per_query), Mo. and Cr. (the report's summary) of one report."""
  pq = report.get("per_query")
  if pq and len(pq.get("ap", ())):
    values = mul(pq["ap"], pq["lang"])
  else:
    s = report.get("summary") or {}
    values = {m: s.get(key) for m, key in SUMMARY_KEYS.items()}
  summary = report.get("summary") or {}
  return {**values, "mo": summary.get("mono"), "cr": summary.get("cross")}


def _largest(report: Mapping[str, Any]) -> Mapping[str, Any]:
  pools = pools_of(report)
  return pools[max(pools)]


def trained_vs_untrained(
    report: Mapping[str, Any], training_languages: Sequence[str]
) -> dict[str, float | None]:
  """Mean AP of queries in the training languages and of the others (largest pool)."""
  pq = _largest(report)["per_query"]
  ap = np.asarray(pq["ap"], np.float64)
  trained = np.isin(np.asarray(pq["lang"], str), list(training_languages))
  return {
      "trained": float(ap[trained].mean()) if trained.any() else None,
      "untrained": float(ap[~trained].mean()) if (~trained).any() else None,
  }


def _seconds(results: Mapping[str, Any]) -> float | None:
  s = results.get("seconds")
  if isinstance(s, (int, float)):
    return float(s)
  if isinstance(s, Mapping):
    for key in ("total", "total_this_session"):
      if isinstance(s.get(key), (int, float)):
        return float(s[key])
    values = [v for v in s.values() if isinstance(v, (int, float))]
    return float(sum(values)) if values else None
  return None


def cell_entry(cell: Cell) -> dict[str, Any]:
  """One row of report.json's `cells`."""
  fine = cell.results["fine_tuned"]
  zero = cell.results.get("zero_shot") or {}
  return {
      "name": cell.name,
      "attention": dict(cell.attention or {}),
      "kind": cell.kind,
      "num_languages": cell.num_languages,
      "training_languages": list(cell.training_languages),
      "seed": cell.seed,
      "mono_prob": cell.mono_prob,
      "attended_fraction": dict(cell.results.get("attended_fraction") or {}),
      "attended_fraction_queries": dict(cell.results.get("attended_fraction_queries") or {}),
      "attended_fraction_train": cell.results.get("attended_fraction_train"),
      "pools": {
          d: {str(k): report_metrics(r) for k, r in sorted(pools_of(rep).items())}
          for d, rep in fine.items()
      },
      "trained_vs_untrained": {
          d: trained_vs_untrained(rep, cell.training_languages) for d, rep in fine.items()
      },
      "zero_shot": {
          d: (report_metrics(_largest(zero[d]))["mul_macro"] if zero.get(d) else None) for d in fine
      },
      "seconds": _seconds(cell.results),
  }


def arm_entry(arm: Arm, cells_json: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """Seed means of an arm (what report.md's cell tables show)."""
  datasets = sorted({d for r in arm.reports.values() for d in r})
  pools: dict[str, dict[str, dict[str, float | None]]] = {}
  for d in datasets:
    per_seed = [
        {str(k): report_metrics(r) for k, r in pools_of(rep[d]).items()}
        for rep in arm.reports.values()
        if d in rep
    ]
    keys = sorted({k for s in per_seed for k in s}, key=int)
    pools[d] = {
        k: {
            m: _mean(s[k][m] for s in per_seed if k in s)
            for m in ("mul_macro", "mul_micro", "mo", "cr")
        }
        for k in keys
    }
  entry = {
      "name": arm.name,
      "kind": arm.kind,
      "family": arm.family,
      "attention": arm.attention,
      "num_languages": arm.num_languages,
      "mono_prob": arm.mono_prob,
      "eval_only": arm.eval_only,
      "seeds": sorted(arm.reports),
      "attended_fraction": dict(arm.attended_fraction),
      "pools": pools,
  }
  if not arm.eval_only:
    rows = [cells_json[c.name] for c in arm.cells]
    entry["trained_vs_untrained"] = {
        d: {
            k: _mean(r["trained_vs_untrained"].get(d, {}).get(k) for r in rows)
            for k in ("trained", "untrained")
        }
        for d in datasets
    }
    entry["zero_shot"] = {d: _mean(r["zero_shot"].get(d) for r in rows) for d in datasets}
    entry["seconds"] = _mean(r["seconds"] for r in rows)
  return entry


def _focus_count(contrasts: Sequence[Mapping], dataset: str, design: Design) -> int | None:
  """The training-language count a dataset's summaries use: the design's, else the largest."""
  counts = {
      c["num_languages"]
      for c in contrasts
      if c["dataset"] == dataset and c["family"] == "vs_dense" and c["mono_prob"] == HYBRID
  }
  if not counts:
    return None
  return design.primary_languages if design.primary_languages in counts else max(counts)


def _pick(contrasts: Sequence[Mapping], **keys) -> list[Mapping]:
  return [c for c in contrasts if all(c.get(k) == v for k, v in keys.items())]


def _largest_pool(entries: Sequence[Mapping]) -> list[Mapping]:
  if not entries:
    return []
  pool = max(e["pool_languages"] for e in entries)
  return [e for e in entries if e["pool_languages"] == pool]


def primary_contrast(contrasts: Sequence[Mapping], design: Design) -> dict[str, Any] | None:
  """The design's primary contrast at its training-language count (else the largest present),
  on the largest pool, the hybrid group when present."""
  bs, loc = design.primary
  found = _pick(
      contrasts,
      family="matched",
      kind_a=bs,
      kind_b=loc,
      dataset=design.primary_dataset,
      metric=design.primary_metric,
  )
  if not found:
    return None
  hybrid = [c for c in found if c["mono_prob"] == HYBRID]
  found = hybrid or found
  counts = {c["num_languages"] for c in found}
  n = design.primary_languages if design.primary_languages in counts else max(counts)
  return dict(_largest_pool([c for c in found if c["num_languages"] == n])[0])


def spearman_entry(contrasts: Sequence[Mapping], dataset: str, metric: str) -> dict[str, Any]:
  """Rank correlation of attended fraction with the difference from dense (trained sparse arms,
  largest training-language count, largest pool, hybrid)."""
  rows = _pick(contrasts, dataset=dataset, family="vs_dense", metric=metric, mono_prob=HYBRID)
  if not rows:
    return {
        "rho": None,
        "num_languages": None,
        "pool_languages": None,
        "metric": metric,
        "arms": [],
        "fractions": [],
        "differences": [],
    }
  n = max(r["num_languages"] for r in rows)
  rows = [
      r
      for r in _largest_pool([r for r in rows if r["num_languages"] == n])
      if r["fraction_a"] is not None and r["difference"] is not None
  ]
  x, y = [r["fraction_a"] for r in rows], [r["difference"] for r in rows]
  return {
      "rho": spearman(x, y) if rows else None,
      "num_languages": n,
      "pool_languages": rows[0]["pool_languages"] if rows else None,
      "metric": metric,
      "arms": [r["a"] for r in rows],
      "fractions": x,
      "differences": y,
  }


def pair_grids(
    comps: Sequence[Comparison],
    paired: Mapping[tuple, Paired],
    contrasts: Sequence[Mapping],
    dataset: str,
    design: Design,
    *,
    num_samples: int,
    seed: int,
) -> list[dict[str, Any]]:
  """Per language pair mAP differences (matched, then sparse minus dense) at the focus count."""
  n = _focus_count(contrasts, dataset, design)
  if n is None:
    matched = {c["num_languages"] for c in _pick(contrasts, dataset=dataset, family="matched")}
    n = max(matched) if matched else None
  out = []
  for family in ("matched", "vs_dense"):
    for c in comps:
      if c.family != family or c.a.num_languages != n or c.a.mono_prob != HYBRID:
        continue
      keys = [k for k in paired if k[:5] == (dataset, family, c.a.name, c.b.name, n)]
      if not keys:
        continue
      key = max(keys, key=lambda k: k[5])
      p = paired[key]
      if p.by_language is None:
        continue
      mean, low, high = grid_bootstrap(p, num_samples=num_samples, seed=seed)
      significant = (low > 0) | (high < 0)
      out.append(
          {
              "family": family,
              "a": c.a.name,
              "b": c.b.name,
              "num_languages": n,
              "pool_languages": key[5],
              "languages": list(p.languages),
              "difference": _matrix(mean),
              "low": _matrix(low),
              "high": _matrix(high),
              "significant": significant.tolist(),
          }
      )
  return out


def _matrix(grid: np.ndarray) -> list[list[float | None]]:
  return [[None if not np.isfinite(v) else float(v) for v in row] for row in grid]


def learning_curves(arms: Sequence[Arm]) -> dict[str, list[dict[str, Any]]]:
  """Seed-mean Mul. by step per dataset and trained arm (cells with a learning_curve)."""
  out: dict[str, list[dict[str, Any]]] = {}
  for arm in arms:
    if arm.eval_only:
      continue
    points: dict[str, dict[int, dict[str, list[float]]]] = {}
    for cell in arm.cells:
      for point in cell.results.get("learning_curve") or ():
        step = points.setdefault(point["dataset"], {}).setdefault(int(point["step"]), {})
        for m, key in SUMMARY_KEYS.items():
          if point.get(key) is not None:
            step.setdefault(m, []).append(float(point[key]))
    for dataset, steps in points.items():
      order = sorted(steps)
      out.setdefault(dataset, []).append(
          {
              "arm": arm.name,
              "kind": arm.kind,
              "num_languages": arm.num_languages,
              "mono_prob": arm.mono_prob,
              "steps": order,
              **{m: [_mean(steps[s].get(m, [])) for s in order] for m in METRICS},
          }
      )
  return out


# ---------------------------------------------------------------------- findings


def _ci(entry: Mapping[str, Any]) -> str:
  d, (low, high) = entry["difference"], entry["ci"]
  if d is None:
    return "n/a"
  if low is None or high is None:
    return f"{d:+.4f}"
  return f"{d:+.4f} [{low:+.4f}, {high:+.4f}]"


def _frac(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.3f}"


def _seeds(entry: Mapping[str, Any]) -> str:
  return ", ".join(map(str, entry["seeds"]))


def _primary_sentence(report: Mapping[str, Any]) -> str:
  design, p = report["design"], report["primary"]
  bs, loc = design["primary"]
  metric = METRIC_NAMES[design["primary_metric"]]
  if p is None:
    return (
        f"The primary contrast, block-sparse {bs} minus local {loc} at matched attended "
        f"fraction on {design['primary_dataset']} ({metric}), is not in these results."
    )
  note = (
      ""
      if p["num_languages"] == design["primary_languages"]
      else f" (the design asks for {design['primary_languages']}; the largest count present is "
      f"used)"
  )
  if p["ci"][1] is not None and p["ci"][1] < 0:
    verdict = "block-sparse retrieves worse than local at this budget"
  elif p["ci"][0] is not None and p["ci"][0] > 0:
    verdict = "block-sparse retrieves better than local at this budget"
  else:
    verdict = "the interval includes zero, so the two are not distinguishable"
  level = "" if p["level"] is None else f", matched at level {p['level']:g}"
  return (
      f"Primary contrast: on {p['dataset']} with {p['num_languages']} training "
      f"languages{note} and a pool of {p['pool_languages']} languages, block-sparse {p['a']} "
      f"(attended fraction {_frac(p['fraction_a'])}) minus local {p['b']} (attended fraction "
      f"{_frac(p['fraction_b'])}){level} differs in {metric} by {_ci(p)} (95% cluster "
      f"bootstrap; {p['questions']} questions, {p['clusters']} {p['cluster_unit']} clusters, "
      f"seeds {_seeds(p)}): {verdict}."
  )


def _excludes_zero(entry: Mapping[str, Any]) -> bool:
  low, high = entry["ci"]
  return low is not None and high is not None and (low > 0 or high < 0)


def _trend_axis(t: Mapping[str, Any]) -> str:
  if t["axis"] == "training":
    return f"from {t['from_languages']} to {t['to_languages']} training languages"
  return (
      f"from a pool of {t['from_languages']} to {t['to_languages']} languages at "
      f"{t['num_languages']} training languages"
  )


def trends_sentence(dataset: str, metric: str, picked: Sequence[Mapping[str, Any]]) -> str:
  """Changes whose interval excludes zero are stated as rises or falls; the rest are listed as
  not distinguishable from zero."""
  changes = [
      f"{_trend_axis(t)}, {t['a']} minus {t['b']} "
      f"{'falls' if t['ci'][1] < 0 else 'rises'} (change {_ci(t)})"
      for t in picked
      if _excludes_zero(t)
  ]
  nulls = [
      f"{_trend_axis(t)}, {t['a']} minus {t['b']} ({_ci(t)})"
      for t in picked
      if not _excludes_zero(t)
  ]
  text = f"Trends on {dataset} ({METRIC_NAMES[metric]}, difference-in-differences): "
  text += "; ".join(changes) + (
      "." if changes else "no change has an interval that excludes " "zero."
  )
  if nulls:
    text += " Not distinguishable from zero: " + "; ".join(nulls) + "."
  return text


def findings(report: Mapping[str, Any]) -> str:
  """The findings paragraph: every number is read from report.json's content."""
  design = report["design"]
  metric = design["primary_metric"]
  name = METRIC_NAMES[metric]
  contrasts, trends = report["contrasts"], report["trends"]
  sentences = [_primary_sentence(report)]
  for dataset in report["datasets"]:
    focus = report["focus_languages"].get(dataset)
    rows = _largest_pool(
        _pick(
            contrasts,
            dataset=dataset,
            family="vs_dense",
            metric=metric,
            mono_prob=HYBRID,
            num_languages=focus,
        )
    )
    if rows:
      sentences.append(
          f"Against dense on {dataset} ({focus} training languages, pool of "
          f"{rows[0]['pool_languages']} languages, {name}): "
          + "; ".join(f"{r['a']} {_ci(r)}" for r in rows)
          + "."
      )
    picked = [
        t
        for t in _pick(trends, dataset=dataset, metric=metric, mono_prob=HYBRID)
        if (t["family"] in ("matched", "vs_dense") and t["axis"] == "training")
        or (t["family"] == "matched" and t["axis"] == "pool" and t["num_languages"] == focus)
    ]
    picked.sort(
        key=lambda t: (t["family"] != "matched", t["axis"] != "training", t["a"], t["to_languages"])
    )
    if picked:
      sentences.append(trends_sentence(dataset, metric, picked))
    controls = _largest_pool(
        _pick(
            contrasts,
            dataset=dataset,
            family="eval_only",
            metric=metric,
            mono_prob=HYBRID,
            num_languages=focus,
        )
    )
    for e in controls:
      text = (
          f"Eval-only control on {dataset} ({focus} training languages): the dense-fine-tuned "
          f"model evaluated with the {e['kind_a']} mask differs from dense by {_ci(e)}"
      )
      adapt = _largest_pool(
          _pick(
              contrasts,
              dataset=dataset,
              family="adaptation",
              metric=metric,
              mono_prob=HYBRID,
              num_languages=focus,
              b=e["a"],
          )
      )
      if adapt:
        text += (
            f", and training with the mask ({adapt[0]['a']} minus {e['a']}) adds "
            f"{_ci(adapt[0])}"
        )
      sentences.append(text + ".")
    mono = _pick(contrasts, dataset=dataset, family="mono", metric=metric)
    mono = [m for m in mono if m["pool_languages"] == max(x["pool_languages"] for x in mono)]
    if mono:
      sentences.append(
          f"Training-pair mix on {dataset} ({name}, hybrid mono_prob 0.5 minus the other mix): "
          + "; ".join(
              f"{m['a']} minus {m['b']} at {m['num_languages']} training languages " f"{_ci(m)}"
              for m in mono
          )
          + "."
      )
    rho = report["spearman"].get(dataset)
    if rho and rho["arms"]:
      if rho["rho"] is None:
        sentences.append(
            f"On {dataset}, the {len(rho['arms'])} sparse arms at "
            f"{rho['num_languages']} training languages have fewer than 4 distinct "
            f"attended fractions or differences, so no rank correlation is given."
        )
      else:
        sentences.append(
            f"Across {len(rho['arms'])} sparse arms on {dataset} at "
            f"{rho['num_languages']} training languages, Spearman's rho between "
            f"attended fraction and difference from dense is {rho['rho']:+.3f}."
        )
  return " ".join(sentences)


# ---------------------------------------------------------------------- the report


def build_report(
    cells: Sequence[Cell], design: Design, *, num_samples: int = 2000, seed: int = 0
) -> dict[str, Any]:
  """report.json's content (no files)."""
  if not cells:
    raise ValueError("cells: expected at least one finished cell")
  if not isinstance(design, Design):
    raise ValueError(f"design: expected a report.Design, got {type(design).__name__}")
  if num_samples < 1:
    raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
  parse = Parser()
  arms = collect_arms(cells)
  datasets = datasets_of(cells, design)
  comps = comparisons(arms, design)
  contrasts, paired = contrast_entries(
      comps, datasets, num_samples=num_samples, seed=seed, parse=parse
  )
  trends = trend_entries(comps, paired, num_samples=num_samples, seed=seed)
  cells_json = [cell_entry(c) for c in cells]
  by_name = {c["name"]: c for c in cells_json}
  report = {
      "design": design.to_json(),
      "bootstrap": {
          "num_samples": num_samples,
          "seed": seed,
          "confidence": CONFIDENCE,
          "min_articles": MIN_ARTICLES,
      },
      "datasets": datasets,
      "focus_languages": {d: _focus_count(contrasts, d, design) for d in datasets},
      "primary": primary_contrast(contrasts, design),
      "cells": cells_json,
      "arms": [arm_entry(a, by_name) for a in arms],
      "contrasts": contrasts,
      "trends": trends,
      "spearman": {d: spearman_entry(contrasts, d, design.primary_metric) for d in datasets},
      "pairs": {
          d: pair_grids(comps, paired, contrasts, d, design, num_samples=num_samples, seed=seed)
          for d in datasets
      },
      "learning_curves": learning_curves(arms),
  }
  report["findings"] = findings(report)
  return _clean(report)


def _clean(value: Any) -> Any:
  """JSON-ready: NaN and inf become None, numpy scalars plain numbers, tuples lists."""
  if isinstance(value, Mapping):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


# ---------------------------------------------------------------------- plots


def _png(fig: Figure) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90)
  return buf.getvalue()


def _errorbar(ax, x, rows, **kwargs):
  y = np.array([r["difference"] for r in rows], np.float64)
  low = np.array([r["ci"][0] if r["ci"][0] is not None else r["difference"] for r in rows])
  high = np.array([r["ci"][1] if r["ci"][1] is not None else r["difference"] for r in rows])
  err = np.maximum(0.0, np.stack([y - low, high - y]))
  ax.errorbar(np.asarray(x, np.float64), y, yerr=err, capsize=3, **{"marker": "o", **kwargs})


def _vs_dense_rows(report: Mapping[str, Any], dataset: str) -> list[Mapping]:
  metric = report["design"]["primary_metric"]
  return [
      c
      for c in report["contrasts"]
      if c["dataset"] == dataset
      and c["metric"] == metric
      and c["mono_prob"] == HYBRID
      and c["family"] in ("vs_dense", "eval_only")
  ]


def _axis_figure(
    report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], axis: str, xlabel: str, title: str
) -> Figure:
  """Each arm's difference from dense (with its interval) along one language axis."""
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.add_subplot()
  arms = list(dict.fromkeys(r["a"] for r in rows))
  ticks = sorted({r[axis] for r in rows})
  # Arms side by side around each tick (a tenth of the narrowest gap), so intervals stay apart.
  width = 0.1 * (min(np.diff(ticks)) if len(ticks) > 1 else 1.0)
  for i, arm in enumerate(arms):
    mine = sorted((r for r in rows if r["a"] == arm), key=lambda r: r[axis])
    shift = width * (i - (len(arms) - 1) / 2) / max(len(arms) - 1, 1) * 2
    _errorbar(
        ax,
        [r[axis] + shift for r in mine],
        mine,
        label=arm,
        linestyle="--" if "(eval only)" in arm else "-",
    )
  ax.axhline(0.0, color="grey", lw=0.8)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(f"{METRIC_NAMES[report['design']['primary_metric']]} minus dense")
  ax.set_xticks(ticks)
  ax.set_title(f"{title} (95% cluster bootstrap)", fontsize=10)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def training_figure(report: Mapping[str, Any], dataset: str) -> Figure | None:
  """Difference from dense against training languages (largest pool)."""
  rows = _vs_dense_rows(report, dataset)
  if not rows:
    return None
  pool = max(r["pool_languages"] for r in rows)
  rows = [r for r in rows if r["pool_languages"] == pool]
  return _axis_figure(
      report, rows, "num_languages", "training languages", f"{dataset}, pool of {pool} languages"
  )


def pool_figure(report: Mapping[str, Any], dataset: str) -> Figure | None:
  """Difference from dense against evaluation pool languages (focus training count)."""
  n = report["focus_languages"].get(dataset)
  rows = [r for r in _vs_dense_rows(report, dataset) if r["num_languages"] == n]
  if not rows:
    return None
  return _axis_figure(
      report,
      rows,
      "pool_languages",
      "evaluation pool languages",
      f"{dataset}, {n} training languages",
  )


def fraction_figure(report: Mapping[str, Any], dataset: str) -> Figure | None:
  """Difference from dense against attended fraction, local and block-sparse on one axis."""
  n = report["focus_languages"].get(dataset)
  rows = [
      r
      for r in _vs_dense_rows(report, dataset)
      if r["num_languages"] == n and r["family"] == "vs_dense" and r["fraction_a"] is not None
  ]
  rows = _largest_pool(rows)
  if not rows:
    return None
  family = {a["name"]: a["family"] for a in report["arms"]}
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.add_subplot()
  for fam, marker in (("local", "o"), ("block_sparse", "s")):
    mine = sorted((r for r in rows if family.get(r["a"]) == fam), key=lambda r: r["fraction_a"])
    if mine:
      _errorbar(ax, [r["fraction_a"] for r in mine], mine, label=fam, marker=marker)
  at = {r["a"]: r for r in rows}
  for m in report["design"]["matched"]:
    if m[0] in at and m[1] in at:
      ax.plot(
          [at[m[0]]["fraction_a"], at[m[1]]["fraction_a"]],
          [at[m[0]]["difference"], at[m[1]]["difference"]],
          color="grey",
          lw=0.8,
          ls=":",
      )
  ax.axhline(0.0, color="grey", lw=0.8)
  ax.set_xlabel("attended fraction (evaluation candidates)")
  ax.set_ylabel(f"{METRIC_NAMES[report['design']['primary_metric']]} minus dense")
  ax.set_title(
      f"{dataset}, {n} training languages, pool of {rows[0]['pool_languages']} "
      f"(dotted: matched pairs)",
      fontsize=10,
  )
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def pairs_figure(grids: Sequence[Mapping[str, Any]], title: str) -> Figure:
  """Heatmaps (query x candidate language); cells whose interval excludes zero get a border and
  an asterisk."""
  n = len(grids[0]["languages"])
  size = 1.0 + 0.38 * n
  cols = min(3, len(grids))
  rows = -(-len(grids) // cols)
  fig = Figure(figsize=(size * cols + 1.2, size * rows + 0.9), layout="constrained")
  values = [np.array(g["difference"], dtype=np.float64) for g in grids]
  limit = max([float(np.nanmax(np.abs(v))) for v in values if np.isfinite(v).any()] + [1e-6])
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  image = None
  for ax, grid, value in zip(axes, grids, values):
    languages = grid["languages"]
    image = ax.imshow(value, cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set_xticks(range(n), labels=languages, fontsize=6)
    ax.set_yticks(range(n), labels=languages, fontsize=6)
    ax.set_title(f"{grid['a']} − {grid['b']}", fontsize=7)
    ax.set_xlabel("candidate language", fontsize=7)
    ax.set_ylabel("query language", fontsize=7)
    for i in range(n):
      for j in range(n):
        if not np.isfinite(value[i, j]):
          continue
        star = "*" if grid["significant"][i][j] else ""
        if star:
          ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.6, ec="black"))
        text = f"{value[i, j]:+.3f}{star}" if n <= 7 else star
        if text:
          ax.text(j, i, text, ha="center", va="center", fontsize=5 if n <= 7 else 8)
  for ax in axes[len(grids) :]:
    ax.set_axis_off()
  fig.colorbar(image, ax=list(axes[: len(grids)]), fraction=0.02, pad=0.02)
  fig.suptitle(title, fontsize=9)
  return fig


def learning_figure(
    curves: Sequence[Mapping[str, Any]], dataset: str, metric: str
) -> Figure | None:
  """Mul. against training step per arm (largest training-language count)."""
  if not curves:
    return None
  n = max(c["num_languages"] for c in curves)
  mine = [c for c in curves if c["num_languages"] == n]
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.add_subplot()
  for c in mine:
    y = np.array([np.nan if v is None else v for v in c[metric]], np.float64)
    ax.plot(c["steps"], y, marker=".", label=c["arm"])
  ax.set_xlabel("training step")
  ax.set_ylabel(f"{METRIC_NAMES[metric]} (fixed evaluation subset)")
  ax.set_title(f"{dataset}, {n} training languages: learning curves", fontsize=10)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def figures(report: Mapping[str, Any]) -> dict[str, list[tuple[str, Figure]]]:
  """(file name, figure) per dataset."""
  out: dict[str, list[tuple[str, Figure]]] = {}
  metric = report["design"]["primary_metric"]
  for d in report["datasets"]:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in d)
    items = [
        (f"vs_training_{safe}.png", training_figure(report, d)),
        (f"vs_pool_{safe}.png", pool_figure(report, d)),
        (f"vs_fraction_{safe}.png", fraction_figure(report, d)),
    ]
    for family, title in (
        ("matched", "block-sparse minus local (matched)"),
        ("vs_dense", "sparse minus dense"),
    ):
      grids = [g for g in report["pairs"].get(d, []) if g["family"] == family]
      if grids:
        items.append(
            (
                f"pairs_{family}_{safe}.png",
                pairs_figure(
                    grids,
                    f"{d}, {grids[0]['num_languages']} training languages, pool of "
                    f"{grids[0]['pool_languages']}: {title}, mAP per language pair\n"
                    f"rows: query, columns: candidate language; * and border: the 95% interval "
                    f"excludes 0",
                ),
            )
        )
    items.append(
        (
            f"learning_curve_{safe}.png",
            learning_figure(report["learning_curves"].get(d, []), d, metric),
        )
    )
    out[d] = [(name, fig) for name, fig in items if fig is not None]
  return out


# ---------------------------------------------------------------------- markdown


def _f(value: float | None, digits: int = 4) -> str:
  return (
      "n/a"
      if value is None or (isinstance(value, float) and math.isnan(value))
      else f"{value:.{digits}f}"
  )


def arms_markdown(report: Mapping[str, Any], dataset: str) -> list[str]:
  arms = [a for a in report["arms"] if dataset in a["pools"]]
  pools = sorted({int(k) for a in arms for k in a["pools"][dataset]})
  lines = [
      "| arm | training languages | seeds | attended fraction | Mo. | Cr. | micro Mul. | "
      + " | ".join(f"macro Mul. pool {p}" for p in pools)
      + " | AP trained langs | AP other langs | zero-shot macro Mul. | seconds |",
      "|" + " --- |" * (11 + len(pools)),
  ]
  for a in arms:
    top = a["pools"][dataset][str(max(int(k) for k in a["pools"][dataset]))]
    tvu = (a.get("trained_vs_untrained") or {}).get(dataset) or {}
    lines.append(
        f"| {a['name']} | {a['num_languages']} | {','.join(map(str, a['seeds']))} | "
        f"{_f(a['attended_fraction'].get(dataset), 3)} | {_f(top['mo'])} | {_f(top['cr'])} | "
        f"{_f(top['mul_micro'])} | "
        + " | ".join(_f((a["pools"][dataset].get(str(p)) or {}).get("mul_macro")) for p in pools)
        + f" | {_f(tvu.get('trained'))} | {_f(tvu.get('untrained'))} | "
        f"{_f((a.get('zero_shot') or {}).get(dataset))} | {_f(a.get('seconds'), 0)} |"
    )
  return lines


def contrasts_markdown(report: Mapping[str, Any], dataset: str) -> list[str]:
  lines = []
  rows = [c for c in report["contrasts"] if c["dataset"] == dataset]
  for family in FAMILIES:
    mine = [c for c in rows if c["family"] == family and c["metric"] == "mul_macro"]
    if not mine:
      continue
    micro = {
        (c["a"], c["b"], c["num_languages"], c["pool_languages"]): c
        for c in rows
        if c["family"] == family and c["metric"] == "mul_micro"
    }
    lines += [
        f"#### {FAMILY_TITLES[family]}",
        "",
        "| a − b | training languages | pool | macro Mul. [95% CI] | micro Mul. [95% CI] | "
        "questions | clusters | seeds |",
        "|" + " --- |" * 8,
    ]
    mine.sort(key=lambda c: (c["a"], c["b"], c["num_languages"], c["pool_languages"]))
    for c in mine:
      m = micro.get((c["a"], c["b"], c["num_languages"], c["pool_languages"]))
      level = "" if c["level"] is None else f" (level {c['level']:g})"
      lines.append(
          f"| {c['a']} − {c['b']}{level} | {c['num_languages']} | "
          f"{c['pool_languages']} | {_ci(c)} | {_ci(m) if m else 'n/a'} | "
          f"{c['questions']} | {c['clusters']} {c['cluster_unit']} | {_seeds(c)} |"
      )
    lines.append("")
  return lines


def trends_markdown(report: Mapping[str, Any], dataset: str) -> list[str]:
  rows = [t for t in report["trends"] if t["dataset"] == dataset]
  if not rows:
    return ["No contrast is present at two training-language counts or two pools.", ""]
  key = lambda t: (
      t["family"],
      t["a"],
      t["b"],
      t["axis"],
      t["num_languages"],  # noqa: E731
      t["pool_languages"],
      t["from_languages"],
      t["to_languages"],
  )
  micro = {key(t): t for t in rows if t["metric"] == "mul_micro"}
  lines = [
      "| a − b | axis | from → to | at | macro Mul.: contrast from → to | macro change "
      "[95% CI] | micro change [95% CI] | excludes 0 (macro) |",
      "|" + " --- |" * 8,
  ]
  macro = [t for t in rows if t["metric"] == "mul_macro"]
  macro.sort(
      key=lambda t: (
          FAMILIES.index(t["family"]),
          t["a"],
          t["b"],
          t["axis"] != "training",
          t["num_languages"] or 0,
          t["to_languages"],
      )
  )
  for t in macro:
    at = (
        f"pool {t['pool_languages']}"
        if t["axis"] == "training"
        else f"{t['num_languages']} training languages"
    )
    m = micro.get(key(t))
    lines.append(
        f"| {t['a']} − {t['b']} | {t['axis']} | {t['from_languages']} → "
        f"{t['to_languages']} | {at} | {_f(t['from_difference'])} → "
        f"{_f(t['to_difference'])} | {_ci(t)} | {_ci(m) if m else 'n/a'} | "
        f"{'yes' if _excludes_zero(t) else 'no'} |"
    )
  return lines + [""]


def report_markdown(
    report: Mapping[str, Any], figure_names: Mapping[str, Sequence[str]], header: Sequence[str] = ()
) -> str:
  design, boot = report["design"], report["bootstrap"]
  cells = report["cells"]
  lines = [
      "# Study report: block-sparse vs local vs dense attention as languages grow",
      "",
      *header,
      "## Findings",
      "",
      report["findings"],
      "",
      "## Design and statistics",
      "",
      f"{len(cells)} finished cells; training languages "
      f"{', '.join(map(str, sorted({c['num_languages'] for c in cells})))}; seeds "
      f"{', '.join(map(str, sorted({c['seed'] for c in cells})))}; mono_prob "
      f"{', '.join(f'{p:g}' for p in sorted({c['mono_prob'] for c in cells}))}. Matched "
      "pairs (block-sparse, local, level): "
      + ("; ".join(f"{a} ~ {b} ({lv:g})" for a, b, lv in design["matched"]) or "none")
      + f". Primary contrast: {design['primary'][0]} minus {design['primary'][1]} on "
      f"{design['primary_dataset']}, {METRIC_NAMES[design['primary_metric']]}, "
      f"{design['primary_languages']} training languages.",
      "",
      "Macro Mul. = mean over query languages of the per-language mean AP (arXiv "
      "2408.10536); micro Mul. = mean AP over queries; Mo./Cr. = mean of the mAP matrix "
      "diagonal / off-diagonal. A pool of N languages evaluates on the first N languages of "
      "en de zh ar es hi vi ru el th tr that the dataset has. Differences are per query, "
      "seeds paired by number; intervals are 95% percentile intervals of a bootstrap over "
      f"articles ({boot['num_samples']} resamples; paragraphs when fewer than "
      f"{boot['min_articles']} articles), computed inside each resample. Trends are "
      "differences-in-differences with both contrasts resampled on the same clusters. "
      "Eval-only arms are the dense-fine-tuned model evaluated with a sparse mask, no "
      "training.",
      "",
  ]
  for d in report["datasets"]:
    rho = report["spearman"].get(d) or {}
    lines += [
        f"## {d}",
        "",
        "### Arms (means over seeds; largest pool unless named)",
        "",
        *arms_markdown(report, d),
        "",
        "### Contrasts",
        "",
        *contrasts_markdown(report, d),
        "### Trends (difference-in-differences)",
        "",
        *trends_markdown(report, d),
    ]
    if rho.get("arms"):
      value = "n/a (fewer than 4 distinct values)" if rho["rho"] is None else f"{rho['rho']:+.3f}"
      lines += [
          f"Spearman's rho, attended fraction vs difference from dense "
          f"({len(rho['arms'])} sparse arms, {rho['num_languages']} training languages): "
          f"{value}.",
          "",
      ]
    for name in figure_names.get(d, []):
      lines += [f"![{name}]({name})", ""]
  return "\n".join(lines) + "\n"


def write_report(
    cells: Sequence[Cell],
    out_dir: str | os.PathLike,
    design: Design,
    *,
    num_samples: int = 2000,
    seed: int = 0,
    header: Sequence[str] = (),
) -> pathlib.Path:
  """Writes report.json, the PNG plots and report.md into `out_dir`; returns report.md's path."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  report = build_report(cells, design, num_samples=num_samples, seed=seed)
  names: dict[str, list[str]] = {}
  for dataset, items in figures(report).items():
    names[dataset] = []
    for name, fig in items:
      atomic_write(out / name, _png(fig))
      names[dataset].append(name)
  report["figures"] = names
  text = json.dumps(report, indent=1, allow_nan=False) + "\n"
  atomic_write(out / "report.json", text.encode())
  path = out / "report.md"
  atomic_write(
      path, report_markdown(report, names, list(header) + ([""] if header else [])).encode()
  )
  return path
