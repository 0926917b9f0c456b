"""HybridSampler: batch properties over many batches, determinism, resumption, sharding."""

import collections
import json

import numpy as np
import pytest

import jxr.data


@pytest.fixture(scope="module")
def pairs(xquad_train):
  return jxr.data.training_pairs(xquad_train)


@pytest.fixture(scope="module")
def mlqa_pairs(mlqa):
  return jxr.data.training_pairs(mlqa)


def _no_false_negatives(batch, task):
  """No row's positive is relevant to another row's query; no shared question or positive."""
  assert len(set(batch.question_id.tolist())) == len(batch)
  assert len(set(batch.positive_ids.tolist())) == len(batch)
  positives = set(batch.positive_ids.tolist())
  for query, positive in zip(batch.query_ids, batch.positive_ids):
    relevant = set(task.relevant(query).tolist())
    assert positive in relevant
    assert relevant & positives == {positive}


def test_batches_over_many_steps(pairs, xquad_train):
  sampler = jxr.data.HybridSampler(pairs, batch_size=32, mono_prob=0.3, seed=0)
  batches = [next(sampler) for _ in range(1000)]
  kinds = np.array([b.kind == "mono" for b in batches])
  assert abs(kinds.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / len(batches))
  for batch in batches[:200]:
    assert len(batch) == 32
    if batch.kind == "mono":
      assert (batch.query_lang == batch.language).all() and (
          batch.positive_lang == batch.language
      ).all()
    else:
      assert batch.language is None and (batch.query_lang != batch.positive_lang).all()
    _no_false_negatives(batch, xquad_train)
    assert (batch.query_text == xquad_train.query_text[batch.query_ids]).all()
    assert (batch.positive_text == xquad_train.cand_text[batch.positive_ids]).all()
    assert (batch.positive_context == xquad_train.cand_context[batch.positive_ids]).all()
  languages = collections.Counter(b.language for b in batches if b.kind == "mono")
  assert set(languages) == set(xquad_train.languages)  # uniform: every language turns up


def test_cross_batches_cover_many_language_pairs(pairs):
  sampler = jxr.data.HybridSampler(pairs, batch_size=16, mono_prob=0.0, seed=5)
  seen = collections.Counter()
  for _ in range(100):
    batch = next(sampler)
    assert batch.kind == "cross"
    seen.update(zip(batch.query_lang.tolist(), batch.positive_lang.tolist()))
  assert len(seen) == 11 * 10


def test_mono_prob_one_and_zero(pairs):
  mono = jxr.data.HybridSampler(pairs, batch_size=8, mono_prob=1.0, seed=0)
  cross = jxr.data.HybridSampler(pairs, batch_size=8, mono_prob=0, seed=0)
  assert all(next(mono).kind == "mono" for _ in range(50))
  assert all(next(cross).kind == "cross" for _ in range(50))


def test_mono_languages_are_uniform(mlqa_pairs):
  uniform = jxr.data.HybridSampler(mlqa_pairs, batch_size=16, mono_prob=1.0, seed=0)
  counts = collections.Counter(next(uniform).language for _ in range(1500))
  # MLQA-R's languages hold very different numbers of mono pairs; each still gets 1/7.
  assert set(counts) == set(mlqa_pairs.languages) and len(counts) == 7
  for lang in counts:
    assert abs(counts[lang] / 1500 - 1 / 7) < 4 * np.sqrt((1 / 7) * (6 / 7) / 1500), lang


def test_language_subset(mlqa_pairs, mlqa):
  sampler = jxr.data.HybridSampler(mlqa_pairs, batch_size=16, seed=1, languages=("de", "es", "hi"))
  for _ in range(100):
    batch = next(sampler)
    assert set(batch.query_lang) | set(batch.positive_lang) <= {"de", "es", "hi"}
    _no_false_negatives(batch, mlqa)


def _same(a, b):
  return a.kind == b.kind and a.language == b.language and (a.pair_index == b.pair_index).all()


def test_deterministic_from_seed(pairs):
  a = jxr.data.HybridSampler(pairs, batch_size=16, seed=7)
  b = jxr.data.HybridSampler(pairs, batch_size=16, seed=7)
  c = jxr.data.HybridSampler(pairs, batch_size=16, seed=8)
  first = [next(a) for _ in range(30)]
  assert all(_same(x, next(b)) for x in first)
  assert not all(_same(x, next(c)) for x in first)
  assert not all(_same(x, y) for x, y in zip(first, first[1:]))


def test_state_round_trip_continues_exactly(pairs):
  sampler = jxr.data.HybridSampler(pairs, batch_size=16, seed=3)
  for _ in range(17):
    next(sampler)
  state = json.loads(json.dumps(sampler.state_dict()))  # survives a JSON checkpoint
  expected = [next(sampler) for _ in range(20)]
  resumed = jxr.data.HybridSampler(pairs, batch_size=16, seed=3)
  resumed.load_state_dict(state)
  assert resumed.step == 17
  assert all(_same(x, next(resumed)) for x in expected)


def test_state_from_another_setup_is_refused(pairs):
  state = jxr.data.HybridSampler(pairs, batch_size=16, seed=3).state_dict()
  for other in (
      dict(batch_size=8, seed=3),
      dict(batch_size=16, seed=4),
      dict(batch_size=16, seed=3, mono_prob=1.0),
  ):
    with pytest.raises(ValueError, match="state"):
      jxr.data.HybridSampler(pairs, **other).load_state_dict(state)
  with pytest.raises(ValueError, match="state"):
    jxr.data.HybridSampler(pairs, batch_size=16, seed=3).load_state_dict({"step": 3})


def test_processes_share_the_global_batch(pairs):
  whole = jxr.data.HybridSampler(pairs, batch_size=24, seed=2)
  shards = [
      jxr.data.HybridSampler(pairs, batch_size=24, seed=2, process_index=i, process_count=3)
      for i in range(3)
  ]
  for _ in range(20):
    full = next(whole)
    parts = [next(shard) for shard in shards]
    assert all(
        len(part) == 8 and part.kind == full.kind and part.global_batch_size == 24 for part in parts
    )
    assert (np.concatenate([part.pair_index for part in parts]) == full.pair_index).all()


def test_jsonl_pairs_with_shared_positives(tmp_path):
  """Pairs sharing a positive sentence or an id never meet in a batch."""
  rows = []
  for q in range(40):
    for lang in ("en", "de"):
      rows.append(
          {
              "query": f"{lang} question {q}",
              "positive": f"answer {q // 2}",
              "query_lang": lang,
              "positive_lang": "en",
              "id": f"q{q}",
          }
      )
  path = tmp_path / "pairs.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows), "utf-8")
  pairs = jxr.data.read_pairs(path)
  sampler = jxr.data.HybridSampler(pairs, batch_size=20, mono_prob=0.5, seed=0)
  for _ in range(50):
    batch = next(sampler)
    assert (
        len(set(batch.positive_ids.tolist())) == 20 and len(set(batch.question_id.tolist())) == 20
    )
  with pytest.raises(ValueError, match="too large"):
    jxr.data.HybridSampler(pairs, batch_size=21)  # only 20 distinct answers


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=10, process_count=4), "multiple of process_count"),
        (dict(batch_size=8, process_index=2, process_count=2), "process_index"),
        (dict(batch_size=8, mono_prob=1.5), "mono_prob"),
        (dict(batch_size=8, seed=-1), "seed"),
        (dict(batch_size=8, languages=("en", "xx")), "languages"),
        (dict(batch_size=8, languages="en"), "string"),
        (dict(batch_size=8, languages=("en",), mono_prob=0.5), "no cross-lingual pairs"),
        (dict(batch_size=2000), "too large"),
    ],
)
def test_bad_arguments(pairs, kwargs, match):
  with pytest.raises(ValueError, match=match):
    jxr.data.HybridSampler(pairs, **kwargs)


def test_single_language_mono_only(pairs):
  sampler = jxr.data.HybridSampler(pairs, batch_size=8, mono_prob=1.0, languages=("en",))
  assert all(next(sampler).language == "en" for _ in range(10))


def _tiny_task():
  """Four English questions: q1 and q2 ask the same text; q1's and q3's answers read the same."""
  strings = lambda *xs: np.array(xs, dtype=object)  # noqa: E731
  return jxr.data.RetrievalTask(
      name="tiny",
      languages=("en",),
      query_id=np.array(["q1", "q2", "q3", "q4"]),
      query_lang=np.array(["en"] * 4),
      query_text=strings("A?", "A?", "B?", "C?"),
      query_article=np.array(["t"] * 4),
      cand_lang=np.array(["en"] * 4),
      cand_text=strings("x", "x", "y", "z"),
      cand_context=strings("", "", "", ""),
      cand_article=np.array(["t"] * 4),
      rel_indptr=np.array([0, 1, 2, 3, 4]),
      rel_indices=np.array([0, 2, 1, 3]),
  )


def test_equal_texts_count_as_one():
  pairs = jxr.data.training_pairs(_tiny_task())
  sampler = jxr.data.HybridSampler(pairs, batch_size=3, mono_prob=1.0, seed=0)
  for _ in range(20):
    assert sorted(next(sampler).question_id.tolist()) == ["q2", "q3", "q4"]
  with pytest.raises(ValueError, match="too large"):
    jxr.data.HybridSampler(pairs, batch_size=4, mono_prob=1.0)
