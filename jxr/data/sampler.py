"""Hybrid batches for contrastive training (arXiv 2408.10536).

Each batch is monolingual with probability `mono_prob` (every query and positive
in one language) and otherwise cross-lingual (every query's language differs
from its positive's). In-batch negatives are the other rows' positives, so no
two rows may belong to one question, directly or through a shared answer
sentence (equal texts count as one), nor share a query text.

Batch `t` is a pure function of `(seed, t)`, so the sampler's state is its step
count, every process of a multi-host run draws the same global batch, and a
resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence

import numpy as np

from jxr.data.pairs import TrainingPairs

_ATTEMPTS = 16  # greedy orders tried before a batch size is declared infeasible


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
  """This process's rows of one global batch."""

  step: int
  kind: str  # "mono" | "cross"
  language: str | None  # the language of a mono batch, else None
  global_batch_size: int
  pair_index: np.ndarray  # int64 [b]: rows of the TrainingPairs
  query_ids: np.ndarray  # int64 [b]: rows of pairs.query_text (task query rows)
  positive_ids: np.ndarray  # int64 [b]: rows of pairs.passage_text (task candidate rows)
  question_id: np.ndarray  # str [b]
  query_lang: np.ndarray  # str [b]
  positive_lang: np.ndarray  # str [b]
  query_text: np.ndarray  # object [b]
  positive_text: np.ndarray  # object [b]
  positive_context: np.ndarray  # object [b]: "" when the passage has none

  def __len__(self) -> int:
    return len(self.pair_index)


class HybridSampler(Iterator[Batch]):
  """Infinite iterator of hybrid mono/cross-lingual batches of `TrainingPairs`.

  Args:
    pairs: the training pairs.
    batch_size: global rows per batch (all processes together).
    mono_prob: probability that a batch is monolingual; 1 gives X-X-mono
      batches, 0 gives X-Y batches.
    seed: the shared seed; batch `t` depends only on `(seed, t)`.
    languages: use only pairs whose query and positive languages are among
      these (default: all languages of `pairs`).
    process_index, process_count: this process keeps rows
      `[process_index * b, (process_index + 1) * b)` of each global batch,
      `b = batch_size // process_count`.
  """

  def __init__(
      self,
      pairs: TrainingPairs,
      batch_size: int,
      mono_prob: float = 0.5,
      seed: int = 0,
      languages: Sequence[str] | None = None,
      process_index: int = 0,
      process_count: int = 1,
  ):
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("process_count", process_count, 1)
    _check_int("process_index", process_index, 0)
    if process_index >= process_count:
      raise ValueError(
          f"process_index: expected < process_count={process_count}, got {process_index}"
      )
    if batch_size % process_count:
      raise ValueError(
          f"batch_size: expected a multiple of process_count={process_count}, got {batch_size}"
      )
    if not isinstance(mono_prob, (int, float)) or not 0.0 <= mono_prob <= 1.0:
      raise ValueError(f"mono_prob: expected a probability in [0, 1], got {mono_prob!r}")
    available = pairs.languages
    if languages is None:
      languages = available
    elif isinstance(languages, str):
      raise ValueError(
          f"languages: expected a sequence of language codes, got the string {languages!r}"
      )
    languages = tuple(str(lang) for lang in languages)
    missing = [lang for lang in languages if lang not in available]
    if missing or not languages:
      raise ValueError(
          f"languages: {list(languages)} must be non-empty and among the pairs' {list(available)}"
      )

    self.pairs = pairs
    self.batch_size = batch_size
    self.mono_prob = float(mono_prob)
    self.seed = seed
    self.languages = languages
    self.process_index = process_index
    self.process_count = process_count
    self._step = 0

    usable = np.isin(pairs.query_lang, languages) & np.isin(pairs.positive_lang, languages)
    mono = usable & (pairs.kind == "mono")
    pools = {lang: np.flatnonzero(mono & (pairs.query_lang == lang)) for lang in languages}
    self._mono_languages = tuple(lang for lang in languages if len(pools[lang]))
    self._mono_pools = tuple(pools[lang] for lang in self._mono_languages)
    self._cross_pool = np.flatnonzero(usable & (pairs.kind == "cross"))
    # A mono batch's language is uniform over the languages. Drawn with `p` rather than
    # `rng.integers`, which would consume the stream differently and change every batch.
    n = len(self._mono_pools)
    self._language_p = np.full(n, 1 / max(n, 1))
    self._positive_keys, self._query_key = _conflict_keys(pairs)
    self._check_feasible()
    self._fingerprint = self._make_fingerprint()

  def _check_feasible(self) -> None:
    """Fails early when a pool cannot fill a batch with conflict-free rows."""
    if self.mono_prob > 0:
      if not self._mono_pools:
        raise ValueError(
            f"mono_prob: {self.mono_prob} > 0 but the pairs have no mono pairs in {self.languages}"
        )
      for lang, pool in zip(self._mono_languages, self._mono_pools):
        self._check_pool(pool, f"mono pairs in {lang!r}")
    if self.mono_prob < 1:
      if not len(self._cross_pool):
        raise ValueError(
            f"mono_prob: {self.mono_prob} < 1 but the pairs have no cross-lingual pairs among {self.languages}"
        )
      self._check_pool(self._cross_pool, "cross-lingual pairs")

  def _check_pool(self, pool: np.ndarray, what: str) -> None:
    # Greedy picking can miss a feasible batch, so try a few orders before refusing.
    rng = np.random.default_rng(self.seed)
    found = 0
    for attempt in range(_ATTEMPTS):
      order = pool if attempt == 0 else pool[rng.permutation(len(pool))]
      found = max(found, len(self._greedy(order, set(), [])))
      if found == self.batch_size:
        return
    raise ValueError(
        f"batch_size: {self.batch_size} is too large for the {what}: at most {found} of them were found to share "
        "a batch without sharing a question, a query or an answer sentence; use a smaller batch_size or drop "
        "that language"
    )

  def _greedy(self, candidates: np.ndarray, used: set, chosen: list) -> list:
    """Appends to `chosen` each candidate pair whose keys are all unused, up to batch_size."""
    positive_keys, query_key, positive = (
        self._positive_keys,
        self._query_key,
        self.pairs.positive_index,
    )
    for pair in candidates.tolist():
      row_keys = positive_keys[positive[pair]]
      if query_key[pair] not in used and used.isdisjoint(row_keys):
        used.update(row_keys)
        used.add(query_key[pair])
        chosen.append(pair)
        if len(chosen) == self.batch_size:
          break
    return chosen

  def _draw(self, pool: np.ndarray, rng: np.random.Generator, step: int) -> np.ndarray:
    b, n = self.batch_size, len(pool)
    used, chosen = set(), []
    # A small sample without replacement nearly always fills the batch; full
    # shuffles back it up when conflicts are dense.
    self._greedy(pool[rng.choice(n, size=min(n, 2 * b + 8), replace=False)], used, chosen)
    for _ in range(_ATTEMPTS):
      if len(chosen) == b:
        return np.asarray(chosen, np.int64)
      used, chosen = set(), []
      self._greedy(pool[rng.permutation(n)], used, chosen)
    if len(chosen) == b:
      return np.asarray(chosen, np.int64)
    raise RuntimeError(
        f"step {step}: could not draw {b} conflict-free pairs; use a smaller batch_size"
    )

  def global_batch(self, step: int) -> tuple[str, str | None, np.ndarray]:
    """`(kind, language, pair rows)` of global batch `step`, the same on every process."""
    rng = np.random.default_rng([self.seed, step])
    if rng.random() < self.mono_prob:
      which = rng.choice(len(self._mono_pools), p=self._language_p)
      return "mono", self._mono_languages[which], self._draw(self._mono_pools[which], rng, step)
    return "cross", None, self._draw(self._cross_pool, rng, step)

  def batch_at(self, step: int) -> Batch:
    """This process's rows of batch `step` (does not move the iterator)."""
    _check_int("step", step, 0)
    kind, language, rows = self.global_batch(step)
    local = self.batch_size // self.process_count
    rows = rows[self.process_index * local : (self.process_index + 1) * local]
    p = self.pairs
    query, positive = p.query_index[rows], p.positive_index[rows]
    return Batch(
        step=step,
        kind=kind,
        language=language,
        global_batch_size=self.batch_size,
        pair_index=rows,
        query_ids=query,
        positive_ids=positive,
        question_id=p.question_id[rows],
        query_lang=p.query_lang[rows],
        positive_lang=p.positive_lang[rows],
        query_text=p.query_text[query],
        positive_text=p.passage_text[positive],
        positive_context=p.passage_context[positive],
    )

  def __iter__(self) -> HybridSampler:
    return self

  def __next__(self) -> Batch:
    batch = self.batch_at(self._step)
    self._step += 1
    return batch

  @property
  def step(self) -> int:
    """The step of the next batch."""
    return self._step

  def state_dict(self) -> dict:
    """JSON-serialisable state: the next step and a fingerprint of the sampler's setup."""
    return {"step": self._step, "fingerprint": self._fingerprint}

  def load_state_dict(self, state: dict) -> None:
    """Continues from `state` (from `state_dict()` of a sampler with the same setup)."""
    if not isinstance(state, dict) or set(state) != {"step", "fingerprint"}:
      raise ValueError(f"state: expected a dict with keys 'step' and 'fingerprint', got {state!r}")
    if state["fingerprint"] != self._fingerprint:
      raise ValueError(
          "state: it comes from a sampler with other pairs, batch_size, mono_prob, seed or "
          "languages; resuming would not continue the same batches"
      )
    _check_int("state['step']", state["step"], 0)
    self._step = int(state["step"])

  def _make_fingerprint(self) -> str:
    digest = hashlib.sha256()
    setup = (
        self.batch_size,
        self.mono_prob,
        self.seed,
        self.languages,
        len(self.pairs),
    )
    digest.update(repr(setup).encode())
    for column in (self.pairs.query_index, self.pairs.positive_index, self.pairs.question_id):
      digest.update(np.ascontiguousarray(column).tobytes())
    return digest.hexdigest()[:16]


def _conflict_keys(pairs: TrainingPairs) -> tuple[list[tuple[int, ...]], list[int]]:
  """Keys that may appear once per batch: `(keys of each passage row, key of each pair's query)`.

  A passage's keys are the questions whose positive it (or an equal text) is;
  a query's key stands for its text, which another question may share. Query
  keys are offset past the question codes so the two never collide.
  """
  _, question = np.unique(pairs.question_id, return_inverse=True)
  _, text = np.unique(pairs.passage_text, return_inverse=True)
  edges = np.unique(np.stack([text[pairs.positive_index], question], axis=1), axis=0)
  starts = np.searchsorted(edges[:, 0], np.arange(text.max(initial=-1) + 2))
  codes = edges[:, 1].tolist()
  keys_of_text = [tuple(codes[starts[t] : starts[t + 1]]) for t in range(len(starts) - 1)]
  positive_keys = [keys_of_text[t] for t in text.tolist()]
  _, query_text = np.unique(pairs.query_text, return_inverse=True)
  query_key = (query_text[pairs.query_index] + question.max(initial=-1) + 1).tolist()
  return positive_keys, query_key


def _check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
