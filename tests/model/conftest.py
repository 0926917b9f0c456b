"""Shared, expensive fixtures for the jxr.model tests (loaded once per session)."""

import pytest


@pytest.fixture(scope="session")
def e5():
  """The bundled multilingual-e5-small (dense attention, float32)."""
  import jxr.model

  return jxr.model.load_encoder("multilingual-e5-small")


@pytest.fixture(scope="session")
def tiny():
  import jxr.model

  return jxr.model.load_encoder("tiny")
