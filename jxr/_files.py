"""Writing files: only process 0 of a run writes them, and never half of one (a crash leaves the
old file or none)."""

from __future__ import annotations

import os
import pathlib
import tempfile

from jxr import _failpoints


def atomic_write(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
  """Writes `data` to a temporary file beside `path`, syncs it, then renames it over `path`.

  The file is 0644 like any other output (mkstemp alone makes 0600); on any error the
  temporary file is removed and `path` is left as it was.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  payload = data.encode() if isinstance(data, str) else data
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    os.chmod(tmp, 0o644)
    with os.fdopen(fd, "wb") as f:
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    _failpoints.reached(f"write:{path.name}")
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return path


def is_primary() -> bool:
  """Whether this process writes the files a run's processes share (process 0; alone, always)."""
  import jax  # here, not at import: experiments.report uses this module without jax

  return jax.process_index() == 0
