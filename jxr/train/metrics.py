"""`metrics.jsonl` and TensorBoard events of a run (written by process 0 only).

One JSON object per logged step: `{"step": s, "loss": ..., "lr": ..., ...}` and,
on evaluation steps, `"eval": {...}` (the hook's dict). A resumed run first drops
rows past the checkpoint it continues from, so every step appears once.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any

import jax
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


def _summary_writer_class() -> type | None:
  """tensorboardX's `SummaryWriter`, or None without tensorboardX (metrics.jsonl has everything).

  tensorboardX imports torch where it is installed, only to accept torch tensors: 2-3 s a process.
  We log floats, so torch is hidden while tensorboardX loads (a torch already loaded is left be).
  """
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # `import torch` raises ImportError
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    return None
  finally:
    if hide_torch:
      del sys.modules["torch"]
  return SummaryWriter


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
    SummaryWriter = _summary_writer_class()
    if SummaryWriter is not None:
      # purge_step drops events a crashed run wrote past the checkpoint.
      self._tb = SummaryWriter(
          str(run_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1
      )

  def _truncate(self, last_step: int) -> None:
    if not self.path.exists():
      self.path.write_text("")
      return
    lines = [line for line in self.path.read_text().splitlines() if line.strip()]
    kept = []
    for i, line in enumerate(lines):
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        if i == len(lines) - 1:  # a row cut off by a kill: its step comes again
          break
        raise ValueError(f"{self.path}: line {i + 1} is not JSON (the file is damaged)") from None
      if row.get("step", 0) <= last_step:
        kept.append(line)
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


class StepLog:
  """Buffers each step's device metrics and writes the rows that are due.

  Fetching metrics forces the device to catch up, so it happens only when rows
  are written (every `log_every` steps, on evaluations and at the end): steps
  in between are dispatched without waiting. steps/s and tokens/s are averages
  over the steps fetched together.
  """

  def __init__(self, writer: MetricsWriter, log_every: int, last_step: int, bar=None):
    self.writer, self.log_every, self.last_step, self.bar = writer, log_every, last_step, bar
    self.pending: list[tuple[int, dict[str, Any], Any]] = []  # (step, batch info, device metrics)
    self.ready: dict[int, dict[str, Any]] = {}  # host rows not yet written
    self.last_loss = float("nan")
    self.restart_clock()

  def restart_clock(self) -> None:
    """Time from now on counts as training time (called after evaluations)."""
    self._since = time.perf_counter()

  def add(self, step: int, info: dict[str, Any], metrics: Any) -> None:
    self.pending.append((step, info, metrics))

  def due(self, step: int) -> bool:
    return step % self.log_every == 0 or step == self.last_step

  def collect(self) -> None:
    """Fetches the pending steps' metrics (one device sync for all of them)."""
    if not self.pending:
      return
    fetched = jax.device_get([m for _, _, m in self.pending])
    now = time.perf_counter()
    seconds = max(now - self._since, 1e-9)
    rates = {
        "steps_per_s": len(self.pending) / seconds,
        "tokens_per_s": sum(float(m["tokens"]) for m in fetched) / seconds,
    }
    for (step, info, _), m in zip(self.pending, fetched):
      row = {
          "step": step,
          "loss": float(m["loss"]),
          "lr": float(m["lr"]),
          "grad_norm": float(m["grad_norm"]),
          "skipped_steps": int(m["skipped_steps"]),
          **info,
          **rates,
      }
      if "temperature" in m:
        row["temperature"] = float(m["temperature"])
      self.ready[step] = row
      self.last_loss = row["loss"]
    if self.bar is not None:
      self.bar.set_postfix(
          loss=f"{self.last_loss:.4f}",
          steps_s=f"{rates['steps_per_s']:.2f}",
          tokens_s=f"{rates['tokens_per_s']:.0f}",
      )
    self.pending.clear()
    self._since = now

  def write(self, eval_step: int | None = None, eval_result: dict | None = None) -> None:
    """Writes the rows due, `eval_result` merged into the row of `eval_step`."""
    self.collect()
    if eval_result is not None:
      self.ready.setdefault(eval_step, {"step": eval_step})["eval"] = eval_result
    for step in sorted(self.ready):
      if self.due(step) or "eval" in self.ready[step]:
        self.writer.write(self.ready[step])
    self.ready.clear()
