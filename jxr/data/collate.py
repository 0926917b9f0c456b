"""Tokenise a `Batch` into fixed-shape int32 arrays for the encoder.

A passage with context is the text pair (sentence, paragraph), cut by the one
rule that `Encoder.encode` follows too (`jxr.tokens`): specials stay, the
paragraph loses tokens first, then the sentence. Rows are padded to the max
lengths, so every step has the same shapes (one compile).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jxr import tokens
from jxr.data.sampler import Batch


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedBatch:
  """Token ids and masks of a batch's queries and positive passages."""

  query_input_ids: np.ndarray  # int32 [b, max_query_length]
  query_attention_mask: np.ndarray  # int32 [b, max_query_length]: 1 on tokens, 0 on padding
  passage_input_ids: np.ndarray  # int32 [b, max_passage_length]
  passage_attention_mask: np.ndarray  # int32 [b, max_passage_length]


def collate(
    batch: Batch,
    tokenizer,
    max_query_length: int,
    max_passage_length: int,
    candidate_context: bool = True,
    *,
    query_prefix: str = "",
    passage_prefix: str = "",
    pad_id: int | None = None,
) -> TokenizedBatch:
  """Tokenises `batch`'s queries and positives (with their paragraph when `candidate_context`).

  `query_prefix`/`passage_prefix` are prepended to the texts (e5 models expect
  `"query: "` and `"passage: "`). `pad_id` defaults to the tokenizer's `<pad>`.
  """
  for name, value in (
      ("max_query_length", max_query_length),
      ("max_passage_length", max_passage_length),
  ):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
      raise ValueError(f"{name}: expected an int >= 2, got {value!r}")
  pad_id = _pad_id(tokenizer) if pad_id is None else pad_id
  queries = [query_prefix + text for text in batch.query_text]
  sentences = [passage_prefix + text for text in batch.positive_text]
  contexts = list(batch.positive_context) if candidate_context else [""] * len(sentences)
  query_ids, query_mask = pad(
      encode(tokenizer, queries, max_query_length), max_query_length, pad_id
  )
  passages = encode(tokenizer, sentences, max_passage_length, contexts)
  passage_ids, passage_mask = pad(passages, max_passage_length, pad_id)
  return TokenizedBatch(query_ids, query_mask, passage_ids, passage_mask)


def encode(
    tokenizer, texts: Sequence[str], max_length: int, pairs: Sequence[str] | None = None
) -> list[list[int]]:
  """Token ids of `texts` (or of the pairs `(texts[i], pairs[i])` where `pairs[i]` is
  non-empty), each cut to `max_length` by `jxr.tokens`' rule."""
  return [encoding.ids for encoding in tokens.encode(tokenizer, texts, max_length, pairs)]


def pad(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """`(ids, mask)` int32 `[len(rows), length]`, rows left-aligned, padded with `pad_id`."""
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for r, row in enumerate(rows):
    ids[r, : len(row)] = row
    mask[r, : len(row)] = 1
  return ids, mask


def _pad_id(tokenizer) -> int:
  padding = getattr(tokenizer, "padding", None)
  if isinstance(padding, dict) and "pad_id" in padding:
    return int(padding["pad_id"])
  token_to_id = getattr(tokenizer, "token_to_id", None)
  if callable(token_to_id):
    for token in ("<pad>", "[PAD]"):
      if (found := token_to_id(token)) is not None:
        return int(found)
  if (found := getattr(tokenizer, "pad_token_id", None)) is not None:
    return int(found)
  raise ValueError("pad_id: the tokenizer has no <pad> token; pass pad_id=")
