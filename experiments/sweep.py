"""`python -m experiments.sweep`: the research grid and its report.

How much does cross-lingual retrieval degrade with local or block-sparse
attention, relative to dense, as the number of training languages grows?

    python -m experiments.sweep --preset cpu --out runs/sweep-cpu      # reduced grid, < 1 hour
    python -m experiments.sweep --preset gpu --out runs/sweep-gpu --only dense-L11-s0
    python -m experiments.sweep --preset gpu --budget runs/sweep-gpu/cells/dense-L11-s0
    python -m experiments.sweep --preset gpu --out runs/sweep-gpu      # the full grid
    python -m experiments.sweep --out runs/sweep-gpu --report-only     # rebuild report.md

Grid: attention kind x number of training languages x seed. Training
languages are a prefix of `LANGUAGE_ORDER` (en de zh ar es hi vi ru el th tr):
2 = en, de; 4 adds two non-Latin scripts (zh, ar); 7 = exactly MLQA-R's
languages; 11 = all of XQuAD-R. Every cell trains on XQuAD-R's training
articles and evaluates (candidates with their paragraph) on the held-out
XQuAD-R articles and, on the GPU grid, all of MLQA-R.

Each cell is an `experiments.run` directory under `<out>/cells/`; a cell with
results.json is finished and skipped, an unfinished one resumes. report.md is
rebuilt after every cell, so a partial sweep has a partial report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from experiments import options, pipeline, report

LANGUAGE_ORDER = ("en", "de", "zh", "ar", "es", "hi", "vi", "ru", "el", "th", "tr")
GPU_BUDGET_HOURS = 8.0


@dataclasses.dataclass(frozen=True)
class Kind:
  attn: str
  window: int | None = None
  density: float | None = None

  @property
  def label(self) -> str:
    return report.kind_label(self.attn, self.window, self.density)


@dataclasses.dataclass(frozen=True)
class Grid:
  """A sweep: the run preset, what varies, and per-grid overrides of the preset."""
  preset: str
  kinds: tuple[Kind, ...]
  language_counts: tuple[int, ...]
  seeds: tuple[int, ...]
  overrides: tuple[tuple[str, Any], ...] = ()
  zero_shot: bool = True

  def cells(self) -> list[tuple[Kind, int, int]]:
    return [(k, n, s) for n in self.language_counts for s in self.seeds for k in self.kinds]

  def zero_shot_here(self, num_languages: int, seed: int) -> bool:
    """Zero-shot results depend only on the attention kind: one cell per kind evaluates them."""
    return self.zero_shot and num_languages == self.language_counts[0] and seed == self.seeds[0]


_WINDOWS, _DENSITIES = (8, 16, 32), (0.3, 0.5, 0.7)
GRIDS: dict[str, Grid] = {
    # 7 kinds x 4 language counts x 3 seeds = 84 cells; see `budget` for the 8 H100-hour check.
    "gpu": Grid("gpu", (Kind("dense"), *(Kind("local", window=w) for w in _WINDOWS),
                        *(Kind("block_sparse", density=d) for d in _DENSITIES)),
                (2, 4, 7, 11), (0, 1, 2)),
    "pod": Grid("pod", (Kind("dense"), *(Kind("local", window=w) for w in _WINDOWS),
                        *(Kind("block_sparse", density=d) for d in _DENSITIES)),
                (2, 4, 7, 11), (0, 1, 2)),
    # 3 kinds x 2 language counts x 1 seed, 4 evaluation languages x 200 held-out questions.
    "cpu": Grid("cpu", (Kind("dense"), Kind("local", window=16), Kind("block_sparse", density=0.5)),
                (2, 4), (0,),
                overrides=(("eval_languages", ("en", "de", "zh", "ar")), ("eval_questions", 200)),
                zero_shot=False),
    # Tests: two kinds, seconds a cell.
    "tiny": Grid("tiny", (Kind("dense"), Kind("local", window=8)), (2,), (0,), zero_shot=False),
}


def cell_name(kind: Kind, num_languages: int, seed: int) -> str:
  return f"{kind.label}-L{num_languages}-s{seed}"


def cell_config(grid: Grid, kind: Kind, num_languages: int, seed: int,
                out: pathlib.Path) -> options.RunConfig:
  if not 1 <= num_languages <= len(LANGUAGE_ORDER):
    raise ValueError(f"num_languages: expected 1..{len(LANGUAGE_ORDER)}, got {num_languages}")
  values = dict(options.PRESETS[grid.preset])
  values.update(dict(grid.overrides))
  values.update(preset=grid.preset, attn=kind.attn, seed=seed, train_data="xquad-r",
                languages=LANGUAGE_ORDER[:num_languages],
                window=kind.window if kind.attn == "local" else None,
                density=kind.density if kind.attn == "block_sparse" else None,
                out=str(out / "cells" / cell_name(kind, num_languages, seed)))
  return options.RunConfig(**values)


def load_cells(out: pathlib.Path, grid: Grid) -> list[report.Cell]:
  """Finished cells of `grid` (those with results.json)."""
  cells = []
  for kind, n, seed in grid.cells():
    path = out / "cells" / cell_name(kind, n, seed) / "results.json"
    if path.is_file():
      cells.append(report.Cell(kind.label, n, seed, json.loads(path.read_text())))
  return cells


def write_sweep_report(out: pathlib.Path, grid: Grid, num_samples: int = 2000) -> pathlib.Path | None:
  cells = load_cells(out, grid)
  if not cells:
    return None
  if not pipeline._primary():  # on a pod, process 0 writes
    return out / "report.md"
  total = len(grid.cells())
  header = [f"Grid `{grid.preset}`: {len(cells)} of {total} cells finished. Training languages "
            f"are prefixes of {' '.join(LANGUAGE_ORDER)}.", ""]
  return report.write_report(cells, out, num_samples=num_samples, header=header)


Runner = Callable[..., dict]


def run_sweep(grid: Grid, out: pathlib.Path, *, only: Sequence[str] | None = None,
              keep_checkpoints: bool = False, runner: Runner = pipeline.run,
              log: Callable[[str], None] = print, num_samples: int = 2000) -> pathlib.Path | None:
  """Runs every unfinished cell (or those named in `only`), rebuilding the report after each."""
  out.mkdir(parents=True, exist_ok=True)
  _check_sweep_file(out, grid)
  todo = grid.cells()
  if only:
    names = {cell_name(*c) for c in todo}
    unknown = sorted(set(only) - names)
    if unknown:
      raise ValueError(f"only: unknown cells {unknown}; this grid has {sorted(names)}")
    todo = [c for c in todo if cell_name(*c) in set(only)]
  for i, (kind, n, seed) in enumerate(todo):
    config = cell_config(grid, kind, n, seed, out)
    cell_dir = pathlib.Path(config.out)
    if (cell_dir / "results.json").is_file():
      log(f"[{i + 1}/{len(todo)}] {cell_dir.name}: finished, skipped")
      continue
    start = time.perf_counter()
    log(f"[{i + 1}/{len(todo)}] {cell_dir.name}: running")
    runner(config, resume=(cell_dir / "config.json").is_file(), log=log,
           with_zero_shot=grid.zero_shot_here(n, seed))
    if not keep_checkpoints:  # the exported model stays; optimizer state is large
      shutil.rmtree(cell_dir / "train" / "checkpoints", ignore_errors=True)
    log(f"[{i + 1}/{len(todo)}] {cell_dir.name}: {time.perf_counter() - start:.0f} s")
    write_sweep_report(out, grid, num_samples)
  return write_sweep_report(out, grid, num_samples)


def _check_sweep_file(out: pathlib.Path, grid: Grid) -> None:
  path = out / "sweep.json"
  if not pipeline._primary():
    return
  data = {"preset": grid.preset, "cells": [cell_name(*c) for c in grid.cells()],
          "overrides": {k: v for k, v in grid.overrides}, "language_order": LANGUAGE_ORDER}
  data = json.loads(json.dumps(data))
  if path.is_file():
    saved = json.loads(path.read_text())
    if saved.get("preset") != grid.preset:
      raise ValueError(f"out: {out} holds a sweep of preset {saved.get('preset')!r}, not "
                       f"{grid.preset!r}; choose another --out")
  path.write_text(json.dumps(data, indent=1) + "\n")


# ---------------------------------------------------------------------- GPU budget


def budget(cell_results: dict, grid: Grid, hours: float = GPU_BUDGET_HOURS) -> dict[str, Any]:
  """Extrapolates the grid's device time from one measured cell's results.json.

  Every cell of a grid trains the same steps on the same batch and lengths and
  evaluates the same sets, so a cell costs about what the measured one did;
  measure a dense cell (its attention visits every block, the others fewer)
  to get an upper bound. The zero-shot evaluation runs once per attention
  kind. Returns the total and, when it does not fit `hours`, the number of
  training steps that would.
  """
  seconds = cell_results.get("seconds") or {}
  # train.seconds survives a resumed cell (seconds.train then counts only the last session).
  train_s = float((cell_results.get("train") or {}).get("seconds") or seconds.get("train", 0.0))
  eval_s = float(seconds.get("fine_tuned", 0.0))
  zero_shot_s = float(seconds.get("zero_shot", 0.0)) if grid.zero_shot else 0.0
  if train_s <= 0:
    raise ValueError("cell_results: expected seconds.train > 0 (results.json of a finished run)")
  per_cell = train_s + eval_s
  cells = len(grid.cells())
  once = len(grid.kinds) * zero_shot_s
  total_h = (cells * per_cell + once) / 3600
  steps = int(cell_results.get("train", {}).get("steps") or options.PRESETS[grid.preset]["train_steps"])
  fit_train = (hours * 3600 - once) / cells - eval_s
  steps_fit = max(0, int(steps * fit_train / train_s)) if fit_train > 0 else 0
  return {"cells": cells, "seconds_per_cell": per_cell, "train_seconds": train_s,
          "eval_seconds": eval_s, "zero_shot_seconds": once, "total_hours": total_h,
          "budget_hours": hours, "fits": total_h <= hours, "train_steps": steps,
          "train_steps_that_fit": steps_fit}


def budget_text(b: dict[str, Any]) -> str:
  verdict = ("fits" if b["fits"] else f"does NOT fit; {b['train_steps_that_fit']} training steps "
             f"(instead of {b['train_steps']}) would")
  return (f"{b['cells']} cells x {b['seconds_per_cell']:.0f} s (train {b['train_seconds']:.0f} s"
          f" + evaluation {b['eval_seconds']:.0f} s) + {b['zero_shot_seconds']:.0f} s of zero-shot"
          f" evaluations (one per attention kind) = {b['total_hours']:.2f} device-hours; the "
          f"{b['budget_hours']:.0f}-hour budget {verdict}.")


# ---------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n")[0])
  p.add_argument("--preset", choices=sorted(GRIDS), help="grid (default: from the devices)")
  p.add_argument("--out", help="sweep directory (default runs/sweep-<preset>)")
  p.add_argument("--only", help="comma-separated cell names to run (e.g. dense-L11-s0)")
  p.add_argument("--seeds", help="comma-separated seeds instead of the grid's")
  p.add_argument("--model", help="encoder for every cell instead of the preset's (a name, "
                 "checkpoint directory or HF id, as experiments.run --model)")
  p.add_argument("--report-only", action="store_true", help="rebuild report.md from finished cells")
  p.add_argument("--budget", metavar="CELL_DIR",
                 help="print the grid's device time extrapolated from this finished cell")
  p.add_argument("--keep-checkpoints", action="store_true",
                 help="keep each cell's optimizer checkpoints (large) after it finishes")
  p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  from experiments import run as run_module

  if run_module._multi_process():
    run_module._start_distributed()  # before the default preset queries the devices
  preset = args.preset or options.default_preset()
  grid = GRIDS[preset]
  if args.seeds:
    try:
      seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
      parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
      parser.error(f"--seeds: expected distinct integers >= 0, got {args.seeds!r}")
    grid = dataclasses.replace(grid, seeds=seeds)
  if args.model:
    try:
      model = options._model(args.model)
    except options.FlagError as e:
      parser.error(str(e))
    grid = dataclasses.replace(grid, overrides=grid.overrides + (("model", model),))
  if args.bootstrap < 100:
    parser.error(f"--bootstrap: expected at least 100 resamples, got {args.bootstrap}")
  out = pathlib.Path(args.out or f"runs/sweep-{preset}")
  if args.budget:
    path = pathlib.Path(args.budget) / "results.json"
    if not path.is_file():
      parser.error(f"--budget: {path} does not exist (run one cell first, e.g. --only "
                   f"{cell_name(grid.kinds[0], grid.language_counts[-1], grid.seeds[0])})")
    print(budget_text(budget(json.loads(path.read_text()), grid)))
    return 0
  if args.report_only:
    path = write_sweep_report(out, grid, args.bootstrap)
    if path is None:
      parser.error(f"--report-only: no finished cell under {out / 'cells'}")
    print(f"report: {path}")
    return 0
  only = [s for s in (args.only or "").split(",") if s] or None
  try:
    path = run_sweep(grid, out, only=only, keep_checkpoints=args.keep_checkpoints,
                     num_samples=args.bootstrap, log=lambda m: print(m, flush=True))
  except KeyboardInterrupt:
    print("\ninterrupted: rerun the same command to resume (finished cells are skipped)",
          file=sys.stderr)
    return 130
  except ValueError as e:
    parser.error(str(e))
  print(f"report: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
