"""The `tiny` study grid end to end in a subprocess: every cell, then report.json's contract."""

import json
import subprocess
import sys

import numpy as np
import pytest

CELL_KEYS = {
    "name",
    "attention",
    "num_languages",
    "seed",
    "mono_prob",
    "attended_fraction",
    "pools",
}
POOL_KEYS = {"mul_macro", "mul_micro", "mo", "cr"}
CONTRAST_KEYS = {
    "dataset",
    "a",
    "b",
    "num_languages",
    "pool_languages",
    "metric",
    "difference",
    "ci",
    "questions",
    "articles",
    "seeds",
}
TREND_KEYS = CONTRAST_KEYS | {"from_languages", "to_languages"}


@pytest.mark.slow
def test_tiny_study_runs_end_to_end(run_env, tmp_path):
  _run_and_check(run_env, tmp_path / "sweep")


def _run_and_check(env, out):
  command = [
      sys.executable,
      "-m",
      "experiments.sweep",
      "--preset",
      "tiny",
      "--out",
      str(out),
      "--bootstrap",
      "200",
  ]
  proc = subprocess.run(
      command,
      cwd=out.parent,
      env=env,
      capture_output=True,
      text=True,
      timeout=1500,
      stdin=subprocess.DEVNULL,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  data = json.loads((out / "report.json").read_text())
  sweep_file = json.loads((out / "sweep.json").read_text())
  assert len(data["cells"]) == len(sweep_file["cells"]) == 11
  sizes = json.loads((out / "cells" / data["cells"][0]["name"] / "config.json").read_text())
  mlqa_languages = len(sizes["eval_sizes"]["mlqa-r"]["languages"])  # 8 questions: maybe not all 7
  for cell in data["cells"]:
    assert CELL_KEYS <= set(cell)
    assert set(cell["pools"]) == {"mlqa-r", "xquad-r"}
    assert set(cell["pools"]["mlqa-r"]) == {"2", "4", str(mlqa_languages)}
    assert set(cell["pools"]["xquad-r"]) == {"2", "4", "7", "11"}
    assert all(POOL_KEYS <= set(p) for pools in cell["pools"].values() for p in pools.values())
  contrasts = data["contrasts"]
  assert contrasts and all(CONTRAST_KEYS <= set(c) for c in contrasts)
  assert all(
      c["ci"][0] <= c["difference"] <= c["ci"][1] for c in contrasts if c["ci"][0] is not None
  )
  families = {c["family"] for c in contrasts}
  assert {"vs_dense", "matched", "eval_only", "mono"} <= families
  trends = data["trends"]
  assert {t["axis"] for t in trends} == {"training", "pool"}
  assert all(TREND_KEYS <= set(t) for t in trends)
  primary = data["primary"]
  assert primary["dataset"] == "mlqa-r" and primary["metric"] == "mul_macro"
  assert primary["num_languages"] == 4  # the tiny grid's largest count
  assert data["findings"].startswith("Primary contrast: on mlqa-r with 4 training languages")
  # Every trained arm has a learning curve with a number at each logged step.
  curves = data["learning_curves"]["mlqa-r"]
  assert curves and all(c["steps"] and None not in c["mul_macro"] for c in curves)
  for name in data["figures"]["mlqa-r"]:
    assert (out / name).stat().st_size > 0
  # A finished block-sparse cell (random blocks included) re-evaluates to its own fine-tuned
  # reports from its exported model: the saved attention, lengths and evaluation sets are used.
  cell = out / "cells" / next(c for c in sweep_file["cells"] if c.startswith("block_sparse"))
  again = out.parent / "reevaluated"
  reeval = subprocess.run(
      [sys.executable, "-m", "jxr.eval", "--run", str(cell), "--out", str(again), "--trec", "5"],
      cwd=out.parent,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      stdin=subprocess.DEVNULL,
  )
  assert reeval.returncode == 0, reeval.stdout + reeval.stderr
  cell_results = json.loads((cell / "results.json").read_text())
  assert cell_results["train"]["resumed_from_steps"] == []  # a straight run
  recorded = cell_results["fine_tuned"]
  assert set(recorded) == {"mlqa-r", "xquad-r"}
  for name, report in recorded.items():
    rerun = json.loads((again / name / "report.json").read_text())
    assert abs(rerun["multilingual"]["map"] - report["multilingual"]["map"]) <= 1e-5
    np.testing.assert_allclose(rerun["per_query"]["ap"], report["per_query"]["ap"], atol=1e-5)
    assert (again / name / "run.trec").stat().st_size > 0
  # The plan scales every cell from a finished one.
  plan = subprocess.run(
      [*command[:-2], "--plan"],
      cwd=out.parent,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      stdin=subprocess.DEVNULL,
  )
  assert plan.returncode == 0 and "Estimated total" in plan.stdout, plan.stdout + plan.stderr
