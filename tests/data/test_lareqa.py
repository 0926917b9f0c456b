"""load_lareqa against the release in ../shared/data/lareqa, and its bad-input errors."""

import collections
import gzip
import json
import os
import shutil

import numpy as np
import pytest

import jxr.data
from jxr.data import lareqa

# Published statistics (LAReQA README and paper; issue 4).
XQUAD_CANDIDATES = dict(
    ar=1222, de=1276, el=1234, en=1180, es=1215, hi=1244, ru=1219, th=852, tr=1167, vi=1209, zh=1196
)
MLQA_QUESTIONS = dict(ar=517, de=512, en=1148, es=500, hi=507, vi=511, zh=504)
MLQA_CANDIDATES = dict(ar=2545, de=2362, en=6264, es=1787, hi=2426, vi=2828, zh=2322)


def test_xquad_counts_per_language(xquad):
  assert xquad.languages == lareqa.LANGUAGES["xquad-r"]
  assert dict(collections.Counter(xquad.query_lang.tolist())) == {
      lang: 1190 for lang in XQUAD_CANDIDATES
  }
  assert dict(collections.Counter(xquad.cand_lang.tolist())) == XQUAD_CANDIDATES


def test_mlqa_counts_per_language(mlqa):
  assert mlqa.languages == lareqa.LANGUAGES["mlqa-r"]
  assert dict(collections.Counter(mlqa.query_lang.tolist())) == MLQA_QUESTIONS
  assert dict(collections.Counter(mlqa.cand_lang.tolist())) == MLQA_CANDIDATES


def test_relevant_counts(xquad, mlqa):
  assert (np.diff(xquad.rel_indptr) == 11).all()
  sizes = np.diff(mlqa.rel_indptr)
  assert sizes.min() == 2 and sizes.max() == 4


@pytest.mark.parametrize("name", ["xquad-r", "mlqa-r"])
def test_relevance_matches_the_raw_files(name, lareqa_dir, request):
  """Rebuilds relevance straight from the json: answers by (language, question id)."""
  task = request.getfixturevalue("xquad" if name == "xquad-r" else "mlqa")
  answer_of = {}  # question id -> {lang: (sentence text, paragraph)}
  for lang in task.languages:
    for article in json.loads((lareqa_dir / name / f"{lang}.json").read_text("utf-8"))["data"]:
      for paragraph in article["paragraphs"]:
        for qa in paragraph["qas"]:
          start = qa["answers"][0]["answer_start"]
          (s,) = [s for s, (b, e) in enumerate(paragraph["sentence_breaks"]) if b <= start < e]
          answer_of.setdefault(qa["id"], {})[lang] = (
              paragraph["sentences"][s],
              paragraph["context"],
          )
  rng = np.random.default_rng(0)
  for q in rng.choice(task.num_queries, size=300, replace=False):
    relevant = task.relevant(q)
    assert (np.diff(relevant) > 0).all()
    expected = answer_of[task.query_id[q]]
    got = {task.cand_lang[c]: (task.cand_text[c], task.cand_context[c]) for c in relevant}
    assert got == expected
  assert set(task.query_id.tolist()) == set(answer_of)


def test_rows_follow_language_then_file_order(xquad, lareqa_dir):
  first_lang_rows = np.flatnonzero(xquad.query_lang == "de")
  assert (np.diff(first_lang_rows) == 1).all()  # contiguous
  raw = json.loads((lareqa_dir / "xquad-r" / "de.json").read_text("utf-8"))
  questions = [qa["question"] for a in raw["data"] for p in a["paragraphs"] for qa in p["qas"]]
  assert xquad.query_text[first_lang_rows].tolist() == questions
  assert xquad.query_article[first_lang_rows[0]] == raw["data"][0]["title"]


def test_language_subset_in_given_order(lareqa_dir):
  task = jxr.data.load_lareqa("mlqa-r", data_dir=lareqa_dir, languages=["zh", "de"])
  assert task.languages == ("zh", "de")
  assert task.query_lang[0] == "zh" and task.query_lang[-1] == "de"
  assert dict(collections.Counter(task.cand_lang.tolist())) == {"zh": 2322, "de": 2362}
  sizes = np.diff(task.rel_indptr)
  assert set(sizes.tolist()) <= {1, 2}  # a question is in one or both of the two
  both = set(task.query_id[task.query_lang == "zh"]) & set(task.query_id[task.query_lang == "de"])
  for q in range(task.num_queries):
    assert sizes[q] == (2 if task.query_id[q] in both else 1)


def test_data_dir_from_environment(lareqa_dir, monkeypatch):
  monkeypatch.setenv("JXR_DATA_DIR", str(lareqa_dir))
  assert jxr.data.default_data_dir() == lareqa_dir
  task = jxr.data.load_lareqa("xquad-r", languages=["en"])
  assert task.num_queries == 1190


def test_default_data_dir_is_the_user_cache(tmp_path, monkeypatch):
  monkeypatch.delenv("JXR_DATA_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert jxr.data.default_data_dir() == tmp_path / "jxr" / "lareqa"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert jxr.data.default_data_dir() == tmp_path / "home" / ".cache" / "jxr" / "lareqa"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="xquad"), "unknown LAReQA dataset 'xquad'"),
        (dict(name="mlqa-r", languages=["el"]), r"languages: \['el'\] not in mlqa-r"),
        (dict(name="xquad-r", languages="en"), "got the string 'en'"),
        (dict(name="xquad-r", languages=["en", "en"]), "distinct"),
    ],
)
def test_bad_names(kwargs, match, lareqa_dir):
  with pytest.raises(ValueError, match=match):
    jxr.data.load_lareqa(data_dir=lareqa_dir, **kwargs)


def test_offline_missing_files_name_folder_and_files(tmp_path, monkeypatch):
  monkeypatch.setenv("JXR_OFFLINE", "1")
  with pytest.raises(FileNotFoundError) as error:
    jxr.data.load_lareqa("mlqa-r", data_dir=tmp_path, languages=["en", "de"])
  message = str(error.value)
  assert str(tmp_path) in message and "mlqa-r/en.json" in message and "mlqa-r/de.json" in message
  assert list(tmp_path.iterdir()) == []


def _write(tmp_path, text, name="xquad-r", lang="en"):
  (tmp_path / name).mkdir(parents=True, exist_ok=True)
  path = tmp_path / name / f"{lang}.json"
  path.write_text(text, "utf-8")
  return path


def _dataset(answer_start=4, **qa_overrides):
  qa = {"id": "q1", "question": "Who?", "answers": [{"text": "Bob", "answer_start": answer_start}]}
  qa.update(qa_overrides)
  paragraph = {
      "context": "Hi. Bob came.",
      "sentences": ["Hi.", "Bob came."],
      "sentence_breaks": [[0, 3], [4, 13]],
      "qas": [qa],
  }
  return {"version": "1.1", "data": [{"title": "T", "paragraphs": [paragraph]}]}


def test_own_files_in_the_same_layout_load(tmp_path):
  _write(tmp_path, json.dumps(_dataset()))
  task = jxr.data.load_lareqa("xquad-r", data_dir=tmp_path, languages=["en"])
  assert task.cand_text.tolist() == ["Hi.", "Bob came."]
  assert task.relevant(0).tolist() == [1]
  assert task.cand_context.tolist() == ["Hi. Bob came."] * 2


def test_a_file_is_parsed_once_until_it_changes(tmp_path):
  path = _write(tmp_path, json.dumps(_dataset()))
  first = lareqa.read_file(path)
  assert lareqa.read_file(path) is first  # every sweep cell reads the same files
  stat = path.stat()
  path.write_text(json.dumps(_dataset()).replace("Bob", "Rob"), "utf-8")  # the same size
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
  task = jxr.data.load_lareqa("xquad-r", data_dir=tmp_path, languages=["en"])
  assert task.cand_text.tolist() == ["Hi.", "Rob came."]


def test_gzipped_files_load_as_the_plain_ones(tmp_path):
  """What travels to a machine without network (experiments.carry): `<lang>.json.gz`."""
  plain = _write(tmp_path / "plain", json.dumps(_dataset()))
  zipped = tmp_path / "zipped" / "xquad-r" / "en.json.gz"
  zipped.parent.mkdir(parents=True)
  zipped.write_bytes(gzip.compress(plain.read_bytes()))
  a = jxr.data.load_lareqa("xquad-r", data_dir=tmp_path / "plain", languages=["en"])
  b = jxr.data.load_lareqa("xquad-r", data_dir=tmp_path / "zipped", languages=["en"])
  assert (
      a.cand_text.tolist() == b.cand_text.tolist()
      and a.query_text.tolist() == b.query_text.tolist()
  )
  zipped.write_bytes(gzip.compress(plain.read_bytes())[:-9])
  with pytest.raises(ValueError, match="en.json.gz: not a complete gzip file"):
    jxr.data.load_lareqa("xquad-r", data_dir=tmp_path / "zipped", languages=["en"])


def test_malformed_json_names_the_file(tmp_path):
  path = _write(tmp_path, '{"data": [')
  with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
    jxr.data.load_lareqa("xquad-r", data_dir=tmp_path, languages=["en"])


def test_answer_in_no_sentence_names_file_and_question(tmp_path):
  path = _write(tmp_path, json.dumps(_dataset(answer_start=3)))  # the gap between sentences
  with pytest.raises(
      ValueError, match=f"{path}: question 'q1': answer_start 3 falls in no sentence"
  ):
    jxr.data.load_lareqa("xquad-r", data_dir=tmp_path, languages=["en"])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.pop("data"), "missing field 'data'"),
        (
            lambda d: d["data"][0]["paragraphs"][0].pop("sentence_breaks"),
            "missing field 'sentence_breaks'",
        ),
        (
            lambda d: d["data"][0]["paragraphs"][0]["sentences"].pop(),
            "as many sentence strings as sentence_breaks",
        ),
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]),
            "question 'q1': expected at least one answer",
        ),
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"].append(
                d["data"][0]["paragraphs"][0]["qas"][0]
            ),
            "'q1' appears twice",
        ),
    ],
)
def test_malformed_structure(tmp_path, mutate, match):
  data = _dataset()
  mutate(data)
  _write(tmp_path, json.dumps(data))
  with pytest.raises(ValueError, match=match):
    jxr.data.load_lareqa("xquad-r", data_dir=tmp_path, languages=["en"])


def test_only_missing_languages_are_needed(tmp_path, lareqa_dir, monkeypatch):
  """A folder with some languages serves a task on those without touching the network."""
  monkeypatch.setenv("JXR_OFFLINE", "1")
  (tmp_path / "xquad-r").mkdir()
  shutil.copy(lareqa_dir / "xquad-r" / "th.json", tmp_path / "xquad-r" / "th.json")
  task = jxr.data.load_lareqa("xquad-r", data_dir=tmp_path, languages=["th"])
  assert task.num_candidates == XQUAD_CANDIDATES["th"]
  with pytest.raises(FileNotFoundError, match="xquad-r/en.json"):
    jxr.data.load_lareqa("xquad-r", data_dir=tmp_path, languages=["th", "en"])
