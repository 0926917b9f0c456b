"""Bad input fails early with an error that names what is wrong."""

import json

import numpy as np
import pytest

import jxr.model
from jxr.model import weights


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


@pytest.mark.parametrize("texts, kwargs, match", [
    ([], {}, "texts: expected at least one text"),
    ("a string", {}, "texts: expected a list"),
    (["ok", 3], {}, r"texts\[1\]"),
    (["ok"], {"kind": "document"}, "kind"),
    (["ok"], {"batch_size": 0}, "batch_size"),
    (["ok"], {"max_length": 100000}, "max_length"),
    (["ok"], {"contexts": ["a", "b"]}, "contexts"),
])
def test_bad_encode_arguments(tiny, texts, kwargs, match):
  with pytest.raises(ValueError, match=match):
    tiny.encode(texts, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(attn="sparse"), "attn"),
    (dict(attn="local"), "window"),
    (dict(attn="local", window=-1), "window"),
    (dict(attn="block_sparse", density=1.5), "density"),
    (dict(attn="block_sparse", layout={"bogus": 1}), "layout"),
    (dict(dtype="float16"), "dtype"),
    (dict(pooling="max"), "pooling"),
])
def test_bad_load_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jxr.model.load_encoder("tiny", **kwargs)
