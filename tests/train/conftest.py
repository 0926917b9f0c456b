"""Fixtures of the training tests: a compilation cache shared with subprocesses, data env."""

from __future__ import annotations

import os

import jax
import pytest


@pytest.fixture(scope="session")
def compile_cache(xla_cache):
  """The worker's persistent XLA cache in this process too: equal programs compile once.

  Also handed to subprocesses via JAX_COMPILATION_CACHE_DIR. Every program is cached, as in
  `run_env`. The settings are restored afterwards so other test directories are unaffected.
  """
  from jax._src import compilation_cache

  directory = str(xla_cache)
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  previous = {name: getattr(jax.config, name) for name in names}
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()
  yield directory
  for name, value in previous.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


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
