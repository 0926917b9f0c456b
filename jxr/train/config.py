"""`TrainConfig` (what to train, JSON round-trip) and `TrainResult` (what came out)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

from jxr.model.config import AttentionConfig
from jxr.train.mesh import parse_mesh_spec

DTYPES = ("float32", "bfloat16")
LAREQA_NAMES = ("xquad-r", "mlqa-r")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on; `config.json` in the run directory.

  `batch_size` is the global number of pairs per optimiser step (all devices
  and processes); with `grad_accum = k` it is cut into k micro-batches whose
  gradients are averaged (in-batch negatives then come from the micro-batch).
  `grad_cache_chunk` rows are embedded at a time by the gradient cache (None:
  the whole batch at once). `eval_every` / `checkpoint_every` of None or 0 turn
  those off (a checkpoint is still written at the end and on Ctrl-C or SIGTERM);
  `checkpoint_minutes` also saves when that much wall time passed since the last
  checkpoint (None: by steps only).
  """

  model: str = "multilingual-e5-small"
  attention: AttentionConfig = AttentionConfig()
  train_data: str = "xquad-r"
  languages: tuple[str, ...] | None = None
  mono_prob: float = 0.5
  steps: int = 1000
  batch_size: int = 64
  lr: float = 3e-5
  weight_decay: float = 0.01
  warmup_steps: int = 100
  clip_norm: float | None = 1.0
  temperature: float = 0.05
  learn_temperature: bool = False
  symmetric: bool = False
  max_query_length: int = 64
  max_passage_length: int = 256
  candidate_context: bool = True
  grad_cache_chunk: int | None = None
  grad_accum: int = 1
  mesh: str = "data=-1"
  dtype: str = "float32"
  seed: int = 0
  out_dir: str = "runs/train"
  checkpoint_every: int | None = 500
  checkpoint_minutes: float | None = None
  keep_checkpoints: int = 2
  eval_every: int | None = None
  log_every: int = 10
  eval_fraction: float = 0.5
  split_seed: int = 0

  def __post_init__(self):
    if isinstance(self.languages, list):
      object.__setattr__(self, "languages", tuple(self.languages))
    if isinstance(self.attention, dict):
      object.__setattr__(self, "attention", AttentionConfig.from_json(self.attention))
    validate(self)

  def replace(self, **changes: Any) -> "TrainConfig":
    return dataclasses.replace(self, **changes)

  @property
  def micro_batch_size(self) -> int:
    return self.batch_size // self.grad_accum

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["attention"] = self.attention.to_json()
    if self.languages is not None:
      out["languages"] = list(self.languages)
    return out

  @classmethod
  def from_json(cls, data: dict[str, Any] | str) -> "TrainConfig":
    if isinstance(data, str):
      data = json.loads(data)
    if not isinstance(data, dict):
      raise ValueError(f"config: expected a JSON object, got {type(data).__name__}")
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
      raise ValueError(f"config: unknown field(s) {unknown}")
    return cls(**data)

  def save(self, path: str | os.PathLike) -> None:
    pathlib.Path(path).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

  @classmethod
  def load(cls, path: str | os.PathLike) -> "TrainConfig":
    return cls.from_json(pathlib.Path(path).read_text())


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What `train` returns: the trained encoder (ready to `encode`) and where things went."""

  encoder: Any  # jxr.model.Encoder
  steps: int
  skipped_steps: int
  final_loss: float
  run_dir: pathlib.Path
  export_dir: pathlib.Path | None
  resumed_from_steps: tuple[int, ...] = ()  # the checkpoint step of each resume, in order


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(config: TrainConfig, name: str, minimum: int, optional: bool = False) -> None:
  value = getattr(config, name)
  if optional and value is None:
    return
  if not _is_int(value) or value < minimum:
    none = " or None" if optional else ""
    raise ValueError(f"{name}: expected an int >= {minimum}{none}, got {value!r}")


def _number(
    config: TrainConfig,
    name: str,
    low: float,
    high: float = float("inf"),
    *,
    low_open: bool = False,
    optional: bool = False,
) -> None:
  value = getattr(config, name)
  if optional and value is None:
    return
  ok = _is_number(value) and (value > low if low_open else value >= low) and value <= high
  if not ok:
    bound = f"({low}" if low_open else f"[{low}"
    raise ValueError(f"{name}: expected a number in {bound}, {high}], got {value!r}")


def validate(config: TrainConfig) -> None:
  """Raises ValueError naming the first bad field (cheap checks only: no files read)."""
  for name in ("model", "train_data", "out_dir", "mesh"):
    if not isinstance(getattr(config, name), str) or not getattr(config, name):
      raise ValueError(f"{name}: expected a non-empty string, got {getattr(config, name)!r}")
  if not isinstance(config.attention, AttentionConfig):  # it validates its own fields
    raise ValueError(
        f"attention: expected a jxr.model.AttentionConfig, got "
        f"{type(config.attention).__name__}"
    )
  if config.languages is not None and (
      not isinstance(config.languages, tuple)
      or not config.languages
      or not all(isinstance(lang, str) and lang for lang in config.languages)
  ):
    raise ValueError(
        f"languages: expected None or a non-empty list of language codes, "
        f"got {config.languages!r}"
    )
  _number(config, "mono_prob", 0.0, 1.0)
  _int(config, "steps", 1)
  _int(config, "batch_size", 1)
  _number(config, "lr", 0.0, low_open=True)
  _number(config, "weight_decay", 0.0)
  _int(config, "warmup_steps", 0)
  _number(config, "clip_norm", 0.0, low_open=True, optional=True)
  _number(config, "temperature", 0.0, low_open=True)
  for name in ("learn_temperature", "symmetric", "candidate_context"):
    if not isinstance(getattr(config, name), bool):
      raise ValueError(f"{name}: expected true or false, got {getattr(config, name)!r}")
  _int(config, "max_query_length", 3)
  _int(config, "max_passage_length", 3)
  _int(config, "grad_accum", 1)
  _int(config, "grad_cache_chunk", 1, optional=True)
  if config.batch_size % config.grad_accum:
    raise ValueError(
        f"grad_accum: batch_size {config.batch_size} must divide into "
        f"{config.grad_accum} equal micro-batches"
    )
  if config.grad_cache_chunk is not None and config.micro_batch_size % config.grad_cache_chunk:
    raise ValueError(
        f"grad_cache_chunk: {config.grad_cache_chunk} must divide the micro-batch "
        f"({config.micro_batch_size} pairs)"
    )
  parse_mesh_spec(config.mesh)
  if config.dtype not in DTYPES:
    raise ValueError(f"dtype: expected one of {DTYPES}, got {config.dtype!r}")
  _int(config, "seed", 0)
  _int(config, "checkpoint_every", 0, optional=True)
  _number(config, "checkpoint_minutes", 0.0, low_open=True, optional=True)
  _int(config, "keep_checkpoints", 1)
  _int(config, "eval_every", 0, optional=True)
  _int(config, "log_every", 1)
  _number(config, "eval_fraction", 0.0, 1.0, low_open=True)
  if config.eval_fraction >= 1.0:
    raise ValueError(f"eval_fraction: expected a fraction in (0, 1), got {config.eval_fraction!r}")
  _int(config, "split_seed", 0)
