"""Kernel tile sizes: a frozen dataclass with defaults per head dim, dtype and backend."""

from __future__ import annotations

import dataclasses
import math

from pallas_kernels.masks import Mask, layout_block_sizes

# Triton's dot needs tiles of at least 16 along every dimension.
MIN_TRITON_BLOCK = 16


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
  def default(cls, head_dim: int, dtype=None, backend: str = "gpu") -> BlockSizes:
    """Tiles that work well for `head_dim` on `backend` ("gpu", "cpu", "tpu")."""
    # One set of tiles serves every head dim and both dtypes (f32 dots run at
    # HIGHEST precision); the arguments stay so per-shape tuning can land here.
    del head_dim, dtype
    if backend == "cpu":
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
    """Shrinks tiles to divide every block-sparse layout cell and not overshoot short sequences.

    Tiles stay powers of two. A sequence shorter than a tile gets the smallest
    power of two (at least 16) that covers it, so short inputs are not padded
    to a long tile.
    """
    layout_q, layout_k = layout_block_sizes(mask)

    def shrink(block: int, length: int, layout_block: int) -> int:
      block = min(block, max(MIN_TRITON_BLOCK, 1 << (length - 1).bit_length()))
      if layout_block:
        block = math.gcd(block, layout_block)
      return block

    return dataclasses.replace(
        self,
        block_q=shrink(self.block_q, q_len, layout_q),
        block_k=shrink(self.block_k, kv_len, layout_k),
        block_q_dkv=shrink(self.block_q_dkv, q_len, layout_q),
        block_k_dkv=shrink(self.block_k_dkv, kv_len, layout_k),
        block_q_dq=shrink(self.block_q_dq, q_len, layout_q),
        block_k_dq=shrink(self.block_k_dq, kv_len, layout_k),
    )
