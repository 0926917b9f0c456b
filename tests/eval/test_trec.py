"""TREC interchange, and jxr's metrics held against trec_eval (pytrec_eval) on the same run."""

import numpy as np
import pytest
import pytrec_eval  # the test extra's pytrec-eval-terrier: trec_eval's own C code

import jxr.data
import jxr.eval
from jxr.eval import trec


@pytest.fixture(scope="module")
def task(lareqa_dir):
  full = jxr.data.load_lareqa("mlqa-r", data_dir=lareqa_dir, languages=("en", "de", "zh"))
  return jxr.data.restrict(full, questions=40, seed=0, candidates="articles")


def _embeddings(task, seed=0):
  """Noisy planted answers: real rankings, no two scores of a query tied."""
  rng = np.random.default_rng(seed)
  ids = sorted(set(task.query_id.tolist()))
  centre = dict(zip(ids, rng.normal(size=(len(ids), 16))))
  queries = np.stack([centre[q] for q in task.query_id.tolist()]) + rng.normal(
      size=(task.num_queries, 16)
  )
  cands = rng.normal(size=(task.num_candidates, 16))
  for q in range(task.num_queries):
    rows = task.relevant(q)
    cands[rows] = centre[task.query_id[q]] + 0.5 * rng.normal(size=(len(rows), 16))
  return queries.astype(np.float32), cands.astype(np.float32)


def _parse_run(lines):
  run = {}
  for line in lines:
    qid, _, docid, _, score, _ = line.split()
    run.setdefault(qid, {})[docid] = float(score)
  return run


def _parse_qrels(lines):
  qrels = {}
  for line in lines:
    qid, _, docid, rel = line.split()
    qrels.setdefault(qid, {})[docid] = int(rel)
  return qrels


def test_jxr_metrics_equal_trec_eval_on_a_full_run(task):
  queries, cands = _embeddings(task)
  lines = list(trec.run_lines(task, queries, cands, k=task.num_candidates))
  run, qrels = _parse_run(lines), _parse_qrels(trec.qrels_lines(task))
  # No relevant candidate ties another candidate (where jxr and trec_eval legitimately differ).
  for qid, relevant in qrels.items():
    scores = list(run[qid].values())
    assert all(scores.count(run[qid][d]) == 1 for d in relevant), qid
  measures = {"map", "recip_rank", "ndcg_cut_10", "recall_1", "recall_10"}
  theirs = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
  ours = jxr.eval.evaluate(task, queries, cands, k_values=(1, 10))
  order = trec.query_ids(task)
  ap = np.array([theirs[q]["map"] for q in order])
  np.testing.assert_allclose(ours["per_query"]["ap"], ap, atol=1e-6)  # per query, same order
  multi = ours["multilingual"]
  mean = lambda m: np.mean([theirs[q][m] for q in order])  # noqa: E731
  assert multi["map"] == pytest.approx(mean("map"), abs=1e-6)
  assert multi["mrr"] == pytest.approx(mean("recip_rank"), abs=1e-6)
  assert multi["ndcg_at_10"] == pytest.approx(mean("ndcg_cut_10"), abs=1e-6)
  assert multi["recall"]["1"] == pytest.approx(mean("recall_1"), abs=1e-6)
  assert multi["recall"]["10"] == pytest.approx(mean("recall_10"), abs=1e-6)
  assert 0.05 < multi["map"] < 0.95  # neither trivial nor random


def test_run_file_is_the_top_k_by_cosine(task):
  queries, cands = _embeddings(task, seed=1)
  lines = list(trec.run_lines(task, queries, cands, k=5, tag="mine"))
  assert len(lines) == 5 * task.num_queries
  scores = jxr.eval.l2_normalise(queries) @ jxr.eval.l2_normalise(cands).T
  cand_ids = trec.candidate_ids(task)
  first = [line.split() for line in lines[:5]]
  assert [f[0] for f in first] == [trec.query_ids(task)[0]] * 5
  assert [f[2] for f in first] == [cand_ids[i] for i in np.argsort(-scores[0])[:5]]
  assert [int(f[3]) for f in first] == [1, 2, 3, 4, 5] and {f[5] for f in first} == {"mine"}
  np.testing.assert_allclose([float(f[4]) for f in first], np.sort(scores[0])[::-1][:5], rtol=1e-6)


def test_ids_are_unique_and_qrels_match_relevance(task):
  qids, dids = trec.query_ids(task), trec.candidate_ids(task)
  assert len(set(qids)) == len(qids) and len(set(dids)) == len(dids)
  qrels = _parse_qrels(trec.qrels_lines(task))
  for q in (0, len(qids) // 2, len(qids) - 1):
    assert set(qrels[qids[q]]) == {dids[c] for c in task.relevant(q)}


def test_write_trec_files_and_bad_arguments(task, tmp_path):
  queries, cands = _embeddings(task)
  run_path, qrels_path = jxr.eval.write_trec(task, queries, cands, tmp_path / "t", k=3)
  assert len(run_path.read_text().splitlines()) == 3 * task.num_queries
  assert qrels_path.read_text().endswith("\n") and not list((tmp_path / "t").glob("*.tmp"))
  with pytest.raises(ValueError, match=r"k: expected an int in \[1, "):
    list(trec.run_lines(task, queries, cands, k=0))
  with pytest.raises(ValueError, match="tag: expected a non-empty string without spaces"):
    list(trec.run_lines(task, queries, cands, k=1, tag="a b"))
  with pytest.raises(ValueError, match="query_emb: expected"):
    list(trec.run_lines(task, queries[:3], cands, k=1))
