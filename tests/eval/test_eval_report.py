"""Report writers: JSON, matrix CSVs, PNG heatmaps, summary.md, comparisons; process 0 only."""

import copy
import csv
import json

import jax
import matplotlib.image
import numpy as np
import pytest
from eval_toys import lattice_embeddings, parallel_task

import jxr.eval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MATRICES = ("map", "mrr", "recall_at_1", "recall_at_10", "num_queries")


@pytest.fixture(scope="module")
def report():
  rng = np.random.default_rng(0)
  task = parallel_task(10, ("en", "de", "zh"), distractors=5)
  return jxr.eval.evaluate(
      task, lattice_embeddings(rng, task.num_queries), lattice_embeddings(rng, task.num_candidates)
  )


@pytest.fixture(scope="module")
def written(report, tmp_path_factory):
  return jxr.eval.write_report(report, tmp_path_factory.mktemp("report") / "run" / "eval")


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def _assert_png(path):
  assert path.read_bytes()[:8] == PNG_MAGIC
  pixels = matplotlib.image.imread(path)
  assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
  assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_write_report_files(report, written):
  out = written
  names = {p.name for p in out.iterdir()}
  expected = {"report.json", "summary.md"} | {
      f"matrix_{m}.{ext}" for m in MATRICES for ext in ("csv", "png")
  }
  assert names == expected  # no temporary files left behind
  assert json.loads((out / "report.json").read_text()) == report
  for name in MATRICES:
    _assert_png(out / f"matrix_{name}.png")


def test_matrix_csv_content(report, written):
  out = written
  languages = report["matrices"]["languages"]
  grids = {
      "map": report["matrices"]["map"],
      "mrr": report["matrices"]["mrr"],
      "recall_at_1": report["matrices"]["recall"]["1"],
      "recall_at_10": report["matrices"]["recall"]["10"],
      "num_queries": report["matrices"]["num_queries"],
  }
  for name, grid in grids.items():
    rows = _read_csv(out / f"matrix_{name}.csv")
    assert rows[0][1:] == languages
    assert [r[0] for r in rows[1:]] == languages
    values = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_array_equal(values, np.array(grid, dtype=float))  # full precision


def test_empty_cells_are_blank_in_csv(tmp_path):
  languages = ["en", "de"]
  text = jxr.eval.report.matrix_csv(languages, [[1.0, None], [0.25, 0.5]])
  assert text.splitlines() == [",en,de", "en,1.0,", "de,0.25,0.5"]


def test_summary_markdown(report, written):
  text = (written / "summary.md").read_text()
  assert text.startswith("# toy: retrieval evaluation")
  assert f"{report['multilingual']['map']:.4f}" in text
  assert f"{report['summary']['cross']:.4f}" in text
  assert (
      "| Mo. (mAP diagonal) | Cr. (mAP off-diagonal) | Mul. (macro) | pooled mAP (micro) |" in text
  )
  summ = report["summary"]
  assert (
      f"| {summ['mono']:.4f} | {summ['cross']:.4f} | {summ['multi_macro']:.4f} | {summ['multi_micro']:.4f} |"
      in text
  )
  assert f"({report['bias']['rank_distance_normalised']:.4f} of the 45 candidates)" in text
  for lang in report["languages"]:
    assert f"| {lang} | 10 |" in text  # per-language row with its query count


def test_rewriting_replaces_files_atomically(report, tmp_path):
  jxr.eval.write_report(report, tmp_path)
  changed = copy.deepcopy(report)
  changed["multilingual"]["map"] = 0.123456
  jxr.eval.write_report(changed, tmp_path)
  assert json.loads((tmp_path / "report.json").read_text())["multilingual"]["map"] == 0.123456
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_only_process_zero_writes(report, tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  out = jxr.eval.write_report(report, tmp_path / "a")
  assert out == tmp_path / "a" and not out.exists()
  assert jxr.eval.compare({"x": report}, tmp_path / "b") == tmp_path / "b"
  assert not (tmp_path / "b").exists()


def test_compare_tables_and_plot(report, tmp_path):
  better = copy.deepcopy(report)
  better["multilingual"]["map"] = report["multilingual"]["map"] + 0.1
  better["summary"]["multi_macro"] = report["summary"]["multi_macro"] - 0.05
  better["multilingual"]["per_language"]["de"]["map"] = 0.75
  better["bias"]["rank_distance"] = report["bias"]["rank_distance"] - 2
  del better["multilingual"]["per_language"]["zh"]  # a report may lack a language
  out = jxr.eval.compare({"dense": report, "local": better}, tmp_path / "cmp")
  text = (out / "comparison.md").read_text()
  assert "| metric | dense | local | local - dense |" in text
  micro, macro = report["multilingual"]["map"], report["summary"]["multi_macro"]
  assert f"| pooled mAP (micro) | {micro:.4f} | {micro + 0.1:.4f} | +0.1000 |" in text
  assert f"| Mul. (macro) | {macro:.4f} | {macro - 0.05:.4f} | -0.0500 |" in text
  assert "| rank distance / pool size |" in text
  de_before = report["multilingual"]["per_language"]["de"]["map"]
  assert f"| de | {de_before:.4f} | 0.7500 | {0.75 - de_before:+.4f} |" in text
  assert "| zh | " in text and "| - | - |" in text
  assert "| rank distance |" in text and "| -2.0000 |" in text
  _assert_png(out / "comparison.png")


def test_compare_rejects_bad_reports(report, tmp_path):
  with pytest.raises(ValueError, match="reports: expected at least one"):
    jxr.eval.compare({}, tmp_path)
  with pytest.raises(ValueError, match=r"reports\['b'\]: expected a report dict"):
    jxr.eval.compare({"a": report, "b": {"map": 1.0}}, tmp_path)
