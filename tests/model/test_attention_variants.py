"""Local and block-sparse attention in the encoder, against dense and the reference kernel."""

import numpy as np
import pytest

import jxr.model
import pallas_kernels
from jxr.model import AttentionConfig


def _batch(length=64, real=(64, 50), seed=0):
  rng = np.random.default_rng(seed)
  ids = np.ones((len(real), length), np.int32)  # <pad> = 1
  mask = np.zeros((len(real), length), np.int32)
  for row, n in enumerate(real):
    ids[row, :n] = rng.integers(5, 16_000, n)  # inside tiny's vocabulary
    ids[row, 0], ids[row, n - 1] = 0, 2
    mask[row, :n] = 1
  return ids, mask


def _hidden(enc, params, ids, mask):
  hidden = np.asarray(enc.apply(params, ids, mask))
  return hidden[mask.astype(bool)]


@pytest.fixture(scope="module")
def dense_hidden(tiny):
  ids, mask = _batch()
  return _hidden(tiny, tiny.params, ids, mask)


@pytest.mark.parametrize(
    "attention",
    [
        AttentionConfig.local(64),
        AttentionConfig.local(63),
        AttentionConfig.block_sparse(16, random=1.0),
    ],
)
def test_variant_covering_everything_equals_dense(tiny, dense_hidden, attention):
  enc = jxr.model.load_encoder("tiny", attention=attention)
  ids, mask = _batch()
  np.testing.assert_allclose(_hidden(enc, tiny.params, ids, mask), dense_hidden, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "attention, mask_object",
    [
        (AttentionConfig.local(4), pallas_kernels.LocalMask(4, 4)),
        (
            AttentionConfig.block_sparse(4, band=1, global_blocks=0, random=0.1, seed=3),
            pallas_kernels.BlockSparseMask.pattern(4, local=1, global_=0, random=0.1, seed=3),
        ),
    ],
)
def test_sparse_variant_differs_from_dense_and_matches_reference(
    tiny, dense_hidden, attention, mask_object
):
  enc = jxr.model.load_encoder("tiny", attention=attention)
  reference = jxr.model.load_encoder("tiny", attention=attention, implementation="reference")
  assert jxr.model.attention_mask_for(enc.config.attention) == mask_object
  assert mask_object.density(64, 64) < 0.3
  ids, mask = _batch()
  ours = _hidden(enc, tiny.params, ids, mask)
  assert np.abs(ours - dense_hidden).max() > 1e-2
  np.testing.assert_allclose(ours, _hidden(reference, tiny.params, ids, mask), atol=1e-5, rtol=0)


def test_reference_implementation_uses_reference_attention(tiny, monkeypatch):
  """`implementation="reference"` really routes through pallas_kernels.reference_attention."""
  calls = []
  original = pallas_kernels.reference_attention

  def spy(*args, **kwargs):
    calls.append(args[3] if len(args) > 3 else kwargs.get("mask"))
    return original(*args, **kwargs)

  monkeypatch.setattr(pallas_kernels, "reference_attention", spy)
  enc = jxr.model.load_encoder(
      "tiny", attention=AttentionConfig.local(4), implementation="reference"
  )
  ids, mask = _batch(length=16, real=(16, 9))
  enc.apply(enc.params, ids, mask)
  assert calls and all(m == pallas_kernels.LocalMask(4, 4) for m in calls)


def test_bfloat16_compute_close_to_float32(tiny, dense_hidden):
  enc = jxr.model.load_encoder("tiny", dtype="bfloat16")
  ids, mask = _batch()
  hidden = np.asarray(enc.apply(tiny.params, ids, mask))
  assert str(hidden.dtype) == "bfloat16"
  assert np.abs(hidden[mask.astype(bool)].astype(np.float32) - dense_hidden).max() < 0.1
  vec = np.asarray(enc.embed(tiny.params, {"input_ids": ids, "attention_mask": mask}))
  assert vec.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)


def test_dropout_needs_key_and_changes_output(tiny):
  import jax

  ids, mask = _batch(length=16, real=(16, 9))
  with pytest.raises(ValueError, match="rngs"):
    tiny.apply(tiny.params, ids, mask, deterministic=False)
  a = np.asarray(tiny.apply(tiny.params, ids, mask, deterministic=False, rngs=jax.random.key(0)))
  b = np.asarray(tiny.apply(tiny.params, ids, mask))
  assert np.abs(a - b).max() > 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize(
    "attention",
    [
        AttentionConfig.dense(),
        AttentionConfig.local(4),
        AttentionConfig.block_sparse(16, random=0.3),
    ],
)
def test_default_gpu_kernel_matches_reference(tiny, attention):
  """On a GPU the default implementation is the Pallas kernel; it must match the oracle."""
  enc = jxr.model.load_encoder("tiny", attention=attention)
  reference = jxr.model.load_encoder("tiny", attention=attention, implementation="reference")
  ids, mask = _batch(length=128, real=(128, 77))
  np.testing.assert_allclose(
      _hidden(enc, tiny.params, ids, mask),
      _hidden(reference, tiny.params, ids, mask),
      atol=1e-4,
      rtol=0,
  )
