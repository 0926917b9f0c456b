"""Run a python snippet in a fresh interpreter with N fake CPU devices; get JSON back.

XLA reads `--xla_force_host_platform_device_count` once, when jax starts, so
multi-device checks cannot run in the pytest process itself. The snippet
reports by printing one JSON line prefixed with `RESULT `.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[2]
_MARK = "RESULT "

PRELUDE = f"""
import json, sys
sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
import numpy as np
import jax
def report(value):
  print("RESULT " + json.dumps(value), flush=True)
"""


def run_python(
    snippet: str, *, devices: int = 8, env: dict[str, str] | None = None, timeout: float = 900
) -> Any:
  """Runs `snippet` (with `report(value)` defined) on `devices` CPU devices; returns the value."""
  environment = dict(os.environ)
  environment.update(env or {})
  flags = [
      flag
      for flag in environment.get("XLA_FLAGS", "").split()
      if not flag.startswith("--xla_force_host_platform_device_count")
  ]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  environment["XLA_FLAGS"] = " ".join(flags)
  environment.update(JAX_PLATFORMS="cpu", JXR_QUIET="1", HF_HUB_OFFLINE="1")
  code = PRELUDE + textwrap.dedent(snippet)
  done = subprocess.run(
      [sys.executable, "-c", code],
      cwd=REPO,
      env=environment,
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  results = [line[len(_MARK) :] for line in done.stdout.splitlines() if line.startswith(_MARK)]
  if done.returncode != 0 or not results:
    raise AssertionError(
        f"subprocess failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
        f"{done.stderr[-6000:]}"
    )
  return json.loads(results[-1])


def activation_gathers(hlo: str) -> int:
  """All-gathers in compiled HLO text whose result has rank >= 3.

  q, k, v and their blocks have rank >= 4; parameters and pooled embeddings have
  rank <= 2, so a count of 0 means no activation was gathered.
  """
  shapes = re.findall(r"= \w+\[([\d,]*)\][^ ]* all-gather", hlo)
  return sum(len(shape.split(",")) >= 3 for shape in shapes)


def tiny_config(out_dir, **changes):
  """A seconds-per-step run: tiny random encoder, MLQA-R pairs, short sequences.

  Every multi-mesh and resume check uses these same settings (`steps=6`, so one
  learning-rate schedule), which lets the compilation cache serve them all.
  """
  from jxr.train import TrainConfig

  settings = dict(
      model="tiny",
      train_data="mlqa-r",
      steps=6,
      batch_size=8,
      max_query_length=32,
      max_passage_length=48,
      lr=1e-3,
      warmup_steps=1,
      log_every=1,
      checkpoint_every=None,
      keep_checkpoints=2,
      eval_every=3,
      out_dir=str(out_dir),
  )
  settings.update(changes)
  return TrainConfig(**settings)


class InterruptAt:
  """An eval hook that presses Ctrl-C at `step` (and otherwise reports the step)."""

  def __init__(self, step: int):
    self.step = step

  def __call__(self, step, encoder):
    if step == self.step:
      raise KeyboardInterrupt
    return {"seen": step}


def losses(rows) -> list[float]:
  return [row["loss"] for row in rows if "loss" in row]
