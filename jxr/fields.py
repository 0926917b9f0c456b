"""A config field's check, declared once beside the field and used by every layer that takes it.

    steps: int = fields.declare(1000, fields.Int(1))
    ...
    fields.check_all(config)                       # in the config's __post_init__
    fields.check_of(TrainConfig, "steps").check("--train-steps", fields.Int.parse("3"))

Configs validate themselves with `check_all`; a config that carries another's field reuses its
check (`like`); the command line converts a flag's text and runs the same check under the flag's
name, so a bound lives in one place and every message names what the user gave.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

_CHECK = "jxr.check"


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer in `[low, high]` (`high` None: unbounded); `optional` also allows None."""

  low: int
  high: int | None = None
  optional: bool = False

  def describe(self) -> str:
    return (
        f"an integer >= {self.low}"
        if self.high is None
        else f"an integer in [{self.low}, {self.high}]"
    )

  def check(self, name: str, value: Any) -> None:
    if self.optional and value is None:
      return
    if not _is_int(value) or value < self.low or (self.high is not None and value > self.high):
      raise ValueError(f"{name}: expected {self.describe()}, got {value!r}")

  @staticmethod
  def parse(text: str) -> int:
    try:
      return int(text)
    except (TypeError, ValueError):
      raise ValueError(f"expected an integer, got {text!r}") from None


@dataclasses.dataclass(frozen=True)
class Number:
  """A real number between `low` and `high`, each end closed unless said open."""

  low: float
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False
  optional: bool = False

  @property
  def _high_excluded(self) -> bool:
    return self.high_open or self.high == math.inf  # infinity is never a value

  def describe(self) -> str:
    left = "(" if self.low_open else "["
    right = ")" if self._high_excluded else "]"
    return f"a number in {left}{float(self.low)}, {float(self.high)}{right}"

  def check(self, name: str, value: Any) -> None:
    if self.optional and value is None:
      return
    ok = (
        _is_number(value)
        and (value > self.low if self.low_open else value >= self.low)
        and (value < self.high if self._high_excluded else value <= self.high)
    )
    if not ok:
      raise ValueError(f"{name}: expected {self.describe()}, got {value!r}")

  @staticmethod
  def parse(text: str) -> float:
    try:
      value = float(text)
    except (TypeError, ValueError):
      raise ValueError(f"expected a number, got {text!r}") from None
    if math.isnan(value):
      raise ValueError(f"expected a number, got {text!r}")
    return value


class _Text:
  """A check of a string field: a flag's text is already its value."""

  @staticmethod
  def parse(text: str) -> str:
    return text


@dataclasses.dataclass(frozen=True)
class OneOf(_Text):
  """One of `values` (strings)."""

  values: tuple[str, ...]
  optional: bool = False

  def check(self, name: str, value: Any) -> None:
    if self.optional and value is None:
      return
    if value not in self.values:
      raise ValueError(f"{name}: expected one of {', '.join(self.values)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class NonEmpty(_Text):
  """A non-empty string."""

  def check(self, name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
      raise ValueError(f"{name}: expected a non-empty string, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Flag:
  """True or false."""

  def check(self, name: str, value: Any) -> None:
    if not isinstance(value, bool):
      raise ValueError(f"{name}: expected true or false, got {value!r}")


Check = Int | Number | OneOf | NonEmpty | Flag


def declare(default: Any = dataclasses.MISSING, check: Check | None = None, **kwargs: Any):
  """A dataclass field whose values `check` accepts (`check_all` runs it)."""
  return dataclasses.field(default=default, metadata={_CHECK: check}, **kwargs)


def like(cls: type, name: str, default: Any = dataclasses.MISSING):
  """A field that takes the same values as `cls.name`: the check is `cls`'s, not a copy."""
  return declare(default, check_of(cls, name))


def check_of(cls: type, name: str) -> Check:
  """The check declared on field `name` of dataclass `cls`."""
  for field in dataclasses.fields(cls):
    if field.name == name and field.metadata.get(_CHECK) is not None:
      return field.metadata[_CHECK]
  raise KeyError(f"{cls.__name__}.{name} declares no check")


def check_all(config: Any, prefix: str = "") -> None:
  """Runs every declared check of dataclass instance `config`; raises on the first bad field,
  named `prefix + field`."""
  for field in dataclasses.fields(config):
    check = field.metadata.get(_CHECK)
    if check is not None:
      check.check(prefix + field.name, getattr(config, field.name))
