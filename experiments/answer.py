"""README's "The answer so far": one paragraph and one table, every number from report.json.

    python -m experiments.answer docs/study-cpu             # print the section
    python -m experiments.answer docs/study-cpu --readme README.md   # rewrite it in place
    python -m experiments.answer docs/study-cpu --readme README.md --check   # exit 1 if stale

The section lives between `BEGIN` and `END` in the README. `answer_section` is pure: the
published study directory's report.json, sweep.json and one cell's config.json in, Markdown
out, so a test can hold the README to the report (tests/experiments/test_answer.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from experiments.report import HYBRID

BEGIN = "<!-- answer: begin (written by `python -m experiments.answer`; do not edit) -->"
END = "<!-- answer: end -->"
METRIC = "mul_macro"
DATASET_NAMES = {"mlqa-r": "MLQA-R", "xquad-r": "XQuAD-R"}
TRAINING_AXIS = (2, 11)  # training-language counts the training trend spans


@dataclasses.dataclass(frozen=True)
class Study:
  """What the section needs from a published study directory (see `load_study`)."""

  directory: str  # as the README links it, e.g. "docs/study-cpu"
  report: Mapping[str, Any]  # report.json
  grid: str  # sweep.json's preset
  num_cells: int  # cells in the grid
  run: Mapping[str, Any]  # one finished cell's config.json "run" entry


def load_study(directory: pathlib.Path, link: str | None = None) -> Study:
  """Reads report.json, sweep.json and the first finished cell's config.json."""
  report = json.loads((directory / "report.json").read_text())
  sweep = json.loads((directory / "sweep.json").read_text())
  if not report.get("cells"):
    raise ValueError(f"{directory / 'report.json'}: holds no finished cell")
  first = report["cells"][0]["name"]
  run = json.loads((directory / "cells" / first / "config.json").read_text())["run"]
  return Study(link or directory.as_posix(), report, sweep["preset"], len(sweep["cells"]), run)


# ---------------------------------------------------------------------- picking entries


def find(entries: Sequence[Mapping[str, Any]], **keys) -> Mapping[str, Any] | None:
  """The one entry whose fields equal `keys` (None when there is none)."""
  found = [e for e in entries if all(e.get(k) == v for k, v in keys.items())]
  if len(found) > 1:
    raise ValueError(f"report.json: {len(found)} entries match {keys}, expected at most one")
  return found[0] if found else None


def interval(entry: Mapping[str, Any] | None) -> str:
  """`+0.0154 [-0.0091, +0.0395]`, or "not run" for a contrast the report lacks."""
  if entry is None or entry.get("difference") is None:
    return "not run"
  low, high = entry["ci"]
  return f"{entry['difference']:+.4f} [{low:+.4f}, {high:+.4f}]"


def excludes_zero(entry: Mapping[str, Any] | None) -> bool:
  return (
      entry is not None and None not in entry["ci"] and (entry["ci"][0] > 0 or entry["ci"][1] < 0)
  )


def verdict(entry: Mapping[str, Any], better: str, worse: str) -> str:
  if not excludes_zero(entry):
    return "its interval includes zero, so the two are not distinguishable at this scale"
  return better if entry["difference"] > 0 else worse


@dataclasses.dataclass(frozen=True)
class Picked:
  """The contrasts the section reports, for the primary pair and dense."""

  primary: Mapping[str, Any]
  vs_dense: dict[str, Mapping | None]  # kind -> kind minus dense, focus count, full pool
  training_trend: dict[str, Mapping | None]  # kind -> change of that gap from 2 to 11 languages
  pool_trend: dict[str, Mapping | None]  # kind -> change of that gap over the pool (primary)
  pool_trend_other: dict[str, Mapping | None]  # the same on the other dataset's full pool
  eval_only: dict[str, Mapping | None]  # kind -> dense model under the mask minus dense
  adaptation: dict[str, Mapping | None]  # kind -> trained with the mask minus eval-only
  mono: dict[float, dict[str, Mapping | None]]  # mono_prob -> kind -> hybrid minus that
  curves: dict[str, Mapping | None]  # kind -> learning curve at the focus count
  other_dataset: str | None
  other_pairs: list[Mapping[str, Any]]  # the design's other matched pairs, same slice


def pick(report: Mapping[str, Any]) -> Picked:
  p = report.get("primary")
  if not p:
    raise ValueError(
        "report.json: no primary contrast (the grid has no matched pair at the "
        "largest training-language count yet)"
    )
  dataset, n, pool = p["dataset"], p["num_languages"], p["pool_languages"]
  kinds = (p["kind_b"], p["kind_a"])  # local, block-sparse
  contrasts, trends = report["contrasts"], report["trends"]
  common = dict(dataset=dataset, metric=METRIC, mono_prob=HYBRID)

  def gap(kind, **keys):
    return find(contrasts, family="vs_dense", kind_a=kind, **{**common, **keys})

  other = next((d for d in report["datasets"] if d != dataset), None)
  other_pool = _full_pool(report, other) if other else None
  mono = {}
  for prob in (1.0, 0.0):
    mono[prob] = {
        k: find(
            contrasts,
            family="mono",
            kind_a=k,
            dataset=dataset,
            metric=METRIC,
            num_languages=n,
            pool_languages=pool,
            mono_prob_b=prob,
        )
        for k in ("dense", *kinds)
    }
  return Picked(
      primary=p,
      vs_dense={k: gap(k, num_languages=n, pool_languages=pool) for k in kinds},
      training_trend={
          k: find(
              trends,
              axis="training",
              family="vs_dense",
              kind_a=k,
              pool_languages=pool,
              from_languages=TRAINING_AXIS[0],
              to_languages=TRAINING_AXIS[1],
              **common,
          )
          for k in kinds
      },
      pool_trend={
          k: find(
              trends,
              axis="pool",
              family="vs_dense",
              kind_a=k,
              num_languages=n,
              from_languages=2,
              to_languages=pool,
              **common,
          )
          for k in kinds
      },
      pool_trend_other={
          k: other
          and find(
              trends,
              axis="pool",
              family="vs_dense",
              kind_a=k,
              num_languages=n,
              from_languages=2,
              to_languages=other_pool,
              **{**common, "dataset": other},
          )
          for k in kinds
      },
      eval_only={
          k: find(
              contrasts,
              family="eval_only",
              kind_a=k,
              num_languages=n,
              pool_languages=pool,
              **common,
          )
          for k in kinds
      },
      adaptation={
          k: find(
              contrasts,
              family="adaptation",
              kind_a=k,
              num_languages=n,
              pool_languages=pool,
              **common,
          )
          for k in kinds
      },
      mono=mono,
      curves={
          k: find(
              report["learning_curves"].get(dataset, []), kind=k, num_languages=n, mono_prob=HYBRID
          )
          for k in ("dense", *kinds)
      },
      other_dataset=other,
      other_pairs=[
          c
          for a, b, _ in report["design"]["matched"]
          if (a, b) != (p["a"], p["b"])
          for c in [
              find(
                  contrasts,
                  family="matched",
                  a=a,
                  b=b,
                  num_languages=n,
                  pool_languages=pool,
                  **common,
              )
          ]
          if c is not None
      ],
  )


def _full_pool(report: Mapping[str, Any], dataset: str) -> int | None:
  pools = [int(size) for cell in report["cells"] for size in cell["pools"].get(dataset, {})]
  return max(pools) if pools else None


def _arm(report: Mapping[str, Any], kind: str, dataset: str, n: int, pool: int) -> str:
  arm = find(report["arms"], kind=kind, num_languages=n, mono_prob=HYBRID, eval_only=False)
  value = arm and arm["pools"].get(dataset, {}).get(str(pool), {}).get(METRIC)
  return "not run" if value is None else f"{value:.4f}"


def _curve(curve: Mapping[str, Any] | None) -> str:
  if not curve or None in curve[METRIC]:
    return "not run"
  values = " -> ".join(f"{v:.4f}" for v in curve[METRIC])
  return f"{values} (steps {', '.join(str(s) for s in curve['steps'])})"


def _curve_gain(curve: Mapping[str, Any] | None) -> float | None:
  if not curve or len(curve[METRIC]) < 2 or None in curve[METRIC][-2:]:
    return None
  return curve[METRIC][-1] - curve[METRIC][-2]


# ---------------------------------------------------------------------- the section


def answer_section(study: Study) -> str:
  """The README section (between `BEGIN` and `END`, markers included)."""
  report, run = study.report, study.run
  picked = pick(report)
  p = picked.primary
  dataset, n, pool = p["dataset"], p["num_languages"], p["pool_languages"]
  local, sparse = p["kind_b"], p["kind_a"]
  names = {"dense": "dense", local: f"local `{local}`", sparse: f"block-sparse `{sparse}`"}
  done = len(report["cells"])
  partial = (
      ""
      if done == study.num_cells
      else f" **{done} of the grid's {study.num_cells} cells have finished**; the rest of "
      f"the grid is still running, so every number here may move."
  )
  gains = {k: _curve_gain(c) for k, c in picked.curves.items()}
  rising = [k for k, g in gains.items() if g is not None and g > 0]

  text = [
      BEGIN,
      "## The answer so far",
      "",
      f"From the `{study.grid}` grid in [{study.directory}]({study.directory}/report.md) "
      f"({study.run['model']} fine-tuned for {run['train_steps']} steps of {run['batch_size']} "
      f"pairs on XQuAD-R's training articles, {run['max_passage_length']}-token passages; "
      f"{p['questions']} held-out {DATASET_NAMES.get(dataset, dataset)} questions in {pool} languages, "
      f"{p['clusters']} {p['cluster_unit']} clusters, seeds "
      f"{', '.join(str(s) for s in p['seeds'])}; 95% cluster-bootstrap intervals; "
      f"macro Mul.).{partial}",
      "",
      f"At {n} training languages and matched attended fraction ({sparse} "
      f"{p['fraction_a']:.3f}, {local} {p['fraction_b']:.3f}), block-sparse minus local "
      f"attention is **{interval(p)}**: "
      f"{verdict(p, 'block-sparse retrieves better', 'block-sparse retrieves worse')}. "
      f"Both lose against dense ({names[local]} {interval(picked.vs_dense[local])}, "
      f"{names[sparse]} {interval(picked.vs_dense[sparse])}). "
      + _other_pairs_sentence(picked.other_pairs)
      + _trend_sentence(picked, names, local, sparse, n, pool, dataset)
      + f" Sparsifying the dense-fine-tuned model at evaluation only costs "
      f"{interval(picked.eval_only[local])} (local) and {interval(picked.eval_only[sparse])} "
      f"(block-sparse); training with the mask adds {interval(picked.adaptation[local])} and "
      f"{interval(picked.adaptation[sparse])}. "
      + _mono_sentence(picked, names)
      + " On the learning-curve subset ("
      + f"{run.get('curve_questions')} questions, no interval), "
      + (
          f"Mul. still rises over the last {_last_interval(picked)} steps for "
          f"{_join([names[k] for k in rising])}: {run['train_steps']}-step training has not "
          f"converged, and these numbers may move with longer training."
          if rising
          else "no arm still rises over the last logged steps."
          if any(g is not None for g in gains.values())
          else "no learning curve was logged."
      ),
      "",
      f"| {DATASET_NAMES.get(dataset, dataset)}, macro Mul. [95% CI] | dense | {names[local]} | {names[sparse]} |",
      "| --- | --- | --- | --- |",
      f"| Mul., {n} training languages, pool of {pool} | "
      + " | ".join(_arm(report, k, dataset, n, pool) for k in ("dense", local, sparse))
      + " |",
      f"| block-sparse minus local (matched, level {p['level']}) | | | {interval(p)} |",
      *(
          f"| `{c['a']}` minus `{c['b']}` (matched, level {c['level']}; fractions "
          f"{c['fraction_a']:.3f}, {c['fraction_b']:.3f}) | | | {interval(c)} |"
          for c in picked.other_pairs
      ),
      f"| minus dense | | {interval(picked.vs_dense[local])} | "
      f"{interval(picked.vs_dense[sparse])} |",
      f"| change of the gap to dense, {TRAINING_AXIS[0]} to {TRAINING_AXIS[1]} training "
      f"languages | | {interval(picked.training_trend[local])} | "
      f"{interval(picked.training_trend[sparse])} |",
      f"| change of the gap to dense, pool of 2 to {pool} languages | | "
      f"{interval(picked.pool_trend[local])} | {interval(picked.pool_trend[sparse])} |",
  ]
  if picked.other_dataset:
    other_pool = _full_pool(report, picked.other_dataset)
    text.append(
        f"| {DATASET_NAMES.get(picked.other_dataset, picked.other_dataset)}: change of the gap, pool of 2 to {other_pool} "
        f"languages | | {interval(picked.pool_trend_other[local])} | "
        f"{interval(picked.pool_trend_other[sparse])} |"
    )
  text += [
      f"| mask at evaluation only (dense-fine-tuned model) minus dense | | "
      f"{interval(picked.eval_only[local])} | {interval(picked.eval_only[sparse])} |",
      f"| trained with the mask minus evaluation-only mask | | "
      f"{interval(picked.adaptation[local])} | {interval(picked.adaptation[sparse])} |",
      *(
          f"| hybrid minus {label} training | "
          + " | ".join(interval(picked.mono[prob][k]) for k in ("dense", local, sparse))
          + " |"
          for prob, label in ((1.0, "X-X-mono"), (0.0, "X-Y"))
      ),
      f"| learning curve, Mul. on {run.get('curve_questions')} questions | "
      + " | ".join(_curve(picked.curves[k]) for k in ("dense", local, sparse))
      + " |",
      "",
      f"What this CPU scale cannot show: {run['train_steps']}-step warm starts from an already "
      f"trained retriever (not converged fine-tuning), {run['eval_questions']} evaluation "
      f"questions per dataset (wide intervals), {run['max_passage_length']}-token passages "
      f"(where attention is a small share of the cost), and only the training-language counts "
      f"and seeds listed. " + gpu_sentence("gpu"),
      "",
      f"![Degradation from dense against training languages]"
      f"({study.directory}/vs_training_{dataset}.png)",
      END,
  ]
  return "\n".join(text)


def gpu_sentence(name: str) -> str:
  """What the GPU grid `name` adds, from its definition in experiments.sweep."""
  from experiments.options import PRESETS
  from experiments.sweep import STUDIES

  study = STUDIES[name]
  preset = PRESETS[study.preset]
  counts = sorted({n for n, _ in study.main})
  seeds = sorted({s for _, seeds in study.main for s in seeds})
  data = " and ".join(DATASET_NAMES.get(d, d) for d in preset["eval_data"])
  return (
      f"The `{name}` grid (`python -m experiments.sweep --preset {name}`) runs the same design "
      f"with {preset['train_steps']}-step runs of {preset['batch_size']} pairs, evaluation on "
      f"{data} without a question limit, {len(seeds)} seeds at {_join([str(n) for n in counts])} training languages "
      f"and {preset['max_passage_length']}-token passages; it has not run yet."
  )


def _trend_sentence(picked: Picked, names, local, sparse, n, pool, dataset) -> str:
  training, pools = picked.training_trend, picked.pool_trend
  moving = [t for trend in (training, pools) for t in trend.values() if excludes_zero(t)]
  close = (
      "each of these intervals includes zero."
      if not moving
      else f"{len(moving)} of these 4 intervals {'excludes' if len(moving) == 1 else 'exclude'} "
      f"zero."
  )
  return (
      f"From {TRAINING_AXIS[0]} to {TRAINING_AXIS[1]} training languages the gap to dense "
      f"changes by {interval(training[local])} (local) and {interval(training[sparse])} "
      f"(block-sparse); from a pool of 2 to {pool} languages by {interval(pools[local])} and "
      f"{interval(pools[sparse])}; {close}"
  )


def _other_pairs_sentence(pairs: Sequence[Mapping[str, Any]]) -> str:
  if not pairs:
    return ""
  pieces = [
      f"`{c['a']}` minus `{c['b']}` at level {c['level']} is {interval(c)} ("
      f"{verdict(c, 'block-sparse better', 'block-sparse worse').split(',')[0]})"
      for c in pairs
  ]
  return "Of the other matched pairs, " + "; ".join(pieces) + ". "


def _mono_sentence(picked: Picked, names) -> str:
  entries = [(prob, k, e) for prob, by_kind in picked.mono.items() for k, e in by_kind.items()]
  if all(e is None for _, _, e in entries):
    return "Hybrid against X-X-mono and X-Y training has not run yet."
  label = {1.0: "X-X-mono", 0.0: "X-Y"}
  pieces = [f"{names[k]} {interval(e)} vs {label[prob]}" for prob, k, e in entries if e is not None]
  return "Hybrid batches minus single-kind training: " + "; ".join(pieces) + "."


def _last_interval(picked: Picked) -> int | None:
  steps = next((c["steps"] for c in picked.curves.values() if c and len(c["steps"]) > 1), None)
  return None if steps is None else steps[-1] - steps[-2]


def _join(items: Sequence[str]) -> str:
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------------- the README


def replace_section(readme: str, section: str) -> str:
  """`readme` with the text from `BEGIN` to `END` replaced by `section`."""
  start, end = readme.find(BEGIN), readme.find(END)
  if start < 0 or end < start:
    raise ValueError(f"--readme: expected the markers {BEGIN!r} ... {END!r} in the file")
  return readme[:start] + section + readme[end + len(END) :]


def readme_section(readme: str) -> str:
  start, end = readme.find(BEGIN), readme.find(END)
  if start < 0 or end < start:
    raise ValueError(f"README: no section between {BEGIN!r} and {END!r}")
  return readme[start : end + len(END)]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m experiments.answer",
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("study", type=pathlib.Path, help="a published study directory")
  parser.add_argument("--readme", type=pathlib.Path, help="rewrite the section in this file")
  parser.add_argument(
      "--check", action="store_true", help="with --readme: exit 1 when the file's section is stale"
  )
  args = parser.parse_args(argv)
  if not (args.study / "report.json").is_file():
    parser.error(f"study: expected a directory with report.json, got {str(args.study)!r}")
  if args.check and args.readme is None:
    parser.error("--check: needs --readme")
  try:
    section = answer_section(load_study(args.study, args.study.as_posix().rstrip("/")))
    if args.readme is None:
      print(section)
      return 0
    before = args.readme.read_text()
    after = replace_section(before, section)
  except (OSError, ValueError) as error:
    print(f"experiments.answer: {error}", file=sys.stderr)
    return 2
  if args.check:
    if after != before:
      print(
          f"{args.readme}: the answer section is stale; run python -m experiments.answer "
          f"{args.study} --readme {args.readme}",
          file=sys.stderr,
      )
    return int(after != before)
  if after != before:
    tmp = args.readme.with_name(args.readme.name + ".tmp")
    tmp.write_text(after)
    tmp.replace(args.readme)
  return 0


if __name__ == "__main__":
  sys.exit(main())
