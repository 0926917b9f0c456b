"""`python -m experiments.sweep`: the study grid, its plan and its report.

How far does cross-lingual retrieval degrade with block-sparse attention,
compared with local attention at the same attended fraction (and with dense),
as the number of languages grows, on MLQA-R?

    python -m experiments.sweep --preset study-cpu --plan     # cells, attended fractions, time
    python -m experiments.sweep --preset study-cpu            # run it (resumable) -> runs/sweep-study-cpu
    python -m experiments.sweep --preset gpu --only dense-L11-s0
    python -m experiments.sweep --preset study-cpu --report-only

A study compares arms at matched compute. For each level (an attended
fraction such as 0.25 or 0.5) `solve_arms` picks the local window whose
attended fraction on the evaluation candidates is nearest the level, then the
random-block fraction of each block-sparse layout that attends as many pairs
as that window (the pair then differs by well under 0.02). Both language axes
vary: training languages are prefixes of `options.LANGUAGE_ORDER` (2, 4, 7,
11), and every report also holds nested evaluation pools of 2, 4, 7 (and 11)
languages from the same embeddings. Controls: dense zero-shot; dense
fine-tuned models re-evaluated under every sparse mask (capacity without
adaptation); X-X-mono (mono_prob 1) and X-Y (mono_prob 0) beside hybrid
batches; a learning curve on a small fixed subset.

Each cell is an `experiments.run` directory under `<out>/cells/<name>`; a cell
with results.json is finished and skipped, an unfinished one resumes, and the
report (experiments.report) is rebuilt after the first cell, then at most every
`REPORT_EVERY_S` seconds, and when the sweep ends (`--report-only` rebuilds it
at any time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from experiments import options, pipeline, report
from experiments.options import LANGUAGE_ORDER
from jxr._files import is_primary
from jxr.model.config import AttentionConfig

DENSE = AttentionConfig.dense()
MATCH_TOLERANCE = 0.02  # largest allowed gap in attended fraction within a matched pair
# A report costs seconds to minutes (figures, bootstrap over every contrast) and grows with the
# finished cells; rebuilt after every cell, it took a fifth of the tiny grid's time.
REPORT_EVERY_S = 300.0


# ---------------------------------------------------------------------- the design


@dataclasses.dataclass(frozen=True)
class Layout:
  """A block-sparse structure whose random-block fraction is solved per level."""

  block_size: int
  band: int
  global_blocks: int


@dataclasses.dataclass(frozen=True)
class Level:
  """A matched-compute level: one local window and these block-sparse layouts, one fraction."""

  target: float
  layouts: tuple[Layout, ...]


@dataclasses.dataclass(frozen=True)
class Study:
  """What a study grid runs, before the arms are solved from the measured lengths.

  `levels[0]` is the primary level: it runs on every (languages, seeds) entry
  of `main`; the other levels run on `other_levels`. Counts are numbers of
  training languages; each maps to the seeds it runs.
  """

  name: str  # the sweep's --preset
  preset: str  # the experiments.run preset every cell starts from
  overrides: tuple[tuple[str, Any], ...]
  levels: tuple[Level, ...]
  main: tuple[tuple[int, tuple[int, ...]], ...]
  other_levels: tuple[tuple[int, tuple[int, ...]], ...]
  mono_probs: tuple[float, ...] = (1.0, 0.0)  # X-X-mono, X-Y: dense + primary pair, seed 0
  eval_only: tuple[tuple[int, tuple[int, ...]], ...] = ()  # dense cells re-evaluated sparse
  curve_every: int | None = None  # learning curve: dense + primary pair, largest count, seed 0
  budget_hours: float = 6.0


@dataclasses.dataclass(frozen=True)
class CellSpec:
  """One run of the grid."""

  attention: AttentionConfig
  num_languages: int
  seed: int
  mono_prob: float = 0.5
  zero_shot: bool = False
  eval_only: tuple[AttentionConfig, ...] = ()
  curve: bool = False

  @property
  def name(self) -> str:
    mono = "" if self.mono_prob == 0.5 else f"-mono{self.mono_prob:g}"
    return f"{self.attention.label}-L{self.num_languages}-s{self.seed}{mono}"


@dataclasses.dataclass(frozen=True)
class Arms:
  """The solved arms: per level, the local window and its matched block-sparse layouts."""

  levels: tuple[tuple[float, AttentionConfig, tuple[AttentionConfig, ...]], ...]

  @property
  def sparse(self) -> tuple[AttentionConfig, ...]:
    return tuple(spec for _, local, layouts in self.levels for spec in (local, *layouts))

  def matched(self) -> tuple[tuple[AttentionConfig, AttentionConfig, float], ...]:
    """(block-sparse, local, level) for every layout of every level."""
    return tuple((bs, local, target) for target, local, layouts in self.levels for bs in layouts)


@dataclasses.dataclass(frozen=True)
class Grid:
  """A solved study: its cells, the matched pairs and the primary contrast."""

  study: Study
  arms: Arms
  cells: tuple[CellSpec, ...]

  @property
  def preset(self) -> str:
    """The sweep's name (`--preset`)."""
    return self.study.name

  def design(self) -> report.Design:
    _, local, layouts = self.arms.levels[0]
    return report.Design(
        matched=tuple((bs.label, lo.label, level) for bs, lo, level in self.arms.matched()),
        primary=(layouts[0].label, local.label),
    )


# 128-token passages: 8-token blocks with a band and a global block alone attend 0.29.
_CPU_LEVELS = (Level(0.25, (Layout(8, 1, 0),)), Level(0.5, (Layout(8, 1, 1), Layout(8, 1, 0))))
# 256-token passages: 16-token blocks with a band and a global block alone attend ~0.3.
_GPU_LEVELS = (Level(0.25, (Layout(8, 1, 1),)), Level(0.5, (Layout(16, 1, 1), Layout(16, 1, 0))))
# The largest count first: a sweep cut short still has the primary contrast.
_FULL_AXIS = ((11, (0, 1, 2)), (2, (0, 1, 2)), (4, (0, 1, 2)), (7, (0, 1, 2)))

STUDIES: dict[str, Study] = {
    # 2 CPU cores, at most 6 hours: 30-step warm starts, 100 questions per dataset.
    "study-cpu": Study(
        "study-cpu",
        "cpu",
        (
            ("eval_data", ("mlqa-r", "xquad-r")),
            ("eval_languages", None),
            ("eval_questions", 100),
            ("curve_questions", 30),
        ),
        _CPU_LEVELS,
        main=((11, (0, 1)), (2, (0, 1)), (4, (0,)), (7, (0,))),
        other_levels=((11, (0, 1)),),
        eval_only=((11, (0, 1)),),
        curve_every=10,
    ),
    # One GPU, the same design at full size: all of MLQA-R and the held-out XQuAD-R.
    "gpu": Study(
        "gpu",
        "gpu",
        (("eval_data", ("mlqa-r", "xquad-r")),),
        _GPU_LEVELS,
        main=_FULL_AXIS,
        other_levels=_FULL_AXIS,
        eval_only=((2, (0, 1, 2)), (11, (0, 1, 2))),
        curve_every=100,
        budget_hours=8.0,
    ),
    "pod": Study(
        "pod",
        "pod",
        (("eval_data", ("mlqa-r", "xquad-r")),),
        _GPU_LEVELS,
        main=_FULL_AXIS,
        other_levels=_FULL_AXIS,
        eval_only=((2, (0, 1, 2)), (11, (0, 1, 2))),
        curve_every=100,
        budget_hours=8.0,
    ),
    # Tests: the random 2-layer encoder, 48-token passages (hence 4-token blocks), one level
    # with and without global blocks, seconds a cell.
    "tiny": Study(
        "tiny",
        "tiny",
        (
            ("eval_data", ("mlqa-r", "xquad-r")),
            ("eval_languages", None),
            ("eval_questions", 8),
            ("curve_questions", 4),
        ),
        (Level(0.4, (Layout(4, 1, 0), Layout(4, 1, 1))),),
        main=((2, (0,)), (4, (0,))),
        other_levels=(),
        mono_probs=(1.0,),
        eval_only=((4, (0,)),),
        curve_every=1,
        budget_hours=0.5,
    ),
}


# ---------------------------------------------------------------------- solving the arms


def fraction_of(spec: AttentionConfig, lengths: Sequence[int], num_heads: int = 1) -> float:
  """Attended fraction of `spec` over sequences of these real lengths."""
  import pallas_kernels
  from jxr.model import attention_mask_for

  return pallas_kernels.attended_fraction(attention_mask_for(spec), lengths, num_heads)


def solve_window(target: float, lengths: Sequence[int]) -> AttentionConfig:
  """The local window whose attended fraction over `lengths` is nearest `target`.

  The fraction grows with the window, so a binary search finds the crossing.
  """
  if not 0.0 < target < 1.0:
    raise ValueError(f"target: expected an attended fraction in (0, 1), got {target!r}")
  low, high = 0, max(lengths)  # fraction(low) <= target < fraction(high) == 1
  while high - low > 1:
    mid = (low + high) // 2
    low, high = (
        (mid, high) if fraction_of(AttentionConfig.local(mid), lengths) <= target else (low, mid)
    )
  nearest = min(
      (low, high), key=lambda w: abs(fraction_of(AttentionConfig.local(w), lengths) - target)
  )
  return AttentionConfig.local(max(1, nearest))


def solve_layout(layout: Layout, target: float, lengths: Sequence[int]) -> AttentionConfig:
  """The block-sparse spec of `layout` whose attended fraction over `lengths` is nearest
  `target`; a ValueError names the floor when band and global blocks alone exceed it."""
  import pallas_kernels

  random = pallas_kernels.random_for_density(
      target, lengths, block=layout.block_size, local=layout.band, global_=layout.global_blocks
  )
  return AttentionConfig.block_sparse(
      layout.block_size,
      band=layout.band,
      global_blocks=layout.global_blocks,
      random=round(random, 6),
  )


def solve_arms(levels: Sequence[Level], lengths: Sequence[int]) -> Arms:
  """Per level, a local window and block-sparse layouts matched to the window's fraction."""
  solved = []
  for level in levels:
    local = solve_window(level.target, lengths)
    goal = fraction_of(local, lengths)
    layouts = []
    for layout in level.layouts:
      spec = solve_layout(layout, goal, lengths)
      gap = abs(fraction_of(spec, lengths) - goal)
      if gap > MATCH_TOLERANCE:
        raise ValueError(
            f"levels: {spec.label} attends {gap:.3f} more or less than {local.label}"
            f" ({goal:.3f}); use smaller blocks for a finer match"
        )
      layouts.append(spec)
    solved.append((level.target, local, tuple(layouts)))
  return Arms(tuple(solved))


def study_cells(study: Study, arms: Arms) -> tuple[CellSpec, ...]:
  """Every run of the study, in the order the sweep runs them (primary level first)."""
  _, local, layouts = arms.levels[0]
  primary = (DENSE, local, *layouts)
  eval_only_at = {(n, s) for n, seeds in study.eval_only for s in seeds}
  counts = [n for n, _ in study.main]
  first, largest = min(counts), max(counts)
  cells = []
  for n, seeds in study.main:
    for seed in seeds:
      for spec in primary:
        dense = spec == DENSE
        cells.append(
            CellSpec(
                spec,
                n,
                seed,
                zero_shot=dense and n == first and seed == min(seeds),
                eval_only=arms.sparse if dense and (n, seed) in eval_only_at else (),
                curve=study.curve_every is not None and n == largest and seed == 0,
            )
        )
  for _, local_other, layouts_other in arms.levels[1:]:
    for n, seeds in study.other_levels:
      cells += [CellSpec(spec, n, seed) for seed in seeds for spec in (local_other, *layouts_other)]
  for mono_prob in study.mono_probs:  # dense and the primary matched pair
    cells += [CellSpec(spec, largest, 0, mono_prob=mono_prob) for spec in primary[:3]]
  names = [c.name for c in cells]
  if len(set(names)) != len(names):
    raise ValueError(f"study: cells repeat: {sorted({n for n in names if names.count(n) > 1})}")
  return tuple(cells)


def base_config(study: Study) -> options.RunConfig:
  """The preset with the study's overrides (what every cell shares)."""
  values = dict(options.PRESETS[study.preset], preset=study.preset, out="")
  values.update(dict(study.overrides))
  return options.RunConfig(**values)


def candidate_lengths(study: Study) -> dict[str, list[int]]:
  """Token lengths of every evaluation dataset's candidates, as the cells will encode them."""
  config = base_config(study)
  plan = pipeline.make_plan(config.replace(languages=LANGUAGE_ORDER[:2]))
  encoder = pipeline.load_model(config)
  return {
      name: pipeline.token_lengths(
          encoder,
          task.cand_text,
          "passage",
          config.max_passage_length,
          pipeline.candidate_contexts(task, config),
      )
      for name, task in plan.eval_tasks.items()
  }


def make_grid(study: Study, lengths: Mapping[str, Sequence[int]]) -> Grid:
  """Solves the study's arms on the candidates of all its evaluation datasets together."""
  pooled = [n for values in lengths.values() for n in values]
  arms = solve_arms(study.levels, pooled)
  return Grid(study, arms, study_cells(study, arms))


def cell_config(grid: Grid, cell: CellSpec, out: pathlib.Path) -> options.RunConfig:
  if not 1 <= cell.num_languages <= len(LANGUAGE_ORDER):
    raise ValueError(f"num_languages: expected 1..{len(LANGUAGE_ORDER)}, got {cell.num_languages}")
  return base_config(grid.study).replace(
      attention=cell.attention,
      seed=cell.seed,
      mono_prob=cell.mono_prob,
      train_data="xquad-r",
      languages=LANGUAGE_ORDER[: cell.num_languages],
      eval_only=cell.eval_only,
      curve_every=grid.study.curve_every if cell.curve else None,
      out=str(out / "cells" / cell.name),
  )


# ---------------------------------------------------------------------- running


def load_cells(out: pathlib.Path, grid: Grid) -> list[report.Cell]:
  """Finished cells of `grid` (those with results.json)."""
  cells = []
  for cell in grid.cells:
    path = out / "cells" / cell.name / "results.json"
    if path.is_file():
      cells.append(
          report.Cell(
              name=cell.name,
              kind=cell.attention.label,
              attention=cell.attention.to_json(),
              num_languages=cell.num_languages,
              training_languages=LANGUAGE_ORDER[: cell.num_languages],
              seed=cell.seed,
              mono_prob=cell.mono_prob,
              results=json.loads(path.read_text()),
          )
      )
  return cells


def write_sweep_report(
    out: pathlib.Path, grid: Grid, num_samples: int = 2000
) -> pathlib.Path | None:
  cells = load_cells(out, grid)
  if not cells:
    return None
  if not is_primary():  # on a pod, process 0 writes
    return out / "report.md"
  header = [
      f"Grid `{grid.preset}`: {len(cells)} of {len(grid.cells)} cells finished. Training "
      f"languages and evaluation pools are prefixes of {' '.join(LANGUAGE_ORDER)}.",
      "",
  ]
  return report.write_report(cells, out, grid.design(), num_samples=num_samples, header=header)


Runner = Callable[..., dict]


def run_sweep(
    grid: Grid,
    out: pathlib.Path,
    *,
    only: Sequence[str] | None = None,
    keep_checkpoints: bool = False,
    runner: Runner = pipeline.run,
    log: Callable[[str], None] = print,
    num_samples: int = 2000,
    report_every_s: float = REPORT_EVERY_S,
) -> pathlib.Path | None:
  """Runs every unfinished cell (or those named in `only`); returns the report's path.

  The report is rebuilt after the first cell this call runs, then after a cell
  when `report_every_s` seconds have passed since the last rebuild, and at the
  end unless the last cell's rebuild is current.
  """
  todo = list(grid.cells)
  if only:
    names = {c.name for c in todo}
    unknown = sorted(set(only) - names)
    if unknown:
      raise ValueError(f"only: unknown cells {unknown}; this grid has {sorted(names)}")
    todo = [c for c in todo if c.name in set(only)]
  _check_sweep_file(out, grid)  # after the checks: a refused command writes nothing
  reported_at, current = -float("inf"), None  # `current`: the report holds every finished cell
  for i, cell in enumerate(todo):
    config = cell_config(grid, cell, out)
    cell_dir = pathlib.Path(config.out)
    if (cell_dir / "results.json").is_file():
      log(f"[{i + 1}/{len(todo)}] {cell.name}: finished, skipped")
      continue
    start = time.perf_counter()
    log(f"[{i + 1}/{len(todo)}] {cell.name}: running")
    runner(
        config, resume=(cell_dir / "config.json").is_file(), log=log, with_zero_shot=cell.zero_shot
    )
    if not keep_checkpoints:  # the exported model stays; optimizer state is large
      shutil.rmtree(cell_dir / "train" / "checkpoints", ignore_errors=True)
    log(f"[{i + 1}/{len(todo)}] {cell.name}: {time.perf_counter() - start:.0f} s")
    current = None
    if time.perf_counter() - reported_at >= report_every_s:
      current, reported_at = write_sweep_report(out, grid, num_samples), time.perf_counter()
  return current or write_sweep_report(out, grid, num_samples)


def sweep_json(grid: Grid) -> dict[str, Any]:
  return json.loads(
      json.dumps(
          {
              "preset": grid.preset,
              "cells": [c.name for c in grid.cells],
              "overrides": dict(grid.study.overrides),
              "language_order": LANGUAGE_ORDER,
              "levels": [
                  {"target": t, "local": lo.to_json(), "block_sparse": [b.to_json() for b in bs]}
                  for t, lo, bs in grid.arms.levels
              ],
          }
      )
  )


def _check_sweep_file(out: pathlib.Path, grid: Grid) -> None:
  """sweep.json records the solved grid; a directory holding another grid is refused."""
  if not is_primary():
    return
  path, data = out / "sweep.json", sweep_json(grid)
  if path.is_file():
    saved = json.loads(path.read_text())
    if saved.get("preset") != grid.preset or saved.get("cells") != data["cells"]:
      raise ValueError(
          f"out: {out} holds another sweep (preset {saved.get('preset')!r}, "
          f"{len(saved.get('cells', []))} cells); choose another --out"
      )
  out.mkdir(parents=True, exist_ok=True)
  pipeline.write_json(path, data)


def publish(
    out: pathlib.Path, grid: Grid, dest: pathlib.Path, num_samples: int = 2000
) -> list[pathlib.Path]:
  """Copies what a reader needs into `dest`: the report and its plots, and per finished cell
  its `config.json` (enough to rerun it) and gzipped `results.json` (per-query AP included).

  No checkpoints or model weights. Returns the files written.
  """
  import gzip

  report_path = write_sweep_report(out, grid, num_samples)
  if report_path is None:
    raise ValueError(f"out: no finished cell under {out / 'cells'} to publish")
  dest.mkdir(parents=True, exist_ok=True)
  written = []
  for source in [report_path, out / "report.json", out / "sweep.json", *sorted(out.glob("*.png"))]:
    shutil.copyfile(source, dest / source.name)
    written.append(dest / source.name)
  for cell in load_cells(out, grid):
    cell_dest = dest / "cells" / cell.name
    cell_dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "cells" / cell.name / "config.json", cell_dest / "config.json")
    with gzip.open(cell_dest / "results.json.gz", "wt", compresslevel=9) as f:
      json.dump(cell.results, f)
    written += [cell_dest / "config.json", cell_dest / "results.json.gz"]
  return written


def restore(source: pathlib.Path, grid: Grid, out: pathlib.Path) -> list[str]:
  """The inverse of `publish`: finished cells published under `source` become finished cells of
  `out` (config.json and results.json), so a sweep on a fresh checkout skips them.

  Cells already in `out` are left alone. Returns the names restored.
  """
  import gzip

  restored = []
  for cell in grid.cells:
    published = source / "cells" / cell.name
    target = out / "cells" / cell.name
    if not (published / "results.json.gz").is_file() or (target / "results.json").exists():
      continue
    with gzip.open(published / "results.json.gz", "rt") as f:
      results = json.load(f)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(published / "config.json", target / "config.json")
    pipeline.write_json(target / "results.json", results)
    restored.append(cell.name)
  return restored


# ---------------------------------------------------------------------- plan and budget


def cell_seconds(cell: CellSpec, profile: Mapping[str, Any]) -> float:
  """A cell's expected wall time from one profiled cell's results.json.

  Every cell trains the same steps on the same shapes and evaluates the same
  sets, so it costs the profiled cell's training plus one evaluation per
  stage it runs (fine-tuned, zero-shot, each eval-only mask) plus its learning
  curve. Attention is a few percent of the FLOPs at these lengths, so the kind
  barely matters; profile a dense cell for an upper bound.
  """
  seconds = profile.get("seconds") or {}
  # train.seconds survives a resumed cell (seconds.train then counts only the last session).
  train = float((profile.get("train") or {}).get("seconds") or seconds.get("train", 0.0))
  evaluation = float(seconds.get("fine_tuned", 0.0))
  if train <= 0 or evaluation <= 0:
    raise ValueError(
        "profile: expected a finished cell's results.json with seconds.train and "
        "seconds.fine_tuned > 0"
    )
  # The profiled training includes its learning curve's evaluations (if any): count them apart.
  curve = sum(float(p.get("seconds", 0.0)) for p in profile.get("learning_curve") or [])
  stages = 1 + int(cell.zero_shot) + len(cell.eval_only)
  return train - curve + stages * evaluation + (curve if cell.curve else 0.0)


def plan_rows(
    grid: Grid, lengths: Mapping[str, Sequence[int]], profile: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
  """One row per cell: its arm, language count, seed, attended fractions and expected seconds."""
  fractions = {
      spec: {name: fraction_of(spec, values) for name, values in lengths.items()}
      for spec in {c.attention for c in grid.cells}
  }
  return [
      {
          "name": c.name,
          "attention": c.attention.label,
          "num_languages": c.num_languages,
          "seed": c.seed,
          "mono_prob": c.mono_prob,
          "eval_only": len(c.eval_only),
          "zero_shot": c.zero_shot,
          "curve": c.curve,
          "attended_fraction": fractions[c.attention],
          "seconds": cell_seconds(c, profile) if profile else None,
      }
      for c in grid.cells
  ]


def plan_text(
    grid: Grid,
    rows: Sequence[Mapping[str, Any]],
    lengths: Mapping[str, Sequence[int]],
    profile_dir: pathlib.Path | None,
) -> str:
  datasets = list(lengths)
  lines = [
      f"Grid {grid.preset}: {len(rows)} cells. Attended fraction = allowed query-key pairs "
      "over all real-token pairs of each dataset's evaluation candidates "
      f"({', '.join(f'{n}: {len(v)} candidates' for n, v in lengths.items())}).",
      "",
      "Matched pairs (block-sparse vs local):",
  ]
  for bs, local, level in grid.arms.matched():
    parts = [
        f"{n} {fraction_of(bs, lengths[n]):.3f} vs {fraction_of(local, lengths[n]):.3f}"
        for n in datasets
    ]
    lines.append(f"  level {level:.2f}: {bs.label} vs {local.label}: {'; '.join(parts)}")
  header = f"{'cell':<52} {'mono':>4} {'evals':>5} " + " ".join(f"{n:>8}" for n in datasets)
  lines += ["", header + f" {'minutes':>8}"]
  for r in rows:
    evals = 1 + r["eval_only"] + int(r["zero_shot"])
    minutes = "n/a" if r["seconds"] is None else f"{r['seconds'] / 60:.1f}"
    lines.append(
        f"{r['name']:<52} {r['mono_prob']:>4g} {evals:>5} "
        + " ".join(f"{r['attended_fraction'][n]:>8.3f}" for n in datasets)
        + f" {minutes:>8}"
        + ("  +curve" if r["curve"] else "")
    )
  if profile_dir is None:
    first = grid.cells[0].name
    lines += [
        "",
        f"No profiled cell: run one (--only {first}), then --plan again for the "
        "estimated total time.",
    ]
  else:
    total = sum(r["seconds"] for r in rows) / 3600
    verdict = "fits" if total <= grid.study.budget_hours else "does NOT fit"
    lines += [
        "",
        f"Estimated total: {total:.2f} h from the profiled cell {profile_dir} (its "
        f"training and one evaluation, scaled per cell); the {grid.study.budget_hours:g}-hour"
        f" budget {verdict}.",
    ]
  return "\n".join(lines)


def find_profile(out: pathlib.Path, grid: Grid) -> pathlib.Path | None:
  """The first finished cell of the grid under `out` (the one the plan scales from)."""
  for cell in grid.cells:
    if (out / "cells" / cell.name / "results.json").is_file():
      return out / "cells" / cell.name
  return None


# ---------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m experiments.sweep", description=__doc__.split("\n")[0]
  )
  p.add_argument(
      "--preset",
      choices=sorted(STUDIES),
      help="study grid (default: study-cpu "
      "without an accelerator, gpu with one, pod across processes or on a TPU)",
  )
  p.add_argument("--out", help="sweep directory (default runs/sweep-<preset>)")
  p.add_argument("--only", help="comma-separated cell names to run (e.g. dense-L11-s0)")
  p.add_argument(
      "--model",
      help="encoder for every cell instead of the preset's (a name, "
      "checkpoint directory or HF id, as experiments.run --model)",
  )
  p.add_argument(
      "--plan",
      action="store_true",
      help="print the cells, their attended fractions "
      "and the estimated time (from --profile or the first finished cell), run nothing",
  )
  p.add_argument("--profile", metavar="CELL_DIR", help="finished cell to scale --plan's time from")
  p.add_argument(
      "--report-only", action="store_true", help="rebuild the report from finished " "cells"
  )
  p.add_argument(
      "--publish",
      metavar="DIR",
      help="rebuild the report and copy it, its plots and "
      "each finished cell's config.json and gzipped results.json into DIR",
  )
  p.add_argument(
      "--restore",
      metavar="DIR",
      help="first take the finished cells published in "
      "DIR (by --publish) as finished cells of --out, e.g. on a fresh checkout",
  )
  p.add_argument(
      "--keep-checkpoints",
      action="store_true",
      help="keep each cell's optimizer checkpoints (large) after it finishes",
  )
  p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
  return p


def _default_preset() -> str:
  preset = options.default_preset()
  return "study-cpu" if preset == "cpu" else preset


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  from experiments import run as run_module

  if run_module._multi_process():
    run_module._start_distributed()  # before the default preset queries the devices
  study = STUDIES[args.preset or _default_preset()]
  if args.model:
    try:
      model = options._model(args.model)
    except options.FlagError as e:
      parser.error(str(e))
    study = dataclasses.replace(study, overrides=study.overrides + (("model", model),))
  if args.bootstrap < 100:
    parser.error(f"--bootstrap: expected at least 100 resamples, got {args.bootstrap}")
  profile_dir = pathlib.Path(args.profile) if args.profile else None
  if profile_dir is not None and not (profile_dir / "results.json").is_file():
    parser.error(f"--profile: {profile_dir / 'results.json'} does not exist (a finished cell)")
  out = pathlib.Path(args.out or f"runs/sweep-{args.preset or _default_preset()}")
  try:
    lengths = candidate_lengths(study)
    grid = make_grid(study, lengths)
  except ValueError as e:
    parser.error(str(e))
  if args.restore:
    names = restore(pathlib.Path(args.restore), grid, out)
    print(f"restored {len(names)} finished cells from {args.restore} into {out / 'cells'}")
  if args.plan or args.publish:
    profile_dir = profile_dir or find_profile(out, grid)
    profile = json.loads((profile_dir / "results.json").read_text()) if profile_dir else None
    plan = plan_text(grid, plan_rows(grid, lengths, profile), lengths, profile_dir)
  if args.plan:
    print(plan)
    return 0
  if args.publish:
    try:
      written = publish(out, grid, pathlib.Path(args.publish), args.bootstrap)
    except ValueError as e:
      parser.error(str(e))
    pipeline.write_text(pathlib.Path(args.publish) / "plan.txt", plan + "\n")
    print(f"published {len(written) + 1} files to {args.publish}")
    return 0
  if args.report_only:
    path = write_sweep_report(out, grid, args.bootstrap)
    if path is None:
      parser.error(f"--report-only: no finished cell under {out / 'cells'}")
    print(f"report: {path}")
    return 0
  only = [s for s in (args.only or "").split(",") if s] or None
  try:
    path = run_sweep(
        grid,
        out,
        only=only,
        keep_checkpoints=args.keep_checkpoints,
        num_samples=args.bootstrap,
        log=lambda m: print(m, flush=True),
    )
  except KeyboardInterrupt:
    print(
        "\ninterrupted: rerun the same command to resume (finished cells are skipped)",
        file=sys.stderr,
    )
    return 130
  except ValueError as e:
    parser.error(str(e))
  print(f"report: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
