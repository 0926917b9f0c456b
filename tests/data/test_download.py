"""The downloader against a local http.server: success, bad checksum, truncation, no server."""

import functools
import http.server
import pathlib
import shutil
import socket
import threading

import pytest

import jxr.data
from jxr.data import lareqa


class _Handler(http.server.SimpleHTTPRequestHandler):
  truncate = False  # send the full Content-Length but only half the body

  def copyfile(self, source, outputfile):
    body = source.read()
    outputfile.write(body[: len(body) // 2] if self.truncate else body)

  def log_message(self, *args):  # keep test output clean
    pass


class _TruncatingHandler(_Handler):
  truncate = True


@pytest.fixture
def serve(tmp_path, monkeypatch):
  """Starts a server on 127.0.0.1 over a folder laid out like the GitHub raw files."""
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
  monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
  monkeypatch.delenv("JXR_OFFLINE", raising=False)
  root = tmp_path / "www"
  servers = []

  def start(handler=_Handler) -> pathlib.Path:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append(server)
    monkeypatch.setattr(lareqa, "BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    return root

  yield start
  for server in servers:
    server.shutdown()
    server.server_close()


def _publish(root: pathlib.Path, lareqa_dir: pathlib.Path, name: str, lang: str) -> pathlib.Path:
  target = root / lareqa.COMMITS[name] / name / f"{lang}.json"
  target.parent.mkdir(parents=True, exist_ok=True)
  shutil.copy(lareqa_dir / name / f"{lang}.json", target)
  return target


def _files(folder: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_download_verifies_and_loads(serve, lareqa_dir, tmp_path):
  root = serve()
  _publish(root, lareqa_dir, "xquad-r", "en")
  _publish(root, lareqa_dir, "xquad-r", "de")
  cache = tmp_path / "cache"
  task = jxr.data.load_lareqa("xquad-r", data_dir=cache, languages=["en", "de"])
  assert task.num_queries == 2 * 1190
  assert _files(cache) == ["xquad-r/de.json", "xquad-r/en.json"]
  for lang in ("en", "de"):
    assert (
        jxr.data.download.sha256_file(cache / "xquad-r" / f"{lang}.json")
        == lareqa.SHA256[f"xquad-r/{lang}.json"]
    )


def test_urls_are_pinned():
  assert lareqa.url_for("mlqa-r", "de") == (
      "https://raw.githubusercontent.com/google-research-datasets/lareqa/"
      "354d67d1cd066854cdfbf5ad0e6105528976141d/mlqa-r/de.json"
  )
  assert "9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c/xquad-r/th.json" in lareqa.url_for(
      "xquad-r", "th"
  )
  assert len(lareqa.SHA256) == sum(len(langs) for langs in lareqa.LANGUAGES.values())


def test_checksum_mismatch_leaves_nothing(serve, lareqa_dir, tmp_path):
  root = serve()
  served = _publish(root, lareqa_dir, "mlqa-r", "es")
  served.write_bytes(served.read_bytes() + b"\n")  # still valid JSON; only the checksum can tell
  cache = tmp_path / "cache"
  with pytest.raises(FileNotFoundError, match="sha256 mismatch") as error:
    jxr.data.load_lareqa("mlqa-r", data_dir=cache, languages=["es"])
  assert "mlqa-r/es.json" in str(error.value) and str(cache) in str(error.value)
  assert _files(cache) == []


def test_truncated_body_leaves_nothing(serve, lareqa_dir, tmp_path):
  root = serve(_TruncatingHandler)
  _publish(root, lareqa_dir, "xquad-r", "en")
  cache = tmp_path / "cache"
  with pytest.raises(FileNotFoundError, match="truncated"):
    jxr.data.load_lareqa("xquad-r", data_dir=cache, languages=["en"])
  assert _files(cache) == []


def test_missing_on_server(serve, tmp_path):
  serve()
  cache = tmp_path / "cache"
  with pytest.raises(FileNotFoundError, match="HTTP 404"):
    jxr.data.load_lareqa("xquad-r", data_dir=cache, languages=["vi"])
  assert _files(cache) == []


def test_server_down(tmp_path, monkeypatch):
  monkeypatch.delenv("JXR_OFFLINE", raising=False)
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
  monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
  with socket.socket() as s:  # a port nothing listens on once closed
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  monkeypatch.setattr(lareqa, "BASE_URL", f"http://127.0.0.1:{port}")
  cache = tmp_path / "cache"
  with pytest.raises(FileNotFoundError, match="could not connect") as error:
    jxr.data.load_lareqa("mlqa-r", data_dir=cache, languages=["hi"])
  assert "mlqa-r/hi.json" in str(error.value)
  assert _files(cache) == []


def test_a_failed_file_keeps_the_verified_ones(serve, lareqa_dir, tmp_path):
  root = serve()
  _publish(root, lareqa_dir, "xquad-r", "en")  # "tr" is not served
  cache = tmp_path / "cache"
  with pytest.raises(FileNotFoundError, match="xquad-r/tr.json"):
    jxr.data.load_lareqa("xquad-r", data_dir=cache, languages=["en", "tr"])
  assert _files(cache) == ["xquad-r/en.json"]
