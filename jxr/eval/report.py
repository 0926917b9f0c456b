"""Writers for evaluation reports: JSON, matrix CSVs, heatmaps, markdown, comparisons.

Only process 0 writes (the others return at once), and every file is first
written to a temporary file in the target directory, then moved into place
with `os.replace`, so readers never see a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jxr._files import atomic_write, is_primary

# Matrix name in file names -> how to fetch it from report["matrices"].
_MATRIX_KEYS = {
    "map": ("map",),
    "mrr": ("mrr",),
    "recall_at_1": ("recall", "1"),
    "recall_at_10": ("recall", "10"),
    "num_queries": ("num_queries",),
}
_TITLES = {
    "map": "mAP",
    "mrr": "MRR",
    "recall_at_1": "recall@1",
    "recall_at_10": "recall@10",
    "num_queries": "queries per cell",
}


def _figure_bytes(fig: Figure) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
  return buffer.getvalue()


def matrix(report: Mapping[str, Any], name: str) -> list[list[Any]]:
  """The matrix `name` ("map", "mrr", "recall_at_1", "recall_at_10", "num_queries")."""
  if name not in _MATRIX_KEYS:
    raise ValueError(f"name: expected one of {sorted(_MATRIX_KEYS)}, got {name!r}")
  value: Any = report["matrices"]
  for key in _MATRIX_KEYS[name]:
    value = value[key]
  return value


def _fmt(value: float | int | None, digits: int = 4) -> str:
  if value is None:
    return "-"
  if isinstance(value, int):
    return str(value)
  return f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 4) -> str:
  return "-" if value is None else f"{value:+.{digits}f}"


def matrix_csv(languages: Sequence[str], grid: Sequence[Sequence[Any]]) -> str:
  """CSV text: header row and first column are language codes; empty cells are blank."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["", *languages])
  for lang, row in zip(languages, grid):
    writer.writerow([lang, *("" if v is None else repr(v) for v in row)])
  return out.getvalue()


def heatmap(
    languages: Sequence[str], grid: Sequence[Sequence[Any]], *, title: str, counts: bool = False
) -> Figure:
  """A labelled heatmap (rows: query language, columns: candidate language), values in cells."""
  values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=np.float64)
  n = len(languages)
  fig = Figure(figsize=(1.0 + 0.62 * n, 0.6 + 0.55 * n))
  ax = fig.add_subplot()
  vmax = np.nanmax(values) if counts and np.isfinite(values).any() else 1.0
  image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=max(vmax, 1e-12))
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  ax.set_xticks(range(n), labels=languages)
  ax.set_yticks(range(n), labels=languages)
  ax.set_xlabel("candidate language")
  ax.set_ylabel("query language")
  ax.set_title(title)
  for i in range(n):
    for j in range(n):
      if np.isnan(values[i, j]):
        continue
      text = f"{int(values[i, j])}" if counts else f"{values[i, j]:.2f}"
      # Dark text on the bright end of viridis, light text elsewhere.
      color = "black" if values[i, j] / max(vmax, 1e-12) > 0.6 else "white"
      ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
  return fig


def summary_markdown(report: Mapping[str, Any]) -> str:
  """A short markdown summary of one report."""
  multi, bias, summ = report["multilingual"], report["bias"], report["summary"]
  ks = list(multi["recall"])
  lines = [
      f"# {report['dataset']}: retrieval evaluation",
      "",
      f"{report['num_queries']} queries, {report['num_candidates']} candidates,"
      f" languages: {' '.join(report['languages'])}.",
      "",
      "## Multilingual pool (LAReQA)",
      "",
      "| mAP | mAP@20 | MRR | nDCG@10 | " + " | ".join(f"R@{k}" for k in ks) + " |",
      "|" + " --- |" * (4 + len(ks)),
      "| "
      + " | ".join(_fmt(multi[key]) for key in ("map", "map_at_20", "mrr", "ndcg_at_10"))
      + " | "
      + " | ".join(_fmt(multi["recall"][k]) for k in ks)
      + " |",
      "",
      "R@k: share of a query's relevant candidates (its answer in every language) in its top k,"
      " so at most k / #relevant.",
      "",
      "| Mo. (mAP diagonal) | Cr. (mAP off-diagonal) | Mul. (macro) | pooled mAP (micro) |",
      "| --- | --- | --- | --- |",
      f"| {_fmt(summ['mono'])} | {_fmt(summ['cross'])} | {_fmt(summ.get('multi_macro'))}"
      f" | {_fmt(summ.get('multi_micro'))} |",
      "",
      "Mul. (macro, arXiv 2408.10536): pooled mAP averaged over query languages;"
      " pooled mAP (micro, LAReQA): averaged over all queries, so larger languages weigh more.",
      "",
      "## Language bias",
      "",
      f"Rank distance (mean over languages): {_fmt(bias['rank_distance'], 2)}"
      f" ({_fmt(bias.get('rank_distance_normalised'))} of the {report['num_candidates']} candidates);"
      f" top-1 candidate in the query's language: {_fmt(bias['top1_same_language'])}.",
      "",
      "## Per query language",
      "",
      "| lang | queries | mAP | mAP@20 | "
      + " | ".join(f"R@{k}" for k in ks)
      + " | rank distance |",
      "|" + " --- |" * (5 + len(ks)),
  ]
  for lang, row in multi["per_language"].items():
    lines.append(
        f"| {lang} | {row['num_queries']} | {_fmt(row['map'])} | {_fmt(row['map_at_20'])} | "
        + " | ".join(_fmt(row["recall"][k]) for k in ks)
        + f" | {_fmt(bias['rank_distance_per_language'].get(lang), 2)} |"
    )
  languages = report["matrices"]["languages"]
  lines += [
      "",
      "## mAP matrix (row: query language, column: candidate language)",
      "",
      "| |" + "".join(f" {lang} |" for lang in languages),
      "|---|" + "---|" * len(languages),
  ]
  for lang, row in zip(languages, report["matrices"]["map"]):
    lines.append(f"| {lang} |" + "".join(f" {_fmt(v, 3)} |" for v in row))
  lines += ["", "Files: report.json, matrix_<metric>.csv, matrix_<metric>.png."]
  return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> pathlib.Path:
  """Writes report.json, matrix_<metric>.csv/.png and summary.md into `out_dir`.

  Only process 0 writes; returns the directory on every process.
  """
  out = pathlib.Path(out_dir)
  if not is_primary():
    return out
  out.mkdir(parents=True, exist_ok=True)
  atomic_write(out / "report.json", json.dumps(report, indent=1).encode())
  languages = report["matrices"]["languages"]
  for name in _MATRIX_KEYS:
    grid = matrix(report, name)
    atomic_write(out / f"matrix_{name}.csv", matrix_csv(languages, grid).encode())
    title = f"{report['dataset']}: {_TITLES[name]} (query x candidate language)"
    fig = heatmap(languages, grid, title=title, counts=name == "num_queries")
    atomic_write(out / f"matrix_{name}.png", _figure_bytes(fig))
  atomic_write(out / "summary.md", summary_markdown(report).encode())
  return out


def _headline(report: Mapping[str, Any]) -> dict[str, float | None]:
  """The scalar metrics compared across reports, by display name."""
  multi, bias, summ = report["multilingual"], report["bias"], report["summary"]
  rows = {
      "Mul. (macro)": summ.get("multi_macro"),
      "pooled mAP (micro)": multi["map"],
      "mAP@20": multi["map_at_20"],
      "MRR": multi["mrr"],
      "nDCG@10": multi["ndcg_at_10"],
  }
  rows.update({f"R@{k}": v for k, v in multi["recall"].items()})
  rows.update(
      {
          "Mo. (mono mAP)": summ["mono"],
          "Cr. (cross mAP)": summ["cross"],
          "rank distance": bias["rank_distance"],
          "rank distance / pool size": bias.get("rank_distance_normalised"),
          "top-1 same language": bias["top1_same_language"],
      }
  )
  return rows


def _diff(a: float | None, b: float | None) -> float | None:
  return None if a is None or b is None else a - b


def _comparison_table(
    header: str, rows: Mapping[str, Sequence[float | None]], names: Sequence[str]
) -> list[str]:
  base = names[0]
  cols = [*names, *(f"{n} - {base}" for n in names[1:])]
  lines = [f"| {header} | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
  for label, values in rows.items():
    diffs = [_diff(v, values[0]) for v in values[1:]]
    lines.append(
        f"| {label} | "
        + " | ".join(map(_fmt, values))
        + " | "
        + " | ".join(map(_signed, diffs))
        + " |"
    )
  return lines


def compare_markdown(reports: Mapping[str, Mapping[str, Any]]) -> str:
  """Side-by-side markdown tables; differences are against the first report."""
  names = list(reports)
  headlines = [_headline(r) for r in reports.values()]
  metric_names = list(dict.fromkeys(k for h in headlines for k in h))
  headline_rows = {m: [h.get(m) for h in headlines] for m in metric_names}
  languages = list(dict.fromkeys(lang for r in reports.values() for lang in r["languages"]))

  def per_language(r, lang, key):
    row = r["multilingual"]["per_language"].get(lang)
    return None if row is None else row[key]

  map_rows = {lang: [per_language(r, lang, "map") for r in reports.values()] for lang in languages}
  bias_rows = {
      lang: [r["bias"]["rank_distance_per_language"].get(lang) for r in reports.values()]
      for lang in languages
  }
  datasets = sorted({str(r["dataset"]) for r in reports.values()})
  lines = [
      f"# Comparison: {', '.join(names)} ({', '.join(datasets)})",
      "",
      f"Differences are against `{names[0]}`.",
      "",
      "## Headline metrics",
      "",
      *_comparison_table("metric", headline_rows, names),
      "",
      "## Multilingual mAP per query language",
      "",
      *_comparison_table("lang", map_rows, names),
      "",
      "## Rank distance per query language (lower: less language bias)",
      "",
      *_comparison_table("lang", bias_rows, names),
      "",
  ]
  return "\n".join(lines) + "\n"


def compare_figure(reports: Mapping[str, Mapping[str, Any]]) -> Figure:
  """Grouped bars of Mo./Cr./Mul. (macro)/pooled mAP (micro) and pooled mAP per language, per report."""
  names = list(reports)
  languages = list(dict.fromkeys(lang for r in reports.values() for lang in r["languages"]))
  fig = Figure(figsize=(4.0 + 0.55 * len(languages) * max(1, len(names)) / 2, 4.2))
  left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, max(2, len(languages) / 2)]})
  width = 0.8 / len(names)
  keys = ("mono", "cross", "multi_macro", "multi_micro")
  for i, (name, r) in enumerate(reports.items()):
    heights = [np.nan if r["summary"].get(k) is None else r["summary"][k] for k in keys]
    left.bar(np.arange(len(keys)) + i * width, heights, width, label=name)
    per_lang = [
        (r["multilingual"]["per_language"].get(lang) or {}).get("map") for lang in languages
    ]
    right.bar(
        np.arange(len(languages)) + i * width,
        [np.nan if v is None else v for v in per_lang],
        width,
        label=name,
    )
  labels = ["Mo.", "Cr.", "Mul.\n(macro)", "pooled\n(micro)"]
  left.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, labels=labels)
  left.set_ylabel("mAP")
  left.set_ylim(0, 1)
  left.set_title("Mo. / Cr. / Mul.")
  right.set_xticks(np.arange(len(languages)) + 0.4 - width / 2, labels=languages)
  right.set_ylim(0, 1)
  right.set_xlabel("query language")
  right.set_title("pooled mAP per query language")
  right.legend(fontsize=8)
  fig.tight_layout()
  return fig


def compare(reports: Mapping[str, Mapping[str, Any]], out: str | os.PathLike) -> pathlib.Path:
  """Writes comparison.md (tables with differences) and comparison.png into directory `out`.

  `reports` maps a display name to a report; the first is the baseline for
  differences. Only process 0 writes; returns the directory on every process.
  """
  if not reports:
    raise ValueError("reports: expected at least one named report")
  for name, r in reports.items():
    if not isinstance(r, Mapping) or "multilingual" not in r or "matrices" not in r:
      raise ValueError(f"reports[{name!r}]: expected a report dict from jxr.eval.evaluate")
  out_dir = pathlib.Path(out)
  if not is_primary():
    return out_dir
  out_dir.mkdir(parents=True, exist_ok=True)
  atomic_write(out_dir / "comparison.md", compare_markdown(reports).encode())
  atomic_write(out_dir / "comparison.png", _figure_bytes(compare_figure(reports)))
  return out_dir
