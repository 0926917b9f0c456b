"""Fabricated sweep cells (the shape of results.json) with effects we choose.

A `World` is an evaluation set: questions grouped in articles and paragraphs, asked in every
language. `report` turns per-query AP arrays into a jxr.eval report with nested pools, so a test
can give each arm a known shift (per query, per article, per pool) and check what the report
builder recovers.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from experiments.report import Cell

LANGUAGES = ("en", "de", "zh", "ar", "es", "hi", "vi", "ru", "el", "th", "tr")


@dataclasses.dataclass(frozen=True)
class World:
  """A fabricated evaluation set: every question in every language."""

  dataset: str
  question_ids: tuple[str, ...]
  articles: tuple[str, ...]  # per question
  paragraphs: tuple[str, ...]  # per question (ids repeat across articles)
  languages: tuple[str, ...]
  pools: tuple[int, ...]

  @property
  def shape(self) -> tuple[int, int]:
    return len(self.question_ids), len(self.languages)

  def article_index(self) -> np.ndarray:
    return np.unique(np.asarray(self.articles), return_inverse=True)[1]


def world(
    dataset: str = "mlqa-r",
    *,
    num_articles: int = 12,
    questions_per_article: int = 4,
    paragraphs_per_article: int = 2,
    languages: Sequence[str] = LANGUAGES[:7],
    pools: Sequence[int] | None = None,
) -> World:
  if pools is None:
    pools = tuple(k for k in (2, 4, 7, 11) if k <= len(languages))
  qids, articles, paragraphs = [], [], []
  for a in range(num_articles):
    for q in range(questions_per_article):
      qids.append(f"{dataset}-a{a:02d}-q{q}")
      articles.append(f"article{a:02d}")
      paragraphs.append(f"p{q % paragraphs_per_article}")
  return World(
      dataset, tuple(qids), tuple(articles), tuple(paragraphs), tuple(languages), tuple(pools)
  )


def base_ap(w: World, seed: int, low: float = 0.3, high: float = 0.7) -> np.ndarray:
  """[questions, languages] AP shared by every arm of one seed (the paired baseline)."""
  return np.random.default_rng(seed).uniform(low, high, size=w.shape)


Shift = float | np.ndarray | Callable[[int], "float | np.ndarray"]


def _at(shift: Shift, pool: int) -> float | np.ndarray:
  return shift(pool) if callable(shift) else shift


def report(
    w: World,
    ap: np.ndarray,
    *,
    by_language: np.ndarray | None = None,
    pool_shift: Shift = 0.0,
    keep: np.ndarray | None = None,
) -> dict:
  """A jxr.eval report with `pools`; pool k holds the queries and candidates of the first k
  languages, AP `ap + pool_shift(k)` ([questions, languages] or broadcastable).

  `by_language` [questions, languages, languages]: AP within each candidate language (default:
  `ap` in every column); `keep` [questions, languages] bool drops queries.
  """
  ap = np.asarray(ap, np.float64)
  if ap.shape != w.shape:
    raise ValueError(f"ap: expected shape {w.shape}, got {ap.shape}")
  abl = (
      np.repeat(ap[:, :, None], len(w.languages), axis=2)
      if by_language is None
      else np.asarray(by_language, np.float64)
  )
  keep = np.ones(w.shape, bool) if keep is None else np.asarray(keep, bool)
  pools = {}
  for k in w.pools:
    shift = np.broadcast_to(np.asarray(_at(pool_shift, k), np.float64), w.shape)
    pools[str(k)] = _pool_report(w, k, ap + shift, abl + shift[:, :, None], keep)
  top = dict(pools[str(max(w.pools))])
  top["pools"] = pools
  return top


def _pool_report(w: World, k: int, ap: np.ndarray, abl: np.ndarray, keep: np.ndarray) -> dict:
  languages = list(w.languages[:k])
  rows = [(q, j) for q in range(len(w.question_ids)) for j in range(k) if keep[q, j]]
  grid = np.full((k, k), np.nan)
  for j in range(k):
    mine = [q for q, jj in rows if jj == j]
    if mine:
      grid[j] = abl[mine, j, :k].mean(axis=0)
  values = np.array([ap[q, j] for q, j in rows])
  langs = [languages[j] for _, j in rows]
  per_lang = [values[[x == lang for x in langs]].mean() for lang in languages if lang in langs]
  mono = float(np.nanmean(np.diag(grid)))
  cross = float(np.nanmean(grid[~np.eye(k, dtype=bool)])) if k > 1 else None
  return {
      "dataset": w.dataset,
      "languages": languages,
      "num_queries": len(rows),
      "summary": {
          "mono": mono,
          "cross": cross,
          "multi_macro": float(np.mean(per_lang)),
          "multi_micro": float(values.mean()),
      },
      "bias": {"rank_distance": 5.0, "rank_distance_normalised": 0.1},
      "matrices": {
          "languages": languages,
          "map": [[None if np.isnan(v) else float(v) for v in row] for row in grid],
      },
      "per_query": {
          "query_id": [w.question_ids[q] for q, _ in rows],
          "lang": langs,
          "article": [w.articles[q] for q, _ in rows],
          "paragraph": [w.paragraphs[q] for q, _ in rows],
          "ap": values.tolist(),
          "ap_by_language": [abl[q, j, :k].tolist() for q, j in rows],
      },
  }


def attention(kind: str) -> dict:
  """The attention spec a label stands for ("local-w17", "block_sparse-b8-g0-r0.113")."""
  family, *parts = kind.split("-")
  spec: dict = {"kind": family}
  names = {"w": "window", "b": "block_size", "g": "global_blocks", "r": "random_fraction"}
  for part in parts:
    if part[:1] in names and part[1:].replace(".", "", 1).isdigit():
      spec[names[part[0]]] = float(part[1:]) if "." in part else int(part[1:])
  return spec


def cell(
    kind: str,
    num_languages: int,
    seed: int,
    reports: Mapping[str, dict],
    *,
    mono_prob: float = 0.5,
    fraction: float | Mapping[str, float] | None = None,
    eval_only: Mapping[str, dict] | None = None,
    zero_shot: Mapping[str, dict] | None = None,
    learning_curve: Sequence[dict] | None = None,
    seconds: float = 10.0,
) -> Cell:
  """A finished cell whose fine-tuned reports (by dataset) are `reports`."""
  if fraction is None:
    fraction = 1.0 if kind == "dense" else 0.5
  fractions = dict(fraction) if isinstance(fraction, Mapping) else {d: fraction for d in reports}
  tag = {0.5: "", 1.0: "-mono", 0.0: "-xy"}.get(mono_prob, f"-m{mono_prob:g}")
  results = {
      "fine_tuned": dict(reports),
      "zero_shot": dict(zero_shot or {}),
      "attended_fraction": fractions,
      "attended_fraction_queries": fractions,
      "attended_fraction_train": next(iter(fractions.values()), None),
      "seconds": {"train": seconds * 0.8, "total": seconds},
      "train": {"steps": 10},
  }
  if eval_only:
    results["eval_only"] = {
        label: {"attention": attention(label), "reports": dict(r)} for label, r in eval_only.items()
    }
  if learning_curve is not None:
    results["learning_curve"] = list(learning_curve)
  return Cell(
      name=f"{kind}-L{num_languages}{tag}-s{seed}",
      kind=kind,
      attention=attention(kind),
      num_languages=num_languages,
      training_languages=LANGUAGES[:num_languages],
      seed=seed,
      mono_prob=mono_prob,
      results=results,
  )


def curve(dataset: str, steps: Sequence[int], start: float, end: float) -> list[dict]:
  """A learning curve rising linearly from `start` to `end`, as experiments.pipeline logs it."""
  values = np.linspace(start, end, len(steps))
  return [
      {
          "step": int(s),
          "dataset": dataset,
          "multi_macro": float(v),
          "multi_micro": float(v),
          "per_query": {},
      }
      for s, v in zip(steps, values)
  ]


Effect = Callable[[int], Shift]  # training-language count -> shift of AP (scalar, array, by pool)


def study(
    worlds: Sequence[World],
    effects: Mapping[str, Effect],
    *,
    counts: Sequence[int],
    seeds: Sequence[int],
    noise: float = 0.0,
    fractions: Mapping[str, float] | None = None,
    mono: Mapping[float, Mapping[str, Effect]] | None = None,
    eval_only: Mapping[str, Effect] | None = None,
    curves: bool = False,
    skip: Sequence[tuple[str, int, int]] = (),
) -> list[Cell]:
  """Cells of every kind x count x seed: AP = the seed's base AP + effect(count) + noise.

  Every arm of one (count, seed) shares its base AP, so paired differences are the effects plus
  independent noise of sd `noise` per arm and query. `mono` adds arms at other mono_prob values;
  `eval_only` gives every dense cell eval-only reports; `skip` drops (kind, count, seed) cells.
  """
  fractions = dict(fractions or {})
  cells = []
  for n in counts:
    for s in seeds:
      bases = {w.dataset: base_ap(w, 1000 * n + s) for w in worlds}
      arms = [(0.5, kind, effect) for kind, effect in effects.items()]
      arms += [
          (p, kind, effect) for p, kinds in (mono or {}).items() for kind, effect in kinds.items()
      ]
      for p, kind, effect in arms:
        if (kind, n, s) in skip:
          continue
        rng = np.random.default_rng(zlib.crc32(repr((kind, n, s, p)).encode()))

        def make(shift, w, rng=rng, bases=bases):
          ap = bases[w.dataset] + (rng.normal(0.0, noise, size=w.shape) if noise else 0.0)
          return report(w, ap, pool_shift=shift)

        reports = {w.dataset: make(effect(n), w) for w in worlds}
        extra = {}
        if kind == "dense" and eval_only and p == 0.5:
          extra["eval_only"] = {
              label: {w.dataset: make(e(n), w) for w in worlds} for label, e in eval_only.items()
          }
        if curves:
          extra["learning_curve"] = [
              point for w in worlds for point in curve(w.dataset, (0, 5, 10), 0.3, 0.5)
          ]
        cells.append(
            cell(
                kind,
                n,
                s,
                reports,
                mono_prob=p,
                fraction=fractions.get(kind, 1.0 if kind == "dense" else 0.5),
                **extra,
            )
        )
  return cells
