"""The TFDS builder writes array_record that reads back without TensorFlow, matching load_lareqa."""

import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

import jxr.data  # noqa: E402
import jxr.data.tfds_lareqa  # noqa: E402,F401  (registers "lareqa")


@pytest.fixture(scope="module")
def source(lareqa_dir, tmp_path_factory):
  config = tfds.download.DownloadConfig(manual_dir=str(lareqa_dir))
  return tfds.data_source(
      "lareqa/xquad_r",
      data_dir=str(tmp_path_factory.mktemp("tfds")),
      download_and_prepare_kwargs={"download_config": config},
  )


def test_splits_match_the_loader(source, xquad):
  assert sorted(source) == sorted(xquad.languages)
  for lang in ("de", "th"):
    split = source[lang]
    examples = [split[i] for i in range(len(split))]
    sentences = [s.decode() for ex in examples for s in ex["sentences"]]
    assert sentences == xquad.cand_text[xquad.cand_lang == lang].tolist()
    questions = [q.decode() for ex in examples for q in ex["questions"]["id"]]
    assert questions == xquad.query_id[xquad.query_lang == lang].tolist()  # file order


def test_examples_keep_sentence_breaks(source):
  split = source["en"]
  for i in range(0, len(split), 17):
    ex = split[i]
    context = ex["context"].decode()
    breaks = ex["sentence_breaks"]
    assert breaks.shape == (len(ex["sentences"]), 2)
    starts, answer_sentences = ex["questions"]["answer_start"], ex["questions"]["answer_sentence"]
    for start, sentence in zip(starts, answer_sentences):
      assert breaks[sentence][0] <= start < breaks[sentence][1]
    assert context.startswith(ex["sentences"][0].decode()[:10])


def test_without_manual_dir_uses_the_jxr_data_dir(lareqa_dir, tmp_path, monkeypatch, mlqa):
  """An empty manual dir falls back to $JXR_DATA_DIR, as load_lareqa does."""
  monkeypatch.setenv("JXR_DATA_DIR", str(lareqa_dir))
  monkeypatch.setenv("JXR_OFFLINE", "1")
  empty = tmp_path / "manual"
  empty.mkdir()
  builder = tfds.builder("lareqa/mlqa_r", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(empty)))
  source = builder.as_data_source()
  assert sorted(source) == sorted(mlqa.languages)
  assert sum(len(ex["sentences"]) for ex in source["es"]) == (mlqa.cand_lang == "es").sum()
  assert builder.info.file_format.value == "array_record"
