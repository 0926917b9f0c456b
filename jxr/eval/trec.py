"""TREC interchange: a run file (top k per query) and qrels, for trec_eval and friends.

```python
jxr.eval.write_trec(task, query_emb, cand_emb, "out/", k=100)   # out/run.trec, out/qrels.trec
```

Ids are stable for a given task: a query is `<lang>-<question id>` (LAReQA shares a question
id across languages), a candidate is `<lang>-<row>` with its row in `task.cand_*`. Run lines are
`qid Q0 docid rank score tag`, ranks from 1 by descending cosine (ties: lower row first);
qrels lines are `qid 0 docid 1`. With k = the number of candidates, trec_eval's `map` equals
jxr's `multilingual.map` when no two candidates of a query tie (jxr gives tied relevant
candidates one shared precision, trec_eval orders them by docid).
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jxr._files import atomic_write, is_primary
from jxr.data import RetrievalTask
from jxr.eval.evaluate import check_pair
from jxr.eval.scoring import l2_normalise


def query_ids(task: RetrievalTask) -> list[str]:
  return [f"{lang}-{qid}" for lang, qid in zip(task.query_lang.tolist(), task.query_id.tolist())]


def candidate_ids(task: RetrievalTask) -> list[str]:
  return [f"{lang}-{row}" for row, lang in enumerate(task.cand_lang.tolist())]


@functools.partial(jax.jit, static_argnames="k")
def _top_k(queries: jax.Array, cands: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  return jax.lax.top_k(queries @ cands.T, k)


def top_k(
    query_emb: np.ndarray, cand_emb: np.ndarray, k: int, *, chunk_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
  """`(rows int32 [Q, k], scores float32 [Q, k])`: each query's k best candidates by cosine."""
  queries, cands = l2_normalise(query_emb), jnp.asarray(l2_normalise(cand_emb))
  rows, scores = [], []
  for start in range(0, len(queries), chunk_size):
    chunk = queries[start : start + chunk_size]
    padded = np.zeros((chunk_size, queries.shape[1]), np.float32)  # one compile for all chunks
    padded[: len(chunk)] = chunk
    s, r = _top_k(jnp.asarray(padded), cands, k)
    scores.append(np.asarray(s)[: len(chunk)])
    rows.append(np.asarray(r)[: len(chunk)])
  return np.concatenate(rows), np.concatenate(scores)


def run_lines(
    task: RetrievalTask, query_emb: np.ndarray, cand_emb: np.ndarray, k: int, *, tag: str = "jxr"
) -> Iterator[str]:
  """The run file's lines: k candidates per query, best first."""
  if (
      isinstance(k, bool)
      or not isinstance(k, (int, np.integer))
      or not 1 <= k <= task.num_candidates
  ):
    raise ValueError(
        f"k: expected an int in [1, {task.num_candidates}] (the candidates), got {k!r}"
    )
  if not tag or any(c.isspace() for c in tag):
    raise ValueError(f"tag: expected a non-empty string without spaces, got {tag!r}")
  query_emb, cand_emb = check_pair(task, query_emb, cand_emb)
  qids, dids = query_ids(task), candidate_ids(task)
  rows, scores = top_k(query_emb, cand_emb, int(k))
  for q, qid in enumerate(qids):
    for rank, (row, score) in enumerate(zip(rows[q].tolist(), scores[q].tolist()), start=1):
      yield f"{qid} Q0 {dids[row]} {rank} {score:.9g} {tag}"  # 9 digits: float32 exactly


def qrels_lines(task: RetrievalTask) -> Iterator[str]:
  """The qrels: every relevant (query, candidate) pair, relevance 1."""
  qids, dids = query_ids(task), candidate_ids(task)
  for q, qid in enumerate(qids):
    for row in task.rel_indices[task.rel_indptr[q] : task.rel_indptr[q + 1]].tolist():
      yield f"{qid} 0 {dids[row]} 1"


def write_trec(
    task: RetrievalTask,
    query_emb: np.ndarray,
    cand_emb: np.ndarray,
    out: str | pathlib.Path,
    k: int = 100,
    *,
    tag: str = "jxr",
) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `run.trec` and `qrels.trec` into `out` (each atomically, process 0 only); returns
  their paths."""
  run = "\n".join(run_lines(task, query_emb, cand_emb, k, tag=tag)) + "\n"
  out = pathlib.Path(out)
  if is_primary():
    atomic_write(out / "run.trec", run)
    atomic_write(out / "qrels.trec", "\n".join(qrels_lines(task)) + "\n")
  return out / "run.trec", out / "qrels.trec"
