"""Progress bars that stay quiet in logs, CI and when `JXR_QUIET=1`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def quiet() -> bool:
  """True when progress should not be drawn: not a terminal, or JXR_QUIET=1."""
  return os.environ.get("JXR_QUIET", "") not in ("", "0") or not sys.stderr.isatty()


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
  """`tqdm(iterable, **kwargs)`, disabled when `quiet()`."""
  kwargs.setdefault("disable", quiet())
  kwargs.setdefault("dynamic_ncols", True)
  return tqdm(iterable, **kwargs)
