"""A pod run on localhost: 2 processes x 4 CPU devices train like 1 process x 8 devices.

Each process runs `python -m experiments.run` with the environment a launcher
sets (coordinator address, process count and id); `jax.distributed.initialize`
connects them and CPU collectives (gloo) carry the cross-process reductions.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLAGS = ["--preset", "tiny", "--train-steps", "2", "--batch-size", "8", "--mesh", "data=8"]


def _env(lareqa_dir, devices: int, **extra) -> dict:
  env = dict(
      os.environ,
      PYTHONPATH=str(ROOT),
      JXR_DATA_DIR=str(lareqa_dir),
      JXR_QUIET="1",
      HF_HUB_OFFLINE="1",
      JXR_OFFLINE="1",
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
      **extra,
  )
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS"):
    if name not in extra:
      env.pop(name, None)
  return env


def _losses(out: pathlib.Path) -> list[float]:
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if "loss" in r]


def _start_pod(out: pathlib.Path, lareqa_dir, cwd: pathlib.Path) -> list[subprocess.Popen]:
  """experiments.run as two processes of 4 CPU devices each, joined on a fresh local port."""
  address = f"localhost:{_free_port()}"
  return [
      subprocess.Popen(
          [sys.executable, "-m", "experiments.run", *FLAGS, "--out", str(out)],
          cwd=cwd,
          env=_env(
              lareqa_dir,
              4,
              JAX_COORDINATOR_ADDRESS=address,
              JAX_NUM_PROCESSES="2",
              JAX_PROCESS_ID=str(i),
          ),
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for i in range(2)
  ]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(lareqa_dir, tmp_path):
  single = tmp_path / "single"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.run", *FLAGS, "--out", str(single)],
      cwd=tmp_path,
      env=_env(lareqa_dir, 8),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr

  pod = tmp_path / "pod"
  procs = _start_pod(pod, lareqa_dir, tmp_path)
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=600)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, output in zip(procs, outputs):
    assert p.returncode == 0, output[-4000:]

  expected, got = _losses(single), _losses(pod)
  assert len(expected) == len(got) == 2
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  # Process 0 alone wrote the run; both processes reached the same evaluation.
  results = json.loads((pod / "results.json").read_text())
  assert results["fine_tuned"]["xquad-r"]["num_queries"] > 0
  config = json.loads((pod / "train" / "config.json").read_text())
  assert config["mesh"] == "data=8"

  # The same command again, without --resume: every process refuses, not only process 0.
  for p in _start_pod(pod, lareqa_dir, tmp_path):
    output = p.communicate(timeout=300)[0]
    assert p.returncode == 2 and "pass --resume" in output, output[-2000:]
