"""`jxr.fields`: each check's bounds and message, and that a carried field shares the check."""

import dataclasses

import pytest

from jxr import fields


def test_int_bounds_types_and_none():
  check = fields.Int(8, 512)
  check.check("n", 8)
  check.check("n", 512)
  for bad in (7, 513, 8.0, True, "8", None):
    with pytest.raises(ValueError, match=r"^n: expected an integer in \[8, 512\], got "):
      check.check("n", bad)
  fields.Int(1, optional=True).check("n", None)
  with pytest.raises(ValueError, match="^n: expected an integer >= 1, got 0$"):
    fields.Int(1, optional=True).check("n", 0)


def test_number_ends_open_and_closed():
  lr = fields.Number(0.0, 1.0, low_open=True)
  lr.check("lr", 1.0)
  lr.check("lr", 1)  # an int is a number
  for bad in (0.0, 1.5, float("nan"), False):
    with pytest.raises(ValueError, match=r"^lr: expected a number in \(0.0, 1.0\], got "):
      lr.check("lr", bad)
  with pytest.raises(ValueError, match=r"\[0.0, inf\)"):
    fields.Number(0.0).check("x", -1.0)
  with pytest.raises(ValueError, match=r"\(0.0, 1.0\)"):
    fields.Number(0.0, 1.0, low_open=True, high_open=True).check("x", 1.0)


def test_parse_converts_text_only():
  assert fields.Int.parse("12") == 12
  assert fields.Number.parse("1e-3") == 1e-3
  with pytest.raises(ValueError, match="^expected an integer, got '1.5'$"):
    fields.Int.parse("1.5")
  with pytest.raises(ValueError, match="^expected a number, got 'nan'$"):
    fields.Number.parse("nan")
  assert fields.OneOf(("a", "b")).parse("c") == "c"  # the check, not the parse, refuses it


def test_choices_strings_and_flags():
  with pytest.raises(ValueError, match="^kind: expected one of a, b, got 'c'$"):
    fields.OneOf(("a", "b")).check("kind", "c")
  with pytest.raises(ValueError, match="^model: expected a non-empty string, got ''$"):
    fields.NonEmpty().check("model", "")
  with pytest.raises(ValueError, match="^symmetric: expected true or false, got 1$"):
    fields.Flag().check("symmetric", 1)


def test_like_carries_the_same_check_and_check_all_names_the_field():
  @dataclasses.dataclass(frozen=True)
  class Inner:
    steps: int = fields.declare(1, fields.Int(1))
    note: str = "free"  # no declared check

  @dataclasses.dataclass(frozen=True)
  class Outer:
    train_steps: int = fields.like(Inner, "steps", 3)

    def __post_init__(self):
      fields.check_all(self, prefix="outer.")

  assert fields.check_of(Outer, "train_steps") is fields.check_of(Inner, "steps")
  with pytest.raises(ValueError, match="^outer.train_steps: expected an integer >= 1, got 0$"):
    Outer(0)
  with pytest.raises(KeyError, match="Inner.note declares no check"):
    fields.check_of(Inner, "note")


def test_the_configs_share_their_checks():
  from experiments.options import RunConfig
  from jxr.train import TrainConfig

  for run_name, train_name in (("train_steps", "steps"), ("batch_size", "batch_size")):
    assert fields.check_of(RunConfig, run_name) is fields.check_of(TrainConfig, train_name)
