"""The study grid: matched-compute arms, cells, cell configs, the plan's estimate, resuming."""

import dataclasses
import json
import pathlib

import pytest

import pallas_kernels
from experiments import options, sweep
from jxr.model import AttentionConfig, attention_mask_for

# A length mix like the CPU study's candidates: most passages cut at 128 tokens.
LENGTHS = {"mlqa-r": [128] * 60 + list(range(43, 128, 5)), "xquad-r": [128] * 40 + [108, 120]}
POOLED = [n for values in LENGTHS.values() for n in values]


def _fraction(spec, lengths=POOLED):
  return pallas_kernels.attended_fraction(attention_mask_for(spec), lengths)


def test_solve_window_is_the_nearest_window():
  for target in (0.25, 0.5):
    spec = sweep.solve_window(target, POOLED)
    errors = {w: abs(_fraction(AttentionConfig.local(w)) - target) for w in range(1, 128)}
    assert errors[spec.window] == min(errors.values())


def test_matched_pairs_attend_the_same_fraction():
  arms = sweep.solve_arms(sweep.STUDIES["study-cpu"].levels, POOLED)
  assert [level for level, _, _ in arms.levels] == [0.25, 0.5]
  for bs, local, level in arms.matched():
    assert bs.kind == "block_sparse" and local.kind == "local"
    assert abs(_fraction(local) - level) < 0.03
    assert abs(_fraction(bs) - _fraction(local)) < sweep.MATCH_TOLERANCE
  # With and without global blocks at the second level.
  assert sorted(bs.global_blocks for bs, _, level in arms.matched() if level == 0.5) == [0, 1]


def test_a_level_below_the_layouts_floor_is_refused():
  # 16-token blocks with a band and a global block attend about half of a 128-token passage.
  study = sweep.Level(0.25, (sweep.Layout(16, 1, 1),))
  with pytest.raises(ValueError, match=r"density: requested 0\.2\d*, but the band and global"):
    sweep.solve_arms([study], [128] * 10)


def test_study_cells():
  grid = sweep.make_grid(sweep.STUDIES["study-cpu"], LENGTHS)
  names = [c.name for c in grid.cells]
  assert len(names) == len(set(names)) == 30
  _, local, (bs,) = grid.arms.levels[0]
  assert names[:3] == ["dense-L11-s0", f"{local.label}-L11-s0", f"{bs.label}-L11-s0"]
  for n, seeds in ((2, 2), (4, 1), (7, 1), (11, 2)):  # the primary level on both seeds' counts
    assert (
        sum(
            1
            for c in grid.cells
            if c.attention == bs and c.num_languages == n and c.mono_prob == 0.5
        )
        == seeds
    )
  zero_shot = [c.name for c in grid.cells if c.zero_shot]
  assert zero_shot == ["dense-L2-s0"]
  eval_only = {c.name: c.eval_only for c in grid.cells if c.eval_only}
  assert set(eval_only) == {"dense-L11-s0", "dense-L11-s1"}
  assert all(
      set(specs) == set(grid.arms.sparse) and len(specs) == 5 for specs in eval_only.values()
  )
  assert {c.name for c in grid.cells if c.curve} == {
      "dense-L11-s0",
      f"{local.label}-L11-s0",
      f"{bs.label}-L11-s0",
  }
  assert {c.mono_prob for c in grid.cells} == {0.0, 0.5, 1.0}
  assert grid.design().primary == (bs.label, local.label)
  # 7 training languages are exactly MLQA-R's.
  assert sorted(options.LANGUAGE_ORDER[:7]) == ["ar", "de", "en", "es", "hi", "vi", "zh"]


def test_cell_config_carries_the_spec_whole(tmp_path):
  grid = sweep.make_grid(sweep.STUDIES["study-cpu"], LENGTHS)
  dense = grid.cells[0]
  config = sweep.cell_config(grid, dense, tmp_path)
  assert config.attention == AttentionConfig.dense() and config.seed == 0
  assert config.languages == options.LANGUAGE_ORDER and config.eval_only == dense.eval_only
  assert config.eval_data == ("mlqa-r", "xquad-r") and config.eval_questions == 100
  assert config.eval_languages is None and config.eval_pools == (2, 4, 7, 11)
  assert config.curve_every == 10 and config.out == str(tmp_path / "cells" / "dense-L11-s0")
  mono = next(c for c in grid.cells if c.mono_prob == 1.0 and c.attention.kind == "local")
  config = sweep.cell_config(grid, mono, tmp_path)
  assert (
      config.attention == mono.attention and config.mono_prob == 1.0 and config.curve_every is None
  )
  assert options.RunConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_cell_seconds_scale_from_one_profiled_cell():
  profile = {
      "seconds": {"train": 300.0, "fine_tuned": 100.0},
      "learning_curve": [{"step": 10, "seconds": 5.0}, {"step": 20, "seconds": 5.0}],
  }
  plain = sweep.CellSpec(AttentionConfig.local(4), 2, 0)
  heavy = sweep.CellSpec(
      AttentionConfig.dense(),
      2,
      0,
      zero_shot=True,
      eval_only=(AttentionConfig.local(4),) * 3,
      curve=True,
  )
  assert sweep.cell_seconds(plain, profile) == pytest.approx(290.0 + 100.0)
  assert sweep.cell_seconds(heavy, profile) == pytest.approx(290.0 + 5 * 100.0 + 10.0)
  with pytest.raises(ValueError, match="seconds.train"):
    sweep.cell_seconds(plain, {"seconds": {}})


def test_plan_prints_fractions_and_total(tmp_path):
  grid = sweep.make_grid(sweep.STUDIES["tiny"], {"mlqa-r": [48] * 5, "xquad-r": [40, 48]})
  profile = {"seconds": {"train": 10.0, "fine_tuned": 5.0}}
  rows = sweep.plan_rows(grid, {"mlqa-r": [48] * 5, "xquad-r": [40, 48]}, profile)
  assert len(rows) == len(grid.cells)
  assert all(r["attended_fraction"]["mlqa-r"] == 1.0 for r in rows if r["attention"] == "dense")
  text = sweep.plan_text(grid, rows, {"mlqa-r": [48] * 5, "xquad-r": [40, 48]}, tmp_path)
  total = sum(r["seconds"] for r in rows) / 3600
  assert f"Estimated total: {total:.2f} h" in text and "budget fits" in text
  assert "Matched pairs" in text
  assert "No profiled cell" in sweep.plan_text(
      grid, sweep.plan_rows(grid, LENGTHS, None), LENGTHS, None
  )


def _fake_runner(calls, fail_on=None):
  """Writes fabricated results.json files in place of training and evaluation."""
  from tests.experiments import fabricate

  worlds = [fabricate.world("mlqa-r"), fabricate.world("xquad-r", languages=fabricate.LANGUAGES)]

  def runner(config, resume, log, with_zero_shot):
    out = pathlib.Path(config.out)
    calls.append((out.name, resume))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"run": config.to_json()}))
    if out.name == fail_on:
      raise KeyboardInterrupt
    shift = -0.05 if config.attention.kind == "local" else 0.0
    reports = {
        w.dataset: fabricate.report(w, fabricate.base_ap(w, config.seed) + shift) for w in worlds
    }
    results = {
        "fine_tuned": reports,
        "zero_shot": reports if with_zero_shot else {},
        "attended_fraction": {w.dataset: 0.3 for w in worlds},
    }
    (out / "results.json").write_text(json.dumps(results))
    return results

  return runner


@pytest.mark.parametrize("report_every_s, finished_at_rebuilds", [(0.0, [1, 2, 3]), (1e9, [1, 3])])
def test_report_is_rebuilt_after_the_first_cell_when_due_and_at_the_end(
    tmp_path, monkeypatch, report_every_s, finished_at_rebuilds
):
  grid = sweep.make_grid(sweep.STUDIES["tiny"], {"mlqa-r": [48] * 5, "xquad-r": [40, 48]})
  rebuilt = []  # finished cells on disk at each rebuild
  write = sweep.write_sweep_report
  monkeypatch.setattr(
      sweep,
      "write_sweep_report",
      lambda out, g, n: rebuilt.append(len(sweep.load_cells(out, g))) or write(out, g, n),
  )
  path = sweep.run_sweep(
      grid,
      tmp_path,
      only=[c.name for c in grid.cells[:3]],
      runner=_fake_runner([]),
      log=lambda m: None,
      num_samples=200,
      report_every_s=report_every_s,
  )
  assert rebuilt == finished_at_rebuilds
  assert "3 of 11 cells finished" in path.read_text()


def test_sweep_resumes_skips_finished_cells_and_refuses_another_grid(tmp_path):
  grid = sweep.make_grid(sweep.STUDIES["tiny"], {"mlqa-r": [48] * 5, "xquad-r": [40, 48]})
  first, second = grid.cells[0].name, grid.cells[1].name
  calls = []
  with pytest.raises(KeyboardInterrupt):
    sweep.run_sweep(
        grid,
        tmp_path,
        runner=_fake_runner(calls, fail_on=second),
        log=lambda m: None,
        num_samples=200,
    )
  assert calls == [(first, False), (second, False)]
  assert (tmp_path / "report.md").is_file()  # the partial report of the finished cell
  calls.clear()
  sweep.run_sweep(
      grid, tmp_path, only=[second], runner=_fake_runner(calls), log=lambda m: None, num_samples=200
  )
  assert calls == [(second, True)]  # resumed where it stopped; the finished cell untouched
  with pytest.raises(ValueError, match="only: unknown cells"):
    sweep.run_sweep(grid, tmp_path, only=["dense-L3-s0"], runner=_fake_runner([]))
  other = dataclasses.replace(grid, cells=grid.cells[:-1])
  with pytest.raises(ValueError, match="holds another sweep"):
    sweep.run_sweep(other, tmp_path, runner=_fake_runner([]))
  published = sweep.publish(tmp_path, grid, tmp_path / "docs", num_samples=200)
  assert (tmp_path / "docs" / "report.json").is_file()
  assert (tmp_path / "docs" / "cells" / first / "results.json.gz") in published
  # A fresh checkout restores the published cells and runs only the others.
  fresh = tmp_path / "fresh"
  assert sweep.restore(tmp_path / "docs", grid, fresh) == [first, second]
  assert sweep.restore(tmp_path / "docs", grid, fresh) == []
  calls.clear()
  sweep.run_sweep(
      grid,
      fresh,
      only=[first, second, grid.cells[2].name],
      runner=_fake_runner(calls),
      log=lambda m: None,
      num_samples=200,
  )
  assert calls == [(grid.cells[2].name, False)]
