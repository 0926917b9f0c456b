"""Times `jxr.eval.evaluate` on XQuAD-R (all 11 languages) or MLQA-R from embeddings.

```
python benchmarks/evaluate.py                      # XQuAD-R, real-shaped embeddings, CPU
python benchmarks/evaluate.py --embeddings random  # i.i.d. Gaussian rows
python benchmarks/evaluate.py --synthetic          # no data files: a task of XQuAD-R's shape
python benchmarks/evaluate.py --query-emb q.npy --cand-emb c.npy --out /tmp/eval
```

"Real-shaped" embeddings put each query near a random vector of its question
and each answer sentence near it too, plus a per-language offset, so the
ranking has the structure (and the language bias) of a trained encoder's. The
first `evaluate` call includes jit compilation; later calls are warm.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

import jxr.eval
from jxr.data import RetrievalTask

XQUAD_R_CANDIDATES = {  # sentences per language in the release
    "ar": 1222,
    "de": 1276,
    "el": 1234,
    "en": 1180,
    "es": 1215,
    "hi": 1244,
    "ru": 1219,
    "th": 852,
    "tr": 1167,
    "vi": 1209,
    "zh": 1196,
}


def synthetic_xquad_r(num_questions: int = 1190) -> RetrievalTask:
  """A task with XQuAD-R's shape: 11 parallel languages, one answer per language."""
  languages = tuple(XQUAD_R_CANDIDATES)
  offsets = np.cumsum([0, *XQUAD_R_CANDIDATES.values()])
  rng = np.random.default_rng(0)
  # Question i's answer in language l: a sentence of that language (several questions may share one).
  answer = np.stack(
      [
          offsets[lang] + rng.integers(0, n, num_questions)
          for lang, n in enumerate(XQUAD_R_CANDIDATES.values())
      ]
  )
  query_lang = np.repeat(languages, num_questions)
  rel = np.sort(np.tile(answer.T, (len(languages), 1)), axis=1)
  cand_lang = np.repeat(languages, list(XQUAD_R_CANDIDATES.values()))
  nq, nc = len(query_lang), len(cand_lang)
  return RetrievalTask(
      name="xquad-r (synthetic)",
      languages=languages,
      query_id=np.tile([f"q{i}" for i in range(num_questions)], len(languages)),
      query_lang=query_lang,
      query_text=np.full(nq, ""),
      query_article=np.full(nq, ""),
      cand_lang=cand_lang,
      cand_text=np.full(nc, ""),
      cand_context=np.full(nc, ""),
      cand_article=np.full(nc, ""),
      rel_indptr=np.arange(0, rel.size + 1, rel.shape[1]),
      rel_indices=rel.ravel(),
  )


def real_shaped_embeddings(
    task: RetrievalTask, dim: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  ids, question = np.unique(task.query_id, return_inverse=True)
  centre = rng.standard_normal((len(ids), dim), dtype=np.float32)
  lang_index = {lang: i for i, lang in enumerate(task.languages)}
  lang_dir = rng.standard_normal((len(task.languages), dim), dtype=np.float32)
  q_lang = np.array([lang_index[x] for x in task.query_lang])
  c_lang = np.array([lang_index[x] for x in task.cand_lang])
  queries = (
      centre[question]
      + 0.6 * lang_dir[q_lang]
      + 0.9 * rng.standard_normal((task.num_queries, dim), dtype=np.float32)
  )
  # Answer sentences sit at the mean of their questions' centres (a sentence may answer several).
  pairs = np.unique(
      np.stack([np.repeat(question, np.diff(task.rel_indptr)), task.rel_indices]), axis=1
  )
  cands = np.zeros((task.num_candidates, dim), np.float32)
  np.add.at(cands, pairs[1], centre[pairs[0]])
  answers = np.bincount(pairs[1], minlength=task.num_candidates)
  cands[answers == 0] = rng.standard_normal(((answers == 0).sum(), dim), dtype=np.float32)
  cands /= np.sqrt(np.maximum(answers, 1))[:, None]
  cands += 0.6 * lang_dir[c_lang] + 0.9 * rng.standard_normal(cands.shape, dtype=np.float32)
  return queries, cands


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="xquad-r", choices=("xquad-r", "mlqa-r"))
  parser.add_argument("--data-dir", default=None)
  parser.add_argument(
      "--synthetic", action="store_true", help="XQuAD-R-shaped task without data files"
  )
  parser.add_argument("--embeddings", default="real-shaped", choices=("real-shaped", "random"))
  parser.add_argument("--query-emb", default=None)
  parser.add_argument("--cand-emb", default=None)
  parser.add_argument(
      "--dim", type=int, default=384, help="embedding size (multilingual-e5-small: 384)"
  )
  parser.add_argument("--chunk-size", type=int, default=None)
  parser.add_argument(
      "--repeats", type=int, default=3, help="warm evaluate() calls after the first"
  )
  parser.add_argument("--out", default=None, help="also write the report here (and time it)")
  args = parser.parse_args()

  start = time.perf_counter()
  if args.synthetic:
    task = synthetic_xquad_r()
  else:
    from jxr.data import load_lareqa

    task = load_lareqa(args.dataset, data_dir=args.data_dir)
  load_s = time.perf_counter() - start
  if args.query_emb:
    queries, cands = np.load(args.query_emb), np.load(args.cand_emb)
  elif args.embeddings == "random":
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((task.num_queries, args.dim), dtype=np.float32)
    cands = rng.standard_normal((task.num_candidates, args.dim), dtype=np.float32)
  else:
    queries, cands = real_shaped_embeddings(task, args.dim)

  print(f"python {platform.python_version()}, jax {jax.__version__}, devices {jax.devices()}")
  print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()}")
  print(
      f"{task.name}: {len(task.languages)} languages, {task.num_queries} queries x {task.num_candidates}"
      f" candidates, dim {queries.shape[1]}, {args.embeddings if not args.query_emb else 'from files'}"
      f" (task loaded in {load_s:.2f} s)"
  )
  start = time.perf_counter()
  report = jxr.eval.evaluate(task, queries, cands, chunk_size=args.chunk_size)
  first = time.perf_counter() - start
  warm = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jxr.eval.evaluate(task, queries, cands, chunk_size=args.chunk_size)
    warm.append(time.perf_counter() - start)
  print(f"evaluate: first call {first:.2f} s (with compilation)", end="")
  if warm:
    print(
        f", warm median {statistics.median(warm):.2f} s (min {min(warm):.2f} s, {len(warm)} runs)",
        end="",
    )
  print()
  if args.out:
    start = time.perf_counter()
    jxr.eval.write_report(report, args.out)
    print(f"write_report: {time.perf_counter() - start:.2f} s -> {args.out}")
  multi, summary, bias = report["multilingual"], report["summary"], report["bias"]
  print(
      f"mAP {multi['map']:.4f}, mAP@20 {multi['map_at_20']:.4f}, Mo. {summary['mono']:.4f},"
      f" Cr. {summary['cross']:.4f}, Mul. (macro) {summary['multi_macro']:.4f},"
      f" rank distance {bias['rank_distance']:.1f} ({bias['rank_distance_normalised']:.4f} of the pool),"
      f" top-1 same language {bias['top1_same_language']:.3f}"
  )
  print(f"load average after {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
  main()
