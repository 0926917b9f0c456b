"""`metrics.jsonl` and TensorBoard events of a run (written by process 0 only).

One JSON object per logged step: `{"step": s, "loss": ..., "lr": ..., ...}` and,
on evaluation steps, `"eval": {...}` (the hook's dict). A resumed run first drops
rows past the checkpoint it continues from, so every step appears once.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
  """JSON-able python values from numpy / jax scalars (non-finite floats become None)."""
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, "shape") and getattr(value, "shape", None) == ():
    value = np.asarray(value).item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _scalars(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
  out = {}
  for key, value in row.items():
    if key == "step":
      continue
    if isinstance(value, dict):
      out.update(_scalars(value, f"{prefix}{key}/"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
      out[f"{prefix}{key}"] = float(value)
  return out


class MetricsWriter:
  """Appends rows to `metrics.jsonl` and scalars to TensorBoard under `tb/`."""

  def __init__(self, run_dir: pathlib.Path, *, resume_step: int | None, enabled: bool = True):
    self.enabled = enabled
    self.path = run_dir / "metrics.jsonl"
    self._tb = None
    if not enabled:
      return
    if resume_step is None:
      self.path.write_text("")
    else:
      self._truncate(resume_step)
    try:
      from tensorboardX import SummaryWriter
    except ImportError:  # metrics.jsonl still has everything
      SummaryWriter = None
    if SummaryWriter is not None:
      # purge_step drops events a crashed run wrote past the checkpoint.
      self._tb = SummaryWriter(str(run_dir / "tb"),
                               purge_step=None if resume_step is None else resume_step + 1)

  def _truncate(self, last_step: int) -> None:
    if not self.path.exists():
      self.path.write_text("")
      return
    kept = [line for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    self.path.write_text("".join(line + "\n" for line in kept))

  def write(self, row: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = _plain(row)
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row, sort_keys=True) + "\n")
    if self._tb is not None:
      for key, value in _scalars(row).items():
        self._tb.add_scalar(key, value, row["step"])

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(run_dir: str | pathlib.Path) -> list[dict[str, Any]]:
  """The rows of a run's `metrics.jsonl`."""
  path = pathlib.Path(run_dir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
