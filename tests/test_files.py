"""jxr._files.atomic_write, and metrics.jsonl after a kill mid-row."""

import json
import os
import stat

import pytest

from jxr._files import atomic_write
from jxr.train.metrics import MetricsWriter


def test_atomic_write_replaces_whole_files_readable_by_all(tmp_path):
  path = atomic_write(tmp_path / "sub" / "a.json", '{"x": 1}\n')
  assert path.read_text() == '{"x": 1}\n'
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
  atomic_write(path, b"new")
  assert path.read_bytes() == b"new" and sorted(os.listdir(path.parent)) == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  path = atomic_write(tmp_path / "a.txt", "old")

  def broken(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", broken)
  with pytest.raises(OSError, match="disk full"):
    atomic_write(path, "new")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_metrics_resume_drops_a_row_cut_off_by_a_kill(tmp_path):
  rows = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)]
  (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 4, "lo')
  MetricsWriter(tmp_path, resume_step=2, enabled=True).close()
  kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in kept] == [1, 2]
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match="line 2 is not JSON"):
    MetricsWriter(tmp_path, resume_step=2, enabled=True)
