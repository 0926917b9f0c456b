"""`python -m jxr.eval`: evaluate saved embeddings, a model, or a finished run on LAReQA.

```
python -m jxr.eval --dataset xquad-r --query-emb q.npy --cand-emb c.npy --out DIR
python -m jxr.eval --dataset mlqa-r --model multilingual-e5-small --out DIR [--save-embeddings]
python -m jxr.eval --run runs/RUN --out DIR          # re-evaluate a run's exported model
... --trec 100                                       # also run.trec (top 100) and qrels.trec
```

Saved embeddings must have one row per query / candidate of the task as
`jxr.data.load_lareqa(dataset, data_dir, languages)` returns it (same
`--languages`, same row order). `--run` reads the run's config.json and evaluates
`<run>/train/model` on the run's own evaluation sets, lengths and context, one
subdirectory of `--out` per dataset, and prints how far each mAP is from the run's
`fine_tuned` report. Writes the files of `jxr.eval.write_report` (and of
`jxr.eval.write_trec`). Bad input exits with status 2 and one line naming the flag.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jxr._files import is_primary
from jxr.eval.evaluate import check_pair, embed_task, evaluate
from jxr.eval.report import write_report
from jxr.eval.trec import write_trec

PROG = "python -m jxr.eval"


class InputError(ValueError):
  """Bad input, already phrased as `--flag: what was expected`."""


def _languages(values: Sequence[str] | None) -> tuple[str, ...] | None:
  if not values:
    return None
  return tuple(code for value in values for code in value.split(",") if code)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=PROG, description=("LAReQA retrieval evaluation: mAP, language matrices, bias.")
  )
  a = parser.add_argument
  a("--dataset", choices=("xquad-r", "mlqa-r"), help="required unless --run")
  a("--data-dir", default=None, help="LAReQA directory (default: $JXR_DATA_DIR, then the cache)")
  a("--languages", nargs="+", default=None, help="language codes (space or comma separated)")
  a("--query-emb", type=pathlib.Path, help=".npy, one row per query of the task")
  a("--cand-emb", type=pathlib.Path, help=".npy, one row per candidate of the task")
  a("--model", default=None, help="embed with jxr.model.load_encoder(MODEL) instead")
  a(
      "--run",
      type=pathlib.Path,
      default=None,
      help="an experiments.run directory: re-evaluate its exported model as the run did",
  )
  a("--batch-size", type=int, default=64, help="encoding batch size (with --model)")
  a(
      "--save-embeddings",
      action="store_true",
      help="with --model: also write query_emb.npy, cand_emb.npy to --out",
  )
  a("--k", type=int, nargs="+", default=[1, 5, 10, 20], help="recall@k cutoffs")
  a("--chunk-size", type=int, default=None, help="queries scored per device per step")
  a(
      "--trec",
      type=int,
      default=None,
      metavar="K",
      help="also write run.trec (top K candidates per query) and qrels.trec",
  )
  a("--out", required=True, type=pathlib.Path, help="output directory")
  return parser


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Flag combinations and ranges, before any file is read."""
  from_files = args.query_emb is not None or args.cand_emb is not None
  sources = [
      name
      for name, given in (
          ("--model", args.model is not None),
          ("--query-emb/--cand-emb", from_files),
          ("--run", args.run is not None),
      )
      if given
  ]
  if len(sources) > 1:
    parser.error(
        f"give one of --model, --query-emb/--cand-emb or --run, not {' and '.join(sources)}"
    )
  if not sources or (from_files and (args.query_emb is None or args.cand_emb is None)):
    parser.error("give --query-emb and --cand-emb (saved embeddings), --model, or --run")
  if args.run is None and args.dataset is None:
    parser.error("--dataset: required unless --run")
  if args.run is not None and (args.dataset or args.languages):
    parser.error(
        "--run: evaluates the run's own datasets and languages; drop --dataset/--languages"
    )
  if args.save_embeddings and args.model is None:
    parser.error("--save-embeddings: needs --model")
  for flag, value in (
      ("--batch-size", args.batch_size),
      ("--chunk-size", args.chunk_size),
      ("--trec", args.trec),
      ("--k", min(args.k)),
  ):
    if value is not None and value < 1:
      parser.error(f"{flag}: expected a positive integer, got {value}")


def _load_embeddings(path: pathlib.Path, flag: str) -> np.ndarray:
  if not path.is_file():
    raise InputError(f"{flag}: no such file {path}")
  try:
    return np.load(path, mmap_mode="r", allow_pickle=False)
  except ValueError as err:
    raise InputError(f"{flag}: {path} is not a .npy array ({err})") from None


def _load_encoder(name: str | pathlib.Path, flag: str):
  from jxr.model import load_encoder  # only these paths need the model stack

  try:
    return load_encoder(name)
  except (OSError, ValueError) as err:
    raise InputError(f"{flag}: {err}") from None


def _task(name: str, args: argparse.Namespace):
  from jxr.data import load_lareqa

  try:
    return load_lareqa(name, data_dir=args.data_dir, languages=_languages(args.languages))
  except ValueError as err:
    raise InputError(f"--languages: {err}") from None
  except OSError as err:
    raise InputError(f"--data-dir: {err}") from None


def _check_trec(k: int | None, task) -> None:
  if k is not None and k > task.num_candidates:
    raise InputError(
        f"--trec: expected at most {task.num_candidates} (the candidates of "
        f"{task.name}), got {k}"
    )


# ---------------------------------------------------------------------- --run


def read_run(run_dir: pathlib.Path) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
  """`(config.json, results.json)` of a finished experiments.run directory."""
  paths = {name: run_dir / name for name in ("config.json", "results.json")}
  for path in paths.values():
    if not path.is_file():
      raise InputError(f"--run: expected a finished experiments.run directory; {path} is missing")
  if not (run_dir / "train" / "model").is_dir():
    raise InputError(f"--run: {run_dir / 'train' / 'model'} is missing (the exported model)")
  config, results = (json.loads(path.read_text()) for path in paths.values())
  if not isinstance(config.get("run"), dict) or not results.get("fine_tuned"):
    raise InputError(f"--run: {run_dir} has no fine-tuned evaluation to reproduce")
  return config, results


def run_tasks(config: Mapping[str, Any], data_dir: str | None) -> dict[str, Any]:
  """The run's evaluation sets, rebuilt as experiments.run built them (checked by question id)."""
  from jxr.data.lareqa import evaluation_set

  run = config["run"]
  tasks = {}
  for name in run["eval_data"]:
    try:
      task = evaluation_set(
          name,
          languages=run["eval_languages"],
          trained_on=run["train_data"],
          eval_fraction=run["eval_fraction"],
          split_seed=run["split_seed"],
          questions=run["eval_questions"],
          data_dir=data_dir,
      )
    except OSError as err:
      raise InputError(f"--data-dir: {err}") from None
    recorded = config.get("eval_question_ids", {}).get(name)
    if recorded is not None and sorted(set(task.query_id.tolist())) != sorted(recorded):
      raise InputError(
          f"--run: the {name} evaluation set rebuilt here differs from the one in "
          f"config.json (other LAReQA files under --data-dir?)"
      )
    tasks[name] = task
  return tasks


def reevaluate_run(args: argparse.Namespace) -> int:
  config, results = read_run(args.run)
  run = config["run"]
  tasks = run_tasks(config, args.data_dir)
  for task in tasks.values():
    _check_trec(args.trec, task)
  encoder = _load_encoder(args.run / "train" / "model", "--run")
  for name, task in tasks.items():
    query_emb, cand_emb = embed_task(
        encoder,
        task,
        query_length=run["max_query_length"],
        passage_length=run["max_passage_length"],
        contexts=run["candidate_context"] == "paragraph",
        batch_size=run["eval_batch_size"],
    )
    report = _evaluate_and_write(task, query_emb, cand_emb, args, args.out / name)
    recorded = results["fine_tuned"].get(name, {}).get("multilingual", {}).get("map")
    if recorded is not None:
      print(
          f"  run's fine_tuned mAP {recorded:.6f}; |difference| "
          f"{abs(report['multilingual']['map'] - recorded):.1e}"
      )
  return 0


# ---------------------------------------------------------------------- one dataset


def _evaluate_and_write(task, query_emb, cand_emb, args, out: pathlib.Path) -> dict[str, Any]:
  report = evaluate(task, query_emb, cand_emb, k_values=args.k, chunk_size=args.chunk_size)
  written = write_report(report, out)
  if args.trec is not None:
    write_trec(task, query_emb, cand_emb, out, k=args.trec)
  multi, summary, bias = report["multilingual"], report["summary"], report["bias"]
  fmt = lambda value, digits=4: "-" if value is None else f"{value:.{digits}f}"  # noqa: E731
  print(
      f"{report['dataset']} ({len(report['languages'])} languages, {report['num_queries']} "
      f"queries, {report['num_candidates']} candidates): mAP {fmt(multi['map'])}, mAP@20 "
      f"{fmt(multi['map_at_20'])}, Mo. {fmt(summary['mono'])}, Cr. {fmt(summary['cross'])}, "
      f"Mul. (macro) {fmt(summary['multi_macro'])}, rank distance "
      f"{fmt(bias['rank_distance'], 2)} ({fmt(bias['rank_distance_normalised'])} of the pool)"
      f" -> {written}"
  )
  return report


def evaluate_one(args: argparse.Namespace) -> int:
  from_files = args.query_emb is not None
  if from_files:  # a missing file fails before the dataset loads
    query_emb = _load_embeddings(args.query_emb, "--query-emb")
    cand_emb = _load_embeddings(args.cand_emb, "--cand-emb")
  else:
    encoder = _load_encoder(args.model, "--model")
  task = _task(args.dataset, args)
  _check_trec(args.trec, task)
  if from_files:
    try:
      query_emb, cand_emb = check_pair(
          task, query_emb, cand_emb, names=("--query-emb", "--cand-emb")
      )
    except ValueError as err:
      raise InputError(str(err)) from None
  else:
    query_emb, cand_emb = embed_task(encoder, task, batch_size=args.batch_size)
    if args.save_embeddings:
      if is_primary():
        args.out.mkdir(parents=True, exist_ok=True)
        np.save(args.out / "query_emb.npy", query_emb)
        np.save(args.out / "cand_emb.npy", cand_emb)
  _evaluate_and_write(task, query_emb, cand_emb, args, args.out)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  check_flags(parser, args)
  try:
    return reevaluate_run(args) if args.run is not None else evaluate_one(args)
  except InputError as err:
    print(f"{PROG}: error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
