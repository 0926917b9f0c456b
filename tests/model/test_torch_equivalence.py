"""Our encoder against transformers' PyTorch BERT / XLM-R on their own saved weights."""

import os

import numpy as np
import pytest

import jxr.model

torch = pytest.importorskip("torch") if not os.environ.get("CI") else __import__("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    type_vocab_size=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def _save_random(kind, directory, **overrides):
  torch.manual_seed(0)
  if kind == "bert":
    config = transformers.BertConfig(pad_token_id=0, **SMALL, **overrides)
    model = transformers.BertModel(config, add_pooling_layer=True)
  else:
    config = transformers.XLMRobertaConfig(pad_token_id=1, **SMALL, **overrides)
    model = transformers.XLMRobertaModel(config, add_pooling_layer=True)
  with torch.no_grad():  # LayerNorms start at (1, 0): make them matter
    for name, param in model.named_parameters():
      if "LayerNorm" in name:
        param.add_(0.1 * torch.randn_like(param))
  model.eval()
  model.save_pretrained(directory, safe_serialization=True)
  return model


def _padded_batch(pad_id, lengths, length, vocab, seed=0):
  rng = np.random.default_rng(seed)
  ids = np.full((len(lengths), length), pad_id, np.int64)
  mask = np.zeros((len(lengths), length), np.int64)
  for row, n in enumerate(lengths):
    ids[row, :n] = rng.integers(3, vocab, n)
    mask[row, :n] = 1
  return ids, mask


def _write_tokenizer(directory, kind):
  """A word-level tokenizer with the family's special tokens (we only load it)."""
  from tokenizers import Tokenizer, models, pre_tokenizers

  specials = (
      ["<s>", "<pad>", "</s>", "<unk>"]
      if kind == "xlm-roberta"
      else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  )
  vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(50)])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[3 if kind == "xlm-roberta" else 1]))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(directory / "tokenizer.json"))


@pytest.mark.parametrize("kind", ["bert", "xlm-roberta"])
def test_hidden_states_match_torch_on_padded_batch(kind, tmp_path):
  model = _save_random(kind, tmp_path)
  _write_tokenizer(tmp_path, kind)
  pad_id = model.config.pad_token_id
  ids, mask = _padded_batch(pad_id, [17, 5, 12, 1], 17, SMALL["vocab_size"])
  with torch.no_grad():
    expected = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  expected = expected.last_hidden_state.numpy()

  enc = jxr.model.load_encoder(tmp_path)
  assert enc.config.model_type == kind
  assert enc.config.position_offset == (pad_id + 1 if kind == "xlm-roberta" else 0)
  hidden = np.asarray(enc.apply(enc.params, ids.astype(np.int32), mask.astype(np.int32)))
  real = mask.astype(bool)
  error = np.abs(hidden[real] - expected[real]).max()
  assert error <= 1e-4, f"{kind}: max abs error {error:.2e} on non-padded positions"


def test_xlm_roberta_position_offset_matters(tmp_path):
  """Reading the same XLM-R weights as BERT (positions from 0) must break equivalence,
  so the test above really checks RoBERTa's padding_idx + 1 offset."""
  import json

  model = _save_random("xlm-roberta", tmp_path)
  _write_tokenizer(tmp_path, "xlm-roberta")
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(dict(config, model_type="bert")))
  enc = jxr.model.load_encoder(tmp_path)
  assert enc.config.position_offset == 0
  ids, mask = _padded_batch(1, [10, 6], 10, SMALL["vocab_size"])
  with torch.no_grad():
    expected = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  hidden = np.asarray(enc.apply(enc.params, ids.astype(np.int32), mask.astype(np.int32)))
  real = mask.astype(bool)
  assert np.abs(hidden[real] - expected.last_hidden_state.numpy()[real]).max() > 1e-2


def test_pytorch_bin_reads_without_torch(tmp_path):
  model = _save_random("bert", tmp_path)
  _write_tokenizer(tmp_path, "bert")
  (tmp_path / "model.safetensors").unlink()
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  from jxr.model import weights

  tensors = weights.read_torch_bin(tmp_path / "pytorch_model.bin")
  for name, value in model.state_dict().items():
    np.testing.assert_array_equal(tensors[name], value.numpy(), err_msg=name)
  ids, mask = _padded_batch(0, [9, 4], 9, SMALL["vocab_size"])
  with torch.no_grad():
    expected = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  enc = jxr.model.load_encoder(tmp_path)
  hidden = np.asarray(enc.apply(enc.params, ids.astype(np.int32), mask.astype(np.int32)))
  real = mask.astype(bool)
  assert np.abs(hidden[real] - expected.last_hidden_state.numpy()[real]).max() <= 1e-4
