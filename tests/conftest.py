"""Shared test setup: CPU only, offline, quiet progress bars."""

import os

# Before jax is imported anywhere: tests run offline and quietly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JXR_OFFLINE", "1")  # no test may reach GitHub
os.environ.setdefault("JXR_QUIET", "1")

import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


def _has_gpu() -> bool:
  try:
    import jax

    return any(d.platform == "gpu" for d in jax.devices())
  except RuntimeError:
    return False


def pytest_collection_modifyitems(config, items):
  if not _has_gpu():
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
      if "gpu" in item.keywords:
        item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
  """One persistent XLA cache per test worker, for this process and every subprocess it starts
  (they copy `os.environ`): runs with equal programs, such as a resume or the `tiny` model in
  another test, compile once. Set here, not inherited, and undone at the end of the session."""
  import jax
  from jax._src import compilation_cache

  directory = str(tmp_path_factory.mktemp("xla_cache"))
  settings = {
      "jax_compilation_cache_dir": directory,
      "jax_persistent_cache_min_compile_time_secs": 0.5,
  }
  previous = {name: getattr(jax.config, name) for name in settings}
  environ = {name.upper(): os.environ.get(name.upper()) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)
  compilation_cache.reset_cache()
  yield directory
  for name, value in previous.items():
    jax.config.update(name, value)
  for name, value in environ.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
  compilation_cache.reset_cache()


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
