"""Saved encoders use HF names and layouts: transformers and jxr both load them."""

import json
import logging
import os

import numpy as np
import pytest

import jxr.model

TEXTS = ["Hello world", "Grüße aus Zürich, wie geht's?", "北京是中国的首都。", "x"]


def test_save_then_load_encoder_round_trip(tmp_path, caplog):
  enc = jxr.model.load_encoder("tiny", attention=jxr.model.AttentionConfig.local(3), seed=1)
  enc.save(tmp_path)
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(tmp_path))
  config = json.loads((tmp_path / "config.json").read_text())
  # Sparse: transformers needs the shipped modeling code (tests/model/test_export.py).
  assert config["model_type"] == "jxr-bert" and config["architectures"] == ["JxrBertModel"]
  assert config["jxr"]["attention"] == {"kind": "local", "window": 3}
  back = jxr.model.load_encoder(tmp_path)  # no attention given: the saved one
  assert back.config == enc.config.replace(extra_json=back.config.extra_json)
  np.testing.assert_array_equal(back.encode(TEXTS), enc.encode(TEXTS))
  with caplog.at_level(logging.INFO, logger="jxr.model.api"):
    dense = jxr.model.load_encoder(tmp_path, attention=jxr.model.AttentionConfig.dense())
  assert dense.config.attention.kind == "dense"  # an explicit spec replaces the saved one
  assert "running dense attention instead of the saved local-w3" in caplog.text


def test_transformers_loads_saved_model(tiny, tmp_path):
  torch = pytest.importorskip("torch") if not os.environ.get("CI") else __import__("torch")
  transformers = pytest.importorskip("transformers")
  tiny.save(tmp_path)
  model = transformers.AutoModel.from_pretrained(tmp_path)
  model.eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  batch = tiny.tokenize(TEXTS, kind="passage")
  ids = [tiny.token_ids([t], kind="passage")[0] for t in TEXTS]
  prefix = tiny.prefix("passage")
  assert [hf_tok(prefix + t)["input_ids"] for t in TEXTS] == ids
  with torch.no_grad():
    expected = model(
        input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
        attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long),
    )
  ours = np.asarray(tiny.apply(tiny.params, batch["input_ids"], batch["attention_mask"]))
  real = batch["attention_mask"].astype(bool)
  assert np.abs(ours[real] - expected.last_hidden_state.numpy()[real]).max() <= 1e-4
