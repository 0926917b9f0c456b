"""`python -m jxr.eval`: evaluate saved embeddings, or a model's, on an LAReQA dataset.

```
python -m jxr.eval --dataset xquad-r --query-emb q.npy --cand-emb c.npy --out DIR
python -m jxr.eval --dataset mlqa-r --model multilingual-e5-small --out DIR [--save-embeddings]
```

Saved embeddings must have one row per query / candidate of the task as
`jxr.data.load_lareqa(dataset, data_dir, languages)` returns it (same
`--languages`, same row order). Writes the files of `jxr.eval.write_report`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from jxr.eval.evaluate import evaluate
from jxr.eval.report import write_report


def _languages(values: Sequence[str] | None) -> tuple[str, ...] | None:
  if not values:
    return None
  return tuple(code for value in values for code in value.split(",") if code)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m jxr.eval", description="LAReQA retrieval evaluation: mAP, language matrices, bias."
  )
  parser.add_argument("--dataset", required=True, choices=("xquad-r", "mlqa-r"))
  parser.add_argument("--data-dir", default=None, help="LAReQA directory (default: $JXR_DATA_DIR, then the cache)")
  parser.add_argument("--languages", nargs="+", default=None, help="language codes (space or comma separated)")
  parser.add_argument("--query-emb", type=pathlib.Path, help=".npy, one row per query of the task")
  parser.add_argument("--cand-emb", type=pathlib.Path, help=".npy, one row per candidate of the task")
  parser.add_argument("--model", default=None, help="embed with jxr.model.load_encoder(MODEL) instead")
  parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (with --model)")
  parser.add_argument(
      "--save-embeddings", action="store_true", help="with --model: also write query_emb.npy, cand_emb.npy to --out"
  )
  parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10, 20], help="recall@k cutoffs")
  parser.add_argument("--chunk-size", type=int, default=None, help="queries scored per device per step")
  parser.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
  return parser


def _load_embeddings(path: pathlib.Path, flag: str) -> np.ndarray:
  if not path.is_file():
    raise FileNotFoundError(f"{flag}: no such file {path}")
  try:
    return np.load(path, mmap_mode="r", allow_pickle=False)
  except ValueError as err:
    raise ValueError(f"{flag}: {path} is not a .npy array ({err})") from None


def _embed_with_model(name: str, task, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  from jxr.model import load_encoder  # only this path needs the model stack

  encoder = load_encoder(name)
  queries = encoder.encode(list(task.query_text), kind="query", batch_size=batch_size)
  cands = encoder.encode(
      list(task.cand_text), kind="passage", contexts=list(task.cand_context), batch_size=batch_size
  )
  return np.asarray(queries), np.asarray(cands)


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  from_files = args.query_emb is not None or args.cand_emb is not None
  if args.model is not None and from_files:
    parser.error("give either --model or --query-emb/--cand-emb, not both")
  if args.model is None and (args.query_emb is None or args.cand_emb is None):
    parser.error("give --query-emb and --cand-emb (saved embeddings), or --model")
  if args.save_embeddings and args.model is None:
    parser.error("--save-embeddings needs --model")
  if args.batch_size < 1 or (args.chunk_size is not None and args.chunk_size < 1) or min(args.k) < 1:
    parser.error("--batch-size, --chunk-size and --k take positive integers")

  from jxr.data import load_lareqa

  if from_files:  # fail on a missing file before loading the dataset
    query_emb = _load_embeddings(args.query_emb, "--query-emb")
    cand_emb = _load_embeddings(args.cand_emb, "--cand-emb")
  task = load_lareqa(args.dataset, data_dir=args.data_dir, languages=_languages(args.languages))
  if not from_files:
    query_emb, cand_emb = _embed_with_model(args.model, task, args.batch_size)
    if args.save_embeddings:
      import jax

      if jax.process_index() == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        np.save(args.out / "query_emb.npy", query_emb)
        np.save(args.out / "cand_emb.npy", cand_emb)

  report = evaluate(task, query_emb, cand_emb, k_values=args.k, chunk_size=args.chunk_size)
  out = write_report(report, args.out)
  multi, summary, bias = report["multilingual"], report["summary"], report["bias"]
  fmt = lambda value, digits=4: "-" if value is None else f"{value:.{digits}f}"  # noqa: E731
  print(
      f"{report['dataset']} ({len(report['languages'])} languages, {report['num_queries']} queries,"
      f" {report['num_candidates']} candidates): mAP {fmt(multi['map'])}, mAP@20 {fmt(multi['map_at_20'])},"
      f" Mo. {fmt(summary['mono'])}, Cr. {fmt(summary['cross'])}, Mul. (macro) {fmt(summary['multi_macro'])},"
      f" rank distance {fmt(bias['rank_distance'], 2)} ({fmt(bias['rank_distance_normalised'])} of the pool)"
      f" -> {out}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
