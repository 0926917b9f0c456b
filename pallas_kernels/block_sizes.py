"""Kernel tile sizes: a frozen dataclass with defaults per head dim, dtype and backend."""

from __future__ import annotations

import dataclasses
import functools
import math

from pallas_kernels.masks import MAX_CELLS_PER_TILE, Mask

# Triton's dot needs tiles of at least 16 along every dimension.
MIN_TRITON_BLOCK = 16
# The CPU tile for layouts whose cells are smaller than twice this.
FINE_CELL_TILE = 64


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the forward pass, the dk/dv pass and the dq pass.

  `num_warps` / `num_stages` are Triton launch parameters (ignored elsewhere).
  """

  block_q: int = 128
  block_k: int = 64
  block_q_dkv: int = 64
  block_k_dkv: int = 64
  block_q_dq: int = 64
  block_k_dq: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"BlockSizes.{field.name}: expected a positive int, got {value!r}")

  @classmethod
  def default(
      cls, head_dim: int, dtype=None, backend: str = "gpu", mask: Mask | None = None
  ) -> BlockSizes:
    """Tiles that work well for `head_dim` and `mask` on `backend` ("gpu", "cpu", "tpu")."""
    # One set of tiles serves every head dim and both dtypes (f32 dots run at
    # HIGHEST precision); the arguments stay so per-shape tuning can land here.
    del head_dim, dtype
    if backend == "cpu":
      cells = [min(leaf.block_q, leaf.block_k) for leaf in mask.layout_leaves()] if mask else []
      if cells and min(cells) < 2 * FINE_CELL_TILE:
        # Layouts of 8- or 16-token cells (the study's): 64 x 64 tiles had the best
        # forward over its masks at L = 128, 256 and 512 and train like the coarser ones
        # (benchmarks/RESULTS.md, "Tiles for the study's block-sparse masks"). On 64-token
        # cells a 128-row tile would span two rows of cells: partial tiles whose masks the
        # XLA path evaluates on the host (GBs of constants at 16k), so 64 x 64 there too.
        return cls(*(FINE_CELL_TILE,) * 6)
      # The blocked XLA path: tiles small enough that sparsity pays, large
      # enough that each gathered matmul amortises its overhead (128 x 64 was
      # fastest for a 128-wide local window at L=4k; benchmarks/attention.py).
      return cls(128, 64, 128, 64, 128, 64)
    # Measured on an H100 (benchmarks/RESULTS.md): 4 warps / 2 stages beat
    # 4/3 (D=64) and 8/2 (D=128) in every dense comparison at L=8k.
    return cls(128, 64, 64, 64, 64, 64, num_warps=4, num_stages=2)

  @property
  def q_blocks(self) -> tuple[int, ...]:
    return (self.block_q, self.block_q_dkv, self.block_q_dq)

  @property
  def k_blocks(self) -> tuple[int, ...]:
    return (self.block_k, self.block_k_dkv, self.block_k_dq)

  def fit(self, mask: Mask, q_len: int, kv_len: int) -> BlockSizes:
    """These tiles for one problem: each kept unless the problem cannot use it.

    A tile longer than its sequence shrinks to the smallest power of two (at
    least 16) that covers it, so short inputs are not padded to a long tile. A
    tile must nest with every block-sparse layout cell (one divides the other)
    and span at most `MAX_CELLS_PER_TILE` of them; one that does not shrinks
    until it does. Tiles spanning several cells are masked per cell in-kernel.
    """
    leaves = mask.layout_leaves()
    cells_q = tuple(leaf.block_q for leaf in leaves)
    cells_k = tuple(leaf.block_k for leaf in leaves)
    q_tile = functools.partial(_fit_tile, length=q_len, cells=cells_q)
    k_tile = functools.partial(_fit_tile, length=kv_len, cells=cells_k)
    return dataclasses.replace(
        self,
        block_q=q_tile(self.block_q),
        block_k=k_tile(self.block_k),
        block_q_dkv=q_tile(self.block_q_dkv),
        block_k_dkv=k_tile(self.block_k_dkv),
        block_q_dq=q_tile(self.block_q_dq),
        block_k_dq=k_tile(self.block_k_dq),
    )


def _nests(tile: int, cells: tuple[int, ...]) -> bool:
  return all(tile % cell == 0 or cell % tile == 0 for cell in cells)


def _fit_tile(tile: int, *, length: int, cells: tuple[int, ...]) -> int:
  tile = min(tile, max(MIN_TRITON_BLOCK, 1 << (length - 1).bit_length()))
  if cells and tile > min(cells) * MAX_CELLS_PER_TILE:
    tile = math.gcd(tile, min(cells) * MAX_CELLS_PER_TILE)
  if not _nests(tile, cells):
    tile = math.gcd(tile, *cells)  # divides every cell
  return tile
