"""The blocked XLA path's row grouping: every way of grouping rows gives the oracle's answer."""

from __future__ import annotations

import numpy as np
import pytest
from cases import CASES, allowed_for, assert_close, make_inputs, run_vjp
from oracle import oracle_vjp

from pallas_kernels import LocalMask, block_table, xla

# Cases whose rows differ in visit count or element mask: where grouping matters.
GROUPED = [
    c
    for c in CASES
    if c.name
    in (
        "local_asymmetric",
        "local_segments",
        "block_sparse_global_row",
        "block_sparse_per_head",
        "local_and_block_sparse",
    )
]


@pytest.mark.parametrize("case", GROUPED, ids=lambda c: c.name)
def test_one_group_with_per_row_bias_matches_oracle(case, monkeypatch):
  # One row group and no shared patterns: every row pads to the widest and
  # carries its own bias, the path masks with many distinct patterns take.
  monkeypatch.setattr(xla, "_MAX_GROUPS", 1)
  monkeypatch.setattr(xla, "_MAX_PATTERNS", 0)
  q, k, v, d_out, segments = make_inputs(case, seed=3)
  got = run_vjp(case, "xla", q, k, v, d_out, segments)
  want = oracle_vjp(q, k, v, allowed_for(case, segments), case.head_dim**-0.5, d_out)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert_close(g, w, case.dtype, name)


def test_local_window_interior_rows_share_one_pattern():
  # A window's interior query blocks see the same element mask relative to
  # their keys: they must form one group (one shared bias), the edges a few more.
  mask = LocalMask(128, 128)
  table = block_table(mask, 4096, 4096, 128, 64, 1)
  count = table.kv_count.reshape(-1)
  groups = []
  for rows, visits in xla._row_groups(count):
    kv_pos = (table.kv_index[0, rows, :visits, None] * 64 + np.arange(64)).reshape(len(rows), 1, -1)
    cells = table.kv_cells[0, rows, :visits].repeat(64, axis=1)[:, None]
    real = (np.arange(visits) < count[rows, None]).repeat(64, -1)
    static = xla._static_allowed(
        mask, table, True, xla._q_positions(rows, 128), kv_pos, cells, real, 4096
    )
    groups += [part for part, _ in xla._pattern_groups(static)]
  sizes = sorted(len(part) for part in groups)
  assert sum(sizes) == 32 and sizes[-1] >= 28, sizes
  assert len(sizes) <= 6, sizes
