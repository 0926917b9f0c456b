"""TensorFlow Datasets builder for LAReQA (`lareqa/xquad_r`, `lareqa/mlqa_r`).

Optional: needs the `tfds` extra (`pip install 'jxr[tfds]'`), not TensorFlow.
It writes `array_record`, so the data reads back through
`tfds.data_source` without TensorFlow:

```python
import jxr.data.tfds_lareqa  # registers "lareqa"
source = tfds.data_source("lareqa/xquad_r", split="de",
                          download_and_prepare_kwargs={"download_config":
                              tfds.download.DownloadConfig(manual_dir="/path/to/lareqa")})
```

One example per paragraph in file order, one split per language; sentence breaks are kept,
and each question carries the index of its answer sentence. The files are
those `jxr.data.load_lareqa` reads: from the manual dir when it holds them,
else from the jxr data directory (downloaded there, checksummed, if missing).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jxr.data import lareqa

_INSTRUCTIONS = """\
Point the manual dir at a folder holding the LAReQA release laid out as
`xquad-r/<lang>.json` and `mlqa-r/<lang>.json` (github.com/google-research-datasets/lareqa:
XQuAD-R at commit 9bc8c7f, MLQA-R at commit 354d67d). Without it, the files are
taken from $JXR_DATA_DIR or the jxr cache, downloaded there when missing.
"""


@dataclasses.dataclass
class LareqaConfig(tfds.core.BuilderConfig):
  dataset: str = "xquad-r"  # the folder / `load_lareqa` name


class Lareqa(tfds.core.GeneratorBasedBuilder):
  """LAReQA paragraphs with sentence breaks and their questions, one split per language."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "XQuAD-R at 9bc8c7f, MLQA-R at 354d67d."}
  BUILDER_CONFIGS = [
      LareqaConfig(
          name="xquad_r", dataset="xquad-r", description="XQuAD-R: 11 languages, 11-way parallel."
      ),
      LareqaConfig(
          name="mlqa_r", dataset="mlqa-r", description="MLQA-R: 7 languages, 2 to 4 per question."
      ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def __init__(self, *, file_format: str | None = None, **kwargs):
    # array_record reads back without TensorFlow (tfds.data_source).
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description="LAReQA: language-agnostic answer retrieval from a multilingual pool (arXiv 2004.05484).",
        features=tfds.features.FeaturesDict(
            {
                "title": text,
                "context": text,
                "sentences": tfds.features.Sequence(text),
                "sentence_breaks": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
                "questions": tfds.features.Sequence(
                    {
                        "id": text,
                        "question": text,
                        "answer_text": text,
                        "answer_start": np.int32,
                        "answer_sentence": np.int32,
                    }
                ),
            }
        ),
        homepage="https://github.com/google-research-datasets/lareqa",
        disable_shuffling=True,  # keep file order, as load_lareqa's rows
        citation="@article{roy2020lareqa, title={LAReQA: Language-agnostic answer retrieval from a "
        "multilingual pool}, author={Roy, Uma and others}, journal={arXiv preprint arXiv:2004.05484}, year={2020}}",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    name = self.builder_config.dataset
    languages = lareqa.LANGUAGES[name]
    root = _manual_root(dl_manager, name, languages) or lareqa.ensure_files(name, languages)
    return {lang: self._generate_examples(root / name / f"{lang}.json") for lang in languages}

  def _generate_examples(self, path: pathlib.Path):
    for index, paragraph in enumerate(lareqa.read_file(path)):
      yield index, {
          "title": paragraph.title,
          "context": paragraph.context,
          "sentences": list(paragraph.sentences),
          "sentence_breaks": np.asarray(paragraph.sentence_breaks, np.int32).reshape(-1, 2),
          "questions": {
              "id": list(paragraph.question_ids),
              "question": list(paragraph.questions),
              "answer_text": list(paragraph.answer_texts),
              "answer_start": np.asarray(paragraph.answer_starts, np.int32),
              "answer_sentence": np.asarray(paragraph.answer_sentences, np.int32),
          },
      }


def _manual_root(dl_manager, name: str, languages) -> pathlib.Path | None:
  """The manual dir when it holds every `<name>/<lang>.json`, else None."""
  try:
    root = pathlib.Path(dl_manager.manual_dir)
  except (AssertionError, ValueError):  # no manual dir given, or it is empty
    return None
  return root if all((root / name / f"{lang}.json").is_file() for lang in languages) else None
