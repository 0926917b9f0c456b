"""Fixtures of the training tests: the data env and a straight run (the compilation cache is
tests/conftest.py's)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def data_env(lareqa_dir):
  """`JXR_DATA_DIR` for `train_data="mlqa-r"` (in this process and in subprocesses)."""
  previous = os.environ.get("JXR_DATA_DIR")
  os.environ["JXR_DATA_DIR"] = str(lareqa_dir)
  yield {"JXR_DATA_DIR": str(lareqa_dir)}
  if previous is None:
    os.environ.pop("JXR_DATA_DIR", None)
  else:
    os.environ["JXR_DATA_DIR"] = previous


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, compile_cache, data_env):
  """Six uninterrupted steps of `tiny_config` on this process's one device."""
  from train_helpers import tiny_config

  from jxr.train import read_metrics, train

  result = train(tiny_config(tmp_path_factory.mktemp("straight")))
  return result, read_metrics(result.run_dir)
