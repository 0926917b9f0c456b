"""jxr.eval metrics against brute force, constructed cases and hand-computed toys."""

import dataclasses
import json

import numpy as np
import pytest
from eval_toys import brute_force, lattice_embeddings, make_task, parallel_task

import jxr.eval
from jxr.eval import metrics


def _random_task(rng, num_queries, num_cands, languages=("en", "de", "zh"), max_relevant=7):
  """Queries with relevant sets of 1..max_relevant random candidates (varying sizes)."""
  query_lang = rng.choice(languages, size=num_queries).tolist()
  cand_lang = rng.choice(languages, size=num_cands).tolist()
  relevant = [
      rng.choice(num_cands, size=rng.integers(1, max_relevant + 1), replace=False)
      for _ in range(num_queries)
  ]
  ids = [f"q{i}" for i in range(num_queries)]
  return make_task(ids, query_lang, cand_lang, relevant, languages)


def _check_against_brute_force(task, queries, cands, scores):
  report = jxr.eval.evaluate(task, queries, cands)
  expected = [brute_force(scores[q], task.relevant(q)) for q in range(task.num_queries)]
  per_query = report["per_query"]
  np.testing.assert_allclose(per_query["ap"], [e["ap"] for e in expected], rtol=1e-12)
  np.testing.assert_array_equal(per_query["rank_distance"], [e["rank_distance"] for e in expected])
  multi = report["multilingual"]
  np.testing.assert_allclose(multi["map"], np.mean([e["ap"] for e in expected]), rtol=1e-12)
  np.testing.assert_allclose(multi["map_at_20"], np.mean([e["ap20"] for e in expected]), rtol=1e-12)
  np.testing.assert_allclose(multi["mrr"], np.mean([e["rr"] for e in expected]), rtol=1e-12)
  np.testing.assert_allclose(
      multi["ndcg_at_10"], np.mean([e["ndcg10"] for e in expected]), rtol=1e-12
  )
  for k in (1, 5, 10, 20):
    np.testing.assert_allclose(
        multi["recall"][str(k)], np.mean([e[f"r{k}"] for e in expected]), rtol=1e-12
    )
  # AP within each language's candidates alone, by sorting the scores of that language only.
  for j, lang in enumerate(task.languages):
    cols = np.flatnonzero(task.cand_lang == lang)
    for q in range(task.num_queries):
      relevant = np.flatnonzero(np.isin(cols, task.relevant(q)))
      value = per_query["ap_by_language"][q][j]
      if len(relevant) == 0:
        assert value is None
      else:
        np.testing.assert_allclose(value, brute_force(scores[q, cols], relevant)["ap"], rtol=1e-12)
  return report


def test_matches_brute_force_with_many_ties():
  # Lattice embeddings: every cosine is an exact multiple of 1/4, so ties are everywhere
  # (relevant with relevant, relevant with others) and float32 scoring is exact.
  rng = np.random.default_rng(0)
  task = _random_task(rng, num_queries=90, num_cands=150)
  queries = lattice_embeddings(rng, task.num_queries)
  cands = lattice_embeddings(rng, task.num_candidates)
  scores = queries.astype(np.float64) @ cands.T.astype(np.float64)
  assert len(np.unique(scores)) <= 9  # the data really is tie-heavy
  report = _check_against_brute_force(task, queries, cands, scores)
  assert 0 < report["multilingual"]["map"] < 1


def _well_separated(task, scores, gap):
  """No candidate scores within `gap` of a relevant one (beyond which float32 rounding cannot swap them)."""
  for row in range(task.num_queries):
    rel = task.relevant(row)
    gaps = np.abs(scores[row][:, None] - scores[row][rel][None, :])
    gaps[rel, np.arange(len(rel))] = np.inf
    if gaps.min() <= gap:
      return False
  return True


def test_matches_brute_force_on_continuous_scores():
  # A float32 dot product of 8-d unit vectors is within 8 * 2**-24 < 5e-7 of the exact
  # one, so data whose relevant scores are 1e-6 clear of every other score ranks the same.
  for seed in range(100):
    rng = np.random.default_rng(seed)
    task = _random_task(rng, num_queries=60, num_cands=300, max_relevant=25)
    queries = rng.normal(size=(task.num_queries, 8)) * rng.uniform(
        0.1, 10, size=(task.num_queries, 1)
    )
    cands = rng.normal(size=(task.num_candidates, 8))
    q, c = jxr.eval.l2_normalise(queries), jxr.eval.l2_normalise(cands)
    scores = q.astype(np.float64) @ c.T.astype(np.float64)
    if _well_separated(task, scores, gap=1e-6):
      break
  else:
    pytest.fail("no well-separated random data in 100 seeds")
  _check_against_brute_force(task, queries, cands, scores)


def test_positions_break_relevant_ties_consecutively():
  ranks = np.array([[5, 1, 1, 0], [3, 3, 3, 9], [2, 0, 0, 0]])
  valid = np.array(
      [[True, True, True, False], [True, True, True, True], [True, False, False, False]]
  )
  pos = metrics.positions(ranks, valid)
  np.testing.assert_array_equal(pos[0, :3], [1, 2, 5])
  np.testing.assert_array_equal(pos[1], [3, 4, 5, 9])
  assert pos[2, 0] == 2
  m = metrics.query_metrics(ranks, valid, k_values=(1, 4))
  np.testing.assert_allclose(
      m["ap"], [(1 / 1 + 2 / 2 + 3 / 5) / 3, (1 / 3 + 2 / 4 + 3 / 5 + 4 / 9) / 4, 1 / 2]
  )
  np.testing.assert_allclose(m["recall"][4], [2 / 3, 2 / 4, 1.0])
  np.testing.assert_allclose(metrics.rank_distance(ranks, valid), [4, 6, 0])


def test_one_hot_question_ids_give_perfect_retrieval():
  languages = ("ar", "en", "ru", "zh")
  task = parallel_task(num_questions=12, languages=languages, distractors=3)
  question = np.array([int(q[1:]) for q in task.query_id])
  queries = np.eye(13, dtype=np.float32)[question]
  # Candidates: the answer of question i is one-hot i; distractors point at an unused axis.
  cand_question = np.array([i % 15 if i % 15 < 12 else 12 for i in range(task.num_candidates)])
  cands = np.eye(13, dtype=np.float32)[cand_question]
  report = jxr.eval.evaluate(task, queries, cands)
  multi = report["multilingual"]
  assert multi["map"] == multi["map_at_20"] == multi["mrr"] == multi["ndcg_at_10"] == 1.0
  # Four tied answers fill positions 1-4.
  assert multi["recall"] == {"1": 0.25, "5": 1.0, "10": 1.0, "20": 1.0}
  assert report["bias"]["rank_distance"] == 0.0
  assert report["summary"] == {"mono": 1.0, "cross": 1.0, "multi_macro": 1.0, "multi_micro": 1.0}
  assert all(v == 1.0 for row in report["matrices"]["map"] for v in row)
  assert report["matrices"]["num_queries"] == [[12] * 4] * 4


@pytest.mark.parametrize("language_weight", [2.0, 0.5])
def test_language_biased_embeddings(language_weight):
  # Embedding of question i in language l: e_i + w * f_l. The cosine of a query with
  # its own-language answer is 1, with another language's answer 1 / (1 + w^2), with a
  # wrong answer in its own language w^2 / (1 + w^2), and 0 otherwise. With w > 1 every
  # own-language wrong answer outranks the cross-language right ones.
  n, languages = 9, ("de", "en", "es", "hi", "th")
  task = parallel_task(n, languages)
  lang_of = {lang: i for i, lang in enumerate(languages)}
  basis = np.eye(n + len(languages))
  question = np.array([int(q[1:]) for q in task.query_id])
  q_lang = np.array([lang_of[lang] for lang in task.query_lang])
  c_question = np.tile(np.arange(n), len(languages))
  c_lang = np.array([lang_of[lang] for lang in task.cand_lang])
  queries = basis[question] + language_weight * basis[n + q_lang]
  cands = basis[c_question] + language_weight * basis[n + c_lang]
  report = jxr.eval.evaluate(task, queries, cands)

  num_langs = len(languages)
  if language_weight > 1:
    # Own answer at 1, n - 1 wrong own-language answers tie at 2, the rest from n + 1.
    expected_ap = (1 + sum(j / (n + j - 1) for j in range(2, num_langs + 1))) / num_langs
    expected_distance = n
  else:
    expected_ap, expected_distance = 1.0, 1  # all answers first; other languages tie at rank 2
  np.testing.assert_allclose(report["multilingual"]["map"], expected_ap, rtol=1e-12)
  assert report["bias"]["rank_distance"] == expected_distance
  assert set(report["bias"]["rank_distance_per_language"].values()) == {expected_distance}
  assert report["bias"]["top1_same_language"] == 1.0
  # Within a single language the right answer always wins: no bias visible in the matrices.
  assert report["summary"]["mono"] == report["summary"]["cross"] == 1.0


def _angle_toy():
  """Two languages, two questions; 2-D unit vectors at the given angles (degrees).

  candidates: 0 en answer(a) 0, 1 en answer(b) 90, 2 en distractor 30, 3 de answer(a) 60, 4 de answer(b) 120
  queries:    0 (a, en) 10,  1 (b, en) 100,  2 (a, de) 50,  3 (b, de) 200
  """
  task = make_task(
      ["a", "b", "a", "b"],
      ["en", "en", "de", "de"],
      ["en", "en", "en", "de", "de"],
      [[0, 3], [1, 4], [0, 3], [1, 4]],
  )
  unit = lambda deg: np.stack([np.cos(np.radians(deg)), np.sin(np.radians(deg))], axis=1)  # noqa: E731
  return task, unit(np.array([10, 100, 50, 200])), unit(np.array([0, 90, 30, 60, 120]))


def test_hand_computed_toy():
  # Angular distances, nearest first (pooled ranks of the answers in brackets):
  #   q0 (a,en) 10:  c0 10, c2 20, c3 50, c1 80, c4 110   -> answers [1, 3]: AP (1 + 2/3)/2, distance 2
  #   q1 (b,en) 100: c1 10, c4 20, c3 40, c2 70, c0 100   -> [1, 2]: AP 1, distance 1
  #   q2 (a,de) 50:  c3 10, c2 20, c1 40, c0 50, c4 70    -> [4, 1]: AP (1 + 2/4)/2, distance 3
  #   q3 (b,de) 200: c4 80, c1 110, c3 140, c0 160, c2 170 -> [2, 1]: AP 1, distance 1
  # Per-language pools: only q2 in the English pool is not first (c2 30 and c1 90 beat c0): rank 3.
  task, queries, cands = _angle_toy()
  report = jxr.eval.evaluate(task, queries, cands)
  m = report["matrices"]
  assert m["languages"] == ["en", "de"]
  np.testing.assert_allclose(m["map"], [[1, 1], [(1 / 3 + 1) / 2, 1]])
  np.testing.assert_allclose(m["mrr"], [[1, 1], [(1 / 3 + 1) / 2, 1]])
  np.testing.assert_allclose(m["recall"]["1"], [[1, 1], [0.5, 1]])
  np.testing.assert_allclose(m["recall"]["10"], [[1, 1], [1, 1]])
  assert m["num_queries"] == [[2, 2], [2, 2]]
  s = report["summary"]
  np.testing.assert_allclose([s["mono"], s["cross"]], [1.0, (1 + 2 / 3) / 2])
  aps = [(1 + 2 / 3) / 2, 1.0, (1 + 2 / 4) / 2, 1.0]
  np.testing.assert_allclose(report["per_query"]["ap"], aps)
  np.testing.assert_allclose(
      [s["multi_micro"], s["multi_macro"]], np.mean(aps)
  )  # balanced: macro = micro
  per_lang = report["multilingual"]["per_language"]
  np.testing.assert_allclose(
      [per_lang["en"]["map"], per_lang["de"]["map"]], [np.mean(aps[:2]), np.mean(aps[2:])]
  )
  assert per_lang["en"]["num_queries"] == 2
  assert (
      report["multilingual"]["recall"]["1"] == 0.5
  )  # one of two answers at position 1, every query
  assert report["multilingual"]["mrr"] == 1.0
  assert report["per_query"]["rank_distance"] == [2, 1, 3, 1]
  assert report["bias"]["rank_distance_per_language"] == {"en": 1.5, "de": 2.0}
  assert report["bias"]["rank_distance"] == 1.75
  assert report["bias"]["rank_distance_normalised"] == 1.75 / 5
  assert report["bias"]["top1_same_language"] == 1.0
  assert report["per_query"]["query_id"] == ["a", "b", "a", "b"]
  assert report["per_query"]["lang"] == ["en", "en", "de", "de"]


def test_empty_cells_and_report_layout():
  # Question "x" exists only in English, so cells hold different numbers of queries.
  task = make_task(["x", "y", "y"], ["en", "en", "de"], ["en", "en", "de"], [[0], [1, 2], [1, 2]])
  rng = np.random.default_rng(3)
  report = jxr.eval.evaluate(
      task, rng.normal(size=(3, 5)), rng.normal(size=(3, 5)), k_values=(3, 1)
  )
  assert report["matrices"]["num_queries"] == [[2, 1], [1, 1]]
  assert set(report) == {
      "dataset",
      "languages",
      "num_queries",
      "num_candidates",
      "multilingual",
      "bias",
      "matrices",
      "summary",
      "per_query",
  }
  assert set(report["multilingual"]) == {
      "map",
      "map_at_20",
      "mrr",
      "ndcg_at_10",
      "recall",
      "per_language",
  }
  assert list(report["multilingual"]["recall"]) == ["1", "3"]
  assert set(report["multilingual"]["per_language"]["de"]) == {
      "map",
      "map_at_20",
      "recall",
      "num_queries",
  }
  assert set(report["bias"]) == {
      "rank_distance",
      "rank_distance_normalised",
      "rank_distance_per_language",
      "top1_same_language",
  }
  assert set(report["matrices"]) == {"languages", "map", "mrr", "recall", "num_queries"}
  assert set(report["matrices"]["recall"]) == {"1", "10"}
  assert set(report["summary"]) == {"mono", "cross", "multi_macro", "multi_micro"}
  assert set(report["per_query"]) == {
      "query_id",
      "lang",
      "article",
      "paragraph",
      "ap",
      "rank_distance",
      "ap_by_language",
  }
  assert report["per_query"]["ap_by_language"][0][1] is None  # "x" has no German answer
  assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_cell_without_queries_is_null():
  task = make_task(["x", "y"], ["en", "de"], ["en", "de"], [[0], [1]])
  report = jxr.eval.evaluate(task, np.eye(2), np.eye(2))
  assert report["matrices"]["map"] == [[1.0, None], [None, 1.0]]
  assert report["matrices"]["num_queries"] == [[1, 0], [0, 1]]
  assert report["summary"]["cross"] is None
  json.dumps(report, allow_nan=False)


def test_chunk_size_does_not_change_the_report():
  rng = np.random.default_rng(4)
  task = parallel_task(17, ("en", "de", "fr"), distractors=4)
  queries = lattice_embeddings(rng, task.num_queries)
  cands = lattice_embeddings(rng, task.num_candidates)
  reports = [jxr.eval.evaluate(task, queries, cands, chunk_size=c) for c in (1, 7, None, 10_000)]
  assert all(r == reports[0] for r in reports[1:])


def test_scale_of_embeddings_is_ignored():
  task, queries, cands = _angle_toy()
  a = jxr.eval.evaluate(task, queries, cands)
  b = jxr.eval.evaluate(task, queries * np.array([[3.0], [0.01], [7.0], [1e3]]), cands * 50)
  assert a == b


def _unbalanced_toy():
  """Three English queries, one German; candidates c0, c1 (en), c2, c3 (de) are basis vectors.

  A query's embedding is its score vector, so its pooled ranking is the order of that vector.
  """
  task = make_task(
      ["a", "b", "c", "a"],
      ["en", "en", "en", "de"],
      ["en", "en", "de", "de"],
      [[0, 2], [1], [3], [0, 2]],
  )
  queries = np.array([[4, 3, 1, 2], [4, 2, 3, 1], [1, 2, 3, 4], [1, 4, 3, 2]], np.float64)
  return task, queries, np.eye(4)


def test_mul_macro_and_micro_differ_on_unbalanced_languages():
  # Pooled ranks of the relevant candidates and AP:
  #   q0 (a, en) [4, 3, 1, 2]: c0 1, c2 4 -> (1 + 2/4) / 2 = 0.75, distance 3
  #   q1 (b, en) [4, 2, 3, 1]: c1 3       -> 1/3, distance 0
  #   q2 (c, en) [1, 2, 3, 4]: c3 1       -> 1, distance 0
  #   q3 (a, de) [1, 4, 3, 2]: c2 2, c0 4 -> (1/2 + 2/4) / 2 = 0.5, distance 2
  task, queries, cands = _unbalanced_toy()
  report = jxr.eval.evaluate(task, queries, cands)
  np.testing.assert_allclose(report["per_query"]["ap"], [0.75, 1 / 3, 1.0, 0.5])
  s = report["summary"]
  np.testing.assert_allclose(s["multi_micro"], (0.75 + 1 / 3 + 1 + 0.5) / 4)  # 0.6458
  np.testing.assert_allclose(s["multi_macro"], ((0.75 + 1 / 3 + 1) / 3 + 0.5) / 2)  # 0.5972
  assert s["multi_micro"] == report["multilingual"]["map"]
  # Within one language: q0 en c0 1st -> 1, de c2 2nd -> 1/2; q1 en c1 2nd -> 1/2; q2 de c3 1st -> 1;
  # q3 en c0 2nd -> 1/2, de c2 1st -> 1.
  assert report["per_query"]["ap_by_language"] == [[1.0, 0.5], [0.5, None], [None, 1.0], [0.5, 1.0]]
  assert report["matrices"]["map"] == [[0.75, 0.75], [0.5, 1.0]]
  np.testing.assert_allclose([s["mono"], s["cross"]], [(0.75 + 1) / 2, (0.75 + 0.5) / 2])
  bias = report["bias"]
  assert bias["rank_distance_per_language"] == {"en": 1.0, "de": 2.0}
  assert bias["rank_distance"] == 1.5
  assert bias["rank_distance_normalised"] == 1.5 / 4


@pytest.mark.parametrize("seed", [0, 1])
def test_ap_by_language_averages_to_the_map_matrix(seed):
  rng = np.random.default_rng(seed)
  task = _random_task(
      rng, num_queries=80, num_cands=120, languages=("en", "de", "zh", "ar"), max_relevant=4
  )
  report = jxr.eval.evaluate(
      task, lattice_embeddings(rng, task.num_queries), lattice_embeddings(rng, task.num_candidates)
  )
  by_language = report["per_query"]["ap_by_language"]
  query_lang = np.array(report["per_query"]["lang"])
  grid, counts = report["matrices"]["map"], report["matrices"]["num_queries"]
  for i, row_lang in enumerate(task.languages):
    for j in range(len(task.languages)):
      values = [
          by_language[q][j]
          for q in np.flatnonzero(query_lang == row_lang)
          if by_language[q][j] is not None
      ]
      assert len(values) == counts[i][j]
      if values:
        np.testing.assert_allclose(np.mean(values), grid[i][j], rtol=1e-12)
      else:
        assert grid[i][j] is None
  assert any(v is None for row in by_language for v in row)  # some queries lack a language


def _paragraph_toy():
  """Articles and paragraphs by language; rows of question "a" in German first.

  candidates: 0-2 en "T1" paragraphs x, x, y; 3 en "T2" z; 4-5 de "T1de" u, v; 6 de "T2de" w.
  """
  task = make_task(
      ["a", "a", "b", "c", "d"],
      ["de", "en", "de", "en", "en"],
      ["en", "en", "en", "en", "de", "de", "de"],
      [[2, 5], [2, 5], [1, 4], [6], [3]],
      languages=("en", "de"),
  )
  return dataclasses.replace(
      task,
      query_article=np.array(["T1de", "T1", "T1de", "T2", "T2"]),
      cand_article=np.array(["T1", "T1", "T1", "T2", "T1de", "T1de", "T2de"]),
      cand_context=np.array(["x", "x", "y", "z", "u", "v", "w"]),
  )


def test_paragraph_and_article_keys():
  # a: English comes first in task.languages: its answer c2 is T1's second distinct paragraph (y).
  # b: only German: c4 is T1de's first (u). c: no English answer: its first relevant, c6 (T2de's w).
  task = _paragraph_toy()
  rng = np.random.default_rng(0)
  report = jxr.eval.evaluate(task, rng.normal(size=(5, 4)), rng.normal(size=(7, 4)))
  assert report["per_query"]["paragraph"] == ["T1/1", "T1/1", "T1de/0", "T2de/0", "T2/0"]
  assert report["per_query"]["article"] == ["T1de", "T1", "T1de", "T2", "T2"]
