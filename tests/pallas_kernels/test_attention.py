"""Every implementation against the float64 formula oracle, on the shared cases.

`pallas` runs interpreted on the CPU; `xla` is the blocked jnp path; `reference`
is the dense oracle-in-jnp the other tests of the project lean on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import (
    CASES,
    LAYOUT,
    TILES_64,
    Case,
    allowed_for,
    assert_close,
    block_sparse,
    make_inputs,
    make_layout,
    run_vjp,
)
from oracle import formula_mask, full_mask, oracle_vjp

from pallas_kernels import (
    BlockSizes,
    BlockSparseMask,
    LocalMask,
    attention,
    default_implementation,
    reference_attention,
)

IMPLEMENTATIONS = ["pallas", "xla", "reference"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_oracle_forward_and_gradients(case: Case, implementation: str):
  q, k, v, d_out, segments = make_inputs(case)
  got = run_vjp(case, implementation, q, k, v, d_out, segments)
  allowed = allowed_for(case, segments)
  want = oracle_vjp(q, k, v, allowed, case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert g.dtype == q.dtype, f"{name}: dtype {g.dtype}, expected {q.dtype}"
    assert_close(g, w, case.dtype, name)
  # Rows with no allowed key: exactly zero output and zero dq.
  empty = ~np.broadcast_to(allowed, (case.batch, case.heads, case.q_len, case.kv_len)).any(-1)
  empty = empty.transpose(0, 2, 1)  # [B, Lq, H]
  np.testing.assert_array_equal(np.asarray(got[0], np.float32)[empty], 0.0)
  np.testing.assert_array_equal(np.asarray(got[1], np.float32)[empty], 0.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_fully_masked_rows_zero_output_and_gradients(implementation: str):
  # Layout row 0 empty, and batch 1 has kv_length 0: every row of it is empty.
  case = Case("empty", *block_sparse(LAYOUT, 16, 16), q_len=64, kv_len=64, kv_lengths=(64, 0))
  q, k, v, d_out, _ = make_inputs(case, seed=5)
  out, dq, dk, dv = run_vjp(case, implementation, q, k, v, d_out, {})
  assert np.all(np.asarray(out[1]) == 0) and np.all(np.asarray(out[0, :16]) == 0)
  assert np.all(np.asarray(dq[1]) == 0) and np.all(np.asarray(dq[0, :16]) == 0)
  assert np.all(np.asarray(dk[1]) == 0) and np.all(np.asarray(dv[1]) == 0)
  # Keys that only the empty rows could see get no gradient from them.
  want = oracle_vjp(q, k, v, allowed_for(case, {}), case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), want):
    assert_close(g, w, case.dtype, name)


@pytest.mark.parametrize("implementation", ["pallas", "xla"])
def test_tiles_no_cell_of_which_is_active_are_never_loaded(implementation: str):
  # 16-token cells on 64-token tiles. Cell columns 4..7 and 12..15 (keys 64..127
  # and 192..255) are off for every row and head, so key tiles 1 and 3 are never
  # visited: NaN there must not reach outputs or gradients. The visited tiles
  # mix active and inactive cells.
  layout = make_layout(10, (2, 16, 16), 0.4, empty_rows=1)
  layout[:, :, 4:8] = layout[:, :, 12:16] = False
  case = Case(
      "nan_fine",
      *block_sparse(layout, 16, 16),
      q_len=256,
      kv_len=256,
      kv_lengths=(256, 150),
      block_sizes=TILES_64,
      batch=2,
      heads=2,
      head_dim=16,
  )
  q, k, v, d_out, _ = make_inputs(case, seed=8)
  poisoned = np.zeros(256, bool)
  poisoned[64:128] = poisoned[192:256] = True
  got = run_vjp(
      case,
      implementation,
      q,
      k.at[:, poisoned].set(jnp.nan),
      v.at[:, poisoned].set(jnp.nan),
      d_out,
      {},
  )
  want = oracle_vjp(q, k, v, allowed_for(case, {}), case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert_close(g, w, case.dtype, name)
  assert not np.asarray(got[2])[:, poisoned].any() and not np.asarray(got[3])[:, poisoned].any()


@pytest.mark.parametrize("implementation", ["pallas", "xla"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unvisited_key_blocks_are_never_loaded(dtype: str, implementation: str):
  # Layout columns 1 and 3 (keys 16..31 and 48..63) are off for every row and
  # head: fill them with NaN. Outputs and gradients must stay finite and equal
  # the oracle on clean inputs.
  layout = make_layout(6, (2, 4, 4), 0.6)
  layout[:, :, [1, 3]] = False
  layout[:, :, 0] = True
  case = Case(
      "nan",
      *block_sparse(layout, 16, 16),
      q_len=64,
      kv_len=64,
      dtype=dtype,
      kv_lengths=(64, 40),
      block_sizes=BlockSizes(16, 16, 16, 16, 16, 16),  # one tile per cell: columns 1, 3 unvisited
  )
  q, k, v, d_out, _ = make_inputs(case, seed=7)
  poisoned = np.zeros(64, bool)
  poisoned[16:32] = poisoned[48:64] = True
  k_nan = k.at[:, poisoned].set(jnp.nan)
  v_nan = v.at[:, poisoned].set(jnp.nan)
  got = run_vjp(case, implementation, q, k_nan, v_nan, d_out, {})
  want = oracle_vjp(q, k, v, allowed_for(case, {}), case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert_close(g, w, dtype, name)
  assert np.all(np.asarray(got[2])[:, poisoned] == 0) and np.all(
      np.asarray(got[3])[:, poisoned] == 0
  )


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
  allowed = full_mask(
      formula_mask("local", 40, 40, left=left, right=right), kv_lengths=np.asarray(lengths)
  )
  got = reference_attention(q, k, v, LocalMask(left, right), kv_lengths=lengths)
  want = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(allowed), implementation="xla")
  rows = np.broadcast_to(allowed, (2, 3, 40, 40)).any(-1).transpose(0, 2, 1)  # [B, Lq, H]
  np.testing.assert_allclose(np.asarray(got)[rows], np.asarray(want)[rows], atol=2e-6)
  np.testing.assert_array_equal(np.asarray(got)[~rows], 0.0)


def test_default_implementation_on_cpu_is_xla(monkeypatch):
  assert default_implementation("cpu") == "xla"
  assert default_implementation("gpu") == "pallas"
  assert default_implementation("tpu") == "splash"
  # attention() with no implementation runs the blocked XLA path on this CPU, and only it.
  from pallas_kernels import xla

  calls = []
  real = xla.blocked_attention
  monkeypatch.setattr(xla, "blocked_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 24, 2, 8))
  mask = LocalMask(3, 3)
  got = attention(q, q, q, mask)
  assert calls == [1] and jax.default_backend() == "cpu"
  np.testing.assert_array_equal(got, attention(q, q, q, mask, implementation="xla"))
