"""training_pairs from a task and read_pairs from JSON lines."""

import json

import numpy as np
import pytest

import jxr.data


def test_pairs_from_xquad(xquad):
  pairs = jxr.data.training_pairs(xquad)
  assert len(pairs) == xquad.num_queries * 11
  mono = pairs.kind == "mono"
  assert mono.sum() == xquad.num_queries  # one per query, its own language
  assert ((pairs.query_lang == pairs.positive_lang) == mono).all()
  assert (pairs.query_lang == xquad.query_lang[pairs.query_index]).all()
  assert (pairs.positive_lang == xquad.cand_lang[pairs.positive_index]).all()
  assert (pairs.question_id == xquad.query_id[pairs.query_index]).all()
  for i in np.random.default_rng(0).choice(len(pairs), 200, replace=False):
    assert pairs.positive_index[i] in xquad.relevant(pairs.query_index[i])
  assert pairs.languages == tuple(sorted(xquad.languages))
  assert pairs.passage_context is xquad.cand_context  # indices are the task's own


def test_pairs_from_mlqa_are_mostly_cross(mlqa):
  pairs = jxr.data.training_pairs(mlqa)
  assert len(pairs) == mlqa.rel_indptr[-1]
  assert (pairs.kind == "mono").sum() == mlqa.num_queries


def _write_jsonl(tmp_path, rows, name="pairs.jsonl"):
  path = tmp_path / name
  path.write_text(
      "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n", "utf-8"
  )
  return path


def test_read_pairs(tmp_path):
  rows = [
      {
          "query": "Where is Paris?",
          "positive": "Paris is in France.",
          "query_lang": "en",
          "positive_lang": "en",
          "id": "q1",
      },
      {
          "query": "Où est Paris ?",
          "positive": "Paris is in France.",
          "query_lang": "fr",
          "positive_lang": "en",
          "id": "q1",
      },
      "",
      {
          "query": "Who wrote it?",
          "positive": "Goethe schrieb es.",
          "query_lang": "en",
          "positive_lang": "de",
          "negatives": ["Schiller schrieb es.", "Paris is in France."],
      },
  ]
  pairs = jxr.data.read_pairs(_write_jsonl(tmp_path, rows))
  assert len(pairs) == 3
  assert pairs.kind.tolist() == ["mono", "cross", "cross"]
  assert pairs.question_id[0] == pairs.question_id[1] == "q1" and pairs.question_id[2] != "q1"
  assert pairs.positive_index[0] == pairs.positive_index[1]  # equal texts share a row
  assert pairs.query_text[pairs.query_index].tolist() == [r["query"] for r in rows if r]
  assert pairs.passage_text[pairs.negatives(2)].tolist() == [
      "Schiller schrieb es.",
      "Paris is in France.",
  ]
  assert len(pairs.negatives(0)) == 0
  assert (pairs.passage_context == "").all()
  assert pairs.languages == ("de", "en", "fr")


@pytest.mark.parametrize(
    "bad_line, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (
            json.dumps({"query": "q", "positive": "p", "query_lang": "en"}),
            "'positive_lang' must be a non-empty string",
        ),
        (
            json.dumps({"query": " ", "positive": "p", "query_lang": "en", "positive_lang": "en"}),
            "'query'",
        ),
        (
            json.dumps({"query": "q", "postive": "p", "query_lang": "en", "positive_lang": "en"}),
            r"unknown field\(s\) \['postive'\]",
        ),
        (
            json.dumps(
                {
                    "query": "q",
                    "positive": "p",
                    "query_lang": "en",
                    "positive_lang": "en",
                    "negatives": "n",
                }
            ),
            "'negatives'",
        ),
        (
            json.dumps(
                {
                    "query": "q",
                    "positive": "p",
                    "query_lang": "en",
                    "positive_lang": "en",
                    "id": [1],
                }
            ),
            "'id'",
        ),
    ],
)
def test_read_pairs_errors_name_the_line(tmp_path, bad_line, match):
  good = json.dumps({"query": "q", "positive": "p", "query_lang": "en", "positive_lang": "de"})
  path = _write_jsonl(tmp_path, [good, "", bad_line])
  with pytest.raises(ValueError, match=f"{path}:3: .*{match}"):
    jxr.data.read_pairs(path)


def test_read_pairs_missing_or_empty(tmp_path):
  with pytest.raises(FileNotFoundError, match="no pairs file"):
    jxr.data.read_pairs(tmp_path / "nope.jsonl")
  with pytest.raises(ValueError, match="no pairs"):
    jxr.data.read_pairs(_write_jsonl(tmp_path, ["", "  "]))
