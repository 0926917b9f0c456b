"""Checksummed, atomic file downloads.

A download streams into a temporary file beside its destination, hashing as it
goes; only a complete file with the expected sha256 is moved into place with
`os.replace`, so a reader never sees a half-written or corrupt file, and two
processes fetching the same file at once cannot tear it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import tempfile
import urllib.error
import urllib.request

from jxr._progress import progress

_CHUNK = 1 << 16


class DownloadError(OSError):
  """A download failed: unreachable server, HTTP error, truncated body or bad checksum."""


def sha256_file(path: str | os.PathLike) -> str:
  """Hex sha256 of the file at `path`."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def fetch(url: str, dest: str | os.PathLike, sha256: str, *, timeout: float = 60.0) -> pathlib.Path:
  """Downloads `url` to `dest` if its sha256 is `sha256`; returns `dest`.

  Raises `DownloadError` naming the url on any failure; `dest` is then left as
  it was (absent or untouched) and no temporary file remains.
  """
  dest = pathlib.Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
  try:
    with os.fdopen(fd, "wb") as out:
      received, expected_size, digest = _stream(url, out, timeout=timeout, desc=dest.name)
    if expected_size is not None and received != expected_size:
      raise DownloadError(f"{url}: truncated download, got {received} of {expected_size} bytes")
    if digest != sha256:
      raise DownloadError(
          f"{url}: sha256 mismatch ({received} bytes): expected {sha256}, got {digest}; "
          "the file was not saved"
      )
    os.replace(tmp_name, dest)
  except BaseException:
    pathlib.Path(tmp_name).unlink(missing_ok=True)
    raise
  return dest


def _stream(url: str, out, *, timeout: float, desc: str) -> tuple[int, int | None, str]:
  """Copies the body of `url` into `out`; returns (bytes, Content-Length or None, sha256)."""
  digest = hashlib.sha256()
  received = 0
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      length = response.headers.get("Content-Length")
      expected_size = int(length) if length is not None else None
      with progress(total=expected_size, unit="B", unit_scale=True, desc=desc) as bar:
        while chunk := response.read(_CHUNK):
          out.write(chunk)
          digest.update(chunk)
          received += len(chunk)
          bar.update(len(chunk))
  except urllib.error.HTTPError as e:
    raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
  except urllib.error.URLError as e:
    raise DownloadError(f"{url}: could not connect ({e.reason})") from e
  except http.client.IncompleteRead as e:
    raise DownloadError(
        f"{url}: truncated download, got {received + len(e.partial)} bytes"
        + (f" of {received + len(e.partial) + e.expected}" if e.expected else "")
    ) from e
  except (http.client.HTTPException, OSError) as e:
    raise DownloadError(f"{url}: download failed after {received} bytes ({e!r})") from e
  return received, expected_size, digest.hexdigest()
