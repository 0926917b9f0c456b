"""Loaded LAReQA tasks shared by the data tests (read-only)."""

import pytest

import jxr.data


@pytest.fixture(scope="session")
def xquad(lareqa_dir):
  return jxr.data.load_lareqa("xquad-r", data_dir=lareqa_dir)


@pytest.fixture(scope="session")
def mlqa(lareqa_dir):
  return jxr.data.load_lareqa("mlqa-r", data_dir=lareqa_dir)


@pytest.fixture(scope="session")
def xquad_train(xquad):
  return jxr.data.split_by_article(xquad, eval_fraction=0.5, seed=0)[0]
