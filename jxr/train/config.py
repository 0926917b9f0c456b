"""`TrainConfig` (what to train, JSON round-trip) and `TrainResult` (what came out)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

from jxr import fields, tokens
from jxr.model.config import DTYPES, AttentionConfig
from jxr.train.mesh import parse_mesh_spec

LAREQA_NAMES = ("xquad-r", "mlqa-r")
NON_EMPTY = fields.NonEmpty()
SEQUENCE_LENGTH = fields.Int(tokens.MIN_LENGTH, tokens.MAX_LENGTH)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on; `config.json` in the run directory.

  `batch_size` is the global number of pairs per optimiser step (all devices
  and processes); with `grad_accum = k` it is cut into k micro-batches whose
  gradients are averaged (in-batch negatives then come from the micro-batch).
  `grad_cache_chunk` rows are embedded at a time by the gradient cache (None:
  the whole batch at once). `eval_every` / `checkpoint_every` of None turn
  those off (a checkpoint is still written at the end and on Ctrl-C or SIGTERM);
  `checkpoint_minutes` also saves when that much wall time passed since the last
  checkpoint (None: by steps only).
  """

  model: str = fields.declare("multilingual-e5-small", NON_EMPTY)
  attention: AttentionConfig = AttentionConfig()  # it checks its own fields
  train_data: str = fields.declare("xquad-r", NON_EMPTY)
  languages: tuple[str, ...] | None = None
  mono_prob: float = fields.declare(0.5, fields.Number(0.0, 1.0))
  steps: int = fields.declare(1000, fields.Int(1))
  # In-batch negatives need a second row: a batch of one has a loss of zero.
  batch_size: int = fields.declare(64, fields.Int(2))
  lr: float = fields.declare(3e-5, fields.Number(0.0, 1.0, low_open=True))
  weight_decay: float = fields.declare(0.01, fields.Number(0.0))
  warmup_steps: int = fields.declare(100, fields.Int(0))
  clip_norm: float | None = fields.declare(1.0, fields.Number(0.0, low_open=True, optional=True))
  temperature: float = fields.declare(0.05, fields.Number(0.0, low_open=True))
  learn_temperature: bool = fields.declare(False, fields.Flag())
  symmetric: bool = fields.declare(False, fields.Flag())
  max_query_length: int = fields.declare(64, SEQUENCE_LENGTH)
  max_passage_length: int = fields.declare(256, SEQUENCE_LENGTH)
  candidate_context: bool = fields.declare(True, fields.Flag())
  grad_cache_chunk: int | None = fields.declare(None, fields.Int(1, optional=True))
  grad_accum: int = fields.declare(1, fields.Int(1))
  mesh: str = fields.declare("data=-1", NON_EMPTY)
  dtype: str = fields.declare("float32", fields.OneOf(DTYPES))
  seed: int = fields.declare(0, fields.Int(0))
  out_dir: str = fields.declare("runs/train", NON_EMPTY)
  checkpoint_every: int | None = fields.declare(500, fields.Int(1, optional=True))
  checkpoint_minutes: float | None = fields.declare(
      None, fields.Number(0.0, low_open=True, optional=True)
  )
  keep_checkpoints: int = fields.declare(2, fields.Int(1))
  eval_every: int | None = fields.declare(None, fields.Int(1, optional=True))
  log_every: int = fields.declare(10, fields.Int(1))
  eval_fraction: float = fields.declare(0.5, fields.Number(0.0, 1.0, low_open=True, high_open=True))
  split_seed: int = fields.declare(0, fields.Int(0))

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


def validate(config: TrainConfig) -> None:
  """Raises ValueError naming the first bad field (cheap checks only: no files read)."""
  fields.check_all(config)
  if not isinstance(config.attention, AttentionConfig):
    raise ValueError(
        f"attention: expected a jxr.model.AttentionConfig, got {type(config.attention).__name__}"
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
