"""The sweep: grid, cell configs, resumability (a fake runner) and the GPU budget."""

import json
import pathlib

import numpy as np
import pytest

from experiments import sweep
from tests.experiments.fabricate import results


def test_grids_match_the_study():
  gpu = sweep.GRIDS["gpu"]
  assert [k.label for k in gpu.kinds] == ["dense", "local-8", "local-16", "local-32",
                                          "block_sparse-0.30", "block_sparse-0.50",
                                          "block_sparse-0.70"]
  assert gpu.language_counts == (2, 4, 7, 11) and len(gpu.cells()) == 7 * 4 * 3
  cpu = sweep.GRIDS["cpu"]
  assert len(cpu.cells()) == 6 and cpu.language_counts == (2, 4) and cpu.seeds == (0,)
  # 7 training languages are exactly MLQA-R's.
  assert sorted(sweep.LANGUAGE_ORDER[:7]) == ["ar", "de", "en", "es", "hi", "vi", "zh"]


def test_cell_config(tmp_path):
  grid = sweep.GRIDS["cpu"]
  config = sweep.cell_config(grid, sweep.Kind("local", window=16), 4, 0, tmp_path)
  assert config.languages == ("en", "de", "zh", "ar") and config.window == 16
  assert config.density is None and config.block_size == 16
  assert config.eval_languages == ("en", "de", "zh", "ar") and config.eval_questions == 200
  assert config.candidate_context == "paragraph" and config.train_data == "xquad-r"
  assert config.out == str(tmp_path / "cells" / "local-16-L4-s0")
  bs = sweep.cell_config(sweep.GRIDS["gpu"], sweep.Kind("block_sparse", density=0.5), 11, 2,
                         tmp_path)
  assert bs.density == 0.5 and bs.window is None and len(bs.languages) == 11
  assert bs.eval_data == ("xquad-r", "mlqa-r") and bs.eval_languages is None


def _fake_runner(calls, fail_on=None):
  def runner(config, resume, log, with_zero_shot):
    name = pathlib.Path(config.out).name
    calls.append((name, resume))
    out = pathlib.Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text("{}")
    if name == fail_on:
      raise KeyboardInterrupt
    rng = np.random.default_rng(len(name))
    ap = rng.uniform(0.3, 0.8, size=(50, 3)) - (0.05 if name.startswith("local") else 0.0)
    (out / "results.json").write_text(json.dumps(results(ap, [f"q{i}" for i in range(50)])))
    return {}
  return runner


def test_sweep_resumes_and_skips_finished_cells(tmp_path):
  grid = sweep.GRIDS["tiny"]
  calls = []
  with pytest.raises(KeyboardInterrupt):
    sweep.run_sweep(grid, tmp_path, runner=_fake_runner(calls, fail_on="local-8-L2-s0"),
                    log=lambda m: None, num_samples=200)
  assert calls == [("dense-L2-s0", False), ("local-8-L2-s0", False)]
  assert sweep.GRIDS["gpu"].zero_shot_here(2, 0) and not sweep.GRIDS["gpu"].zero_shot_here(4, 0)
  assert not sweep.GRIDS["gpu"].zero_shot_here(2, 1)
  assert (tmp_path / "report.md").is_file()  # the partial report of the finished cell
  calls.clear()
  path = sweep.run_sweep(grid, tmp_path, runner=_fake_runner(calls), log=lambda m: None,
                         num_samples=200)
  assert calls == [("local-8-L2-s0", True)]  # dense skipped; local resumed
  text = path.read_text()
  assert "2 of 2 cells finished" in text and "| local-8 |" in text
  with pytest.raises(ValueError, match="only: unknown cells"):
    sweep.run_sweep(grid, tmp_path, only=["dense-L3-s0"], runner=_fake_runner([]))


def test_budget_extrapolates_from_one_cell():
  grid = sweep.GRIDS["gpu"]
  cell = {"seconds": {"zero_shot": 20.0, "train": 200.0, "fine_tuned": 20.0},
          "train": {"steps": 600}}
  b = sweep.budget(cell, grid)
  assert b["cells"] == 84 and b["seconds_per_cell"] == 220.0
  # Zero-shot once per kind (7), the rest in every cell.
  assert b["total_hours"] == pytest.approx((84 * 220 + 7 * 20) / 3600) and b["fits"]
  slow = {"seconds": {"zero_shot": 20.0, "train": 600.0, "fine_tuned": 20.0},
          "train": {"steps": 600}}
  b = sweep.budget(slow, grid)
  assert not b["fits"]
  # Steps that fit: ((8 h - 7 zero-shot runs) / 84 cells - 20 s evaluation) / (1 s per step).
  assert b["train_steps_that_fit"] == int(600 * ((8 * 3600 - 140) / 84 - 20) / 600)
  assert "does NOT fit" in sweep.budget_text(b)
  with pytest.raises(ValueError, match="seconds.train"):
    sweep.budget({"seconds": {}}, grid)
