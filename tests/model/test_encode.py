"""`Encoder.encode`: order, normalisation, batching plans, several devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jxr.model

TEXTS = [
    "short",
    "a somewhat longer sentence with more words in it",
    "mid length text",
    "x " * 70,
    "Grüße",
    "北京是中国的首都。",
    "another one",
    "q",
]


def test_encode_keeps_input_order_and_normalises(tiny):
  out = tiny.encode(TEXTS, kind="query", batch_size=3)
  assert out.shape == (len(TEXTS), 64) and out.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
  one_by_one = np.concatenate([tiny.encode([t], kind="query") for t in TEXTS])
  np.testing.assert_allclose(out, one_by_one, atol=1e-5)


def test_embed_is_jittable_and_matches_encode(tiny):
  import jax

  batch = tiny.tokenize(TEXTS[:3], kind="passage")
  vec = jax.jit(tiny.embed)(tiny.params, batch)
  np.testing.assert_allclose(np.asarray(vec), tiny.encode(TEXTS[:3], kind="passage"), atol=1e-5)


def test_cls_pooling_differs_from_mean():
  mean = jxr.model.load_encoder("tiny")
  cls = jxr.model.load_encoder("tiny", pooling="cls")
  batch = mean.tokenize(TEXTS[:2])
  hidden = np.asarray(mean.apply(mean.params, batch["input_ids"], batch["attention_mask"]))
  first = hidden[:, 0] / np.linalg.norm(hidden[:, 0], axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(cls.embed(mean.params, batch)), first, atol=1e-5)
  assert np.abs(first - np.asarray(mean.embed(mean.params, batch))).max() > 1e-3


def test_plan_batches_covers_every_text_once():
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 300, 1000)
  plan = jxr.model.plan_batches(lengths, 64, 512, num_devices=2)
  rows = np.concatenate([r for r, _, _ in plan])
  assert sorted(rows.tolist()) == list(range(1000))
  for r, length, padded in plan:
    assert lengths[r].max() <= length <= 512 and len(r) <= padded <= 64 and padded % 2 == 0
  shapes = {(length, padded) for _, length, padded in plan}
  assert len(shapes) <= 18  # bucketing bounds the number of compiled programs
  padding = sum(padded * length for _, length, padded in plan) / lengths.sum() - 1
  assert padding < 0.2


@pytest.mark.multidevice
def test_encode_shards_over_several_devices(tiny):
  expected = tiny.encode(TEXTS, kind="passage", batch_size=4)
  code = f"""
import json, sys, numpy as np, jax
assert jax.local_device_count() == 8, jax.local_device_count()
import jxr.model
enc = jxr.model.load_encoder("tiny")
out = enc.encode({TEXTS!r}, kind="passage", batch_size=4)
json.dump(out.tolist(), sys.stdout)
"""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stderr[-3000:]
  np.testing.assert_allclose(np.array(json.loads(result.stdout)), expected, atol=1e-5)


def test_replace_reuses_the_compiled_embed(tiny):
  """New parameters for the same model (what the trainer does) trace and compile nothing new."""
  import dataclasses

  import jax

  texts = ["one text", "another, longer text of a few more tokens"]
  first = tiny.encode(texts)
  compiled = tiny._embed_jit._cache_size()
  doubled = jax.tree.map(lambda x: x * 1.0, tiny.params)
  other = dataclasses.replace(tiny, params=doubled)
  assert other._embed_jit is tiny._embed_jit
  np.testing.assert_allclose(other.encode(texts), first, atol=1e-6)
  assert tiny._embed_jit._cache_size() == compiled  # same shapes: no new compilation


def test_repeated_texts_are_tokenised_once(tiny, monkeypatch):
  """The zero-shot and the fine-tuned evaluation (and every sweep cell) share one tokenisation."""
  from jxr import tokens

  calls = []
  encode = tokens.encode
  monkeypatch.setattr(tokens, "encode", lambda *args: calls.append(args) or encode(*args))
  texts = ["a text that only this test encodes", "and a second one"]
  first = tiny.encode(texts, kind="passage")
  np.testing.assert_array_equal(tiny.encode(texts, kind="passage"), first)
  assert tiny.token_ids(texts, kind="passage") == [e.ids for e in encode(*calls[0])]
  assert len(calls) == 1
  tiny.encode(texts, kind="passage", max_length=8)  # another length: other token ids
  assert len(calls) == 2
