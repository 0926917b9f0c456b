"""Attention under a mesh: each implementation per shard, matching one device, with no gather of q/k/v."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType

from pallas_kernels import AttentionSharding, DenseMask, attention
from tests.train.train_helpers import run_python

ON_8 = """
import jax.numpy as jnp
from train_helpers import activation_gathers
from jax.sharding import NamedSharding, PartitionSpec as P
from pallas_kernels import AttentionSharding, BlockSparseMask, LocalMask, attention

mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
sharding = AttentionSharding(mesh, ("data",), ("model",))
rng = np.random.default_rng(0)
q, k, v, d_out = (jnp.asarray(rng.normal(size=(8, 80, 4, 16)), jnp.float32) for _ in range(4))
lengths = jnp.asarray(rng.integers(0, 81, 8), jnp.int32)
masks = {
    "local_and_block_sparse": LocalMask(5, 9) & BlockSparseMask.pattern(16, random=0.3),
    "per_head_block_sparse": BlockSparseMask.pattern(16, random=0.3, per_head=True),
}
heads_on_model = NamedSharding(mesh, P("data", None, "model", None))
out = {}
for mask_name, mask in masks.items():
  for implementation in ("xla", "pallas"):
    def vjp(shard):
      def attend(q, k, v):
        return attention(q, k, v, mask, kv_lengths=lengths, implementation=implementation,
                         interpret=True, sharding=shard)
      def run(q, k, v, d_out):
        result, pull = jax.vjp(attend, q, k, v)
        return (result, *pull(d_out))
      return jax.jit(run)
    one = vjp(None)(q, k, v, d_out)
    args = [jax.device_put(x, heads_on_model) for x in (q, k, v, d_out)]
    sharded = vjp(sharding)
    many = sharded(*args)
    hlo = sharded.lower(*args).compile().as_text()
    out[f"{mask_name}/{implementation}"] = dict(
        error=[float(jnp.abs(a - b).max()) for a, b in zip(one, many)],
        activation_gathers=activation_gathers(hlo),
        out_sharding=list(many[0].sharding.spec),
    )
report(out)
"""


@pytest.fixture(scope="module")
def on_8():
  return run_python(ON_8, devices=8)


@pytest.mark.multidevice
@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_sharded_attention_matches_one_device_without_gathering_qkv(on_8, implementation):
  got = on_8[f"local_and_block_sparse/{implementation}"]
  # out, dq, dk, dv: each shard computes its own rows and heads, exactly as one device would.
  assert max(got["error"]) <= 1e-6, got
  assert got["activation_gathers"] == 0, got
  assert got["out_sharding"] == ["data", None, "model", None]


@pytest.mark.multidevice
@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_per_head_masks_shard_the_batch_only(on_8, implementation):
  # Each head has its own table, known per shard only at run time: heads stay whole
  # (gathered over `model`), rows still split over `data`.
  got = on_8[f"per_head_block_sparse/{implementation}"]
  assert max(got["error"]) <= 1e-6, got
  assert got["activation_gathers"] > 0
  assert got["out_sharding"][0] == "data" and "model" not in got["out_sharding"]


def test_split_uses_axes_that_divide_the_dimension():
  mesh = AbstractMesh((4, 2, 1), ("data", "model", "fsdp"), axis_types=(AxisType.Auto,) * 3)
  sharding = AttentionSharding(mesh, ("data", "fsdp"), ("model",))
  assert sharding.split(sharding.batch_axes, 8) == ("data",)  # size-1 axes drop out
  assert sharding.split(sharding.batch_axes, 6) is None  # 6 rows do not split in 4
  assert sharding.split(sharding.head_axes, 12) == ("model",)
  assert sharding.split((), 12) is None


def test_one_device_mesh_runs_the_plain_call():
  mesh = jax.make_mesh((1,), ("data",))
  q = jax.random.normal(jax.random.key(0), (2, 24, 2, 8))
  got = attention(q, q, q, DenseMask(), sharding=AttentionSharding(mesh, ("data",)))
  np.testing.assert_array_equal(got, attention(q, q, q, DenseMask()))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda mesh: AttentionSharding("data", ("data",)), "AttentionSharding.mesh"),
        (lambda mesh: AttentionSharding(mesh, ("rows",)), "AttentionSharding.batch_axes"),
        (lambda mesh: AttentionSharding(mesh, ("data",), ("data",)), "both batch and heads"),
    ],
)
def test_bad_sharding_raises(make, match):
  with pytest.raises(ValueError, match=match):
    make(jax.make_mesh((1,), ("data",)))


def test_attention_rejects_a_non_sharding():
  q = jax.numpy.zeros((1, 16, 1, 8))
  with pytest.raises(ValueError, match="sharding: expected an AttentionSharding"):
    attention(q, q, q, DenseMask(), sharding="data")
