"""Bad input to jxr.eval.evaluate: clear ValueErrors naming the argument."""

import numpy as np
import pytest
from eval_toys import make_task, parallel_task

import jxr.eval


@pytest.fixture(scope="module")
def task():
  return parallel_task(4, ("en", "de"), distractors=1)  # 8 queries, 10 candidates


def _emb(rows, dim=6, seed=0):
  return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def test_row_counts_must_match_the_task(task):
  with pytest.raises(ValueError, match=r"query_emb: expected 8 rows \(task.num_queries\), got 7"):
    jxr.eval.evaluate(task, _emb(7), _emb(10))
  with pytest.raises(
      ValueError, match=r"cand_emb: expected 10 rows \(task.num_candidates\), got 11"
  ):
    jxr.eval.evaluate(task, _emb(8), _emb(11))


def test_dimensions_must_match(task):
  with pytest.raises(ValueError, match=r"cand_emb: expected dimension 6 \(as query_emb\), got 5"):
    jxr.eval.evaluate(task, _emb(8, 6), _emb(10, 5))


@pytest.mark.parametrize("shape", [(8,), (8, 2, 3)])
def test_embeddings_must_be_matrices(task, shape):
  with pytest.raises(ValueError, match="query_emb: expected a 2-D array"):
    jxr.eval.evaluate(task, np.ones(shape), _emb(10))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_rejected(task, bad):
  q = _emb(8)
  q[5, 2] = bad
  with pytest.raises(ValueError, match=r"query_emb: 1 rows hold NaN or inf \(first: row 5\)"):
    jxr.eval.evaluate(task, q, _emb(10))
  c = _emb(10)
  c[[3, 9], 0] = bad
  with pytest.raises(ValueError, match=r"cand_emb: 2 rows hold NaN or inf \(first: row 3\)"):
    jxr.eval.evaluate(task, _emb(8), c)


def test_zero_vectors_are_rejected(task):
  c = _emb(10)
  c[7] = 0
  with pytest.raises(ValueError, match=r"cand_emb: 1 rows are zero vectors.*row 7"):
    jxr.eval.evaluate(task, _emb(8), c)
  q = _emb(8)
  q[0] = -0.0
  with pytest.raises(ValueError, match=r"query_emb: 1 rows are zero vectors.*row 0"):
    jxr.eval.evaluate(task, q, _emb(10))


def test_non_numeric_embeddings_are_rejected(task):
  with pytest.raises(ValueError, match="query_emb: expected real numbers"):
    jxr.eval.evaluate(task, np.full((8, 3), "x"), _emb(10, 3))
  with pytest.raises(ValueError, match="cand_emb: expected real numbers"):
    jxr.eval.evaluate(task, _emb(8, 3), np.ones((10, 3), complex))


@pytest.mark.parametrize("k_values", [(), (0, 5), (1, -1), (1.5,), "abc"])
def test_k_values_must_be_positive_ints(task, k_values):
  with pytest.raises(ValueError, match="k_values"):
    jxr.eval.evaluate(task, _emb(8), _emb(10), k_values=k_values)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5])
def test_chunk_size_must_be_positive(task, chunk_size):
  with pytest.raises(ValueError, match="chunk_size"):
    jxr.eval.evaluate(task, _emb(8), _emb(10), chunk_size=chunk_size)


def test_task_must_be_a_retrieval_task():
  with pytest.raises(ValueError, match="task: expected a jxr.data.RetrievalTask"):
    jxr.eval.evaluate({"queries": []}, _emb(8), _emb(10))


def test_queries_without_relevant_candidates_are_rejected():
  task = make_task(["a", "b"], ["en", "en"], ["en", "en"], [[0], []])
  with pytest.raises(
      ValueError, match=r"task: 1 queries have no relevant candidate \(first: row 1, id 'b'\)"
  ):
    jxr.eval.evaluate(task, _emb(2), _emb(2))


def test_relevant_indices_must_be_candidates():
  task = make_task(["a"], ["en"], ["en", "en"], [[5]])
  with pytest.raises(ValueError, match=r"task.rel_indices: expected candidate indices in \[0, 2\)"):
    jxr.eval.evaluate(task, _emb(1), _emb(2))


def test_languages_must_be_declared():
  task = make_task(["a"], ["en"], ["en", "xx"], [[0]], languages=("en",))
  with pytest.raises(
      ValueError, match=r"task.cand_lang: languages \['xx'\] are not in task.languages"
  ):
    jxr.eval.evaluate(task, _emb(1), _emb(2))


def test_empty_task_is_rejected():
  task = make_task([], [], ["en"], [], languages=("en",))
  with pytest.raises(ValueError, match="task: expected queries and candidates, got 0 queries"):
    jxr.eval.evaluate(task, np.zeros((0, 3)), _emb(1, 3))
