"""LAReQA (XQuAD-R, MLQA-R) as `RetrievalTask`s.

Files live at `<data_dir>/<dataset>/<lang>.json`: SQuAD json whose paragraphs
also carry `sentences` and `sentence_breaks`. Every sentence of every paragraph
is a candidate; a question's answer sentence is the one whose break contains
its `answer_start`. A query `(id, lang)` is relevant to the answer sentence of
`id` in every language of the task. Missing files are downloaded from the
pinned LAReQA release into the data directory, checksummed.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from jxr.data import download
from jxr.data.task import RetrievalTask

LANGUAGES: dict[str, tuple[str, ...]] = {
    "xquad-r": ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"),
    "mlqa-r": ("ar", "de", "en", "es", "hi", "vi", "zh"),
}

# Raw files of google-research-datasets/lareqa; MLQA-R was removed after 354d67d.
BASE_URL = "https://raw.githubusercontent.com/google-research-datasets/lareqa"
COMMITS = {
    "xquad-r": "9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c",
    "mlqa-r": "354d67d1cd066854cdfbf5ad0e6105528976141d",
}
SHA256 = {
    "xquad-r/ar.json": "c52922d3b8ac1ae03ed5ac38647ad59870dca3dda2beefe18ecdc30729acb69d",
    "xquad-r/de.json": "16fb0f4bf4916154b585a20c24c66074591c9718a1affe764ff4697572328949",
    "xquad-r/el.json": "163fd43ee785a30eb534ae2061e9eaa766a7ee4e8ffce5e4b422480c150f64b6",
    "xquad-r/en.json": "7b0954f39297c27a31fef610f0883337dd2907fa8699151dc922afdd0fa12ffe",
    "xquad-r/es.json": "f8e836b2d91009c4363e04315f7ede363eedbbb49c67dda60de6c4aa782f58de",
    "xquad-r/hi.json": "ea45ba8ae4513d1533b222bebdc02a90bc319c055d3aeea68584a053d2e92872",
    "xquad-r/ru.json": "7f4dff853538b9a5fcc28c070b8bb983a5c5d190ac747b8e005a1ada9cab18f1",
    "xquad-r/th.json": "c3a041864c3a9fb0b4dd91cfdf99cf36b411b3e704c58a303c97bc6dc786cfe4",
    "xquad-r/tr.json": "f3e8c13002bbce154a4578f535f7533cb70f3da08840e6b62735935baec7bd94",
    "xquad-r/vi.json": "e35926bf5cc6fc6ecbdfca49467aabeb454f08d152d7818143a906bd31dde995",
    "xquad-r/zh.json": "80c2cde7b9c2fb134c303cbb52f2ba396ead9eb0014aec43993543d2ba9e93ed",
    "mlqa-r/ar.json": "2132fbc03208535c0fe01f2e2c5121d06f9c2aa799af93b0a719dbc105bdf137",
    "mlqa-r/de.json": "ce9454dc5aa6f2d85c23cd6e49cb367fbb7c4c6e62d7f71e355c6b5dae4d0886",
    "mlqa-r/en.json": "fedd9a5cc0848dda80caf84aa36f482adaae230526a3f6e9e86926a93ef3b1e4",
    "mlqa-r/es.json": "70ecba276b8c96a692b120693a595d076ce94ad21d4b28311538a9fcbfe0f9d7",
    "mlqa-r/hi.json": "4dd0fb3c06f737a5481d705bc1dcac7876712a5815c9265908fbb3a0696cb654",
    "mlqa-r/vi.json": "9d3baff6ba03e6793b25594217265ea59a136b9733833dca8a9582a84a78ff85",
    "mlqa-r/zh.json": "57f01d2fff50cf3392805635b01445339f225ad5bf28ba8443b12f8dbd1e69dc",
}


def default_data_dir() -> pathlib.Path:
  """`$JXR_DATA_DIR`, else `$XDG_CACHE_HOME/jxr/lareqa` (default `~/.cache/jxr/lareqa`)."""
  if env := os.environ.get("JXR_DATA_DIR"):
    return pathlib.Path(env).expanduser()
  cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(cache).expanduser() / "jxr" / "lareqa"


def url_for(name: str, lang: str) -> str:
  """The pinned raw-file URL of `<name>/<lang>.json`."""
  return f"{BASE_URL}/{COMMITS[name]}/{name}/{lang}.json"


def check_languages(name: str, languages: Sequence[str] | None) -> tuple[str, ...]:
  """Validates a dataset name and language subset; returns the languages in order."""
  if name not in LANGUAGES:
    raise ValueError(f"name: unknown LAReQA dataset {name!r}; expected one of {sorted(LANGUAGES)}")
  known = LANGUAGES[name]
  if languages is None:
    return known
  if isinstance(languages, str):
    raise ValueError(
        f"languages: expected a sequence of language codes, got the string {languages!r}"
    )
  languages = tuple(languages)
  unknown = [lang for lang in languages if lang not in known]
  if unknown:
    raise ValueError(f"languages: {unknown} not in {name} (it has {' '.join(known)})")
  if not languages or len(set(languages)) != len(languages):
    raise ValueError(f"languages: expected distinct codes, at least one, got {languages}")
  return languages


def ensure_files(
    name: str, languages: Sequence[str], data_dir: str | os.PathLike | None = None
) -> pathlib.Path:
  """Returns the data directory holding `<name>/<lang>.json` for `languages`.

  Files already there are used as they are (so a user's own files in the same
  layout work). Missing ones are downloaded, checksummed, unless `JXR_OFFLINE=1`;
  failing that, a `FileNotFoundError` names the folder and files expected.
  """
  root = pathlib.Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
  missing = [lang for lang in languages if data_file(root, name, lang) is None]
  if not missing:
    return root
  expected = ", ".join(f"{name}/{lang}.json" for lang in missing)
  hint = (
      f"LAReQA files missing in {root}: {expected}. Put the LAReQA release there "
      f"(XQuAD-R at commit {COMMITS['xquad-r'][:7]}, MLQA-R at {COMMITS['mlqa-r'][:7]} of "
      "github.com/google-research-datasets/lareqa), or pass data_dir= / set JXR_DATA_DIR"
  )
  if os.environ.get("JXR_OFFLINE", "") not in ("", "0"):
    raise FileNotFoundError(hint + " (JXR_OFFLINE is set, so nothing was downloaded).")
  for lang in missing:
    relative = f"{name}/{lang}.json"
    try:
      download.fetch(url_for(name, lang), root / relative, SHA256[relative])
    except OSError as e:  # DownloadError, or an unwritable directory
      raise FileNotFoundError(f"{hint}. Downloading {relative} failed: {e}") from e
  return root


def data_file(root: pathlib.Path, name: str, lang: str) -> pathlib.Path | None:
  """`<root>/<name>/<lang>.json`, else its gzipped copy `<lang>.json.gz` (what travels to a
  machine without network), else None."""
  for suffix in (".json", ".json.gz"):
    if (path := root / name / f"{lang}{suffix}").is_file():
      return path
  return None


@dataclasses.dataclass(frozen=True)
class Paragraph:
  """One paragraph of a LAReQA file, validated."""

  title: str
  context: str
  sentences: tuple[str, ...]
  sentence_breaks: tuple[tuple[int, int], ...]
  question_ids: tuple[str, ...]
  questions: tuple[str, ...]
  answer_texts: tuple[str, ...]
  answer_starts: tuple[int, ...]
  answer_sentences: tuple[int, ...]  # index into `sentences`


def read_file(path: str | os.PathLike) -> tuple[Paragraph, ...]:
  """Parses and validates one LAReQA json file (gzipped when it ends in .gz); errors name the
  file and question id."""
  path = pathlib.Path(path)
  stat = path.stat()
  return _parse(path.resolve(), stat.st_mtime_ns, stat.st_size)


# Kept while the file is unchanged: every cell of a sweep reads the same files (a second
# a cell, most of it JSON parsing).
@functools.lru_cache(maxsize=32)
def _parse(path: pathlib.Path, mtime_ns: int, size: int) -> tuple[Paragraph, ...]:
  del mtime_ns, size  # the cache key: a rewritten file is parsed again
  try:
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e})") from e
  except (gzip.BadGzipFile, EOFError) as e:
    raise ValueError(f"{path}: not a complete gzip file ({e})") from e
  articles = _get(raw, "data", list, path, "the top level")
  paragraphs = []
  seen_ids = set()
  for a, article in enumerate(articles):
    title = _get(article, "title", str, path, f"article {a}")
    for p, paragraph in enumerate(_get(article, "paragraphs", list, path, f"article {title!r}")):
      where = f"article {title!r} paragraph {p}"
      sentences = _get(paragraph, "sentences", list, path, where)
      breaks = _get(paragraph, "sentence_breaks", list, path, where)
      if len(sentences) != len(breaks) or not all(isinstance(s, str) for s in sentences):
        raise ValueError(f"{path}: {where}: expected as many sentence strings as sentence_breaks")
      try:
        breaks = tuple((int(b), int(e)) for b, e in breaks)
      except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {where}: sentence_breaks must be [start, end] pairs") from e
      qids, questions, texts, starts, answer_sentences = [], [], [], [], []
      for qa in _get(paragraph, "qas", list, path, where):
        qid = _get(qa, "id", str, path, where)
        if qid in seen_ids:
          raise ValueError(f"{path}: question id {qid!r} appears twice")
        seen_ids.add(qid)
        answers = _get(qa, "answers", list, path, f"question {qid!r}")
        if not answers or not isinstance(answers[0], dict):
          raise ValueError(f"{path}: question {qid!r}: expected at least one answer")
        start = _get(answers[0], "answer_start", int, path, f"question {qid!r}")
        sentence = _answer_sentence(breaks, start)
        if sentence is None:
          raise ValueError(
              f"{path}: question {qid!r}: answer_start {start} falls in no sentence of its paragraph "
              f"({where}, sentence_breaks {list(breaks)})"
          )
        qids.append(qid)
        questions.append(_get(qa, "question", str, path, f"question {qid!r}"))
        texts.append(answers[0].get("text", ""))
        starts.append(start)
        answer_sentences.append(sentence)
      paragraphs.append(
          Paragraph(
              title,
              _get(paragraph, "context", str, path, where),
              tuple(sentences),
              breaks,
              tuple(qids),
              tuple(questions),
              tuple(texts),
              tuple(starts),
              tuple(answer_sentences),
          )
      )
  return tuple(paragraphs)


def _get(obj, key: str, kind: type, path: pathlib.Path, where: str):
  if not isinstance(obj, dict) or key not in obj:
    raise ValueError(f"{path}: {where}: missing field {key!r}")
  value = obj[key]
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise ValueError(
        f"{path}: {where}: field {key!r} should be {kind.__name__}, got {type(value).__name__}"
    )
  return value


def _answer_sentence(breaks: Sequence[tuple[int, int]], start: int) -> int | None:
  for s, (begin, end) in enumerate(breaks):
    if begin <= start < end:
      return s
  return None


def load_lareqa(
    name: str, data_dir: str | os.PathLike | None = None, languages: Sequence[str] | None = None
) -> RetrievalTask:
  """Loads XQuAD-R or MLQA-R as a `RetrievalTask` (see docs/DESIGN.md, jxr.data).

  Args:
    name: `"xquad-r"` or `"mlqa-r"`.
    data_dir: folder holding `<name>/<lang>.json`; default `$JXR_DATA_DIR`, else
      the user cache `$XDG_CACHE_HOME/jxr/lareqa`. Missing files are downloaded
      into it from the pinned release.
    languages: a subset of the dataset's languages, in the row order wanted.
  """
  languages = check_languages(name, languages)
  root = ensure_files(name, languages, data_dir)
  queries = {key: [] for key in ("id", "lang", "text", "article", "answer")}
  cands = {key: [] for key in ("lang", "text", "context", "article")}
  for lang in languages:
    for paragraph in read_file(data_file(root, name, lang)):
      first = len(cands["text"])
      n = len(paragraph.sentences)
      cands["lang"] += [lang] * n
      cands["text"] += paragraph.sentences
      cands["context"] += [paragraph.context] * n
      cands["article"] += [paragraph.title] * n
      queries["id"] += paragraph.question_ids
      queries["lang"] += [lang] * len(paragraph.question_ids)
      queries["text"] += paragraph.questions
      queries["article"] += [paragraph.title] * len(paragraph.question_ids)
      queries["answer"] += [first + s for s in paragraph.answer_sentences]
  query_id = np.asarray(queries["id"], dtype=str)
  rel_indptr, rel_indices = relevance_by_question(query_id, np.asarray(queries["answer"], np.int64))
  return RetrievalTask(
      name=name,
      languages=languages,
      query_id=query_id,
      query_lang=np.asarray(queries["lang"], dtype=str),
      query_text=_object_array(queries["text"]),
      query_article=np.asarray(queries["article"], dtype=str),
      cand_lang=np.asarray(cands["lang"], dtype=str),
      cand_text=_object_array(cands["text"]),
      cand_context=_object_array(cands["context"]),
      cand_article=np.asarray(cands["article"], dtype=str),
      rel_indptr=rel_indptr,
      rel_indices=rel_indices,
  )


def training_set(
    name: str,
    *,
    languages: Sequence[str] | None = None,
    eval_fraction: float = 0.5,
    split_seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> RetrievalTask:
  """The articles of dataset `name` a run trains on: the side `split_by_article(task,
  eval_fraction, split_seed)` keeps for training (`evaluation_set` holds out the rest)."""
  from jxr.data.splits import split_by_article

  task = load_lareqa(name, data_dir, languages)
  return split_by_article(task, eval_fraction, split_seed)[0]


def evaluation_set(
    name: str,
    *,
    languages: Sequence[str] | None = None,
    trained_on: str | None = None,
    eval_fraction: float = 0.5,
    split_seed: int = 0,
    questions: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> RetrievalTask:
  """Dataset `name` as a run evaluates it (experiments.run, `python -m jxr.eval --run`).

  Only the dataset's own languages among `languages` (all when None); when the run trains on
  `name` (`trained_on`), the articles `split_by_article(task, eval_fraction, split_seed)`
  holds out; then whole articles, in that split's order, up to `questions` question ids.
  """
  from jxr.data.splits import articles_until, split_by_article

  if languages is not None:
    languages = tuple(lang for lang in languages if lang in LANGUAGES.get(name, ()))
  task = load_lareqa(name, data_dir, languages)
  if name == trained_on:
    task = split_by_article(task, eval_fraction, split_seed)[1]
  if questions is not None:
    task = articles_until(task, questions, split_seed)
  return task


def relevance_by_question(
    query_id: np.ndarray, answer: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """CSR relevance: query `q` is relevant to the answers of every query sharing its id.

  Args:
    query_id: [Q] question ids.
    answer: [Q] the candidate index of each query's own answer sentence.
  Returns:
    `(rel_indptr [Q + 1], rel_indices [nnz])`, each row sorted and unique.
  """
  _, group = np.unique(query_id, return_inverse=True)
  order = np.lexsort((answer, group))  # by question, then by answer index
  sorted_group, sorted_answer = group[order], answer[order]
  # Answers of one question, deduplicated (two languages never share a sentence,
  # but a task built by hand might).
  keep = np.ones(len(order), bool)
  keep[1:] = (sorted_group[1:] != sorted_group[:-1]) | (sorted_answer[1:] != sorted_answer[:-1])
  sorted_group, sorted_answer = sorted_group[keep], sorted_answer[keep]
  group_start = np.searchsorted(sorted_group, np.arange(group.max(initial=-1) + 1))
  group_size = np.bincount(sorted_group, minlength=len(group_start))
  sizes = group_size[group]
  rel_indptr = np.zeros(len(query_id) + 1, np.int64)
  np.cumsum(sizes, out=rel_indptr[1:])
  # Row q holds sorted_answer[group_start[g] : group_start[g] + size] for g = group[q].
  offsets = np.arange(rel_indptr[-1]) - np.repeat(rel_indptr[:-1], sizes)
  rel_indices = sorted_answer[np.repeat(group_start[group], sizes) + offsets].astype(np.int64)
  return rel_indptr, rel_indices


def _object_array(items: Sequence[str]) -> np.ndarray:
  out = np.empty(len(items), dtype=object)
  out[:] = items
  return out
