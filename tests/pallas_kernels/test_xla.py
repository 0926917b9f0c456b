"""The blocked XLA path and the dense reference against the float64 formula oracle.

The cases are the flash kernel's (`test_flash.CASES`): every implementation
must agree with the same formulas on the same inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oracle import formula_mask, full_mask, oracle_vjp, random_layout
from pallas_kernels import BlockSizes, BlockSparseMask, DenseMask, LocalMask, attention
from test_flash import CASES, Case, _allowed, _assert_close, _inputs


def _vjp(case: Case, implementation: str, q, k, v, d_out, segments):
  lengths = None if case.kv_lengths is None else jnp.asarray(case.kv_lengths, jnp.int32)

  @jax.jit
  def run(q, k, v, d_out):
    def f(q, k, v):
      return attention(q, k, v, case.mask, kv_lengths=lengths, block_sizes=case.block_sizes,
                       implementation=implementation, **segments)
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(d_out))

  return run(q, k, v, d_out)


@pytest.mark.parametrize("implementation", ["xla", "reference"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_oracle_forward_and_gradients(case: Case, implementation: str):
  q, k, v, d_out, segments = _inputs(case)
  got = _vjp(case, implementation, q, k, v, d_out, segments)
  allowed = _allowed(case, segments)
  want = oracle_vjp(q, k, v, allowed, case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert g.dtype == q.dtype, f"{name}: dtype {g.dtype}, expected {q.dtype}"
    _assert_close(g, w, case.dtype, name)
  empty = ~np.broadcast_to(allowed, (case.batch, case.heads, case.q_len, case.kv_len)).any(-1)
  empty = empty.transpose(0, 2, 1)  # [B, Lq, H]
  np.testing.assert_array_equal(np.asarray(got[0], np.float32)[empty], 0.0)
  np.testing.assert_array_equal(np.asarray(got[1], np.float32)[empty], 0.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_xla_never_reads_unvisited_key_blocks(dtype):
  layout = random_layout(np.random.default_rng(6), (2, 4, 4), 0.6)
  layout[:, :, [1, 3]] = False
  layout[:, 1, :] = False  # an empty query row too
  layout[:, 0, 0] = True
  mask = BlockSparseMask(layout, 16)
  case = Case("nan", mask, dict(kind="block_sparse", layout=layout, block_q=16, block_k=16), q_len=64,
              kv_len=64, dtype=dtype, kv_lengths=(64, 40), block_sizes=BlockSizes(16, 16, 16, 16, 16, 16))
  q, k, v, d_out, _ = _inputs(case, seed=7)
  poisoned = np.zeros(64, bool)
  poisoned[16:32] = poisoned[48:64] = True
  got = _vjp(case, "xla", q, k.at[:, poisoned].set(jnp.nan), v.at[:, poisoned].set(jnp.nan), d_out, {})
  want = oracle_vjp(q, k, v, _allowed(case, {}), case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    _assert_close(g, w, dtype, name)


def test_xla_all_rows_empty_gives_zeros():
  q = jnp.ones((1, 32, 2, 32))
  mask = BlockSparseMask(np.zeros((2, 2), bool), 16)
  out, grads = jax.value_and_grad(lambda q: attention(q, q, q, mask, implementation="xla").sum())(q)
  assert float(out) == 0.0 and not np.any(np.asarray(grads))


@pytest.mark.parametrize("left,right", [(3, 1), (None, 0), (0, None), (200, 200)])
def test_reference_matches_dot_product_attention(left, right):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 40, 3, 32)), jnp.float32) for _ in range(3))
  lengths = jnp.asarray([40, 17], jnp.int32)
  allowed = full_mask(formula_mask("local", 40, 40, left=left, right=right), kv_lengths=np.asarray(lengths))
  from pallas_kernels import reference_attention
  got = reference_attention(q, k, v, LocalMask(left, right), kv_lengths=lengths)
  want = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(allowed), implementation="xla")
  rows = np.broadcast_to(allowed, (2, 3, 40, 40)).any(-1).transpose(0, 2, 1)  # [B, Lq, H]
  np.testing.assert_allclose(np.asarray(got)[rows], np.asarray(want)[rows], atol=2e-6)
  np.testing.assert_array_equal(np.asarray(got)[~rows], 0.0)


def test_default_implementation_on_cpu_is_xla():
  from pallas_kernels import default_implementation
  assert default_implementation("cpu") == "xla"
  assert default_implementation("gpu") == "pallas"
  assert default_implementation("tpu") == "splash"
