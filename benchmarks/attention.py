"""CPU attention benchmark: sparse masks against dense, side by side in one run.

    python benchmarks/attention.py [--quick] [--out benchmarks/RESULTS-attention-cpu.md]
    python benchmarks/attention.py --study-shapes     # the study's masks at its lengths
    python benchmarks/attention.py --study-tiles      # their block-sparse masks on several tiles
    python benchmarks/attention.py --long             # 2k-16k on 64/128-token cells

Shape of multilingual-e5-small: B=1, 12 heads, head dim 32, float32. Every
ratio is (sparse time) / (dense time through the same blocked XLA path), both
measured in this run, functions taking turns in bursts; `jax.nn.dot_product_attention` is timed as a second
dense baseline. Memory is XLA's `temp_size_in_bytes` of the compiled program.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jxr.model import AttentionConfig
from pallas_kernels import (
    BlockSizes,
    BlockSparseMask,
    DenseMask,
    LocalMask,
    Mask,
    attended_fraction,
    attention,
    random_for_density,
    visited_fraction,
)

BATCH, HEADS, HEAD_DIM = 1, 12, 32
WINDOW = LocalMask(128, 128)  # the local case: 128 keys on each side


def _inputs(length: int, seed: int = 0, batch: int = BATCH):
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(
      jax.random.normal(key, (batch, length, HEADS, HEAD_DIM), jnp.float32) for key in keys
  )


def _forward(mask: Mask, implementation: str = "xla", block_sizes: BlockSizes | None = None):
  return jax.jit(
      lambda q, k, v: attention(
          q, k, v, mask, implementation=implementation, block_sizes=block_sizes
      )
  )


def _forward_backward(mask: Mask, block_sizes: BlockSizes | None = None):
  """Output and input gradients for a given output cotangent (a constant one, as from
  `.sum()`, would let XLA fold part of the backward pass away)."""

  def attend(q, k, v):
    return attention(q, k, v, mask, implementation="xla", block_sizes=block_sizes)

  def run(q, k, v, d_out):
    out, vjp = jax.vjp(attend, q, k, v)
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


def peak_run_bytes(length: int) -> int | None:
  """Resident memory one call of local-window attention adds at its peak, or None off Linux.

  Measured in a fresh process (so no memory freed by earlier work is reused):
  build the inputs, compile, reset the kernel's high-water mark
  (`/proc/self/clear_refs`), run once, and read the mark back.
  """
  if not os.path.exists("/proc/self/clear_refs"):
    return None
  result = subprocess.run(
      [sys.executable, __file__, "--peak-run", str(length)],
      check=True,
      capture_output=True,
      text=True,
  )
  return int(result.stdout.split()[-1])


def _measure_peak_run(length: int) -> int:
  x = _inputs(length)
  fn = _forward(WINDOW).lower(*x).compile()
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  before = _status_kib("VmRSS")
  jax.block_until_ready(fn(*x))
  return (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


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


# The study's batches: `study-cpu` trains on 16 passages of 128 tokens and encodes 32 at a time.
STUDY_BATCH = 32


def study_cases(length: int) -> list[tuple[str, Mask]]:
  """The masks a study runs at `length`: its CPU arms at 128 tokens (8-token cells), and at
  256 / 512 (the GPU study's lengths) the same recipes on 16-token cells, each at two levels."""
  from experiments import sweep
  from jxr.model import attention_mask_for

  cell = 8 if length <= 128 else 16
  cases = []
  for level in (0.25, 0.5):
    local = sweep.solve_window(level, [length])
    cases.append((f"{local.label} (~{level})", attention_mask_for(local)))
    for global_blocks in (0, 1):
      try:
        random = random_for_density(level, [length], block=cell, local=1, global_=global_blocks)
      except ValueError:  # the band and global blocks alone attend more than the level
        continue
      spec = AttentionConfig.block_sparse(cell, band=1, global_blocks=global_blocks, random=random)
      cases.append((f"{spec.label} (~{level})", attention_mask_for(spec)))
  return cases


def study_shapes(repeats: int, emit) -> None:
  """Forward and forward+backward of each study mask against dense, on full-length sequences."""
  emit(
      f"The study's masks at its shapes: B={STUDY_BATCH}, H={HEADS}, D={HEAD_DIM}, float32, every "
      "sequence at full length; blocked XLA path with `pallas_kernels.attention`'s default tiles "
      "(64 x 64 for the block-sparse layouts' 8- and 16-token cells, 128 x 64 otherwise)."
  )
  emit("")
  emit(
      "| mask | L | attended | fwd ms | dense fwd ms | sdpa fwd ms | fwd ratio | fwd+bwd ms "
      "| dense fwd+bwd ms | fwd+bwd ratio |"
  )
  emit("|---|---|---|---|---|---|---|---|---|---|")
  for length in (128, 256, 512):
    x = _inputs(length, batch=STUDY_BATCH)
    d_out = _inputs(length, seed=1, batch=STUDY_BATCH)[0]
    for name, mask in study_cases(length):
      fwd, dense_fwd, sdpa_fwd = seconds(
          [_forward(mask), _forward(DenseMask()), _sdpa()], x, repeats
      )
      bwd, dense_bwd = seconds(
          [_forward_backward(mask), _forward_backward(DenseMask())], (*x, d_out), repeats
      )
      emit(
          f"| {name} | {length} | {mask.density(length, length):.3f} | {fwd * 1e3:.2f} | "
          f"{dense_fwd * 1e3:.2f} | {sdpa_fwd * 1e3:.2f} | {fwd / dense_fwd:.3f} | "
          f"{bwd * 1e3:.2f} | {dense_bwd * 1e3:.2f} | {bwd / dense_bwd:.3f} |"
      )


# Tiles tried on the study's block-sparse masks: one per layout cell (what `BlockSizes.fit`
# forced before tiles could span cells) up to the CPU default, 128 x 64.
STUDY_TILES = ((None, None), (32, 32), (64, 64), (128, 64), (128, 128))


def study_tiles(repeats: int, emit) -> None:
  """The study's block-sparse masks on tiles from one layout cell up to 128: fwd and fwd+bwd ms."""
  emit(
      f"Tiles for the study's block-sparse masks: B={STUDY_BATCH}, H={HEADS}, D={HEAD_DIM}, "
      "float32, full-length sequences, blocked XLA path; every tile size of a row measured side "
      "by side with dense. `cell` is one tile per layout cell."
  )
  emit("")
  emit("| mask | L | tiles | visited | fwd ms | fwd+bwd ms | dense fwd ms | dense fwd+bwd ms |")
  emit("|---|---|---|---|---|---|---|---|")
  to_best = collections.defaultdict(list)  # (tiles, pass) -> time / the row's fastest tile
  for length in (128, 256, 512):
    x = _inputs(length, batch=STUDY_BATCH)
    d_out = _inputs(length, seed=1, batch=STUDY_BATCH)[0]
    for name, mask in study_cases(length):
      if not mask.layout_leaves():
        continue
      cell = mask.layout_leaves()[0].block_q
      tiles = {}
      for block_q, block_k in STUDY_TILES:
        bs = BlockSizes(*((block_q or cell, block_k or cell) * 3)).fit(mask, length, length)
        tiles.setdefault((bs.block_q, bs.block_k), bs)
      fwd = seconds(
          [_forward(mask, block_sizes=bs) for bs in tiles.values()] + [_forward(DenseMask())],
          x,
          repeats,
      )
      bwd = seconds(
          [_forward_backward(mask, bs) for bs in tiles.values()] + [_forward_backward(DenseMask())],
          (*x, d_out),
          repeats,
      )
      for n, (block_q, block_k) in enumerate(tiles):
        label = "cell" if (block_q, block_k) == (cell, cell) else f"{block_q}x{block_k}"
        visited = visited_fraction(mask, length, length, block_q, block_k)
        emit(
            f"| {name} | {length} | {label} | {visited:.3f} | {fwd[n] * 1e3:.2f} | "
            f"{bwd[n] * 1e3:.2f} | {fwd[-1] * 1e3:.2f} | {bwd[-1] * 1e3:.2f} |"
        )
        for pass_, times in (("fwd", fwd), ("fwd+bwd", bwd)):
          to_best[(label, pass_)].append(times[n] / min(times[:-1]))
  emit("")
  emit("Each tile's time over the fastest tile of its row, over every row above:")
  emit("")
  emit("| tiles | fwd geometric mean | fwd worst | fwd+bwd geometric mean | fwd+bwd worst |")
  emit("|---|---|---|---|---|")
  for label in dict.fromkeys(label for label, _ in to_best):
    cells = []
    for pass_ in ("fwd", "fwd+bwd"):
      ratios = np.asarray(to_best[(label, pass_)])
      cells += [f"{np.exp(np.log(ratios).mean()):.2f}", f"{ratios.max():.2f}"]
    emit(f"| {label} | " + " | ".join(cells) + " |")


# Long sequences: BigBird layouts on 64- and 128-token cells, and the local window of
# the same attended fraction. Dense at 16k would need a 12.9 GB score matrix per head
# group on this box, so 16k times the sparse masks alone.
LONG_LENGTHS = (2048, 4096, 8192, 16384)
LONG_DENSE_LIMIT = 8192
LONG_DENSITIES = (0.125, 0.25)


def long_cases(length: int) -> list[tuple[str, Mask]]:
  cases = {}
  for density in LONG_DENSITIES:
    for cell in (64, 128):
      try:
        random = random_for_density(density, [length], block=cell, local=1, global_=1)
        name = f"BigBird {density:.1%}, {cell}-cells"
      except ValueError:  # the band and global blocks alone attend more than `density`
        random, name = 0.0, f"BigBird band + global only, {cell}-cells"
      cases.setdefault(BlockSparseMask.pattern(cell, random=random), name)
    window = round(density * length / 2)
    cases.setdefault(LocalMask(window, window), f"local w={window} ({density:.1%})")
  return [(name, mask) for mask, name in cases.items()]


def long_shapes(repeats: int, emit) -> None:
  """e5-small's heads at long lengths: sparse forward (and forward+backward) against dense."""
  emit(
      f"Long sequences, B={BATCH}, H={HEADS}, D={HEAD_DIM}, float32, blocked XLA path with its "
      f"default tiles (64 x 64 on 64-token cells, 128 x 64 otherwise); dense (`DenseMask()` "
      f"through the same path) and `jax.nn.dot_product_attention` side by side up to "
      f"L={LONG_DENSE_LIMIT}; above it the sparse masks alone."
  )
  emit("")
  emit(
      "| mask | L | attended | fwd ms | dense fwd ms | sdpa fwd ms | fwd ratio | fwd+bwd ms "
      "| dense fwd+bwd ms | fwd+bwd ratio |"
  )
  emit("|---|---|---|---|---|---|---|---|---|---|")
  for length in LONG_LENGTHS:
    x = _inputs(length)
    d_out = _inputs(length, seed=1)[0]
    with_dense = length <= LONG_DENSE_LIMIT
    if with_dense:
      dense_fwd, sdpa_fwd = seconds([_forward(DenseMask()), _sdpa()], x, repeats)
      (dense_bwd,) = seconds([_forward_backward(DenseMask())], (*x, d_out), repeats)
    for name, mask in long_cases(length):
      (fwd,) = seconds([_forward(mask)], x, repeats)
      (bwd,) = seconds([_forward_backward(mask)], (*x, d_out), repeats)
      attended = attended_fraction(mask, [length])
      if with_dense:
        emit(
            f"| {name} | {length} | {attended:.3f} | {fwd * 1e3:.1f} | {dense_fwd * 1e3:.1f} | "
            f"{sdpa_fwd * 1e3:.1f} | {fwd / dense_fwd:.3f} | {bwd * 1e3:.1f} | "
            f"{dense_bwd * 1e3:.1f} | {bwd / dense_bwd:.3f} |"
        )
      else:
        emit(
            f"| {name} | {length} | {attended:.3f} | {fwd * 1e3:.1f} | — | — | — | "
            f"{bwd * 1e3:.1f} | — | — |"
        )


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--quick", action="store_true", help="fewer repeats, skip L=16k timing")
  parser.add_argument("--out", help="also write the markdown tables to this file")
  parser.add_argument(
      "--study-shapes", action="store_true", help="only the study's masks at L=128/256/512"
  )
  parser.add_argument(
      "--study-tiles",
      action="store_true",
      help="only the study's block-sparse masks on tiles from one layout cell to 128",
  )
  parser.add_argument(
      "--long", action="store_true", help="only long sequences (2k-16k) on 64/128-token cells"
  )
  parser.add_argument(
      "--peak-run", type=int, metavar="L", help=argparse.SUPPRESS
  )  # one child measurement
  args = parser.parse_args()
  if args.peak_run:
    print(_measure_peak_run(args.peak_run))
    return
  repeats = 2 if args.quick else args.repeats
  lines = [
      f"CPU: {platform.processor() or platform.machine()}, {jax.device_count()} device(s), "
      f"jax {jax.__version__}; B={BATCH}, H={HEADS}, D={HEAD_DIM}, float32; best of {repeats} turns of 3 calls each.",
      "",
  ]

  def emit(line=""):
    print(line, flush=True)
    lines.append(line)

  section = {"study_shapes": study_shapes, "study_tiles": study_tiles, "long": long_shapes}
  chosen = [fn for flag, fn in section.items() if getattr(args, flag)]
  if chosen:
    for fn in chosen:
      fn(repeats, emit)
      emit("")
    if args.out:
      with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return

  cases = [
      ("block-sparse 25%, 128-blocks", random_layout_mask(2048, 128, 0.25), 2048, 0.32, 0.32),
      ("block-sparse 12.5%, 128-blocks", random_layout_mask(2048, 128, 0.125), 2048, 0.20, None),
      ("block-sparse 25%, 64-blocks", random_layout_mask(2048, 64, 0.25), 2048, 0.32, 0.32),
      ("block-sparse 12.5%, 64-blocks", random_layout_mask(2048, 64, 0.125), 2048, 0.20, None),
      ("local w=128", WINDOW, 4096, 0.10, 0.12),
  ]
  emit(
      "| case | L | attended | fwd ms | dense fwd ms | sdpa fwd ms | fwd ratio (target) | ratio to sdpa "
      "| fwd+bwd ms | dense fwd+bwd ms | fwd+bwd ratio (target) |"
  )
  emit("|---|---|---|---|---|---|---|---|---|---|---|")
  for name, mask, length, fwd_target, bwd_target in cases:
    x = _inputs(length)
    sparse_fwd, dense_fwd, sdpa_fwd = seconds(
        [_forward(mask), _forward(DenseMask()), _sdpa()], x, repeats
    )
    d_out = _inputs(length, seed=1)[0]
    sparse_bwd, dense_bwd = seconds(
        [_forward_backward(mask), _forward_backward(DenseMask())], (*x, d_out), repeats
    )
    ratio_f, ratio_b = sparse_fwd / dense_fwd, sparse_bwd / dense_bwd
    verdict_f = f"{ratio_f:.3f} (<= {fwd_target}: {'met' if ratio_f <= fwd_target else 'MISSED'})"
    verdict_b = f"{ratio_b:.3f}" + (
        f" (<= {bwd_target}: {'met' if ratio_b <= bwd_target else 'MISSED'})" if bwd_target else ""
    )
    emit(
        f"| {name} | {length} | {mask.density(length, length):.3f} | {sparse_fwd * 1e3:.1f} | "
        f"{dense_fwd * 1e3:.1f} | {sdpa_fwd * 1e3:.1f} | {verdict_f} | {sparse_fwd / sdpa_fwd:.3f} | "
        f"{sparse_bwd * 1e3:.1f} | {dense_bwd * 1e3:.1f} | {verdict_b} |"
    )

  emit("")
  emit(
      "Local w=128, forward, against length: XLA's temp memory of the compiled program (the target's "
      "measure), the resident memory one call adds at its peak (Linux only; it also counts the scratch "
      "that XLA:CPU's fused kernels allocate at run time, which the temp size does not), and time."
  )
  emit("")
  emit("| L | temp MiB | peak run MiB | fwd ms | dense temp MiB |")
  emit("|---|---|---|---|---|")
  temp, peak = {}, {}
  for length in (2048, 4096, 8192, 16384):
    x = _inputs(length)
    fn = _forward(WINDOW)
    temp[length] = temp_bytes(fn, x)
    timed = (
        ""
        if (args.quick and length > 8192)
        else f"{seconds([fn], x, max(1, repeats // 2))[0] * 1e3:.1f}"
    )
    peak[length] = peak_run_bytes(length)
    dense_mem = temp_bytes(_forward(DenseMask()), x)
    peak_text = "n/a" if peak[length] is None else f"{peak[length] / 2**20:.1f}"
    emit(
        f"| {length} | {temp[length] / 2**20:.1f} | {peak_text} | {timed} | {dense_mem / 2**20:.1f} |"
    )
  growth = temp[16384] / temp[2048]
  emit("")
  emit(
      f"Memory growth 16k / 2k: {growth:.2f} (target <= 10; linear is 8): "
      f"{'met' if growth <= 10 else 'MISSED'}."
  )
  if peak[2048]:
    emit(f"Peak run memory growth 16k / 2k: {peak[16384] / peak[2048]:.2f}.")
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
