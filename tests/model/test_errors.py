"""Bad input fails early with an error that names what is wrong."""

import json

import numpy as np
import pytest

import jxr.model
from jxr.model import AttentionConfig, weights


def test_unknown_model_name():
  with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
    jxr.model.load_encoder("no-such-org/no-such-model")


def test_missing_directory():
  with pytest.raises(FileNotFoundError, match="not an existing directory"):
    jxr.model.load_encoder("./does/not/exist")


def test_unsupported_model_type(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
  weights.write_safetensors(tmp_path / "model.safetensors", {"x": np.zeros(2, np.float32)})
  with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
    jxr.model.load_encoder(tmp_path)


def test_safetensors_missing_a_tensor_is_named(tiny, tmp_path):
  tiny.save(tmp_path)
  from safetensors.numpy import load_file

  tensors = load_file(str(tmp_path / "model.safetensors"))
  del tensors["encoder.layer.1.intermediate.dense.weight"]
  weights.write_safetensors(tmp_path / "model.safetensors", tensors)
  with pytest.raises(ValueError, match=r"encoder\.layer\.1\.intermediate\.dense\.weight"):
    jxr.model.load_encoder(tmp_path)


def test_wrong_tensor_shape_is_named(tiny, tmp_path):
  tiny.save(tmp_path)
  from safetensors.numpy import load_file

  tensors = load_file(str(tmp_path / "model.safetensors"))
  tensors["embeddings.LayerNorm.bias"] = np.zeros(7, np.float32)
  weights.write_safetensors(tmp_path / "model.safetensors", tensors)
  with pytest.raises(ValueError, match=r"embeddings.*norm.*bias.*\(7,\)"):
    jxr.model.load_encoder(tmp_path)


@pytest.mark.parametrize(
    "texts, kwargs, match",
    [
        ([], {}, "texts: expected at least one text"),
        ("a string", {}, "texts: expected a list"),
        (["ok", 3], {}, r"texts\[1\]"),
        (["ok"], {"kind": "document"}, "kind"),
        (["ok"], {"batch_size": 0}, "batch_size"),
        (["ok"], {"max_length": 100000}, "max_length"),
        (["ok"], {"contexts": ["a", "b"]}, "contexts"),
    ],
)
def test_bad_encode_arguments(tiny, texts, kwargs, match):
  with pytest.raises(ValueError, match=match):
    tiny.encode(texts, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(attention="local"), "attention: expected a jxr.model.AttentionConfig"),
        (dict(dtype="float16"), "dtype"),
        (dict(pooling="max"), "pooling"),
    ],
)
def test_bad_load_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jxr.model.load_encoder("tiny", **kwargs)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: AttentionConfig("sparse"), "attention.kind"),
        (lambda: AttentionConfig("local"), "attention.window"),
        (lambda: AttentionConfig.local(-1), "attention.window"),
        (lambda: AttentionConfig.block_sparse(16, random=1.5), "attention.random"),
        (lambda: AttentionConfig.block_sparse(0), "attention.block_size"),
        (lambda: AttentionConfig.block_sparse(16, band=-1), "attention.band"),
        (lambda: AttentionConfig("dense", window=4), "window do not apply"),
        (
            lambda: AttentionConfig.from_json({"kind": "local", "window": 3, "density": 0.5}),
            "unknown keys",
        ),
    ],
)
def test_bad_attention_spec_is_named(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_attention_spec_round_trips_and_hashes():
  specs = [
      AttentionConfig.dense(),
      AttentionConfig.local(7),
      AttentionConfig.block_sparse(8, band=1, global_blocks=0, random=0.25, seed=2),
  ]
  for spec in specs:
    assert AttentionConfig.from_json(json.loads(json.dumps(spec.to_json()))) == spec
  assert len({*specs, AttentionConfig.local(7)}) == 3
  assert [s.label for s in specs] == ["dense", "local-w7", "block_sparse-b8-n1-g0-r0.250-s2"]
