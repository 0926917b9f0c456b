"""collate: fixed-shape int32 arrays; only the paragraph is cut when a passage is too long."""

import numpy as np
import pytest

import jxr.data

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tokenizer(reference_dir):
  return tokenizers.Tokenizer.from_file(
      str(reference_dir / "multilingual-e5-small" / "tokenizer.json")
  )


@pytest.fixture(scope="module")
def batch(xquad_train):
  sampler = jxr.data.HybridSampler(jxr.data.training_pairs(xquad_train), batch_size=8, seed=0)
  return next(sampler)


def test_shapes_and_masks(batch, tokenizer):
  out = jxr.data.collate(batch, tokenizer, max_query_length=24, max_passage_length=96)
  assert out.query_input_ids.shape == out.query_attention_mask.shape == (8, 24)
  assert out.passage_input_ids.shape == out.passage_attention_mask.shape == (8, 96)
  for array in (
      out.query_input_ids,
      out.query_attention_mask,
      out.passage_input_ids,
      out.passage_attention_mask,
  ):
    assert array.dtype == np.int32
  pad = tokenizer.token_to_id("<pad>")
  queries = (out.query_input_ids, out.query_attention_mask)
  for ids, mask in (queries, (out.passage_input_ids, out.passage_attention_mask)):
    lengths = mask.sum(1)
    assert (mask == (np.arange(mask.shape[1]) < lengths[:, None])).all()  # ones, then zeros
    assert (ids[mask == 0] == pad).all()
    assert (ids[np.arange(len(ids)), lengths - 1] == tokenizer.token_to_id("</s>")).all()


def test_queries_match_the_tokenizer(batch, tokenizer):
  out = jxr.data.collate(batch, tokenizer, 64, 64, query_prefix="query: ")
  for row, text in enumerate(batch.query_text):
    expected = tokenizer.encode("query: " + text).ids
    assert out.query_input_ids[row, : len(expected)].tolist() == expected
    assert out.query_attention_mask[row].sum() == len(expected)


def test_long_passages_keep_the_sentence(batch, tokenizer):
  """The paragraph is cut from its end; the sentence and the special tokens stay."""
  length = 80
  out = jxr.data.collate(batch, tokenizer, 16, length)
  cut = 0
  for row in range(len(batch)):
    sentence = tokenizer.encode(batch.positive_text[row]).ids  # <s> sentence </s>
    full = tokenizer.encode(batch.positive_text[row], batch.positive_context[row]).ids
    got = out.passage_input_ids[row][out.passage_attention_mask[row] == 1].tolist()
    if len(full) <= length:
      assert got == full
    elif len(sentence) + 2 <= length:  # room for the sentence and the pair's separators
      assert len(got) == length
      assert got[: len(sentence)] == sentence and got[-1] == tokenizer.token_to_id("</s>")
      context = got[len(sentence) + 1 : -1]
      assert full[len(sentence) + 1 : len(sentence) + 1 + len(context)] == context
      cut += 1
  assert cut > 0  # the case under test occurred


def test_without_context(batch, tokenizer):
  out = jxr.data.collate(
      batch, tokenizer, 16, 64, candidate_context=False, passage_prefix="passage: "
  )
  for row, text in enumerate(batch.positive_text):
    expected = tokenizer.encode("passage: " + text).ids
    if len(expected) <= 64:
      assert out.passage_input_ids[row, : len(expected)].tolist() == expected


def test_a_tokenizer_without_pad_needs_pad_id(batch):
  words = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
  with pytest.raises(ValueError, match="pad_id"):
    jxr.data.collate(batch, words, 6, 10)
  out = jxr.data.collate(batch, words, 6, 10, pad_id=7)
  assert (out.query_input_ids[out.query_attention_mask == 0] == 7).all()


def test_bad_arguments(batch, tokenizer):
  with pytest.raises(ValueError, match="max_query_length"):
    jxr.data.collate(batch, tokenizer, 0, 10)
  with pytest.raises(ValueError, match="tokenizer: expected a tokenizers.Tokenizer"):
    jxr.data.collate(batch, object(), 8, 10, pad_id=0)
