"""Exports outside jxr: transformers (remote code for sparse attention) and sentence-transformers."""

import json

import numpy as np
import pytest
import sentence_transformers
import torch
import transformers

import jxr.data
import jxr.model
from jxr.model import AttentionConfig

SPARSE = {
    "local": AttentionConfig.local(3),
    "block_sparse": AttentionConfig.block_sparse(4, band=0, global_blocks=1, random=0.3, seed=5),
}
PREFIXES = ("query: ", "passage: ")


@pytest.fixture(scope="module")
def texts(lareqa_dir):
  """LAReQA questions and sentences of several lengths, the longest cut by truncation."""
  task = jxr.data.load_lareqa("xquad-r", data_dir=lareqa_dir, languages=("en", "th"))
  sentences = sorted(task.cand_text.tolist(), key=len)
  queries = task.query_text.tolist()
  # sentence-transformers strips surrounding whitespace, jxr does not: compare stripped texts.
  pick = lambda rows: [str(r).strip() for r in rows]  # noqa: E731
  return {
      "query": pick(queries[:3] + queries[-3:]),
      "passage": pick(sentences[:2] + sentences[len(sentences) // 2 :][:2] + sentences[-2:]),
  }


def _export(tmp_path, attention, name="model"):
  encoder = jxr.model.load_encoder("tiny", attention=attention, seed=1, prefixes=PREFIXES)
  return encoder, encoder.save(tmp_path / name)


def _hidden_states(model, encoder, texts):
  batch = encoder.tokenize(texts, kind="passage")  # padded to the longest: padding included
  with torch.no_grad():
    out = model(
        input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
        attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long),
    )
  ours = np.asarray(encoder.apply(encoder.params, batch["input_ids"], batch["attention_mask"]))
  real = batch["attention_mask"].astype(bool)
  assert (~real).any()  # some rows are padded
  return ours[real], out.last_hidden_state.numpy()[real]


@pytest.mark.parametrize("kind", sorted(SPARSE))
def test_transformers_runs_a_sparse_export_with_its_mask(kind, texts, tmp_path):
  encoder, directory = _export(tmp_path, SPARSE[kind])
  config = json.loads((directory / "config.json").read_text())
  assert config["model_type"] == "jxr-bert" and config["architectures"] == ["JxrBertModel"]
  assert (directory / "modeling_jxr.py").is_file()
  model = transformers.AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
  assert type(model).__name__ == "JxrBertModel" and model.pooler is None  # no pooler weights
  ours, theirs = _hidden_states(model, encoder, texts["passage"])
  assert np.abs(ours - theirs).max() <= 1e-4
  dense = jxr.model.load_encoder(directory, attention=AttentionConfig.dense())
  dense_ours, _ = _hidden_states(model, dense, texts["passage"])
  assert np.abs(dense_ours - theirs).max() > 1e-2  # the mask matters at these lengths
  # jxr reads its own export back with the saved attention.
  back = jxr.model.load_encoder(directory)
  assert back.config.attention == SPARSE[kind] and back.config.model_type == "bert"
  np.testing.assert_array_equal(
      back.encode(texts["query"], kind="query"), encoder.encode(texts["query"], kind="query")
  )


def test_a_sparse_export_without_remote_code_is_refused_not_run_dense(tmp_path):
  _, directory = _export(tmp_path, SPARSE["block_sparse"])
  with pytest.raises(ValueError, match="contains custom code which must be executed"):
    transformers.AutoModel.from_pretrained(directory, trust_remote_code=False)


def test_a_dense_export_stays_plain_bert(texts, tmp_path):
  encoder, directory = _export(tmp_path, AttentionConfig.dense())
  config = json.loads((directory / "config.json").read_text())
  assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
  assert "auto_map" not in config and not (directory / "modeling_jxr.py").exists()
  assert config["attention_probs_dropout_prob"] == 0.0  # jxr trains without it
  assert config["jxr"]["pooler"] is False  # tiny has no pooler weights, and none are invented
  model, loading = transformers.AutoModel.from_pretrained(
      directory, add_pooling_layer=False, output_loading_info=True
  )
  assert type(model).__name__ == "BertModel" and model.pooler is None
  assert not any(loading.values()), loading  # nothing missing, unexpected or mismatched
  ours, theirs = _hidden_states(model.eval(), encoder, texts["passage"])
  assert np.abs(ours - theirs).max() <= 1e-4
  # Without the argument transformers builds BertModel's pooler: the only thing it misses.
  _, loading = transformers.AutoModel.from_pretrained(directory, output_loading_info=True)
  assert sorted(loading["missing_keys"]) == ["pooler.dense.bias", "pooler.dense.weight"]


@pytest.mark.parametrize("kind", ["dense", "block_sparse"])
def test_sentence_transformers_gives_encode_embeddings(kind, texts, tmp_path):
  attention = SPARSE.get(kind, AttentionConfig.dense())
  encoder, directory = _export(tmp_path, attention)
  model = sentence_transformers.SentenceTransformer(
      str(directory), device="cpu", trust_remote_code=kind != "dense"
  )
  assert model.prompts["query"] == "query: " and model.prompts["passage"] == "passage: "
  assert model[0].auto_model.pooler is None  # sentence_bert_config.json's add_pooling_layer
  for prompt in ("query", "passage"):
    theirs = model.encode(texts[prompt], prompt_name=prompt, batch_size=4)
    ours = encoder.encode(texts[prompt], kind=prompt)
    np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), 1.0, atol=1e-5)  # normalised
    assert (theirs * ours).sum(axis=1).min() >= 0.99999, prompt
