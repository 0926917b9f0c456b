"""The study report builder on fabricated cells with known effects."""

import json

import numpy as np
import pytest
from scipy import stats

from experiments import report
from tests.experiments import fabricate as fab

BS, BS2, LOC, LOC2 = (
    "block_sparse-b8-g0-r0.113",
    "block_sparse-b8-g0-r0.25",
    "local-w17",
    "local-w33",
)
DESIGN = report.Design(matched=((BS, LOC, 0.125), (BS2, LOC2, 0.25)), primary=(BS, LOC))
MLQA = fab.world("mlqa-r", num_articles=10, questions_per_article=3)
XQUAD = fab.world(
    "xquad-r",
    num_articles=4,
    questions_per_article=6,
    paragraphs_per_article=3,
    languages=fab.LANGUAGES,
)


def _const(value):
  return lambda n: value


def _entry(rep, **keys):
  found = [c for c in rep["contrasts"] if all(c[k] == v for k, v in keys.items())]
  assert len(found) == 1, (keys, len(found))
  return found[0]


# ---------------------------------------------------------------------- statistics


def _cluster_draw(rng, true, num_clusters=60, size=6):
  cluster = np.repeat(np.arange(num_clusters), size)
  lang = np.tile(["en", "de"], num_clusters * size // 2)
  d = true + rng.normal(0, 0.1, num_clusters)[cluster] + rng.normal(0, 0.02, len(cluster))
  return d, lang, cluster


def test_cluster_bootstrap_covers_at_nominal_rate_and_per_query_under_covers():
  rng = np.random.default_rng(0)
  true, draws = 0.05, 200
  covered = per_query = 0
  for i in range(draws):
    d, lang, cluster = _cluster_draw(rng, true)
    ci = report.cluster_bootstrap(d, lang, cluster, num_samples=400, seed=i)["mul_macro"]
    covered += ci.low <= true <= ci.high
    q = report.cluster_bootstrap(d, lang, np.arange(len(d)), num_samples=400, seed=i)
    per_query += q["mul_macro"].low <= true <= q["mul_macro"].high
  # Percentile intervals run a little narrow with few clusters (about 0.92 at 30-40); at 60
  # the nominal 0.95 is within Monte Carlo error of 200 draws.
  assert 0.90 <= covered / draws <= 0.99
  assert per_query / draws < 0.8  # queries of one article are not independent


def test_macro_and_micro_on_an_unbalanced_toy():
  got = report.cluster_bootstrap(
      [0.1, 0.2, 0.3, 1.0], ["en", "en", "en", "de"], [0, 1, 2, 3], num_samples=50
  )
  assert got["mul_micro"].estimate == pytest.approx(0.4)
  assert got["mul_macro"].estimate == pytest.approx(0.6)
  assert report.mul([0.1, 0.2, 0.3, 1.0], ["en", "en", "en", "de"]) == pytest.approx(
      {"mul_macro": 0.6, "mul_micro": 0.4}
  )

  # Through the report: en moves by 0.1 on every query, de by 0.4 on a quarter of its queries.
  w = fab.world("mlqa-r", num_articles=8, questions_per_article=4, languages=("en", "de"))
  keep = np.ones(w.shape, bool)
  keep[8:, 1] = False
  shift = np.array([[0.1, 0.4]])
  cells = [
      fab.cell(kind, 2, 0, {"mlqa-r": fab.report(w, fab.base_ap(w, 0) + s, keep=keep)})
      for kind, s in (("dense", 0.0), (LOC, shift))
  ]
  rep = report.build_report(cells, DESIGN, num_samples=100)
  macro = _entry(rep, family="vs_dense", metric="mul_macro", pool_languages=2)
  micro = _entry(rep, family="vs_dense", metric="mul_micro", pool_languages=2)
  assert macro["difference"] == pytest.approx((0.1 + 0.4) / 2)
  assert micro["difference"] == pytest.approx((0.1 * 32 + 0.4 * 8) / 40)
  assert macro["queries"] == 40 and macro["questions"] == 32


def test_macro_drops_a_language_missing_from_a_resample():
  # de lives in one cluster: draws without it average en alone, not NaN.
  d = np.array([0.1, 0.1, 0.5])
  got = report.cluster_bootstrap(d, ["en", "en", "de"], [0, 1, 2], num_samples=500)
  assert got["mul_macro"].estimate == pytest.approx(0.3)
  assert got["mul_macro"].low == pytest.approx(0.1) and got["mul_macro"].high <= 0.5


def test_spearman_with_ties_is_scipys_and_none_with_few_values():
  x, y = [0.1, 0.1, 0.2, 0.3, 0.4], [0.0, 0.1, 0.2, 0.3, 0.4]
  expected = stats.spearmanr(x, y).statistic
  assert report.spearman(x, y) == pytest.approx(expected) and expected < 1.0
  assert report.spearman([1, 2, 3, 3], [1, 2, 3, 4]) is None
  with pytest.raises(ValueError, match="x, y"):
    report.spearman([1, 2], [1, 2, 3])


def test_bad_arguments_name_themselves():
  with pytest.raises(ValueError, match="primary"):
    report.Design(matched=(), primary=(BS,))
  with pytest.raises(ValueError, match="matched"):
    report.Design(matched=((BS, LOC),), primary=(BS, LOC))
  with pytest.raises(ValueError, match="cells"):
    report.build_report([], DESIGN)
  cell = fab.cell("dense", 2, 0, {"mlqa-r": fab.report(MLQA, fab.base_ap(MLQA, 0))})
  with pytest.raises(ValueError, match="cells"):
    report.build_report([cell, cell], DESIGN)
  with pytest.raises(ValueError, match="seeds"):
    report.pair({0: {}}, {1: {}})


# ---------------------------------------------------------------------- contrasts


def test_matched_contrast_is_the_seed_paired_mean_difference():
  cells = fab.study(
      [MLQA],
      {"dense": _const(0.0), LOC: _const(-0.01), BS: _const(-0.03)},
      counts=(2, 7),
      seeds=(0, 1, 2),
      noise=0.02,
      skip=[(LOC, 7, 2)],
  )
  rep = report.build_report(cells, DESIGN, num_samples=200)
  by = {(c.kind, c.num_languages, c.seed): c for c in cells}

  def ap(kind, n, s):
    pq = by[(kind, n, s)].results["fine_tuned"]["mlqa-r"]["per_query"]
    return np.asarray(pq["ap"]), np.asarray(pq["lang"])

  diffs = [ap(BS, 7, s)[0] - ap(LOC, 7, s)[0] for s in (0, 1)]  # LOC has no seed 2 at 7
  lang = ap(BS, 7, 0)[1]
  d = np.mean(diffs, axis=0)
  macro = np.mean([d[lang == x].mean() for x in np.unique(lang)])
  got = _entry(
      rep, family="matched", a=BS, b=LOC, num_languages=7, pool_languages=7, metric="mul_macro"
  )
  assert got["difference"] == pytest.approx(macro)
  assert got["ci"][0] < got["difference"] < got["ci"][1]
  assert got["seeds"] == [0, 1] and got["level"] == 0.125 and got["mono_prob"] == 0.5
  assert got["cluster_unit"] == "article" and got["clusters"] == got["articles"] == 10
  assert _entry(
      rep, family="matched", a=BS, b=LOC, num_languages=2, pool_languages=7, metric="mul_micro"
  )["seeds"] == [0, 1, 2]
  # Every pool is contrasted; the primary falls back to the largest count present (7 < 11).
  assert {c["pool_languages"] for c in rep["contrasts"]} == {2, 4, 7}
  assert rep["primary"]["num_languages"] == 7 and rep["primary"]["pool_languages"] == 7
  assert rep["findings"].startswith(
      "Primary contrast: on mlqa-r with 7 training languages " "(the design asks for 11"
  )


def test_eval_only_adaptation_and_mono_contrasts():
  cells = fab.study(
      [MLQA],
      {"dense": _const(0.0), LOC: _const(-0.02)},
      counts=(2, 11),
      seeds=(0,),
      eval_only={LOC: _const(-0.05)},
      mono={1.0: {"dense": _const(-0.01)}, 0.0: {"dense": _const(-0.03)}},
  )
  rep = report.build_report(cells, DESIGN, num_samples=50)
  keys = dict(num_languages=11, pool_languages=7, metric="mul_macro")
  ev = f"{LOC} (eval only)"
  assert _entry(rep, family="eval_only", a=ev, b="dense", **keys)["difference"] == pytest.approx(
      -0.05
  )
  assert _entry(rep, family="adaptation", a=LOC, b=ev, **keys)["difference"] == pytest.approx(0.03)
  assert _entry(rep, family="mono", a="dense", b="dense [X-X-mono]", **keys)[
      "difference"
  ] == pytest.approx(0.01)
  assert _entry(rep, family="mono", a="dense", b="dense [X-Y]", **keys)[
      "difference"
  ] == pytest.approx(0.03)
  assert not [c for c in rep["contrasts"] if c["family"] == "mono" and c["num_languages"] == 2]
  assert ev not in {c["name"] for c in rep["cells"]}  # virtual arms are not cells
  assert "evaluated with the local-w17 mask differs from dense by -0.0500" in rep["findings"]
  assert "dense minus dense [X-X-mono] at 11 training languages +0.0100" in rep["findings"]


def test_paragraphs_are_clusters_when_fewer_than_eight_articles():
  cells = fab.study(
      [XQUAD], {"dense": _const(0.0), LOC: _const(-0.02)}, counts=(2,), seeds=(0,), noise=0.01
  )
  rep = report.build_report(cells, DESIGN, num_samples=50)
  got = _entry(rep, family="vs_dense", pool_languages=11, metric="mul_macro")
  assert got["cluster_unit"] == "paragraph"
  assert got["articles"] == 4 and got["clusters"] == 12 and got["questions"] == 24


def test_questions_are_clusters_without_an_article_column():
  cells = fab.study([MLQA], {"dense": _const(0.0), LOC: _const(-0.02)}, counts=(2,), seeds=(0,))
  for c in cells:
    for pool in c.results["fine_tuned"]["mlqa-r"]["pools"].values():
      del pool["per_query"]["article"]
  rep = report.build_report(cells, DESIGN, num_samples=50)
  got = _entry(rep, family="vs_dense", pool_languages=7, metric="mul_macro")
  assert got["cluster_unit"] == "question" and got["clusters"] == 30 and got["articles"] is None


def test_training_trend_is_stated_and_a_null_trend_is_not():
  effects = {"dense": _const(0.0), LOC: _const(-0.02), BS: lambda n: -0.004 * n}
  cells = fab.study([MLQA], effects, counts=(2, 7, 11), seeds=(0, 1), noise=0.01)
  rep = report.build_report(cells, DESIGN, num_samples=400)
  grow = [
      t
      for t in rep["trends"]
      if t["axis"] == "training"
      and t["a"] == BS
      and t["b"] == "dense"
      and t["metric"] == "mul_macro"
  ]
  assert len(grow) == 1 and grow[0]["from_languages"] == 2 and grow[0]["to_languages"] == 11
  assert grow[0]["difference"] == pytest.approx(
      grow[0]["to_difference"] - grow[0]["from_difference"]
  )
  assert grow[0]["ci"][0] < -0.004 * 9 < grow[0]["ci"][1] and grow[0]["ci"][1] < 0
  text = rep["findings"]
  assert f"from 2 to 11 training languages, {BS} minus dense falls (change -0.0" in text
  nulls = text.split("Not distinguishable from zero: ")[1].split(". ")[0]
  assert f"from 2 to 11 training languages, {LOC} minus dense (" in nulls
  assert f"{LOC} minus dense falls" not in text and f"{LOC} minus dense rises" not in text
  assert text.index("Primary contrast") < text.index("Against dense") < text.index("Trends")


def test_pool_trends_difference_the_pools_on_the_same_clusters():
  effects = {"dense": _const(0.0), LOC: _const(lambda pool: -0.002 * pool)}
  cells = fab.study([XQUAD, MLQA], effects, counts=(11,), seeds=(0,))
  rep = report.build_report(cells, DESIGN, num_samples=100)
  pools = {
      (t["dataset"], t["from_languages"], t["to_languages"]): t
      for t in rep["trends"]
      if t["axis"] == "pool" and t["metric"] == "mul_macro"
  }
  assert set(pools) == {("xquad-r", 2, 11), ("xquad-r", 2, 7), ("mlqa-r", 2, 7)}
  assert pools[("xquad-r", 2, 11)]["difference"] == pytest.approx(-0.018)
  assert pools[("mlqa-r", 2, 7)]["difference"] == pytest.approx(-0.010)
  assert pools[("mlqa-r", 2, 7)]["ci"] == pytest.approx([-0.010, -0.010])
  assert pools[("mlqa-r", 2, 7)]["num_languages"] == 11


# ---------------------------------------------------------------------- tables and files


def test_cells_table_pools_and_trained_vs_untrained():
  base = fab.base_ap(MLQA, 0)
  ap = np.where(np.arange(7) < 2, 0.8, 0.4)[None, :] + 0 * base
  zero = {"mlqa-r": fab.report(MLQA, ap - 0.1)}
  cell = fab.cell("dense", 2, 0, {"mlqa-r": fab.report(MLQA, ap)}, zero_shot=zero)
  rep = report.build_report([cell], DESIGN, num_samples=10)
  (row,) = rep["cells"]
  assert row["trained_vs_untrained"]["mlqa-r"] == pytest.approx({"trained": 0.8, "untrained": 0.4})
  assert set(row["pools"]["mlqa-r"]) == {"2", "4", "7"}
  assert row["pools"]["mlqa-r"]["2"]["mul_macro"] == pytest.approx(0.8)
  assert row["pools"]["mlqa-r"]["7"]["mul_macro"] == pytest.approx((2 * 0.8 + 5 * 0.4) / 7)
  assert row["zero_shot"]["mlqa-r"] == pytest.approx((2 * 0.7 + 5 * 0.3) / 7)
  assert row["attention"] == {"kind": "dense"} and row["seconds"] == 10.0
  assert rep["primary"] is None and "is not in these results" in rep["findings"]


def test_language_pair_grid_marks_cells_whose_interval_excludes_zero():
  w = fab.world("mlqa-r", num_articles=8, questions_per_article=3, languages=fab.LANGUAGES[:4])
  base = fab.base_ap(w, 0)
  abl = np.repeat(base[:, :, None], 4, axis=2)
  shift = np.zeros((4, 4))
  shift[0, 1], shift[2, 3] = -0.05, 0.02
  cells = [
      fab.cell("dense", 2, 0, {"mlqa-r": fab.report(w, base, by_language=abl)}),
      fab.cell(LOC, 2, 0, {"mlqa-r": fab.report(w, base, by_language=abl + shift)}),
  ]
  rep = report.build_report(cells, DESIGN, num_samples=100)
  (grid,) = rep["pairs"]["mlqa-r"]
  assert grid["a"] == LOC and grid["pool_languages"] == 4
  np.testing.assert_allclose(np.array(grid["difference"], float), shift, atol=1e-12)
  assert np.array(grid["significant"]).tolist() == (shift != 0).tolist()


def _full_study():
  fractions = {"local-w9": 0.06, LOC: 0.118, BS: 0.113, LOC2: 0.25, BS2: 0.25}
  effects = {
      "dense": _const(0.0),
      "local-w9": _const(-0.04),
      LOC: _const(-0.02),
      BS: lambda n: -0.003 * n,
      LOC2: _const(-0.01),
      BS2: _const(-0.015),
  }
  return fab.study(
      [MLQA, XQUAD],
      effects,
      counts=(2, 11),
      seeds=(0, 1),
      noise=0.01,
      fractions=fractions,
      eval_only={LOC: _const(-0.05)},
      mono={1.0: {"dense": _const(-0.01), BS: _const(-0.05)}},
      curves=True,
  )


def test_write_report_files_keys_and_findings(tmp_path):
  cells = _full_study()
  path = report.write_report(cells, tmp_path, DESIGN, num_samples=200, header=["Grid `test`."])
  rep = json.loads((tmp_path / "report.json").read_text())
  assert {
      "design",
      "datasets",
      "primary",
      "findings",
      "cells",
      "arms",
      "contrasts",
      "trends",
      "spearman",
      "pairs",
      "learning_curves",
      "figures",
      "bootstrap",
  } <= set(rep)
  assert rep["datasets"] == ["mlqa-r", "xquad-r"]  # the primary dataset first
  contrast_keys = {
      "dataset",
      "a",
      "b",
      "num_languages",
      "pool_languages",
      "metric",
      "difference",
      "ci",
      "questions",
      "articles",
      "clusters",
      "cluster_unit",
      "seeds",
      "mono_prob",
  }
  assert all(contrast_keys <= set(c) for c in rep["contrasts"])
  assert all(
      contrast_keys | {"axis", "from_languages", "to_languages"} <= set(t) for t in rep["trends"]
  )
  cell_keys = {
      "name",
      "attention",
      "kind",
      "num_languages",
      "seed",
      "mono_prob",
      "attended_fraction",
      "pools",
      "trained_vs_untrained",
      "zero_shot",
  }
  assert len(rep["cells"]) == len(cells) and all(cell_keys <= set(c) for c in rep["cells"])
  p = rep["primary"]
  assert (p["a"], p["b"], p["num_languages"], p["pool_languages"], p["metric"]) == (
      BS,
      LOC,
      11,
      7,
      "mul_macro",
  )
  assert p["fraction_a"] == 0.113 and p["fraction_b"] == 0.118
  # Spearman across the five sparse arms at 11 languages (tied fractions) is scipy's.
  rho = rep["spearman"]["mlqa-r"]
  assert len(rho["arms"]) == 5 and rho["num_languages"] == 11
  assert rho["rho"] == pytest.approx(
      stats.spearmanr(rho["fractions"], rho["differences"]).statistic
  )
  # Findings lead report.md, primary first, with report.json's numbers.
  text = path.read_text()
  assert text.index("## Findings") < text.index("## mlqa-r") < text.index("## xquad-r")
  assert rep["findings"] in text
  assert rep["findings"].startswith(
      f"Primary contrast: on mlqa-r with 11 training languages and a pool of 7 languages, "
      f"block-sparse {BS} (attended fraction 0.113) minus local {LOC} (attended fraction 0.118)"
  )
  assert f"{p['difference']:+.4f} [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}]" in rep["findings"]
  for dataset, names in rep["figures"].items():
    assert {
        f"vs_training_{dataset}.png",
        f"vs_pool_{dataset}.png",
        f"vs_fraction_{dataset}.png",
        f"pairs_matched_{dataset}.png",
        f"pairs_vs_dense_{dataset}.png",
        f"learning_curve_{dataset}.png",
    } == set(names)
    for name in names:
      assert (tmp_path / name).stat().st_size > 1000 and f"]({name})" in text
  assert not list(tmp_path.glob("*.tmp")) and "Grid `test`." in text
  # The fabricated curves rise from 0.3 to 0.5 over steps 0, 5, 10.
  for curve in rep["learning_curves"]["mlqa-r"]:
    assert curve["steps"] == [0, 5, 10]
    np.testing.assert_allclose(curve["mul_macro"], [0.3, 0.4, 0.5])


def test_a_question_is_one_cluster_across_its_languages():
  """MLQA-R titles an article per language: a question's rows still share one cluster."""
  per_query = {
      "query_id": ["q1", "q1", "q2", "q2", "q3"],
      "lang": ["de", "en", "de", "en", "de"],
      "article": ["A-de", "A", "B-de", "B", "C-de"],
      "ap": [0.1, 0.2, 0.3, 0.4, 0.5],
  }
  queries = report.queries_of({"per_query": per_query}, report.Codes())
  article = queries.article.tolist()
  assert article[0] == article[1] and article[2] == article[3]
  assert len({article[0], article[2], article[4]}) == 3  # A, B and (no English row) C-de
