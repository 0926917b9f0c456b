"""The sweep's report: tables, paired bootstrap intervals, plots and findings from cell results.

Input: one `Cell` per finished run (attention kind, number of training
languages, seed, and its results.json). Output (`write_report`): `report.md`,
`report.json` (every number in the tables), `degradation_<dataset>.png`
(difference from dense against the number of training languages) and
`pairs_<dataset>_<n>langs.png` (per language pair heatmaps of the mAP difference
from dense).

Degradation of a sparse kind is its pooled (multilingual) mAP minus dense's at
the same language count. Its interval comes from a paired bootstrap over
questions, pooled across seeds: a question id carries all its language
variants and every seed run in both arms, so resampling questions keeps the
correlation between a query's languages and between seeds of one question.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

DENSE = "dense"


@dataclasses.dataclass(frozen=True)
class Cell:
  """One finished run of the grid."""
  kind: str                 # display label: "dense", "local-16", "block_sparse-0.50"
  num_languages: int
  seed: int
  results: Mapping[str, Any]  # results.json of the run

  def report(self, dataset: str, stage: str = "fine_tuned") -> Mapping[str, Any]:
    return self.results[stage][dataset]


@dataclasses.dataclass(frozen=True)
class Difference:
  """Mean difference (arm minus baseline) and its bootstrap interval."""
  delta: float
  low: float
  high: float
  num_questions: int
  num_seeds: int


def kind_label(attn: str, window: int | None = None, density: float | None = None) -> str:
  if attn == "local":
    return f"local-{window}"
  if attn == "block_sparse":
    return f"block_sparse-{density:.2f}"
  return attn


# ---------------------------------------------------------------------- statistics


def _per_query(report: Mapping[str, Any]) -> dict[tuple[str, str], float]:
  pq = report["per_query"]
  return {(str(q), str(lang)): float(ap) for q, lang, ap in zip(pq["query_id"], pq["lang"], pq["ap"])}


def question_sums(arm: Mapping[int, Mapping[str, Any]], base: Mapping[int, Mapping[str, Any]]
                  ) -> tuple[list[str], np.ndarray, np.ndarray, int]:
  """Per question: the sum over (seed, language) of AP(arm) - AP(base), and how many terms.

  Seeds pair by number (same seed: same batches); only seeds in both arms count,
  and only queries present in both reports of a seed.
  """
  seeds = sorted(set(arm) & set(base))
  if not seeds:
    raise ValueError(f"seeds: no seed in both arms (arm {sorted(arm)}, baseline {sorted(base)})")
  sums: dict[str, float] = {}
  counts: dict[str, int] = {}
  for seed in seeds:
    a, b = _per_query(arm[seed]), _per_query(base[seed])
    for key in a.keys() & b.keys():
      sums[key[0]] = sums.get(key[0], 0.0) + a[key] - b[key]
      counts[key[0]] = counts.get(key[0], 0) + 1
  if not sums:
    raise ValueError("per_query: the two arms share no (query_id, lang) pair")
  questions = sorted(sums)
  return (questions, np.array([sums[q] for q in questions]),
          np.array([counts[q] for q in questions], np.float64), len(seeds))


def paired_bootstrap(sums: np.ndarray, counts: np.ndarray, *, num_samples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
  """`(delta, low, high)`: the pooled mean difference sum(sums)/sum(counts) and its
  percentile interval over resampled questions (units drawn with replacement)."""
  sums, counts = np.asarray(sums, np.float64), np.asarray(counts, np.float64)
  if sums.shape != counts.shape or sums.ndim != 1 or len(sums) == 0:
    raise ValueError(f"sums, counts: expected equal non-empty 1-d arrays, got {sums.shape} and "
                     f"{counts.shape}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence: expected a fraction in (0, 1), got {confidence}")
  delta = float(sums.sum() / counts.sum())
  rng = np.random.default_rng(seed)
  n = len(sums)
  draws = rng.multinomial(n, np.full(n, 1.0 / n), size=num_samples).astype(np.float64)
  stats = (draws @ sums) / (draws @ counts)
  tail = (1 - confidence) / 2
  low, high = np.quantile(stats, [tail, 1 - tail])
  return delta, float(low), float(high)


def difference(arm: Mapping[int, Mapping[str, Any]], base: Mapping[int, Mapping[str, Any]], *,
               num_samples: int = 2000, seed: int = 0) -> Difference:
  """Pooled-mAP difference of `arm` from `base` (reports by seed) with its 95% interval."""
  questions, sums, counts, num_seeds = question_sums(arm, base)
  delta, low, high = paired_bootstrap(sums, counts, num_samples=num_samples, seed=seed)
  return Difference(delta, low, high, len(questions), num_seeds)


# ---------------------------------------------------------------------- tables


def _mean(values: Sequence[float | None]) -> float | None:
  kept = [v for v in values if v is not None]
  return float(np.mean(kept)) if kept else None


def _order_kinds(kinds: Sequence[str]) -> list[str]:
  """Dense first, then local by window, then block-sparse by density."""
  def key(kind: str):
    name, _, value = kind.partition("-")
    rank = {"dense": 0, "local": 1, "block_sparse": 2}.get(name, 3)
    return (rank, float(value) if value else 0.0, kind)
  return sorted(set(kinds), key=key)


def datasets_of(cells: Sequence[Cell]) -> list[str]:
  names: list[str] = []
  for cell in cells:
    names += [n for n in cell.results["fine_tuned"] if n not in names]
  return names


def cell_table(cells: Sequence[Cell], dataset: str) -> list[dict[str, Any]]:
  """One row per (kind, language count): seed means of Mo./Cr./Mul., rank distance, fraction."""
  rows = []
  groups: dict[tuple[str, int], list[Cell]] = {}
  for cell in cells:
    if dataset in cell.results["fine_tuned"]:
      groups.setdefault((cell.kind, cell.num_languages), []).append(cell)
  for kind in _order_kinds([k for k, _ in groups]):
    for n in sorted(m for k, m in groups if k == kind):
      members = groups[(kind, n)]
      reports = [c.report(dataset) for c in members]
      # Zero-shot depends on the kind alone (a sweep evaluates it in one cell per kind).
      zero = [c.results.get("zero_shot", {}).get(dataset) for c in cells if c.kind == kind]
      rows.append({
          "kind": kind, "num_languages": n, "seeds": sorted(c.seed for c in members),
          "mono": _mean([r["summary"]["mono"] for r in reports]),
          "cross": _mean([r["summary"]["cross"] for r in reports]),
          "multi": _mean([r["summary"]["multi"] for r in reports]),
          "rank_distance": _mean([r["bias"]["rank_distance"] for r in reports]),
          "zero_shot_multi": _mean([z["summary"]["multi"] if z else None for z in zero]),
          "attended_fraction": _mean([(c.results.get("attended_fraction") or {}).get(dataset)
                                      for c in members]),
      })
  return rows


def _by_seed(cells: Sequence[Cell], kind: str, n: int, dataset: str) -> dict[int, Mapping]:
  return {c.seed: c.report(dataset) for c in cells
          if c.kind == kind and c.num_languages == n and dataset in c.results["fine_tuned"]}


def degradation_table(cells: Sequence[Cell], dataset: str, *, num_samples: int = 2000,
                      seed: int = 0) -> list[dict[str, Any]]:
  """Rows per (sparse kind, language count) with a dense baseline at that count."""
  rows = []
  counts = sorted({c.num_languages for c in cells})
  for kind in _order_kinds([c.kind for c in cells]):
    if kind == DENSE:
      continue
    for n in counts:
      arm, base = _by_seed(cells, kind, n, dataset), _by_seed(cells, DENSE, n, dataset)
      if not arm or not base or not set(arm) & set(base):
        continue
      d = difference(arm, base, num_samples=num_samples, seed=seed)
      rows.append({"kind": kind, "num_languages": n, **dataclasses.asdict(d)})
  return rows


def pair_differences(cells: Sequence[Cell], dataset: str, n: int
                     ) -> tuple[list[str], dict[str, np.ndarray]]:
  """Per sparse kind: mean over paired seeds of its mAP matrix minus dense's (query x cand lang)."""
  base = _by_seed(cells, DENSE, n, dataset)
  out: dict[str, np.ndarray] = {}
  languages: list[str] = []
  for kind in _order_kinds([c.kind for c in cells]):
    arm = _by_seed(cells, kind, n, dataset)
    seeds = sorted(set(arm) & set(base))
    if kind == DENSE or not seeds:
      continue
    languages = list(base[seeds[0]]["matrices"]["languages"])
    grids = []
    for s in seeds:
      a = np.array(arm[s]["matrices"]["map"], dtype=np.float64)
      b = np.array(base[s]["matrices"]["map"], dtype=np.float64)
      grids.append(a - b)
    out[kind] = np.mean(grids, axis=0)
  return languages, out


# ---------------------------------------------------------------------- plots


def _png(fig: Figure) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90)
  return buf.getvalue()


def degradation_figure(rows: Sequence[Mapping[str, Any]], dataset: str) -> Figure:
  fig = Figure(figsize=(6.0, 4.0))
  ax = fig.add_subplot()
  for kind in _order_kinds([r["kind"] for r in rows]):
    mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["num_languages"])
    x = np.array([r["num_languages"] for r in mine], np.float64)
    y = np.array([r["delta"] for r in mine])
    err = np.maximum(0.0, np.array([[r["delta"] - r["low"] for r in mine],
                                    [r["high"] - r["delta"] for r in mine]]))
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=kind)
  ax.axhline(0.0, color="grey", lw=0.8)
  ax.set_xlabel("training languages")
  ax.set_ylabel("pooled mAP minus dense")
  ax.set_title(f"{dataset}: difference from dense (95% paired bootstrap)")
  ax.set_xticks(sorted({r["num_languages"] for r in rows}))
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def pairs_figure(languages: Sequence[str], grids: Mapping[str, np.ndarray], title: str) -> Figure:
  kinds = list(grids)
  n = len(languages)
  size = 0.9 + 0.42 * n
  fig = Figure(figsize=(max(6.0, size * len(kinds) + 1.2), size + 0.9), layout="constrained")
  limit = max([float(np.nanmax(np.abs(g))) for g in grids.values() if np.isfinite(g).any()]
              + [1e-6])
  axes = fig.subplots(1, len(kinds), squeeze=False)[0]
  image = None
  for ax, kind in zip(axes, kinds):
    image = ax.imshow(grids[kind], cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set_xticks(range(n), labels=languages, fontsize=7)
    ax.set_yticks(range(n), labels=languages, fontsize=7)
    ax.set_title(kind, fontsize=9)
    ax.set_xlabel("candidate language", fontsize=8)
    if n <= 7:
      for i in range(n):
        for j in range(n):
          if np.isfinite(grids[kind][i, j]):
            ax.text(j, i, f"{grids[kind][i, j]:+.3f}", ha="center", va="center", fontsize=6)
  axes[0].set_ylabel("query language", fontsize=8)
  fig.colorbar(image, ax=list(axes), fraction=0.02, pad=0.02)
  fig.suptitle(title, fontsize=10)
  return fig


# ---------------------------------------------------------------------- markdown


def _f(value: float | None, digits: int = 4) -> str:
  return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
      else f"{value:.{digits}f}"


def _interval(row: Mapping[str, Any]) -> str:
  return f"{row['delta']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]"


def cell_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  lines = ["| attention | attended fraction | languages | Mo. | Cr. | Mul. | zero-shot Mul. | "
           "rank distance | seeds |", "|" + " --- |" * 9]
  for r in rows:
    lines.append(f"| {r['kind']} | {_f(r['attended_fraction'], 3)} | {r['num_languages']} | "
                 f"{_f(r['mono'])} | {_f(r['cross'])} | {_f(r['multi'])} | "
                 f"{_f(r['zero_shot_multi'])} | {_f(r['rank_distance'], 2)} | "
                 f"{','.join(map(str, r['seeds']))} |")
  return lines


def degradation_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  counts = sorted({r["num_languages"] for r in rows})
  lines = ["| attention | " + " | ".join(f"{n} languages" for n in counts) + " |",
           "|" + " --- |" * (len(counts) + 1)]
  for kind in _order_kinds([r["kind"] for r in rows]):
    cells = {r["num_languages"]: r for r in rows if r["kind"] == kind}
    lines.append(f"| {kind} | " + " | ".join(_interval(cells[n]) if n in cells else "n/a"
                                             for n in counts) + " |")
  return lines


def _spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
  if len(x) < 3:
    return None
  rx = np.argsort(np.argsort(x)).astype(np.float64)
  ry = np.argsort(np.argsort(y)).astype(np.float64)
  if rx.std() == 0 or ry.std() == 0:
    return None
  return float(np.corrcoef(rx, ry)[0, 1])


def findings(tables: Mapping[str, Mapping[str, Any]]) -> str:
  """A paragraph whose every number comes from the tables."""
  sentences = []
  for dataset, t in tables.items():
    rows = t["degradation"]
    if not rows:
      sentences.append(f"On {dataset} there is no sparse kind with a dense baseline to compare.")
      continue
    counts = sorted({r["num_languages"] for r in rows})
    largest = counts[-1]
    at_largest = [r for r in rows if r["num_languages"] == largest]
    worst = min(at_largest, key=lambda r: r["delta"])
    best = max(at_largest, key=lambda r: r["delta"])
    significant = [r for r in rows if r["high"] < 0]
    better = [r for r in rows if r["low"] > 0]
    if len(at_largest) == 1:
      head = (f"On {dataset} with {largest} training languages, {worst['kind']} differs from "
              f"dense in pooled mAP by {_interval(worst)}.")
    else:
      head = (f"On {dataset} with {largest} training languages, the largest drop in pooled mAP "
              f"from dense is {worst['kind']} ({_interval(worst)}) and the smallest change is "
              f"{best['kind']} ({_interval(best)}).")
    text = (f"{head} {len(significant)} of {len(rows)} "
            f"(kind, language count) cells are below dense with the whole 95% interval under "
            f"zero, {len(better)} are above it.")
    if len(counts) > 1:
      trends = []
      for kind in _order_kinds([r["kind"] for r in rows]):
        mine = {r["num_languages"]: r["delta"] for r in rows if r["kind"] == kind}
        if counts[0] in mine and largest in mine:
          trends.append((mine[largest] - mine[counts[0]], kind))
      if trends:
        change, kind = min(trends)
        grew = sum(1 for c, _ in trends if c < 0)
        changes = ", ".join(f"{k} {c:+.4f}" for c, k in sorted(trends, key=lambda t: t[1]))
        text += (f" From {counts[0]} to {largest} training languages the difference from dense "
                 f"falls for {grew} of {len(trends)} sparse kinds (changes: {changes}).")
    cells = [r for r in t["cells"] if r["attended_fraction"] is not None and r["kind"] != DENSE]
    deltas = {(r["kind"], r["num_languages"]): r["delta"] for r in rows}
    pairs = [(c["attended_fraction"], deltas[(c["kind"], c["num_languages"])]) for c in cells
             if (c["kind"], c["num_languages"]) in deltas]
    rho = _spearman([p[0] for p in pairs], [p[1] for p in pairs])
    if rho is not None:
      text += (f" Across sparse cells, the Spearman correlation between the attended fraction "
               f"and the difference from dense is {rho:+.2f}.")
    sentences.append(text)
  return " ".join(sentences)


# ---------------------------------------------------------------------- the report


def build_tables(cells: Sequence[Cell], *, num_samples: int = 2000, seed: int = 0
                 ) -> dict[str, dict[str, Any]]:
  """Every number of the report, by dataset (what report.json holds)."""
  if not cells:
    raise ValueError("cells: expected at least one finished cell")
  return {name: {"cells": cell_table(cells, name),
                 "degradation": degradation_table(cells, name, num_samples=num_samples, seed=seed)}
          for name in datasets_of(cells)}


def report_markdown(cells: Sequence[Cell], tables: Mapping[str, Mapping[str, Any]],
                    figures: Mapping[str, list[str]], header: Sequence[str] = ()) -> str:
  kinds = _order_kinds([c.kind for c in cells])
  lines = ["# Sweep report", "", *header,
           f"{len(cells)} finished cells: attention {', '.join(kinds)}; training languages "
           f"{', '.join(map(str, sorted({c.num_languages for c in cells})))}; seeds "
           f"{', '.join(map(str, sorted({c.seed for c in cells})))}.", "",
           "Mo. = mean of the mAP matrix diagonal, Cr. = mean of its off-diagonal cells, "
           "Mul. = pooled multilingual mAP (LAReQA); rank distance: lower is less language bias. "
           "Attended fraction: allowed query-key pairs over all real-token pairs of the "
           "evaluation candidates.", "", "## Findings", "", findings(tables), ""]
  for name, t in tables.items():
    lines += [f"## {name}", "", "### Cells (mean over seeds)", "", *cell_markdown(t["cells"]), "",
              "### Difference from dense at the same language count", "",
              "Pooled mAP minus dense's, with a 95% interval from a paired bootstrap over "
              "questions (a question carries all its languages and every seed; seeds pair by "
              "number).", "", *degradation_markdown(t["degradation"]), ""]
    for path in figures.get(name, []):
      lines += [f"![{path}]({path})", ""]
  return "\n".join(lines) + "\n"


def write_report(cells: Sequence[Cell], out_dir: str | os.PathLike, *, num_samples: int = 2000,
                 seed: int = 0, header: Sequence[str] = ()) -> pathlib.Path:
  """Writes report.md, report.json and the plots into `out_dir`; returns report.md's path."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tables = build_tables(cells, num_samples=num_samples, seed=seed)
  figures: dict[str, list[str]] = {}
  for name, t in tables.items():
    figures[name] = []
    if t["degradation"]:
      path = f"degradation_{name}.png"
      (out / path).write_bytes(_png(degradation_figure(t["degradation"], name)))
      figures[name].append(path)
    for n in sorted({r["num_languages"] for r in t["degradation"]}):
      languages, grids = pair_differences(cells, name, n)
      if grids:
        path = f"pairs_{name}_{n}langs.png"
        title = f"{name}, {n} training languages: mAP minus dense\n(rows: query, columns: candidate language)"
        (out / path).write_bytes(_png(pairs_figure(languages, grids, title)))
        figures[name].append(path)
  (out / "report.json").write_text(json.dumps(tables, indent=1) + "\n")
  path = out / "report.md"
  path.write_text(report_markdown(cells, tables, figures, header))
  return path
