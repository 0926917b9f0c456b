"""`python -m experiments.run` end to end on the tiny preset, and resuming after Ctrl-C."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPORT_KEYS = {
    "dataset",
    "languages",
    "num_queries",
    "num_candidates",
    "multilingual",
    "bias",
    "matrices",
    "summary",
    "per_query",
}
MATRICES = ("map", "mrr", "recall_at_1", "recall_at_10", "num_queries")


def _run(args, env, cwd, timeout=600):
  return subprocess.run(
      [sys.executable, "-m", "experiments.run", *args],
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def _check_complete(out: pathlib.Path, datasets=("xquad-r",)):
  config = json.loads((out / "config.json").read_text())
  assert {"run", "train_question_ids", "eval_question_ids", "train"} <= set(config)
  assert config["run"]["model"] == "tiny" and config["run"]["out"] == str(out)
  train_ids, eval_ids = set(config["train_question_ids"]), config["eval_question_ids"]
  assert train_ids and set(eval_ids) == set(datasets)
  for name in datasets:
    assert eval_ids[name] and not train_ids & set(eval_ids[name])  # held-out articles
  results = json.loads((out / "results.json").read_text())
  assert {"zero_shot", "fine_tuned"} <= set(results)
  for stage in ("zero_shot", "fine_tuned"):
    assert set(results[stage]) == set(datasets)
    for name in datasets:
      report = results[stage][name]
      assert REPORT_KEYS <= set(report)
      assert sorted(set(report["per_query"]["query_id"])) == eval_ids[name]
      for metric in MATRICES:
        for ext in ("csv", "png"):
          assert (out / stage / name / f"matrix_{metric}.{ext}").stat().st_size > 0
      assert json.loads((out / stage / name / "report.json").read_text()) == report
  comparison = (out / "comparison.md").read_text()
  assert "zero-shot" in comparison and "fine-tuned" in comparison
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if "loss" in r]
  assert steps == sorted(set(steps)) and steps[-1] == config["run"]["train_steps"]
  assert (out / "train" / "model" / "model.safetensors").is_file()
  assert (out / "train" / "model" / "config.json").is_file()
  assert any((out / "train" / "checkpoints").iterdir())
  assert 0 < results["attended_fraction"]["xquad-r"] <= 1
  return results, rows


def _start(args, env, cwd, sigint):
  """experiments.run in a subprocess whose SIGINT disposition is `sigint`, whatever ours is."""
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.run", *args],
      cwd=cwd,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      stdin=subprocess.DEVNULL,
      preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
  )


def _stop_during_training(proc, out: pathlib.Path, signum) -> tuple[str, str]:
  metrics = out / "train" / "metrics.jsonl"
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None:
    if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.2)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.send_signal(signum)
  return proc.communicate(timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, sigint, status",
    [
        (signal.SIGINT, signal.SIG_DFL, 130),  # Ctrl-C in a terminal
        (signal.SIGTERM, signal.SIG_IGN, 143),  # preemption of a job started under nohup
    ],
)
def test_interrupted_run_resumes_and_writes_every_file(run_env, tmp_path, signum, sigint, status):
  """Stopped during training, then --resume: the finished run has every documented file."""
  out = tmp_path / "run"
  args = [
      "--preset",
      "tiny",
      "--attn",
      "local",
      "--window",
      "8",
      "--train-steps",
      "150",
      "--out",
      str(out),
  ]
  proc = _start(args, run_env, tmp_path, sigint)
  stdout, stderr = _stop_during_training(proc, out, signum)
  assert proc.returncode == status, stdout + stderr
  assert "--resume" in stderr and not (out / "results.json").exists()
  assert (out / "zero_shot" / "xquad-r" / "report.json").is_file()
  zero_shot = json.loads((out / "zero_shot" / "xquad-r" / "report.json").read_text())
  stopped_at = json.loads((out / "train" / "config.json").read_text())  # saved before the stop
  assert stopped_at["checkpoint_minutes"] == 5.0  # the tiny preset's wall-time cadence

  resumed = _run([*args, "--resume"], run_env, tmp_path)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert "zero_shot xquad-r" not in resumed.stdout  # the finished stage was not redone
  results, rows = _check_complete(out)
  assert results["zero_shot"]["xquad-r"] == zero_shot
  steps = [r["step"] for r in rows if "loss" in r]
  assert steps == list(range(1, 151))  # every step once, none lost or repeated
  (resumed_from,) = results["train"]["resumed_from_steps"]
  assert 3 <= resumed_from < 150
  assert results["attended_fraction"]["xquad-r"] < 0.8  # a window of 8 on ~48-token passages
  assert "zero-shot   Mo." in resumed.stdout and "Mul. (macro)" in resumed.stdout
  assert f"run directory: {out}" in resumed.stdout
  # A finished run is never overwritten without --resume.
  again = _run(args, run_env, tmp_path)
  assert again.returncode == 2 and "pass --resume" in again.stderr
