"""TensorBoard events beside metrics.jsonl, written without loading torch."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

WRITE = """
import pathlib, sys
from jxr.train.metrics import MetricsWriter
writer = MetricsWriter(pathlib.Path(sys.argv[1]), resume_step=None)
writer.write({"step": 1, "loss": 0.5, "eval": {"map": 0.25}})
writer.close()
print("torch loaded:", "torch" in sys.modules)
import torch  # hidden only while tensorboardX loaded
print("torch imports:", torch.__name__)
"""


def test_events_are_written_without_loading_torch(tmp_path):
  done = subprocess.run(
      [sys.executable, "-c", WRITE, str(tmp_path)],
      cwd=tmp_path,
      env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines() == ["torch loaded: False", "torch imports: torch"]
  (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
  assert b"loss" in events.read_bytes() and b"eval/map" in events.read_bytes()
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
