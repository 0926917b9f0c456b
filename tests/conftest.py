"""Shared test setup: CPU only, offline, quiet progress bars."""

import os

# Before jax is imported anywhere: tests run offline and quietly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JXR_OFFLINE", "1")  # no test may reach GitHub
os.environ.setdefault("JXR_QUIET", "1")

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _has_gpu() -> bool:
  try:
    import jax

    return any(d.platform == "gpu" for d in jax.devices())
  except RuntimeError:
    return False


def _slow_modules_first(items) -> list:
  """Modules holding `slow` tests first, each module's tests together, else collection order.

  Under `--dist loadfile --no-loadscope-reorder` (README's test command) a worker takes a whole
  module at a time (module fixtures are built once) in this order, so the minutes-long modules
  start at once and the short ones fill in around them instead of queueing behind them.
  """
  modules: dict[str, list] = {}
  for item in items:
    modules.setdefault(item.nodeid.split("::")[0], []).append(item)
  holds_no_slow_test = lambda tests: not any("slow" in t.keywords for t in tests)  # noqa: E731
  return [item for tests in sorted(modules.values(), key=holds_no_slow_test) for item in tests]


def pytest_collection_modifyitems(config, items):
  items[:] = _slow_modules_first(items)
  if not _has_gpu():
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
      if "gpu" in item.keywords:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def lareqa_dir() -> pathlib.Path:
  """The LAReQA release: $JXR_DATA_DIR, else ../shared/data/lareqa."""
  path = pathlib.Path(os.environ.get("JXR_DATA_DIR", SHARED / "data" / "lareqa"))
  if not (path / "xquad-r" / "en.json").exists():
    pytest.fail(f"LAReQA not found at {path}; set JXR_DATA_DIR")
  return path


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
  return SHARED / "reference"


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory) -> pathlib.Path:
  """One persistent XLA cache per worker: the subprocess runs compile the same programs."""
  return tmp_path_factory.mktemp("xla")


@pytest.fixture(scope="session")
def run_env(lareqa_dir, xla_cache) -> dict[str, str]:
  """The environment of a subprocess `experiments` or `jxr` command: this checkout, offline, quiet.

  Every program goes to the cache however fast it compiled: a tiny run's ~35 small programs
  take ~4 s to compile again, which a run that reads them back saves. Not for processes that
  start together (a pod): the cache writes its files unlocked, so one could read a half-written
  entry.
  """
  return dict(
      os.environ,
      PYTHONPATH=str(ROOT),
      JXR_DATA_DIR=str(lareqa_dir),
      JXR_QUIET="1",
      HF_HUB_OFFLINE="1",
      JXR_OFFLINE="1",
      PYTHONUNBUFFERED="1",
      JAX_COMPILATION_CACHE_DIR=str(xla_cache),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
