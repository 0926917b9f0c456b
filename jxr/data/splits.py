"""Subsets of a `RetrievalTask`: row selection, language/question restriction, article splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jxr.data.task import RetrievalTask


def select(
    task: RetrievalTask,
    query_rows: np.ndarray,
    cand_rows: np.ndarray,
    languages: Sequence[str] | None = None,
) -> RetrievalTask:
  """The task on the given query and candidate rows, in that order, relevance re-indexed.

  Relevant candidates outside `cand_rows` are dropped. `languages` defaults to
  those of the task that some kept row has.
  """
  query_rows = np.asarray(query_rows, np.int64)
  cand_rows = np.asarray(cand_rows, np.int64)
  new_index = np.full(task.num_candidates, -1, np.int64)
  new_index[cand_rows] = np.arange(len(cand_rows))
  starts, ends = task.rel_indptr[query_rows], task.rel_indptr[query_rows + 1]
  sizes = ends - starts
  flat = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(
      sizes.sum()
  )  # CSR gather
  mapped = new_index[task.rel_indices[flat]]
  kept = mapped >= 0
  row_of_entry = np.repeat(np.arange(len(query_rows)), sizes)
  mapped, row_of_entry = mapped[kept], row_of_entry[kept]
  mapped = mapped[np.lexsort((mapped, row_of_entry))]  # sorted within each row
  rel_indptr = np.zeros(len(query_rows) + 1, np.int64)
  np.cumsum(np.bincount(row_of_entry, minlength=len(query_rows)), out=rel_indptr[1:])
  if languages is None:
    present = set(task.query_lang[query_rows]) | set(task.cand_lang[cand_rows])
    languages = tuple(lang for lang in task.languages if lang in present)
  return RetrievalTask(
      name=task.name,
      languages=tuple(languages),
      query_id=task.query_id[query_rows],
      query_lang=task.query_lang[query_rows],
      query_text=task.query_text[query_rows],
      query_article=task.query_article[query_rows],
      cand_lang=task.cand_lang[cand_rows],
      cand_text=task.cand_text[cand_rows],
      cand_context=task.cand_context[cand_rows],
      cand_article=task.cand_article[cand_rows],
      rel_indptr=rel_indptr,
      rel_indices=mapped,
  )


def restrict(
    task: RetrievalTask,
    languages: Sequence[str] | None = None,
    questions: int | None = None,
    seed: int = 0,
    candidates: str = "all",
) -> RetrievalTask:
  """The task on some languages and/or a seeded subset of its question ids.

  A kept question keeps all of its (kept) languages. `candidates="all"` keeps
  every candidate of the kept languages (the full distractor pool);
  `"articles"` keeps only those of the articles the kept queries come from
  (a smaller, cheaper task).
  """
  if languages is not None:
    if isinstance(languages, str):
      raise ValueError(
          f"languages: expected a sequence of language codes, got the string {languages!r}"
      )
    languages = tuple(languages)
    unknown = [lang for lang in languages if lang not in task.languages]
    if unknown or not languages or len(set(languages)) != len(languages):
      raise ValueError(f"languages: expected distinct codes from {task.languages}, got {languages}")
  else:
    languages = task.languages
  if candidates not in ("all", "articles"):
    raise ValueError(f"candidates: expected 'all' or 'articles', got {candidates!r}")
  query_keep = np.isin(task.query_lang, languages)
  if questions is not None:
    ids = np.unique(task.query_id[query_keep])
    if not isinstance(questions, (int, np.integer)) or not 0 < questions <= len(ids):
      raise ValueError(
          f"questions: expected an int in [1, {len(ids)}] (question ids in the task), got {questions!r}"
      )
    chosen = np.random.default_rng(seed).choice(ids, size=int(questions), replace=False)
    query_keep &= np.isin(task.query_id, chosen)
  cand_keep = np.isin(task.cand_lang, languages)
  if candidates == "articles":
    kept_lang, kept_article = task.query_lang[query_keep], task.query_article[query_keep]
    cand_keep &= _pairs_in(task.cand_lang, task.cand_article, kept_lang, kept_article)
  # Rows follow the requested language order, then the task's order.
  query_rows = np.concatenate(
      [np.flatnonzero(query_keep & (task.query_lang == lang)) for lang in languages]
  )
  cand_rows = np.concatenate(
      [np.flatnonzero(cand_keep & (task.cand_lang == lang)) for lang in languages]
  )
  return select(task, query_rows, cand_rows, languages=languages)


def _pairs_in(
    lang: np.ndarray, article: np.ndarray, keep_lang: np.ndarray, keep_article: np.ndarray
) -> np.ndarray:
  keys = np.char.add(np.char.add(lang.astype(str), "\x00"), article.astype(str))
  wanted = np.char.add(np.char.add(keep_lang.astype(str), "\x00"), keep_article.astype(str))
  return np.isin(keys, wanted)


def article_groups(task: RetrievalTask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Groups article titles that share a question id (connected components).

  In XQuAD-R every title is its own group (titles are English in every file);
  in MLQA-R a question's titles differ by language, and grouping them keeps
  every language of a question on one side of a split.

  Returns:
    `(titles [T] sorted, group [T] int, query_group [Q])`, groups numbered in
    the order of their smallest title.
  """
  titles, inverse = np.unique(
      np.concatenate([task.query_article, task.cand_article]).astype(str), return_inverse=True
  )
  query_title = inverse[: task.num_queries]
  parent = np.arange(len(titles))

  def find(x: int) -> int:
    while parent[x] != x:
      parent[x] = parent[parent[x]]
      x = parent[x]
    return x

  _, id_group = np.unique(task.query_id, return_inverse=True)
  first_title = np.full(id_group.max(initial=-1) + 1, -1)
  for g, t in zip(id_group, query_title):
    if first_title[g] < 0:
      first_title[g] = t
    else:
      a, b = find(first_title[g]), find(t)
      if a != b:
        parent[max(a, b)] = min(a, b)  # the root is the smallest title of the group
  roots = np.array([find(t) for t in range(len(titles))], np.int64)
  _, group = np.unique(roots, return_inverse=True)  # roots ascend with their smallest title
  return titles, group, group[query_title]


def split_by_article(
    task: RetrievalTask, eval_fraction: float = 0.5, seed: int = 0
) -> tuple[RetrievalTask, RetrievalTask]:
  """`(train, eval)`: whole articles held out for evaluation (docs/DESIGN.md, jxr.data).

  The distinct article titles are sorted, permuted with
  `numpy.random.default_rng(seed)`, and the first `round(eval_fraction * n)`
  are held out; every query and candidate follows its article. Titles linked
  by a shared question id (MLQA-R) move together as one unit.
  """
  if not 0.0 <= eval_fraction <= 1.0:
    raise ValueError(f"eval_fraction: expected a number in [0, 1], got {eval_fraction!r}")
  titles, group, query_group = article_groups(task)
  num_groups = group.max(initial=-1) + 1
  order = np.random.default_rng(seed).permutation(num_groups)
  held_out = np.zeros(num_groups, bool)
  held_out[order[: round(eval_fraction * num_groups)]] = True
  cand_group = group[np.searchsorted(titles, task.cand_article.astype(str))]
  query_eval, cand_eval = held_out[query_group], held_out[cand_group]
  train = select(task, np.flatnonzero(~query_eval), np.flatnonzero(~cand_eval))
  evaluation = select(task, np.flatnonzero(query_eval), np.flatnonzero(cand_eval))
  return train, evaluation


def articles_until(task: RetrievalTask, questions: int, seed: int) -> RetrievalTask:
  """Whole articles of `task`, in a seeded order, until they hold >= `questions` question ids.

  Candidates are the sentences of those articles only, so a small evaluation
  keeps LAReQA's hard distractors (same-article sentences) and stays cheap to
  encode. Uses `split_by_article`'s order, so the pick is reproducible.
  """
  total = len(np.unique(task.query_id))
  if questions >= total:
    return task
  num_articles = int(article_groups(task)[1].max()) + 1
  count = lambda k: len(np.unique(split_by_article(task, k / num_articles, seed)[1].query_id))  # noqa: E731
  low, high = 1, num_articles  # smallest k with count(k) >= questions
  while low < high:
    mid = (low + high) // 2
    low, high = (mid + 1, high) if count(mid) < questions else (low, mid)
  return split_by_article(task, low / num_articles, seed)[1]
