"""GPU attention benchmark: the Pallas (Triton) flash kernel against cuDNN, and sparsity.

    python benchmarks/attention_gpu.py [--quick] [--out benchmarks/RESULTS-attention-gpu.md]

Two tables, bfloat16:

1. Dense: TFLOP/s of `attention(..., implementation="pallas")` with `DenseMask()`
   against `jax.nn.dot_product_attention(..., implementation="cudnn")`, forward
   and forward+backward, at L = 1k..16k and head dims 64 and 128. The batch
   shrinks as L grows so each call does comparable work (B*H = 32 at 16k).
   FLOPs: forward 4*B*H*L^2*D (two matmuls); forward+backward 3.5x that (five
   more matmuls in the backward, the usual FlashAttention count).
2. Block-sparse: time of `BlockSparseMask.pattern(128, random=r)` against the
   dense kernel at the same shape, with `r = random_for_density(d, [L], block=128)`
   (the random fraction that attends closest to density d at length L); the
   target is time <= 1.2 x (visited fraction x dense time). A density below the
   band and global blocks' floor at L gets a row saying so.

Times are medians of several runs after a warm-up, each ended by
`jax.block_until_ready`. Needs a CUDA GPU; exits with an error otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp

from pallas_kernels import (
    BlockSizes,
    BlockSparseMask,
    DenseMask,
    Mask,
    attention,
    random_for_density,
    visited_fraction,
)

try:
  from jxr._progress import progress
except ImportError:  # tqdm missing on a bare GPU image: run without a bar

  def progress(iterable=None, **_):
    return iterable


HEADS = 16
TOKENS_PER_HEAD_BATCH = 32_768  # B = this // L, so B*H = 32 at L = 16k


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int
  length: int
  heads: int
  head_dim: int

  @property
  def forward_flops(self) -> float:
    return 4.0 * self.batch * self.heads * self.length**2 * self.head_dim


def _require_gpu() -> jax.Device:
  devices = [d for d in jax.devices() if d.platform == "gpu"]
  if not devices:
    sys.exit(
        f"error: benchmarks/attention_gpu.py needs a CUDA GPU; jax sees only "
        f"{[d.platform for d in jax.devices()]}"
    )
  return devices[0]


def _inputs(shape: Shape, seed: int = 0):
  keys = jax.random.split(jax.random.key(seed), 4)
  dims = (shape.batch, shape.length, shape.heads, shape.head_dim)
  return tuple(jax.random.normal(key, dims, jnp.bfloat16) for key in keys)


def _pallas(mask: Mask, block_sizes: BlockSizes | None) -> Callable:
  def fn(q, k, v):
    return attention(q, k, v, mask, block_sizes=block_sizes, implementation="pallas")

  return fn


def _cudnn(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


def _forward(fn: Callable) -> Callable:
  return jax.jit(lambda q, k, v, d_out: fn(q, k, v))


def _forward_backward(fn: Callable) -> Callable:
  def run(q, k, v, d_out):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(d_out)

  return jax.jit(run)


def seconds(fn: Callable, args, repeats: int) -> float:
  """Median wall time of `fn(*args)` after a compile call and a warm-up call."""
  jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _try_seconds(fn, args, repeats) -> float | str:
  try:
    return seconds(fn, args, repeats)
  except Exception as error:  # cuDNN may reject a shape or be missing; record why
    return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"


def _fmt_tflops(flops: float, t: float | str) -> str:
  return t if isinstance(t, str) else f"{flops / t / 1e12:.1f}"


def _fmt_ratio(a: float | str, b: float | str) -> str:
  return "n/a" if isinstance(a, str) or isinstance(b, str) else f"{a / b:.2f}"


def dense_table(lengths, head_dims, block_sizes, repeats) -> list[str]:
  rows = [
      "| L | D | B x H | pallas fwd TFLOP/s | cuDNN fwd TFLOP/s | fwd ratio | "
      "pallas fwd+bwd TFLOP/s | cuDNN fwd+bwd TFLOP/s | fwd+bwd ratio |",
      "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  grid = [(length, d) for d in head_dims for length in lengths]
  for length, head_dim in progress(grid, desc="dense"):
    shape = Shape(max(1, TOKENS_PER_HEAD_BATCH // length), length, HEADS, head_dim)
    args = _inputs(shape)
    times = {}
    for name, fn in (("pallas", _pallas(DenseMask(), block_sizes)), ("cudnn", _cudnn)):
      times[name, "f"] = _try_seconds(_forward(fn), args, repeats)
      times[name, "fb"] = _try_seconds(_forward_backward(fn), args, repeats)
    f, fb = shape.forward_flops, 3.5 * shape.forward_flops
    rows.append(
        f"| {length} | {head_dim} | {shape.batch} x {shape.heads} "
        f"| {_fmt_tflops(f, times['pallas', 'f'])} | {_fmt_tflops(f, times['cudnn', 'f'])} "
        f"| {_fmt_ratio(times['cudnn', 'f'], times['pallas', 'f'])} "
        f"| {_fmt_tflops(fb, times['pallas', 'fb'])} | {_fmt_tflops(fb, times['cudnn', 'fb'])} "
        f"| {_fmt_ratio(times['cudnn', 'fb'], times['pallas', 'fb'])} |"
    )
    print(rows[-1], flush=True)
  return rows


def sparse_table(lengths, head_dims, densities, block_sizes, repeats) -> list[str]:
  rows = [
      "| L | D | B x H | target density | visited fraction | fwd ms | fwd / dense | "
      "fwd / (fraction x dense) | fwd+bwd ms | fwd+bwd / dense | fwd+bwd / (fraction x dense) |",
      "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  grid = [(length, d) for d in head_dims for length in lengths]
  for length, head_dim in progress(grid, desc="block-sparse"):
    shape = Shape(max(1, TOKENS_PER_HEAD_BATCH // length), length, HEADS, head_dim)
    args = _inputs(shape)
    dense = _pallas(DenseMask(), block_sizes)
    dense_f = seconds(_forward(dense), args, repeats)
    dense_fb = seconds(_forward_backward(dense), args, repeats)
    for density in densities:
      try:
        mask = BlockSparseMask.pattern(128, random=random_for_density(density, [length], block=128))
      except ValueError as error:  # below the band + global floor at this length
        rows.append(
            f"| {length} | {head_dim} | {shape.batch} x {shape.heads} | {density:.3f} | "
            f"n/a: {str(error).split(';')[0]} |" + " |" * 6
        )
        print(rows[-1], flush=True)
        continue
      tiles = (block_sizes or BlockSizes.default(head_dim, jnp.bfloat16)).fit(mask, length, length)
      fraction = visited_fraction(mask, length, length, tiles.block_q, tiles.block_k)
      fn = _pallas(mask, block_sizes)
      t_f = seconds(_forward(fn), args, repeats)
      t_fb = seconds(_forward_backward(fn), args, repeats)
      rows.append(
          f"| {length} | {head_dim} | {shape.batch} x {shape.heads} | {density:.3f} | {fraction:.3f} "
          f"| {t_f * 1e3:.2f} | {t_f / dense_f:.3f} | {t_f / (fraction * dense_f):.2f} "
          f"| {t_fb * 1e3:.2f} | {t_fb / dense_fb:.3f} | {t_fb / (fraction * dense_fb):.2f} |"
      )
      print(rows[-1], flush=True)
  return rows


def _block_sizes(text: str | None, warps: int | None, stages: int | None) -> BlockSizes | None:
  if text is None and warps is None and stages is None:
    return None
  sizes = [int(x) for x in text.split(",")] if text else [128, 64, 64, 64, 64, 64]
  if len(sizes) != 6:
    raise ValueError(f"--tiles: expected 6 comma-separated ints, got {text!r}")
  return BlockSizes(*sizes, num_warps=warps or 4, num_stages=stages or 2)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="L = 1k, 4k; D = 64; densities 1, 0.25")
  parser.add_argument(
      "--lengths",
      type=lambda s: [int(x) for x in s.split(",")],
      default=[1024, 2048, 4096, 8192, 16384],
  )
  parser.add_argument(
      "--sparse-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[8192, 16384]
  )
  parser.add_argument(
      "--head-dims", type=lambda s: [int(x) for x in s.split(",")], default=[64, 128]
  )
  parser.add_argument(
      "--densities",
      type=lambda s: [float(x) for x in s.split(",")],
      default=[1.0, 0.5, 0.25, 0.125],
  )
  parser.add_argument(
      "--tiles",
      help="block_q,block_k,block_q_dkv,block_k_dkv,block_q_dq,block_k_dq "
      "(default: BlockSizes.default per head dim)",
  )
  parser.add_argument("--warps", type=int)
  parser.add_argument("--stages", type=int)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--skip", choices=["dense", "sparse"], action="append", default=[])
  parser.add_argument("--out", help="also write the markdown report to this file")
  args = parser.parse_args(argv)
  if args.quick:
    args.lengths, args.sparse_lengths, args.head_dims = [1024, 4096], [4096], [64]
    args.densities = [1.0, 0.25]
  device = _require_gpu()
  block_sizes = _block_sizes(args.tiles, args.warps, args.stages)

  lines = [
      f"## Attention on {device.device_kind} (jax {jax.__version__}, bfloat16)",
      "",
      f"Tiles: {block_sizes or 'BlockSizes.default(head_dim)'}; heads {HEADS}, "
      f"batch {TOKENS_PER_HEAD_BATCH} // L; median of {args.repeats} runs.",
      "",
  ]
  if "dense" not in args.skip:
    lines += ["### Dense: Pallas vs cuDNN (TFLOP/s; ratio = pallas / cuDNN speed)", ""]
    lines += dense_table(args.lengths, args.head_dims, block_sizes, args.repeats) + [""]
  if "sparse" not in args.skip:
    lines += [
        "### Block-sparse (pattern(128, random=random_for_density(d, [L], block=128))) vs dense, "
        "same kernel",
        "",
    ]
    lines += sparse_table(
        args.sparse_lengths, args.head_dims, args.densities, block_sizes, args.repeats
    ) + [""]
  report = "\n".join(lines)
  print(report)
  if args.out:
    with open(args.out, "w") as f:
      f.write(report + "\n")


if __name__ == "__main__":
  main()
