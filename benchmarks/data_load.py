"""Times jxr.data: loading each LAReQA dataset, building pairs, drawing and collating batches.

    python benchmarks/data_load.py [--data-dir DIR] [--repeats 5]

Each load is a fresh `load_lareqa` call (parse + relevance), files already on disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jxr.data


def _time(fn, repeats: int) -> tuple[float, float]:
  """(median, min) wall seconds of `fn()` over `repeats` calls."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), min(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--data-dir", default=None, help="LAReQA folder (default: $JXR_DATA_DIR or the cache)"
  )
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument(
      "--tokenizer", default=None, help="tokenizer.json to time collate with (optional)"
  )
  args = parser.parse_args()

  print(
      f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
  )
  for name in ("xquad-r", "mlqa-r"):
    median, best = _time(
        lambda name=name: jxr.data.load_lareqa(name, data_dir=args.data_dir), args.repeats
    )
    print(f"load_lareqa({name!r}): median {median:.3f} s, min {best:.3f} s")

  task = jxr.data.load_lareqa("xquad-r", data_dir=args.data_dir)
  train, _ = jxr.data.split_by_article(task)
  median, _ = _time(lambda: jxr.data.split_by_article(task), args.repeats)
  print(f"split_by_article(xquad-r): median {median:.3f} s")
  pairs = jxr.data.training_pairs(train)
  median, _ = _time(lambda: jxr.data.HybridSampler(pairs, args.batch_size), args.repeats)
  print(f"HybridSampler init ({len(pairs)} pairs): median {median:.3f} s")
  sampler = jxr.data.HybridSampler(pairs, args.batch_size)
  median, _ = _time(lambda: [next(sampler) for _ in range(100)], args.repeats)
  print(f"next(sampler), batch {args.batch_size}: {median * 10:.3f} ms per batch")
  if args.tokenizer:
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(args.tokenizer)
    batch = next(sampler)
    median, _ = _time(lambda: jxr.data.collate(batch, tokenizer, 64, 256), args.repeats)
    print(f"collate, batch {args.batch_size}, lengths 64/256: {median * 1000:.1f} ms")


if __name__ == "__main__":
  main()
