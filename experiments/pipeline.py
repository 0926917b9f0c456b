"""One experiment run: zero-shot evaluation, fine-tuning, evaluation again.

The logic lives in jxr; this module decides what to evaluate on (held-out
articles, language and question subsets), runs the stages in order, and lays
the run directory out so that an interrupted run resumes where it stopped:

    <out>/config.json                 the resolved RunConfig + training and evaluation question ids
    <out>/zero_shot/<dataset>/        report.json, matrix_<metric>.csv/.png, summary.md
    <out>/train/                      jxr.train's run: config.json, metrics.jsonl, tb/,
                                      checkpoints/, model/ (exported safetensors)
    <out>/metrics.jsonl               a copy of train/metrics.jsonl
    <out>/fine_tuned/<dataset>/       as zero_shot/
    <out>/comparison.md               zero-shot vs fine-tuned, every dataset
    <out>/comparison/<dataset>/       comparison.md + comparison.png of that dataset
    <out>/results.json                {"zero_shot": {dataset: report}, "fine_tuned": {...}, ...}

A stage whose output exists is skipped on resume; training resumes from its
last checkpoint (jxr.train saves one on Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from experiments.options import RunConfig
from jxr.data import RetrievalTask, load_lareqa, read_pairs, split_by_article
from jxr.data.lareqa import LANGUAGES
from jxr.data.splits import article_groups

STAGES = ("zero_shot", "fine_tuned")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run trains and evaluates on, decided from the config before any model work."""
  train_question_ids: tuple[str, ...]
  eval_tasks: Mapping[str, RetrievalTask]

  def eval_question_ids(self) -> dict[str, list[str]]:
    return {name: sorted(np.unique(task.query_id).astype(str).tolist())
            for name, task in self.eval_tasks.items()}


# ---------------------------------------------------------------------- data


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


def training_question_ids(config: RunConfig) -> tuple[str, ...]:
  """Question ids the fine-tune sees (as jxr.train selects them)."""
  if config.train_dataset is None:
    ids = read_pairs(config.train_data).question_id
  else:
    task = load_lareqa(config.train_dataset, languages=config.languages)
    ids = split_by_article(task, config.eval_fraction, config.split_seed)[0].query_id
  return tuple(sorted(np.unique(np.asarray(ids).astype(str)).tolist()))


def evaluation_task(config: RunConfig, name: str) -> RetrievalTask:
  """The evaluation set of dataset `name`: held-out articles when it is also trained on,
  restricted to the evaluation languages and (optionally) whole articles up to N questions."""
  languages = None
  if config.eval_languages is not None:
    languages = tuple(lang for lang in config.eval_languages if lang in LANGUAGES[name])
  task = load_lareqa(name, languages=languages)
  if name == config.train_dataset:
    task = split_by_article(task, config.eval_fraction, config.split_seed)[1]
  if config.eval_questions is not None:
    task = articles_until(task, config.eval_questions, config.split_seed)
  return task


def make_plan(config: RunConfig) -> Plan:
  train_ids = training_question_ids(config)
  tasks = {name: evaluation_task(config, name) for name in config.eval_data}
  seen = set(train_ids)
  for name, task in tasks.items():
    leaked = seen.intersection(np.unique(task.query_id).astype(str))
    if leaked:
      raise ValueError(f"eval_data: {len(leaked)} question(s) of {name} are also trained on "
                       f"(e.g. {sorted(leaked)[:3]}); evaluate on another dataset or split")
  return Plan(train_ids, tasks)


# ---------------------------------------------------------------------- evaluation


def candidate_contexts(task: RetrievalTask, config: RunConfig) -> list[str] | None:
  return list(task.cand_context) if config.candidate_context == "paragraph" else None


def evaluate_encoder(encoder, task: RetrievalTask, config: RunConfig) -> dict[str, Any]:
  """Encodes the task's queries and candidates and returns jxr.eval's report."""
  from jxr.eval import evaluate

  queries = encoder.encode(list(task.query_text), kind="query", batch_size=config.eval_batch_size,
                           max_length=config.max_query_length)
  cands = encoder.encode(list(task.cand_text), kind="passage",
                         contexts=candidate_contexts(task, config),
                         batch_size=config.eval_batch_size, max_length=config.max_passage_length)
  return evaluate(task, queries, cands)


def attention_mask(config: RunConfig):
  """The pallas_kernels mask the encoder's attention uses under this config."""
  import pallas_kernels as pk

  if config.attn == "local":
    return pk.LocalMask(config.window, config.window)
  if config.attn == "block_sparse":
    return pk.BlockSparseMask.pattern(config.block_size, density=config.density)
  return pk.DenseMask()


def attended_fraction(mask, lengths: Sequence[int], num_heads: int = 1) -> float:
  """Allowed query-key pairs over all real-token pairs, summed over sequences.

  Padding is never attended, so a sequence of `L` tokens contributes
  `mask.density(L, L) * L**2` allowed pairs out of `L**2`.
  """
  lengths, counts = np.unique(np.asarray(lengths, np.int64), return_counts=True)
  if len(lengths) == 0:
    raise ValueError("lengths: expected at least one sequence length")
  allowed = sum(mask.density(int(n), int(n), num_heads) * n * n * c for n, c in zip(lengths, counts))
  return float(allowed / float(np.sum(counts * lengths * lengths)))


def candidate_lengths(encoder, task: RetrievalTask, config: RunConfig) -> list[int]:
  ids = encoder.token_ids(list(task.cand_text), kind="passage",
                          contexts=candidate_contexts(task, config),
                          max_length=config.max_passage_length)
  return [len(x) for x in ids]


# ---------------------------------------------------------------------- files


def write_json(path: pathlib.Path, data: Any) -> None:
  """Atomic JSON write (temporary file, then os.replace); process 0 only."""
  if not _primary():
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
    json.dump(data, f, indent=1)
    f.write("\n")
  os.replace(f.name, path)


def write_text(path: pathlib.Path, text: str) -> None:
  if not _primary():
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
    f.write(text)
  os.replace(f.name, path)


def _primary() -> bool:
  import jax

  return jax.process_index() == 0


def read_stage(out: pathlib.Path, stage: str, dataset: str) -> dict[str, Any] | None:
  path = out / stage / dataset / "report.json"
  return json.loads(path.read_text()) if path.is_file() else None


def comparison_markdown(zero_shot: Mapping[str, Any], fine_tuned: Mapping[str, Any]) -> str:
  from jxr.eval.report import compare_markdown

  parts = []
  for name in fine_tuned:
    parts.append(compare_markdown({"zero-shot": zero_shot[name], "fine-tuned": fine_tuned[name]}))
  return "\n".join(parts)


# ---------------------------------------------------------------------- the run


def train_config(config: RunConfig, out: pathlib.Path):
  from jxr.train import TrainConfig

  return TrainConfig(
      model=config.model, attn=config.attn, window=config.window, block_size=config.block_size,
      density=config.density, train_data=config.train_data, languages=config.languages,
      mono_prob=config.mono_prob, steps=config.train_steps, batch_size=config.batch_size,
      lr=config.lr, warmup_steps=config.warmup_steps, max_query_length=config.max_query_length,
      max_passage_length=config.max_passage_length,
      candidate_context=config.candidate_context == "paragraph", mesh=config.mesh,
      seed=config.seed, out_dir=str(out / "train"), checkpoint_every=None,
      log_every=max(1, config.train_steps // 100), eval_fraction=config.eval_fraction,
      split_seed=config.split_seed)


def load_model(config: RunConfig):
  from jxr.model import load_encoder

  return load_encoder(config.model, attn=config.attn, window=config.window,
                      block_size=config.block_size, density=config.density,
                      max_length=max(config.max_query_length, config.max_passage_length),
                      seed=config.seed)


def _evaluate_stage(encoder_fn: Callable[[], Any], plan: Plan, config: RunConfig,
                    out: pathlib.Path, stage: str, log: Callable[[str], None]) -> dict[str, Any]:
  """Reports of one stage, computing only datasets without a saved report."""
  from jxr.eval import write_report

  reports, encoder = {}, None
  for name, task in plan.eval_tasks.items():
    report = read_stage(out, stage, name)
    if report is None:
      encoder = encoder or encoder_fn()
      start = time.perf_counter()
      report = evaluate_encoder(encoder, task, config)
      write_report(report, out / stage / name)
      log(f"{stage} {name}: {task.num_queries} queries, {task.num_candidates} candidates, "
          f"{time.perf_counter() - start:.0f} s")
    reports[name] = report
  return reports


def run(config: RunConfig, resume: bool = False, log: Callable[[str], None] = print, *,
        with_zero_shot: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the experiment in `config.out`; returns results.json's content.

  `with_zero_shot=False` (sweeps) skips the zero-shot stage and the comparison.
  """
  out = pathlib.Path(config.out)
  if not resume and _primary() and (out / "config.json").is_file():
    raise ValueError(f"config.out: {out} already holds a run; pass resume=True to continue it")
  started = time.perf_counter()
  seconds: dict[str, float] = {}  # of this session: stages read back from disk take ~0 s
  # Decided once, before this session writes anything: on a pod, process 0
  # writes while the others read, and every process must take the same path.
  train_dir = out / "train"
  done_marker = train_dir / "result.json"
  train_done, train_started = done_marker.is_file(), (train_dir / "config.json").is_file()
  plan = make_plan(config)
  config_json = {"run": config.to_json(), "train_question_ids": list(plan.train_question_ids),
                 "eval_question_ids": plan.eval_question_ids(),
                 "eval_sizes": {name: {"queries": t.num_queries, "candidates": t.num_candidates,
                                       "languages": list(t.languages)}
                                for name, t in plan.eval_tasks.items()}}
  from jxr.train import train

  tconfig = train_config(config, out)
  config_json["train"] = tconfig.to_json()
  write_json(out / "config.json", config_json)

  t = time.perf_counter()  # the zero-shot encoder is freed when its stage returns
  zero_shot = (_evaluate_stage(lambda: load_model(config), plan, config, out, "zero_shot", log)
               if with_zero_shot else {})
  seconds["zero_shot"] = time.perf_counter() - t

  t = time.perf_counter()
  if train_done:
    train_summary = json.loads(done_marker.read_text())
    encoder_fn = _cached(lambda: _load_trained(train_dir))
  else:
    result = train(tconfig, resume=train_started)
    train_summary = {"steps": result.steps, "skipped_steps": result.skipped_steps,
                     "final_loss": result.final_loss, "seconds": time.perf_counter() - t}
    write_json(done_marker, train_summary)
    encoder_fn = lambda: result.encoder  # noqa: E731
  if _primary() and (train_dir / "metrics.jsonl").is_file():
    shutil.copyfile(train_dir / "metrics.jsonl", out / "metrics.jsonl")
  seconds["train"] = time.perf_counter() - t

  t = time.perf_counter()
  fine_tuned = _evaluate_stage(encoder_fn, plan, config, out, "fine_tuned", log)
  seconds["fine_tuned"] = time.perf_counter() - t

  fraction_path = out / "attended_fraction.json"
  if fraction_path.is_file():
    fractions = json.loads(fraction_path.read_text())
  else:  # over the evaluation candidates' real lengths (padding is never attended)
    encoder, mask = encoder_fn(), attention_mask(config)
    fractions = {name: attended_fraction(mask, candidate_lengths(encoder, task, config),
                                         encoder.config.num_attention_heads)
                 for name, task in plan.eval_tasks.items()}
    write_json(fraction_path, fractions)

  from jxr.eval import compare

  if zero_shot:
    for name in fine_tuned:
      compare({"zero-shot": zero_shot[name], "fine-tuned": fine_tuned[name]},
              out / "comparison" / name)
    write_text(out / "comparison.md", comparison_markdown(zero_shot, fine_tuned))

  seconds["total_this_session"] = time.perf_counter() - started
  results = {"zero_shot": zero_shot, "fine_tuned": fine_tuned, "train": train_summary,
             "attended_fraction": fractions, "seconds": seconds}
  write_json(out / "results.json", results)
  return results


def _cached(fn: Callable[[], Any]) -> Callable[[], Any]:
  box: list[Any] = []
  return lambda: box[0] if box else (box.append(fn()) or box[0])


def _load_trained(train_dir: pathlib.Path):
  from jxr.model import load_encoder

  return load_encoder(train_dir / "model", attn=None)



# ---------------------------------------------------------------------- headline


def headline(results: Mapping[str, Any], out: str | os.PathLike) -> str:
  """The lines printed at the end of a run."""
  lines = []
  for name in results["fine_tuned"]:
    before, after = results["zero_shot"][name], results["fine_tuned"][name]
    lines.append(f"{name} ({before['num_queries']} queries, {before['num_candidates']} candidates,"
                 f" {' '.join(before['languages'])}):")
    for label, r in (("zero-shot ", before), ("fine-tuned", after)):
      s = r["summary"]
      lines.append(f"  {label}  pooled mAP {r['multilingual']['map']:.4f}   Mo. {_f(s['mono'])}  "
                   f"Cr. {_f(s['cross'])}  Mul. {_f(s['multi'])}   rank distance "
                   f"{_f(r['bias']['rank_distance'], 1)}")
    diff = after["multilingual"]["map"] - before["multilingual"]["map"]
    lines.append(f"  difference  pooled mAP {diff:+.4f}")
  fractions = results.get("attended_fraction") or {}
  if fractions:
    lines.append("attended fraction of query-key pairs: " + ", ".join(
        f"{k} {v:.3f}" for k, v in fractions.items()))
  lines.append(f"run directory: {out}")
  return "\n".join(lines)


def _f(value: float | None, digits: int = 4) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"
