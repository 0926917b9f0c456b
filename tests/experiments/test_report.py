"""The sweep report builder on fabricated results with known differences."""

import json

import numpy as np
import pytest

from experiments import report
from experiments.report import Cell
from tests.experiments.fabricate import results

QUESTIONS = [f"q{i:03d}" for i in range(200)]


def _base(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).uniform(0.2, 0.9, size=(len(QUESTIONS), 3))


def _cells(shift_by_kind: dict[str, float], counts=(2, 4), seeds=(0, 1)) -> list[Cell]:
  """Every kind's AP is dense's (same seed) plus a constant shift, times the count factor."""
  cells = []
  fractions = {"dense": 1.0, "local-8": 0.2, "local-16": 0.35, "block_sparse-0.50": 0.5}
  for n in counts:
    for seed in seeds:
      base = _base(100 * n + seed)
      for kind, shift in shift_by_kind.items():
        ap = base + shift * (n / 2)
        cells.append(Cell(kind, n, seed, results(ap, QUESTIONS, fraction=fractions[kind],
                                                 matrix_shift=shift)))
  return cells


def test_constant_shift_gives_exact_delta_and_degenerate_interval():
  cells = _cells({"dense": 0.0, "local-8": -0.1, "local-16": -0.05})
  tables = report.build_tables(cells, num_samples=500)
  rows = {(r["kind"], r["num_languages"]): r for r in tables["xquad-r"]["degradation"]}
  assert set(rows) == {("local-8", 2), ("local-8", 4), ("local-16", 2), ("local-16", 4)}
  for (kind, n), row in rows.items():
    expected = {"local-8": -0.1, "local-16": -0.05}[kind] * n / 2
    assert row["delta"] == pytest.approx(expected, abs=1e-12)
    assert row["low"] == pytest.approx(expected, abs=1e-12)
    assert row["high"] == pytest.approx(expected, abs=1e-12)
    assert row["num_questions"] == len(QUESTIONS) and row["num_seeds"] == 2


def test_cell_table_means_over_seeds():
  cells = _cells({"dense": 0.0, "local-8": -0.1})
  rows = report.cell_table(cells, "xquad-r")
  assert [(r["kind"], r["num_languages"]) for r in rows] == [
      ("dense", 2), ("dense", 4), ("local-8", 2), ("local-8", 4)]
  for r in rows:
    members = [c for c in cells if c.kind == r["kind"] and c.num_languages == r["num_languages"]]
    expected = np.mean([c.results["fine_tuned"]["xquad-r"]["summary"]["multi"] for c in members])
    assert r["multi"] == pytest.approx(expected)
    assert r["seeds"] == [0, 1]
  assert rows[2]["attended_fraction"] == pytest.approx(0.2)
  assert rows[2]["mono"] == pytest.approx(0.4)  # matrix shifted by -0.1


def test_bootstrap_interval_matches_normal_theory_on_noise():
  rng = np.random.default_rng(0)
  n = 2000
  diffs = rng.normal(-0.02, 0.1, size=n)
  delta, low, high = report.paired_bootstrap(diffs, np.ones(n), num_samples=4000, seed=1)
  assert delta == pytest.approx(diffs.mean())
  se = diffs.std(ddof=1) / np.sqrt(n)
  assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.1)
  assert low < delta < high


def test_bootstrap_resamples_questions_not_queries():
  """A question's languages move together: a question-level effect widens the interval."""
  rng = np.random.default_rng(0)
  q_effect = rng.normal(0, 0.2, size=300)
  per_query = np.repeat(q_effect, 10)  # 10 identical queries per question
  sums, counts = per_query.reshape(300, 10).sum(1), np.full(300, 10.0)
  _, low, high = report.paired_bootstrap(sums, counts, num_samples=2000)
  _, qlow, qhigh = report.paired_bootstrap(per_query, np.ones(3000), num_samples=2000)
  assert (high - low) > 2.5 * (qhigh - qlow)


def test_pairing_uses_only_shared_seeds_and_queries():
  base = _base(0)
  arm = {0: results(base - 0.2, QUESTIONS)["fine_tuned"]["xquad-r"],
         1: results(base + 5.0, QUESTIONS)["fine_tuned"]["xquad-r"]}  # seed 1 has no dense twin
  dense = {0: results(base, QUESTIONS)["fine_tuned"]["xquad-r"],
           2: results(base, QUESTIONS)["fine_tuned"]["xquad-r"]}
  d = report.difference(arm, dense, num_samples=200)
  assert d.delta == pytest.approx(-0.2) and d.num_seeds == 1
  with pytest.raises(ValueError, match="seeds"):
    report.difference({1: arm[1]}, {2: dense[2]})


def test_bootstrap_rejects_bad_input():
  with pytest.raises(ValueError, match="sums, counts"):
    report.paired_bootstrap(np.ones(3), np.ones(4))
  with pytest.raises(ValueError, match="confidence"):
    report.paired_bootstrap(np.ones(3), np.ones(3), confidence=1.5)


def test_write_report_files_tables_and_findings(tmp_path):
  cells = _cells({"dense": 0.0, "local-8": -0.1, "local-16": 0.0, "block_sparse-0.50": 0.02})
  path = report.write_report(cells, tmp_path, num_samples=300)
  text = path.read_text()
  assert (tmp_path / "degradation_xquad-r.png").stat().st_size > 1000
  assert (tmp_path / "pairs_xquad-r_2langs.png").is_file()
  assert (tmp_path / "pairs_xquad-r_4langs.png").is_file()
  tables = json.loads((tmp_path / "report.json").read_text())
  rows = {(r["kind"], r["num_languages"]): r for r in tables["xquad-r"]["degradation"]}
  assert rows[("local-8", 4)]["delta"] == pytest.approx(-0.2)
  # The table prints the interval of each (kind, count).
  assert "| local-8 | -0.1000 [-0.1000, -0.1000] | -0.2000 [-0.2000, -0.2000] |" in text
  # Findings: computed from the tables.
  assert "the largest drop in pooled mAP from dense is local-8 (-0.2000" in text
  assert "the smallest change is block_sparse-0.50 (+0.0400" in text
  assert "2 of 6 (kind, language count) cells are below dense" in text
  assert "2 are above it" in text
  assert "falls for 1 of 3 sparse kinds (changes: block_sparse-0.50 +0.0200, local-16 +0.0000, " \
         "local-8 -0.1000)" in text


def test_pair_differences_average_matrix_shift():
  cells = _cells({"dense": 0.0, "local-8": -0.1})
  languages, grids = report.pair_differences(cells, "xquad-r", 2)
  assert languages == ["en", "de", "zh"]
  np.testing.assert_allclose(grids["local-8"], np.full((3, 3), -0.1))


def test_kind_labels_and_order():
  assert report.kind_label("local", window=16) == "local-16"
  assert report.kind_label("block_sparse", density=0.5) == "block_sparse-0.50"
  assert report._order_kinds(["block_sparse-0.50", "local-32", "dense", "local-8"]) == [
      "dense", "local-8", "local-32", "block_sparse-0.50"]
