"""The typed report: what evaluate returns and what results.json holds match jxr.eval.schema."""

import copy
import gzip
import json
import pathlib

import numpy as np
import pytest
from eval_toys import lattice_embeddings, parallel_task

import jxr.eval

PUBLISHED = pathlib.Path(__file__).resolve().parents[2] / "docs" / "study-cpu" / "cells"


@pytest.fixture(scope="module")
def report():
  task = parallel_task(6, ("en", "de", "zh"), distractors=3)
  rng = np.random.default_rng(0)
  queries = lattice_embeddings(rng, task.num_queries)
  return jxr.eval.evaluate(task, queries, lattice_embeddings(rng, task.num_candidates))


def test_evaluate_returns_a_report(report):
  assert jxr.eval.check_report(report) is report
  pools = jxr.eval.evaluate_pools(
      parallel_task(4, ("en", "de")), np.eye(8, 8), np.eye(8, 8), {"2": ("en", "de"), "1": ("en",)}
  )
  for name, pool in pools.items():
    jxr.eval.check_report(pool, f"pools.{name}")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("bias"), r"report: missing keys \['bias'\]"),
        (lambda r: r.update(colour=1), r"report: missing keys \[\], unknown keys \['colour'\]"),
        (
            lambda r: r["summary"].update(mono="high"),
            "report.summary.mono: expected float, got str",
        ),
        (lambda r: r["matrices"]["map"][1].__setitem__(0, [0.5]), r"report.matrices.map\[1\]\[0\]"),
        (
            lambda r: r["per_query"]["ap"].append(None),
            r"report.per_query.ap\[\d+\]: expected float",
        ),
        (lambda r: r.update(num_queries=True), "report.num_queries: expected int, got bool"),
    ],
)
def test_a_report_that_differs_is_refused_at_the_first_path(report, change, message):
  changed = copy.deepcopy(report)
  change(changed)
  with pytest.raises(ValueError, match=message):
    jxr.eval.check_report(changed)


def test_published_results_hold_the_schema():
  """One published cell's stage reports (with their pools) as written by experiments.run."""
  path = PUBLISHED / "block_sparse-b8-n1-g0-r0.098-L11-s0" / "results.json.gz"
  results = json.loads(gzip.decompress(path.read_bytes()))
  checked = 0
  for stage in ("zero_shot", "fine_tuned"):
    for dataset, stage_report in results[stage].items():
      jxr.eval.check_report(stage_report, f"{stage}.{dataset}", jxr.eval.StageReport)
      checked += 1 + len(stage_report.get("pools") or {})
  assert checked >= 4
