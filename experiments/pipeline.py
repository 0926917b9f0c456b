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
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from experiments.options import LANGUAGE_ORDER, RunConfig
from jxr import _failpoints
from jxr._files import atomic_write, is_primary
from jxr.data import RetrievalTask, read_pairs
from jxr.data.lareqa import evaluation_set, training_set
from jxr.data.splits import articles_until

STAGES = ("zero_shot", "fine_tuned")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run trains and evaluates on, decided from the config before any model work."""

  train_question_ids: tuple[str, ...]
  eval_tasks: Mapping[str, RetrievalTask]

  def eval_question_ids(self) -> dict[str, list[str]]:
    return {
        name: sorted(np.unique(task.query_id).astype(str).tolist())
        for name, task in self.eval_tasks.items()
    }


# ---------------------------------------------------------------------- data


def training_task(config: RunConfig) -> RetrievalTask:
  """The LAReQA task the fine-tune draws its pairs from (`jxr.data.lareqa.training_set`)."""
  return training_set(
      config.train_dataset,
      languages=config.languages,
      eval_fraction=config.eval_fraction,
      split_seed=config.split_seed,
  )


def training_question_ids(config: RunConfig) -> tuple[str, ...]:
  """Question ids the fine-tune sees."""
  if config.train_dataset is None:
    ids = read_pairs(config.train_data).question_id
  else:
    ids = training_task(config).query_id
  return tuple(sorted(np.unique(np.asarray(ids).astype(str)).tolist()))


def evaluation_task(config: RunConfig, name: str) -> RetrievalTask:
  """The evaluation set of dataset `name` (`jxr.data.lareqa.evaluation_set`)."""
  return evaluation_set(
      name,
      languages=config.eval_languages,
      trained_on=config.train_dataset,
      eval_fraction=config.eval_fraction,
      split_seed=config.split_seed,
      questions=config.eval_questions,
  )


def make_plan(config: RunConfig) -> Plan:
  train_ids = training_question_ids(config)
  tasks = {name: evaluation_task(config, name) for name in config.eval_data}
  seen = set(train_ids)
  for name, task in tasks.items():
    leaked = seen.intersection(np.unique(task.query_id).astype(str))
    if leaked:
      raise ValueError(
          f"eval_data: {len(leaked)} question(s) of {name} are also trained on "
          f"(e.g. {sorted(leaked)[:3]}); evaluate on another dataset or split"
      )
  return Plan(train_ids, tasks)


# ---------------------------------------------------------------------- evaluation


def with_context(config: RunConfig) -> bool:
  """Whether candidates are encoded with their paragraph (`--candidate-context paragraph`)."""
  return config.candidate_context == "paragraph"


def candidate_contexts(task: RetrievalTask, config: RunConfig) -> list[str] | None:
  return list(task.cand_context) if with_context(config) else None


def pool_languages(task: RetrievalTask, sizes: Sequence[int]) -> dict[str, tuple[str, ...]]:
  """Nested evaluation pools: the first n languages of `LANGUAGE_ORDER` the task has, per size.

  Sizes above the task's language count are dropped; the whole task is always
  a pool, so every report has its own languages' pool too.
  """
  ordered = [lang for lang in LANGUAGE_ORDER if lang in task.languages]
  ordered += [lang for lang in task.languages if lang not in ordered]
  counts = sorted({n for n in sizes if n < len(ordered)} | {len(ordered)})
  return {str(n): tuple(ordered[:n]) for n in counts}


def encode_task(encoder, task: RetrievalTask, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
  """Query and candidate embeddings of a task, as the run's lengths and context say."""
  from jxr.eval import embed_task

  return embed_task(
      encoder,
      task,
      query_length=config.max_query_length,
      passage_length=config.max_passage_length,
      contexts=with_context(config),
      batch_size=config.eval_batch_size,
  )


def evaluate_encoder(encoder, task: RetrievalTask, config: RunConfig) -> dict[str, Any]:
  """jxr.eval's report of the task, with `pools`: the same embeddings on nested language pools."""
  from jxr.eval import evaluate, evaluate_pools

  queries, cands = encode_task(encoder, task, config)
  report = evaluate(task, queries, cands)
  report["pools"] = evaluate_pools(task, queries, cands, pool_languages(task, config.eval_pools))
  return report


def token_lengths(
    encoder, texts: Sequence[str], kind: str, max_length: int, contexts: Sequence[str] | None = None
) -> list[int]:
  """Real token counts (specials and prefixes included) as the encoder would see them."""
  contexts = None if contexts is None else list(contexts)
  return [
      len(x)
      for x in encoder.token_ids(list(texts), kind=kind, contexts=contexts, max_length=max_length)
  ]


def attended_fractions(encoder, plan: Plan, config: RunConfig) -> dict[str, Any]:
  """Attended fraction of query-key pairs under the run's mask, measured on real lengths.

  Per evaluation dataset on its candidates (the headline number) and its
  queries, and on the passages of (up to 2,000) training pairs.
  """
  import pallas_kernels
  from jxr.model import attention_mask_for

  mask, heads = attention_mask_for(config.attention), encoder.config.num_attention_heads
  fraction = lambda lengths: pallas_kernels.attended_fraction(mask, lengths, heads)  # noqa: E731
  cands, queries = {}, {}
  for name, task in plan.eval_tasks.items():
    cands[name] = fraction(
        token_lengths(
            encoder,
            task.cand_text,
            "passage",
            config.max_passage_length,
            candidate_contexts(task, config),
        )
    )
    queries[name] = fraction(
        token_lengths(encoder, task.query_text, "query", config.max_query_length)
    )
  train = None
  if config.train_dataset is not None:
    task = training_task(config)
    rows = np.random.default_rng(0).permutation(task.num_candidates)[:2000]
    contexts = task.cand_context[rows] if with_context(config) else None
    train = fraction(
        token_lengths(encoder, task.cand_text[rows], "passage", config.max_passage_length, contexts)
    )
  return {"candidates": cands, "queries": queries, "train": train}


# ---------------------------------------------------------------------- files


def write_json(path: pathlib.Path, data: Any) -> None:
  """Atomic JSON write (jxr._files.atomic_write); process 0 only."""
  if is_primary():
    atomic_write(path, json.dumps(data, indent=1) + "\n")


def write_text(path: pathlib.Path, text: str) -> None:
  if is_primary():
    atomic_write(path, text)


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
      model=config.model,
      attention=config.attention,
      train_data=config.train_data,
      languages=config.languages,
      mono_prob=config.mono_prob,
      steps=config.train_steps,
      batch_size=config.batch_size,
      lr=config.lr,
      warmup_steps=config.warmup_steps,
      max_query_length=config.max_query_length,
      max_passage_length=config.max_passage_length,
      candidate_context=with_context(config),
      mesh=config.mesh,
      seed=config.seed,
      out_dir=str(out / "train"),
      checkpoint_every=config.checkpoint_every,
      checkpoint_minutes=config.checkpoint_minutes,
      eval_every=config.curve_every,
      log_every=max(1, config.train_steps // 100),
      eval_fraction=config.eval_fraction,
      split_seed=config.split_seed,
  )


def load_model(config: RunConfig):
  from jxr.model import load_encoder

  return load_encoder(
      config.model,
      attention=config.attention,
      max_length=max(config.max_query_length, config.max_passage_length),
      seed=config.seed,
  )


def curve_task(plan: Plan, config: RunConfig) -> tuple[str, RetrievalTask]:
  """The learning curve's fixed subset: whole articles of the first evaluation dataset."""
  name = next(iter(plan.eval_tasks))
  return name, articles_until(plan.eval_tasks[name], config.curve_questions, config.split_seed)


def curve_hook(plan: Plan, config: RunConfig) -> Callable[[int, Any], dict[str, Any]]:
  """`eval_hook` for jxr.train: Mul. on the curve subset; jxr.train logs it to metrics.jsonl."""
  from jxr.eval import evaluate

  name, task = curve_task(plan, config)

  def hook(step: int, encoder) -> dict[str, Any]:
    start = time.perf_counter()
    report = evaluate(task, *encode_task(encoder, task, config))
    return {
        "learning_curve": {
            "dataset": name,
            "step": step,
            **{key: report["summary"][key] for key in ("multi_macro", "multi_micro")},
            "per_query": report["per_query"],
            "seconds": time.perf_counter() - start,
        }
    }

  return hook


def read_curve(train_dir: pathlib.Path) -> list[dict[str, Any]]:
  """The learning-curve points jxr.train logged (each step once, also after a resume)."""
  path = train_dir / "metrics.jsonl"
  if not path.is_file():
    return []
  points = {}
  for line in path.read_text().splitlines():
    row = json.loads(line) if line.strip() else {}
    point = (row.get("eval") or {}).get("learning_curve")
    if point is not None:
      points[point["step"]] = point
  return [points[step] for step in sorted(points)]


def _evaluate_stage(
    encoder_fn: Callable[[], Any],
    plan: Plan,
    config: RunConfig,
    stage_dir: pathlib.Path,
    label: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
  """Reports of one stage, computing only datasets without a saved report."""
  from jxr.eval import write_report

  reports, encoder = {}, None
  for name, task in plan.eval_tasks.items():
    path = stage_dir / name / "report.json"
    if path.is_file():
      reports[name] = json.loads(path.read_text())
      continue
    encoder = encoder or encoder_fn()
    start = time.perf_counter()
    report = evaluate_encoder(encoder, task, config)
    _failpoints.reached(label)
    write_report(report, stage_dir / name)
    log(
        f"{label} {name}: {task.num_queries} queries, {task.num_candidates} candidates, "
        f"{time.perf_counter() - start:.0f} s"
    )
    reports[name] = report
  return reports


def run(
    config: RunConfig,
    resume: bool = False,
    log: Callable[[str], None] = print,
    *,
    with_zero_shot: bool = True,
) -> dict[str, Any]:
  """Runs (or resumes) the experiment in `config.out`; returns results.json's content.

  Stages, each skipped on resume when its output exists: zero-shot evaluation
  (unless `with_zero_shot=False`: sweeps run it in one cell per attention),
  fine-tuning (with the learning-curve hook when `config.curve_every`),
  evaluation of the fine-tuned model, its re-evaluation under each spec of
  `config.eval_only` (no training), the attended fractions, results.json.
  """
  out = pathlib.Path(config.out)
  if not resume and is_primary() and (out / "config.json").is_file():
    raise ValueError(f"config.out: {out} already holds a run; pass resume=True to continue it")
  started = time.perf_counter()
  seconds: dict[str, Any] = {}  # of this session: stages read back from disk take ~0 s
  # Decided once, before this session writes anything: on a pod, process 0
  # writes while the others read, and every process must take the same path.
  train_dir = out / "train"
  done_marker = train_dir / "result.json"
  train_done, train_started = done_marker.is_file(), (train_dir / "config.json").is_file()
  plan = make_plan(config)
  _failpoints.reached("data_loaded")
  config_json = {
      "run": config.to_json(),
      "train_question_ids": list(plan.train_question_ids),
      "eval_question_ids": plan.eval_question_ids(),
      "eval_sizes": {
          name: {
              "queries": t.num_queries,
              "candidates": t.num_candidates,
              "languages": list(t.languages),
          }
          for name, t in plan.eval_tasks.items()
      },
  }
  from jxr.train import train

  tconfig = train_config(config, out)
  config_json["train"] = tconfig.to_json()
  write_json(out / "config.json", config_json)

  t = time.perf_counter()  # the zero-shot encoder is freed when its stage returns
  zero_shot = (
      _evaluate_stage(lambda: load_model(config), plan, config, out / "zero_shot", "zero_shot", log)
      if with_zero_shot
      else {}
  )
  seconds["zero_shot"] = time.perf_counter() - t

  t = time.perf_counter()
  if train_done:
    train_summary = json.loads(done_marker.read_text())
    encoder_fn = _cached(lambda: _load_trained(train_dir))
  else:
    hook = curve_hook(plan, config) if config.curve_every else None
    result = train(tconfig, resume=train_started, eval_hook=hook)
    train_summary = {
        "steps": result.steps,
        "skipped_steps": result.skipped_steps,
        "final_loss": result.final_loss,
        "seconds": time.perf_counter() - t,
        "resumed_from_steps": list(result.resumed_from_steps),
    }
    write_json(done_marker, train_summary)
    encoder_fn = lambda: result.encoder  # noqa: E731
  if is_primary() and (train_dir / "metrics.jsonl").is_file():
    shutil.copyfile(train_dir / "metrics.jsonl", out / "metrics.jsonl")
  seconds["train"] = time.perf_counter() - t
  curve = read_curve(train_dir)

  t = time.perf_counter()
  fine_tuned = _evaluate_stage(encoder_fn, plan, config, out / "fine_tuned", "fine_tuned", log)
  seconds["fine_tuned"] = time.perf_counter() - t

  eval_only, seconds["eval_only"] = {}, {}
  for spec in config.eval_only:  # the fine-tuned weights under another mask: no training
    t = time.perf_counter()
    reports = _evaluate_stage(
        lambda spec=spec: _load_trained(train_dir, spec),
        plan,
        config,
        out / "eval_only" / spec.label,
        f"eval_only {spec.label}",
        log,
    )
    eval_only[spec.label] = {"attention": spec.to_json(), "reports": reports}
    seconds["eval_only"][spec.label] = time.perf_counter() - t

  fraction_path = out / "attended_fraction.json"
  if fraction_path.is_file():
    fractions = json.loads(fraction_path.read_text())
  else:
    fractions = attended_fractions(encoder_fn(), plan, config)
    write_json(fraction_path, fractions)

  from jxr.eval import compare

  if zero_shot:
    for name in fine_tuned:
      compare(
          {"zero-shot": zero_shot[name], "fine-tuned": fine_tuned[name]}, out / "comparison" / name
      )
    write_text(out / "comparison.md", comparison_markdown(zero_shot, fine_tuned))

  seconds["total_this_session"] = time.perf_counter() - started
  results = {
      "attention": config.attention.to_json(),
      "zero_shot": zero_shot,
      "fine_tuned": fine_tuned,
      "eval_only": eval_only,
      "learning_curve": curve,
      "train": train_summary,
      "attended_fraction": fractions["candidates"],
      "attended_fraction_queries": fractions["queries"],
      "attended_fraction_train": fractions["train"],
      "seconds": seconds,
  }
  write_json(out / "results.json", results)
  return results


def _cached(fn: Callable[[], Any]) -> Callable[[], Any]:
  box: list[Any] = []
  return lambda: box[0] if box else (box.append(fn()) or box[0])


def _load_trained(train_dir: pathlib.Path, attention=None):
  """The exported fine-tuned model, with its own attention unless another spec is given."""
  from jxr.model import load_encoder

  return load_encoder(train_dir / "model", attention=attention)


# ---------------------------------------------------------------------- headline


def headline(results: Mapping[str, Any], out: str | os.PathLike) -> str:
  """The lines printed at the end of a run."""
  lines = []
  for name in results["fine_tuned"]:
    before, after = results["zero_shot"][name], results["fine_tuned"][name]
    lines.append(
        f"{name} ({before['num_queries']} queries, {before['num_candidates']} candidates,"
        f" {' '.join(before['languages'])}):"
    )
    for label, r in (("zero-shot ", before), ("fine-tuned", after)):
      s = r["summary"]
      lines.append(
          f"  {label}  Mo. {_f(s['mono'])}  Cr. {_f(s['cross'])}  Mul. (macro) "
          f"{_f(s['multi_macro'])}  pooled mAP {_f(s['multi_micro'])}   rank distance "
          f"{_f(r['bias']['rank_distance'], 1)}"
      )
    diff = after["summary"]["multi_macro"] - before["summary"]["multi_macro"]
    lines.append(f"  difference  Mul. (macro) {diff:+.4f}")
  fractions = results.get("attended_fraction") or {}
  if fractions:
    lines.append(
        "attended fraction of query-key pairs: "
        + ", ".join(f"{k} {v:.3f}" for k, v in fractions.items())
    )
  lines.append(f"run directory: {out}")
  return "\n".join(lines)


def _f(value: float | None, digits: int = 4) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"
