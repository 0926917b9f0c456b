"""SIGKILL at any moment, then --resume: the run ends as a straight run would (timings aside)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARGS = ["--preset", "tiny", "--attn", "local", "--window", "8", "--train-steps", "40",
        "--checkpoint-every", "5"]


def _env(lareqa_dir, xla_cache: pathlib.Path) -> dict:
  """The runs' environment; one persistent XLA cache, as the six runs compile the same programs."""
  return dict(os.environ, PYTHONPATH=str(ROOT), JXR_DATA_DIR=str(lareqa_dir), JXR_QUIET="1",
              HF_HUB_OFFLINE="1", JXR_OFFLINE="1", PYTHONUNBUFFERED="1",
              JAX_COMPILATION_CACHE_DIR=str(xla_cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")


def _command(out: pathlib.Path, *extra: str) -> list[str]:
  return [sys.executable, "-m", "experiments.run", *ARGS, "--out", str(out), *extra]


def _rows(out: pathlib.Path) -> list[dict]:
  lines = (out / "train" / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]  # valid JSONL, every line


def _kill_when(out: pathlib.Path, env: dict, ready) -> None:
  proc = subprocess.Popen(_command(out), cwd=out.parent, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL)
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None and not ready(out):
    time.sleep(0.05)
  assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)


def _before_training(out: pathlib.Path) -> bool:
  """Loading data or evaluating zero-shot: the run started, training did not."""
  return (out / "config.json").is_file() and not (out / "train").exists()


def _mid_training(out: pathlib.Path) -> bool:
  path = out / "train" / "metrics.jsonl"
  return path.is_file() and len(path.read_text().splitlines()) >= 12  # past checkpoint 10


def _mid_fine_tuned_evaluation(out: pathlib.Path) -> bool:
  return (out / "train" / "result.json").is_file()  # training done, fine-tuned stage started


def _straight(env: dict, out: pathlib.Path) -> pathlib.Path:
  proc = subprocess.run(_command(out), cwd=out.parent, env=env, capture_output=True,
                        text=True, timeout=900, stdin=subprocess.DEVNULL)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  return out


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_straight_run(lareqa_dir, tmp_path):
  """One test (not parametrized) so that the straight run is made once, on one worker."""
  env = _env(lareqa_dir, tmp_path / "xla")
  straight = _straight(env, tmp_path / "straight")
  want = _rows(straight)
  expected = json.loads((straight / "results.json").read_text())
  assert expected["train"]["resumed_from_steps"] == []
  for moment in (_before_training, _mid_training, _mid_fine_tuned_evaluation):
    out = tmp_path / moment.__name__.strip("_") / "run"
    out.parent.mkdir()
    _kill_when(out, env, moment)
    assert not (out / "results.json").exists()
    resumed = subprocess.run(_command(out, "--resume"), cwd=out.parent, env=env,
                             capture_output=True, text=True, timeout=900,
                             stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    rows = _rows(out)
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 41)), moment.__name__  # each step once, none lost or repeated
    np.testing.assert_allclose([r["loss"] for r in rows if "loss" in r],
                               [r["loss"] for r in want if "loss" in r], rtol=1e-5)
    results = json.loads((out / "results.json").read_text())
    for stage in ("zero_shot", "fine_tuned"):
      got, ref = results[stage]["xquad-r"], expected[stage]["xquad-r"]
      np.testing.assert_allclose(got["per_query"]["ap"], ref["per_query"]["ap"], atol=1e-6)
    if moment is _mid_training:
      (resumed_from,) = results["train"]["resumed_from_steps"]
      assert resumed_from % 5 == 0 and resumed_from >= 5
