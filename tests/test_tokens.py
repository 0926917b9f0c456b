"""One tokenisation rule: training's collation and `Encoder`'s encoding give the same ids."""

import importlib

import numpy as np
import pytest

import jxr.data
from jxr import tokens

collation = importlib.import_module("jxr.data.collate")  # the module (`jxr.data.collate` is
# also the name of its function)
PREFIXES = ("query: ", "passage: ")


@pytest.fixture(scope="module")
def encoder():
  import jxr.model

  return jxr.model.load_encoder("tiny", prefixes=PREFIXES)


@pytest.fixture(scope="module")
def candidates(lareqa_dir):
  """LAReQA candidates (sentence, paragraph) of both datasets: the longest pair first, then
  the 1,500 longest sentences (those that overflow a pair's budget) and 1,500 others drawn at
  random (all 33,548 take minutes to tokenise twice)."""
  texts, contexts = [], []
  for name in ("xquad-r", "mlqa-r"):
    task = jxr.data.load_lareqa(name, data_dir=lareqa_dir)
    texts += [str(t) for t in task.cand_text]
    contexts += [str(c) for c in task.cand_context]
  longest = max(range(len(texts)), key=lambda i: len(texts[i]) + len(contexts[i]))
  by_length = np.argsort([-len(t) for t in texts], kind="stable")
  others = np.random.default_rng(0).choice(by_length[1500:], 1500, replace=False)
  order = [longest, *(int(i) for i in by_length[:1500] if i != longest), *others.tolist()]
  return [texts[i] for i in order], [contexts[i] for i in order]


@pytest.mark.parametrize("max_length", [128, 48])
def test_collation_and_encoding_agree_on_lareqa_candidates(encoder, candidates, max_length):
  texts, contexts = candidates
  trained = collation.encode(
      encoder.tokenizer, [PREFIXES[1] + t for t in texts], max_length, contexts
  )
  encoded = encoder.token_ids(texts, kind="passage", contexts=contexts, max_length=max_length)
  assert trained == encoded
  assert all(len(ids) <= max_length for ids in encoded)
  # The case that used to differ occurred: a sentence that fills the pair's whole budget.
  sentences = encoder.tokenizer.encode_batch(
      [PREFIXES[1] + t for t in texts], add_special_tokens=False
  )
  budget = max_length - encoder.tokenizer.num_special_tokens_to_add(True)
  assert sum(len(s.ids) >= budget for s in sentences) > 0
  assert (
      len(tokens.encode(encoder.tokenizer, [PREFIXES[1] + texts[0]], 10**6, [contexts[0]])[0].ids)
      > max_length
  )  # the longest pair was cut


def test_a_collated_batch_is_what_the_encoder_encodes(encoder, lareqa_dir):
  task = jxr.data.load_lareqa("mlqa-r", data_dir=lareqa_dir)
  sampler = jxr.data.HybridSampler(jxr.data.training_pairs(task), batch_size=16, seed=0)
  batch = next(sampler)
  out = jxr.data.collate(
      batch,
      encoder.tokenizer,
      32,
      40,
      query_prefix=PREFIXES[0],
      passage_prefix=PREFIXES[1],
      pad_id=encoder.pad_id,
  )
  passages = encoder.tokenize(
      list(batch.positive_text),
      kind="passage",
      contexts=list(batch.positive_context),
      max_length=40,
  )
  queries = encoder.tokenize(list(batch.query_text), kind="query", max_length=32)
  for mine, theirs, mask in (
      (out.passage_input_ids, passages, out.passage_attention_mask),
      (out.query_input_ids, queries, out.query_attention_mask),
  ):
    width = theirs["input_ids"].shape[1]
    np.testing.assert_array_equal(mine[:, :width], theirs["input_ids"])
    np.testing.assert_array_equal(mask[:, :width], theirs["attention_mask"])
    assert not mask[:, width:].any()


def test_the_overflow_rule(encoder):
  tok = encoder.tokenizer
  sentence, paragraph = "one two three four five six", "alpha beta gamma delta epsilon"
  s = tok.encode(sentence, add_special_tokens=False).ids
  p = tok.encode(paragraph, add_special_tokens=False).ids
  bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
  pair = lambda n: tokens.encode(tok, [sentence], n, [paragraph])[0].ids
  assert pair(100) == [bos, *s, eos, eos, *p, eos]  # fits: untouched
  assert pair(len(s) + 6) == [bos, *s, eos, eos, *p[:2], eos]  # the paragraph's end goes first
  assert pair(len(s) + 4) == [bos, *s, eos, eos, eos]  # nothing of it left: still a pair
  assert pair(6) == [bos, *s[:2], eos, eos, eos]  # then the sentence's end
  assert tokens.encode(tok, [sentence], 4)[0].ids == [bos, *s[:2], eos]  # no context: a text
  assert tokens.encode(tok, [sentence], 4, [""])[0].ids == [bos, *s[:2], eos]  # empty: none


def test_bad_arguments(encoder):
  with pytest.raises(ValueError, match="max_length: expected an int > 4 .*pair"):
    tokens.encode(encoder.tokenizer, ["a"], 4, ["b"])
  with pytest.raises(ValueError, match="max_length: expected an int > 2"):
    tokens.encode(encoder.tokenizer, ["a"], 2)
  with pytest.raises(ValueError, match="tokenizer: expected a tokenizers.Tokenizer"):
    tokens.encode(object(), ["a"], 8)
  with pytest.raises(ValueError, match="contexts: expected a list as long as texts"):
    tokens.encode(encoder.tokenizer, ["a", "b"], 8, ["c"])
