"""`pallas_kernels.attention`: bad input is a ValueError naming the argument, before tracing."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import BlockSizes, BlockSparseMask, DenseMask, LocalMask, attention

Q = jnp.zeros((2, 32, 4, 16))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(q=jnp.zeros((32, 4, 16))), r"^q: expected a \[batch, length, heads, head_dim\]"),
        (
            dict(k=jnp.zeros((2, 32, 4, 8)), v=jnp.zeros((2, 32, 4, 8))),
            "k: head_dim 8 does not match",
        ),
        (
            dict(k=jnp.zeros((2, 32, 2, 16)), v=jnp.zeros((2, 32, 2, 16))),
            "k: heads 2 does not match",
        ),
        (
            dict(k=jnp.zeros((1, 32, 4, 16)), v=jnp.zeros((1, 32, 4, 16))),
            "k: batch 1 does not match",
        ),
        (dict(v=jnp.zeros((2, 31, 4, 16))), "k, v: expected the same shape"),
        (dict(q=jnp.zeros((2, 32, 4, 16), jnp.int32)), "q: expected float32 or bfloat16"),
        (dict(v=jnp.zeros((2, 32, 4, 16), jnp.bfloat16)), "q, k, v: expected one dtype"),
        (dict(mask="local"), "mask: expected a pallas_kernels Mask"),
        (
            dict(mask=BlockSparseMask(np.ones((3, 3), bool), 16)),
            "BlockSparseMask.layout: expected shape",
        ),
        (
            dict(kv_lengths=jnp.asarray([3, 4, 5])),
            r"kv_lengths: expected an int array of shape \(2,\)",
        ),
        (dict(kv_lengths=jnp.asarray([3.0, 4.0])), "kv_lengths: expected an int array"),
        (dict(q_segment_ids=jnp.zeros((2, 32), jnp.int32)), "give both or neither"),
        (
            dict(
                q_segment_ids=jnp.zeros((2, 31), jnp.int32),
                kv_segment_ids=jnp.zeros((2, 32), jnp.int32),
            ),
            "q_segment_ids: expected an int array of shape",
        ),
        (dict(block_sizes=(64, 64)), "block_sizes: expected a BlockSizes"),
        (dict(implementation="cuda"), "implementation: expected None or one of"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
  args = dict(q=Q, k=Q, v=Q, mask=DenseMask()) | kwargs
  with pytest.raises(ValueError, match=match):
    attention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("mask"), **args)


def test_bad_block_sizes_and_windows():
  with pytest.raises(ValueError, match="BlockSizes.block_q"):
    BlockSizes(block_q=0)
  with pytest.raises(ValueError, match="LocalMask.left"):
    LocalMask(-2, 0)


def test_lengths_not_multiple_of_block_are_padded_not_rejected():
  # 37 tokens on 16-wide tiles: the padded tail must neither be attended nor change real rows.
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 37, 2, 16)), jnp.float32) for _ in range(3))
  mask = LocalMask(4, 4)
  out = attention(
      q, k, v, mask, block_sizes=BlockSizes(16, 16, 16, 16, 16, 16), implementation="xla"
  )
  assert out.shape == q.shape
  want = attention(q, k, v, mask, implementation="reference")
  np.testing.assert_allclose(out, want, atol=2e-6)
