"""`evaluate_pools`: one set of embeddings, the report of each language pool."""

import numpy as np
import pytest
from eval_toys import lattice_embeddings, make_task, parallel_task

import jxr.data
import jxr.eval


def _interleaved_task():
  """Three languages whose rows interleave (restrict reorders them); query and sentence texts are unique."""
  languages = ("en", "de", "zh")
  base = parallel_task(6, languages, distractors=2)
  q_order = np.random.default_rng(1).permutation(base.num_queries)
  c_order = np.random.default_rng(2).permutation(base.num_candidates)
  new_index = np.argsort(c_order)
  relevant = [new_index[base.relevant(q)] for q in q_order]
  return make_task(
      base.query_id[q_order], base.query_lang[q_order], base.cand_lang[c_order], relevant, languages
  )


def _rows_by_text(texts_sub, texts_all):
  where = {text: i for i, text in enumerate(texts_all.tolist())}
  assert len(where) == len(texts_all)  # unique texts identify rows
  return np.array([where[t] for t in texts_sub.tolist()])


def test_pools_of_a_toy_match_restrict():
  task = _interleaved_task()
  rng = np.random.default_rng(0)
  queries, cands = lattice_embeddings(rng, task.num_queries), lattice_embeddings(
      rng, task.num_candidates
  )
  pools = {"2": ("de", "en"), "all": ("zh", "en", "de"), "zh": ["zh"]}
  reports = jxr.eval.evaluate_pools(task, queries, cands, pools, k_values=(1, 3))
  assert list(reports) == ["2", "all", "zh"]
  for name, langs in pools.items():
    ordered = [lang for lang in task.languages if lang in langs]
    sub = jxr.data.restrict(task, languages=ordered)
    # Each restricted row found in the full task by its unique text: independent of row order.
    q_rows = _rows_by_text(sub.query_text, task.query_text)
    c_rows = _rows_by_text(sub.cand_text, task.cand_text)
    expected = jxr.eval.evaluate(sub, queries[q_rows], cands[c_rows], k_values=(1, 3))
    assert reports[name]["languages"] == ordered
    assert reports[name] == expected
  assert (
      reports["all"]["per_query"]["lang"][:6] == ["en"] * 6
  )  # language-major, as restrict orders rows
  assert reports["zh"]["summary"]["cross"] is None and reports["zh"]["num_candidates"] == 8


@pytest.fixture(scope="module")
def mlqa_small(lareqa_dir):
  full = jxr.data.load_lareqa("mlqa-r", data_dir=lareqa_dir, languages=("en", "de", "es"))
  task = jxr.data.restrict(full, questions=20, seed=3)
  assert set(task.query_lang.tolist()) == {"en", "de", "es"}  # every language has queries
  return task


def test_pools_of_mlqa_match_restrict(mlqa_small):
  task = mlqa_small
  rng = np.random.default_rng(0)
  queries = jxr.eval.l2_normalise(rng.normal(size=(task.num_queries, 16)))
  cands = jxr.eval.l2_normalise(rng.normal(size=(task.num_candidates, 16)))
  pools = {"2": ("en", "de"), "3": ("en", "de", "es"), "es-de": ("es", "de")}
  reports = jxr.eval.evaluate_pools(task, queries, cands, pools)
  for name, langs in pools.items():
    sub = jxr.data.restrict(task, languages=[lang for lang in task.languages if lang in langs])
    q_mask, c_mask = np.isin(task.query_lang, langs), np.isin(task.cand_lang, langs)
    # The loader's rows are language-major, so boolean masks keep restrict's row order.
    np.testing.assert_array_equal(sub.query_id, task.query_id[q_mask])
    np.testing.assert_array_equal(sub.query_lang, task.query_lang[q_mask])
    np.testing.assert_array_equal(sub.cand_text, task.cand_text[c_mask])
    expected = jxr.eval.evaluate(sub, queries[q_mask], cands[c_mask])
    got = reports[name]
    for key in ("summary", "multilingual", "bias", "per_query", "matrices"):
      assert got[key] == expected[key], (name, key)
    assert got["num_candidates"] == int(c_mask.sum())
  paragraphs = reports["3"]["per_query"]
  for qid in set(paragraphs["query_id"]):  # one paragraph key per question, over its languages
    keys = {p for q, p in zip(paragraphs["query_id"], paragraphs["paragraph"]) if q == qid}
    assert len(keys) == 1
  # Normalised rank distance lets pools of different sizes compare.
  for r in reports.values():
    assert r["bias"]["rank_distance_normalised"] == r["bias"]["rank_distance"] / r["num_candidates"]


def _toy_with_an_empty_language():
  return make_task(
      ["a", "a"], ["en", "de"], ["en", "de", "fr"], [[0, 1], [0, 1]], languages=("en", "de", "fr")
  )


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        ({"x": ()}, r"pools\['x'\]: expected at least one language"),
        ({"x": ("en", "ru")}, r"pools\['x'\]: languages \['ru'\] are not in task.languages"),
        ({"x": ("en", "fr")}, r"pools\['x'\]: languages \['fr'\] have no queries"),
        ({"x": "en"}, r"pools\['x'\]: expected a sequence of language codes"),
        ({"x": ("en", "en")}, r"pools\['x'\]: expected distinct language codes"),
        ([("en",)], "pools: expected a mapping"),
    ],
)
def test_bad_pools_are_rejected(pools, message):
  task = _toy_with_an_empty_language()
  with pytest.raises(ValueError, match=message):
    jxr.eval.evaluate_pools(task, np.eye(2, 3), np.eye(3), pools)


def test_pools_check_the_full_embeddings():
  task = _toy_with_an_empty_language()
  with pytest.raises(ValueError, match=r"query_emb: expected 2 rows \(task.num_queries\), got 3"):
    jxr.eval.evaluate_pools(task, np.eye(3), np.eye(3), {"x": ("en",)})
  with pytest.raises(ValueError, match="task: expected a jxr.data.RetrievalTask"):
    jxr.eval.evaluate_pools({}, np.eye(3), np.eye(3), {"x": ("en",)})
