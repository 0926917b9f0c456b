"""CPU attention benchmark: sparse masks against dense, side by side in one run.

    python benchmarks/attention.py [--quick] [--out benchmarks/RESULTS-attention-cpu.md]

Shape of multilingual-e5-small: B=1, 12 heads, head dim 32, float32. Every
ratio is (sparse time) / (dense time through the same blocked XLA path), both
measured in this run, functions taking turns in bursts; `jax.nn.dot_product_attention` is timed as a second
dense baseline. Memory is XLA's `temp_size_in_bytes` of the compiled program.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import BlockSparseMask, DenseMask, LocalMask, Mask, attention

BATCH, HEADS, HEAD_DIM = 1, 12, 32


def _inputs(length: int, seed: int = 0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, (BATCH, length, HEADS, HEAD_DIM), jnp.float32) for key in keys)


def _forward(mask: Mask, implementation: str = "xla"):
  return jax.jit(lambda q, k, v: attention(q, k, v, mask, implementation=implementation))


def _forward_backward(mask: Mask):
  """Output and input gradients for a given output cotangent (a constant one, as from
  `.sum()`, would let XLA fold part of the backward pass away)."""
  def run(q, k, v, d_out):
    out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, mask, implementation="xla"), q, k, v)
    return out, *vjp(d_out)
  return jax.jit(run)


def _sdpa():
  return jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v))


def seconds(fns, args, repeats: int, burst: int = 3) -> list[float]:
  """Best wall time of each `fn(*args)`; functions take turns, `burst` calls at a time.

  Taking turns keeps ratios fair on a machine whose load changes during the run,
  and the minimum is the least disturbed call. Bursts matter on the CPU: the
  first call after a function that allocated gigabytes (dense attention at 4k)
  runs up to 4x slow while the allocator and page tables settle, which single
  interleaved calls would charge to whichever function comes next. Within a
  burst, each function runs as it does inside a training loop: after itself.
  """
  for fn in fns:
    jax.block_until_ready(fn(*args))  # compile and warm up
  best = [float("inf")] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      for _ in range(burst):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best[i] = min(best[i], time.perf_counter() - start)
  return best


def temp_bytes(fn, args) -> int:
  return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def random_layout_mask(length: int, block: int, density: float, seed: int = 0) -> BlockSparseMask:
  """Exactly round(density * n) active key blocks in every query row, diagonal included."""
  n = -(-length // block)
  per_row = max(1, round(density * n))
  rng = np.random.default_rng(seed)
  layout = np.zeros((n, n), bool)
  for row in range(n):
    others = rng.permutation(np.delete(np.arange(n), row))[: per_row - 1]
    layout[row, [row, *others]] = True
  return BlockSparseMask(layout, block)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--quick", action="store_true", help="fewer repeats, skip L=16k timing")
  parser.add_argument("--out", help="also write the markdown tables to this file")
  args = parser.parse_args()
  repeats = 2 if args.quick else args.repeats
  lines = [f"CPU: {platform.processor() or platform.machine()}, {jax.device_count()} device(s), "
           f"jax {jax.__version__}; B={BATCH}, H={HEADS}, D={HEAD_DIM}, float32; best of {repeats} turns of 3 calls each.", ""]

  def emit(line=""):
    print(line, flush=True)
    lines.append(line)

  window = LocalMask(128, 128)
  cases = [
      ("block-sparse 25%, 128-blocks", random_layout_mask(2048, 128, 0.25), 2048, 0.32, 0.32),
      ("block-sparse 12.5%, 128-blocks", random_layout_mask(2048, 128, 0.125), 2048, 0.20, None),
      ("block-sparse 25%, 64-blocks", random_layout_mask(2048, 64, 0.25), 2048, 0.32, 0.32),
      ("block-sparse 12.5%, 64-blocks", random_layout_mask(2048, 64, 0.125), 2048, 0.20, None),
      ("local w=128", window, 4096, 0.10, 0.12),
  ]
  emit("| case | L | attended | fwd ms | dense fwd ms | sdpa fwd ms | fwd ratio (target) | ratio to sdpa "
       "| fwd+bwd ms | dense fwd+bwd ms | fwd+bwd ratio (target) |")
  emit("|---|---|---|---|---|---|---|---|---|---|---|")
  for name, mask, length, fwd_target, bwd_target in cases:
    x = _inputs(length)
    sparse_fwd, dense_fwd, sdpa_fwd = seconds([_forward(mask), _forward(DenseMask()), _sdpa()], x, repeats)
    d_out = _inputs(length, seed=1)[0]
    sparse_bwd, dense_bwd = seconds([_forward_backward(mask), _forward_backward(DenseMask())], (*x, d_out),
                                    repeats)
    ratio_f, ratio_b = sparse_fwd / dense_fwd, sparse_bwd / dense_bwd
    verdict_f = f"{ratio_f:.3f} (<= {fwd_target}: {'met' if ratio_f <= fwd_target else 'MISSED'})"
    verdict_b = f"{ratio_b:.3f}" + (f" (<= {bwd_target}: {'met' if ratio_b <= bwd_target else 'MISSED'})"
                                    if bwd_target else "")
    emit(f"| {name} | {length} | {mask.density(length, length):.3f} | {sparse_fwd * 1e3:.1f} | "
         f"{dense_fwd * 1e3:.1f} | {sdpa_fwd * 1e3:.1f} | {verdict_f} | {sparse_fwd / sdpa_fwd:.3f} | "
         f"{sparse_bwd * 1e3:.1f} | {dense_bwd * 1e3:.1f} | {verdict_b} |")

  emit("")
  emit("Local w=128, forward: XLA temp memory (compiled) and time against length.")
  emit("")
  emit("| L | temp MiB | fwd ms | dense temp MiB |")
  emit("|---|---|---|---|")
  memory = {}
  for length in (2048, 4096, 8192, 16384):
    x = _inputs(length)
    fn = _forward(window)
    memory[length] = temp_bytes(fn, x)
    timed = "" if (args.quick and length > 8192) else f"{seconds([fn], x, max(1, repeats // 2))[0] * 1e3:.1f}"
    dense_mem = temp_bytes(_forward(DenseMask()), x)
    emit(f"| {length} | {memory[length] / 2**20:.1f} | {timed} | {dense_mem / 2**20:.1f} |")
  growth = memory[16384] / memory[2048]
  emit("")
  emit(f"Memory growth 16k / 2k: {growth:.2f} (target <= 10; linear is 8): "
       f"{'met' if growth <= 10 else 'MISSED'}.")
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
