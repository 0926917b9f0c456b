"""split_by_article and jxr.data.restrict."""

import numpy as np
import pytest

import jxr.data
from jxr.data.splits import article_groups


def _relevance_as_ids(task):
  """Each query's relevant candidates as (lang, text) sets, index-free."""
  return {
      (task.query_id[q], task.query_lang[q]): {
          (task.cand_lang[c], task.cand_text[c]) for c in task.relevant(q)
      }
      for q in range(task.num_queries)
  }


def test_split_follows_design_rule(xquad):
  train, evaluation = jxr.data.split_by_article(xquad, eval_fraction=0.5, seed=3)
  titles = np.unique(xquad.query_article)
  held_out = set(np.random.default_rng(3).permutation(titles)[: round(0.5 * len(titles))])
  assert set(evaluation.query_article) == held_out
  assert set(evaluation.cand_article) == held_out
  assert not set(train.query_article) & held_out and not set(train.cand_article) & held_out
  assert train.num_queries + evaluation.num_queries == xquad.num_queries
  assert train.num_candidates + evaluation.num_candidates == xquad.num_candidates


def test_split_keeps_relevance(xquad):
  train, evaluation = jxr.data.split_by_article(xquad, eval_fraction=0.25, seed=0)
  full = _relevance_as_ids(xquad)
  for part in (train, evaluation):
    assert (np.diff(part.rel_indptr) == 11).all()
    assert _relevance_as_ids(part) == {key: full[key] for key in _relevance_as_ids(part)}
    assert part.languages == xquad.languages
  assert not set(train.query_id) & set(evaluation.query_id)
  assert not set(train.cand_text[train.cand_lang == "en"]) & set(
      evaluation.cand_text[evaluation.cand_lang == "en"]
  )


def test_split_fraction_and_seed(xquad):
  a = jxr.data.split_by_article(xquad, eval_fraction=0.2, seed=1)[1]
  b = jxr.data.split_by_article(xquad, eval_fraction=0.2, seed=1)[1]
  c = jxr.data.split_by_article(xquad, eval_fraction=0.2, seed=2)[1]
  assert len(set(a.query_article)) == round(0.2 * 48)
  assert (a.query_id == b.query_id).all()
  assert set(a.query_article) != set(c.query_article)
  train, evaluation = jxr.data.split_by_article(xquad, eval_fraction=0.0)
  assert evaluation.num_queries == 0 and train.num_queries == xquad.num_queries
  with pytest.raises(ValueError, match="eval_fraction"):
    jxr.data.split_by_article(xquad, eval_fraction=1.5)


def test_mlqa_split_keeps_questions_whole(mlqa):
  """MLQA-R titles differ by language; titles sharing a question move together."""
  titles, group, _ = article_groups(mlqa)
  assert group.max() + 1 < len(titles)
  train, evaluation = jxr.data.split_by_article(mlqa, eval_fraction=0.5, seed=0)
  assert not set(train.query_id) & set(evaluation.query_id)
  assert not set(train.cand_article) & set(evaluation.cand_article)
  for part in (train, evaluation):
    sizes = np.diff(part.rel_indptr)
    assert sizes.min() >= 2 and sizes.max() <= 4
  full = _relevance_as_ids(mlqa)
  assert all(full[key] == value for key, value in _relevance_as_ids(evaluation).items())


def test_restrict_languages_and_questions(xquad):
  sub = jxr.data.restrict(xquad, languages=("en", "de"), questions=200, seed=0)
  assert sub.languages == ("en", "de")
  assert sub.num_queries == 400
  assert sorted(set(sub.query_lang)) == ["de", "en"] and sub.query_lang[0] == "en"
  ids = sub.query_id
  assert len(set(ids)) == 200 and set(ids[sub.query_lang == "en"]) == set(
      ids[sub.query_lang == "de"]
  )
  assert sub.num_candidates == 1180 + 1276  # the full pool of the kept languages
  full = _relevance_as_ids(xquad)
  for key, relevant in _relevance_as_ids(sub).items():
    assert relevant == {(lang, text) for lang, text in full[key] if lang in ("en", "de")}
  same = jxr.data.restrict(xquad, languages=("en", "de"), questions=200, seed=0)
  other = jxr.data.restrict(xquad, languages=("en", "de"), questions=200, seed=1)
  assert (same.query_id == sub.query_id).all() and set(other.query_id) != set(sub.query_id)


def test_restrict_candidates_to_articles(mlqa):
  sub = jxr.data.restrict(mlqa, questions=50, seed=0, candidates="articles")
  assert len(set(sub.query_id)) == 50
  assert set(zip(sub.cand_lang, sub.cand_article)) == set(zip(sub.query_lang, sub.query_article))
  assert sub.num_candidates < mlqa.num_candidates
  full = _relevance_as_ids(mlqa)
  assert all(full[key] == value for key, value in _relevance_as_ids(sub).items())


def test_restrict_reorders_languages(xquad):
  sub = jxr.data.restrict(xquad, languages=("zh", "ar"))
  assert sub.languages == ("zh", "ar") and sub.query_lang[0] == "zh" and sub.cand_lang[0] == "zh"
  for q in range(0, sub.num_queries, 97):
    relevant = sub.relevant(q)
    assert (np.diff(relevant) > 0).all() and len(relevant) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(languages=("en", "xx")), "languages"),
        (dict(languages="en"), "string"),
        (dict(questions=0), "questions"),
        (dict(questions=5000), "questions"),
        (dict(candidates="some"), "candidates"),
    ],
)
def test_restrict_bad_input(xquad, kwargs, match):
  with pytest.raises(ValueError, match=match):
    jxr.data.restrict(xquad, **kwargs)
