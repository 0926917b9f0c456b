"""Meshes of 4 and 8 CPU devices (subprocesses) against the one-device run in this process.

One 4-device subprocess trains 3 of 6 steps on `data=4` and is interrupted; one
8-device subprocess then runs everything else, so startup and compilation are
paid twice in all: the loss with a cross-device gather, the gradient cache on
a sharded batch, 6 steps on `data=8`, 3 on `data=4,model=2`, and the resume of
the `data=4` run on `data=8`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from train_helpers import losses, run_python

pytestmark = pytest.mark.multidevice

SAVE_ON_4 = """
from jxr.train import train
from train_helpers import tiny_config, InterruptAt
try:
  train(tiny_config({out!r}, mesh="data=4"), eval_hook=InterruptAt(3))
except KeyboardInterrupt:
  report({{"devices": jax.device_count(), "interrupted": True}})
"""

# The block-sparse layout of the sharded step (16-token cells, as the study's).
SPARSE = dict(block_size=16, band=1, global_blocks=0, random=0.3)

ON_8 = """
import numpy as np
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from jxr.model import load_encoder
from jxr.train import info_nce, make_mesh, read_metrics, train
from jxr.train import mesh as meshlib, step as steplib
from jxr.train.trainer import embed_fn_of
from train_helpers import tiny_config, InterruptAt, losses

out = {{"devices": jax.device_count()}}
mesh = make_mesh("data=8")
rows = NamedSharding(mesh, P("data", None))

# InfoNCE on embeddings sharded one row block per device.
rng = np.random.default_rng(0)
q, p, n = (rng.normal(size=s).astype(np.float32) for s in ((16, 8), (16, 8), (8, 8)))
q, p, n = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, p, n))
mask = np.arange(8) % 3 != 0
f = jax.jit(lambda q, p, n, m: (info_nce(q, p, 0.05), info_nce(q, p, 0.05, symmetric=True),
                                info_nce(q, p, 0.05, negatives=n, negative_mask=m)),
            in_shardings=(rows, rows, rows, NamedSharding(mesh, P("data"))))
out["loss"] = [float(x) for x in f(q, p, n, mask)]

# Gradient cache (chunks of 8 = one row per device) on a sharded batch.
enc = load_encoder("tiny", max_length=48)
ids = np.random.default_rng(1).integers(5, 16000, size=(16, 24)).astype(np.int32)
mask = (np.arange(24)[None] < np.random.default_rng(2).integers(6, 24, size=(16, 1))).astype(np.int32)
batch = {{"query_input_ids": ids[:, :12], "query_attention_mask": mask[:, :12],
          "passage_input_ids": ids, "passage_attention_mask": mask}}
batch = jax.device_put(batch, rows)
params = jax.device_put({{"encoder": enc.params}}, NamedSharding(mesh, P()))
options = steplib.StepOptions(grad_cache_chunk=8)
grad = jax.jit(lambda prm, b: steplib.cached_loss_and_grads(embed_fn_of(enc), prm, b, None, options, mesh))
loss, grads = grad(params, batch)
out["cache_loss"] = float(loss)
out["cache_grad"] = np.asarray(grads["encoder"]["layers"][0]["attention"]["query"]["bias"][...]).tolist()

# A block-sparse step on data=4,model=2: attention runs per (rows, heads) shard.
from jxr.model import AttentionConfig
from train_helpers import activation_gathers
sparse = load_encoder("tiny", max_length=48, attention=AttentionConfig.block_sparse(**{sparse!r}))
tp = make_mesh("data=4,model=2")
tp_params = jax.device_put({{"encoder": sparse.params}},
                           {{"encoder": meshlib.param_shardings(sparse.params, tp)}})
tp_batch = jax.device_put(jax.device_get(batch), meshlib.batch_sharding(tp))
tp_embed = embed_fn_of(sparse, meshlib.attention_sharding(tp))
tp_grad = jax.jit(lambda prm, b: steplib.plain_loss_and_grads(
    tp_embed, prm, b, None, steplib.StepOptions(), tp))
loss, grads = tp_grad(tp_params, tp_batch)
out["tp_loss"] = float(loss)
out["tp_grad"] = np.asarray(grads["encoder"]["layers"][0]["attention"]["query"]["bias"][...]).tolist()
out["tp_activation_gathers"] = activation_gathers(tp_grad.lower(tp_params, tp_batch).compile().as_text())

# FSDP x tensor parallel: where the parameters go, and the forward pass they give.
fsdp = make_mesh("fsdp=4,model=2")
placed = jax.device_put(enc.params, meshlib.param_shardings(enc.params, fsdp))
specs = {{jax.tree_util.keystr(path): str(tuple(x.sharding.spec))
          for path, x in jax.tree_util.tree_leaves_with_path(placed)}}
out["fsdp_specs"] = {{k: v for k, v in specs.items() if "word" in k or "layers'][0]['mlp_in" in k}}
tower = {{"input_ids": batch["passage_input_ids"], "attention_mask": batch["passage_attention_mask"]}}
tower = jax.device_put(tower, meshlib.batch_sharding(fsdp))
out["fsdp_embed"] = np.asarray(jax.jit(enc.embed)(placed, tower)).tolist()

runs = {{}}
straight = train(tiny_config({root!r} + "/data8", mesh="data=8"))
runs["data=8"] = read_metrics(straight.run_dir)
out["data8_export"] = str(straight.export_dir)
try:
  train(tiny_config({root!r} + "/data4model2", mesh="data=4,model=2"), eval_hook=InterruptAt(3))
except KeyboardInterrupt:
  runs["data=4,model=2"] = read_metrics({root!r} + "/data4model2")
resumed = train(tiny_config({saved!r}, mesh="data=8"), resume=True)
runs["data=4 -> data=8"] = read_metrics(resumed.run_dir)
out["resumed_export"] = str(resumed.export_dir)
out["runs"] = runs
report(out)
"""


@pytest.fixture(scope="module")
def multi(tmp_path_factory, compile_cache, data_env):
  root = tmp_path_factory.mktemp("multi")
  env = dict(
      data_env,
      JAX_COMPILATION_CACHE_DIR=compile_cache,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  saved = str(root / "data4")
  first = run_python(SAVE_ON_4.format(out=saved), devices=4, env=env)
  assert first == {"devices": 4, "interrupted": True}
  return run_python(ON_8.format(root=str(root), saved=saved, sparse=SPARSE), devices=8, env=env)


def _numpy_info_nce(q, p, t, negatives=None, mask=None, symmetric=False):
  def ce(logits):
    logits = logits.astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(lse - np.diag(logits[:, : len(logits)])))

  logits = q @ p.T / t
  if negatives is not None:
    logits = np.concatenate([logits, np.where(mask[None], q @ negatives.T / t, -np.inf)], axis=1)
  loss = ce(logits)
  return 0.5 * (loss + ce(p @ q.T / t)) if symmetric else loss


def _step_batch() -> dict[str, np.ndarray]:
  """The 16-row batch the subprocess builds (same seeds), on the host."""
  ids = np.random.default_rng(1).integers(5, 16000, size=(16, 24)).astype(np.int32)
  lengths = np.random.default_rng(2).integers(6, 24, size=(16, 1))
  mask = (np.arange(24)[None] < lengths).astype(np.int32)
  return {
      "query_input_ids": ids[:, :12],
      "query_attention_mask": mask[:, :12],
      "passage_input_ids": ids,
      "passage_attention_mask": mask,
  }


def test_loss_over_sharded_batch_matches_numpy(multi):
  assert multi["devices"] == 8
  rng = np.random.default_rng(0)
  q, p, n = (rng.normal(size=s) for s in ((16, 8), (16, 8), (8, 8)))
  q, p, n = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, p, n))
  mask = np.arange(8) % 3 != 0
  expected = [
      _numpy_info_nce(q, p, 0.05),
      _numpy_info_nce(q, p, 0.05, symmetric=True),
      _numpy_info_nce(q, p, 0.05, n, mask),
  ]
  np.testing.assert_allclose(multi["loss"], expected, rtol=1e-5)


def test_gradient_cache_on_sharded_batch_matches_one_device(multi):
  import jax

  from jxr.model import load_encoder
  from jxr.train import step as steplib
  from jxr.train.trainer import embed_fn_of

  enc = load_encoder("tiny", max_length=48)
  loss, grads = jax.jit(
      lambda prm, b: steplib.plain_loss_and_grads(
          embed_fn_of(enc), prm, b, None, steplib.StepOptions()
      )
  )({"encoder": enc.params}, _step_batch())
  assert multi["cache_loss"] == pytest.approx(float(loss), rel=1e-5)
  expected = np.asarray(grads["encoder"]["layers"][0]["attention"]["query"]["bias"][...])
  np.testing.assert_allclose(multi["cache_grad"], expected, atol=1e-5, rtol=1e-4)


def test_block_sparse_step_on_data_and_model_axes_matches_one_device(multi):
  import jax

  from jxr.model import AttentionConfig, load_encoder
  from jxr.train import step as steplib
  from jxr.train.trainer import embed_fn_of

  enc = load_encoder("tiny", max_length=48, attention=AttentionConfig.block_sparse(**SPARSE))
  loss, grads = jax.jit(
      lambda prm, b: steplib.plain_loss_and_grads(
          embed_fn_of(enc), prm, b, None, steplib.StepOptions()
      )
  )({"encoder": enc.params}, _step_batch())
  assert multi["tp_loss"] == pytest.approx(float(loss), rel=1e-5)
  expected = np.asarray(grads["encoder"]["layers"][0]["attention"]["query"]["bias"][...])
  np.testing.assert_allclose(multi["tp_grad"], expected, atol=1e-5, rtol=1e-4)
  # Attention ran on each device's rows and heads: no q, k or v was gathered.
  assert multi["tp_activation_gathers"] == 0


def test_fsdp_and_model_axes_shard_parameters_and_embed_the_same(multi):
  from jxr.model import load_encoder

  specs = multi["fsdp_specs"]
  # tiny's 28,849 vocabulary rows do not split in 2: only the embed dimension is sharded.
  assert specs["['embeddings']['word']['embedding'].value"] == "(None, 'fsdp')"
  assert specs["['layers'][0]['mlp_in']['kernel'].value"] == "('fsdp', 'model')"
  assert specs["['layers'][0]['mlp_in']['bias'].value"] == "('model',)"
  enc = load_encoder("tiny", max_length=48)
  ids = np.random.default_rng(1).integers(5, 16000, size=(16, 24)).astype(np.int32)
  lengths = np.random.default_rng(2).integers(6, 24, size=(16, 1))
  mask = (np.arange(24)[None] < lengths).astype(np.int32)
  expected = np.asarray(enc.embed(enc.params, {"input_ids": ids, "attention_mask": mask}))
  np.testing.assert_allclose(multi["fsdp_embed"], expected, atol=1e-5)


@pytest.mark.parametrize("mesh", ["data=8", "data=4,model=2", "data=4 -> data=8"])
def test_same_losses_and_batches_on_every_mesh(multi, straight_run, mesh):
  _, one_device = straight_run
  rows = multi["runs"][mesh]
  steps = [row["step"] for row in rows if "loss" in row]
  assert steps == list(range(1, len(steps) + 1)) and len(steps) in (3, 6)
  np.testing.assert_allclose(losses(rows), losses(one_device)[: len(steps)], rtol=1e-4)
  assert [r["batch_id"] for r in rows if "loss" in r] == [
      r["batch_id"] for r in one_device[: len(steps)]
  ]


@pytest.mark.parametrize("export", ["data8_export", "resumed_export"])
def test_final_parameters_match_one_device(multi, straight_run, export):
  result, _ = straight_run
  expected = load_file(str(result.export_dir / "model.safetensors"))
  got = load_file(str(multi[export]) + "/model.safetensors")
  assert set(got) == set(expected)
  initial = _initial_tensors()
  norm = lambda tensors: np.sqrt(sum(float(np.sum(np.square(t))) for t in tensors))
  moved = norm(expected[k] - initial[k] for k in expected)
  largest_move = max(float(np.max(np.abs(expected[k] - initial[k]))) for k in expected)
  gaps = {k: np.abs(got[k] - expected[k]) for k in expected}
  differ = norm(gaps.values())
  worst, worst_name = max((float(np.max(gap)), k) for k, gap in gaps.items())
  outliers = sum(int(np.sum(gap > 0.02 * largest_move)) for gap in gaps.values())
  # Six steps at lr 1e-3 moved the weights, the same way on both meshes up to float summation
  # order, which Adam amplifies where a gradient nearly cancels: one element of tiny's row for
  # `▁ए` differed by 2.4% of the largest move, the next worst element by 0.2% (2026-12-07). A
  # wrong tensor or row differs by about its whole move, in every element.
  report = json.dumps(
      {
          "moved": moved,
          "differ": differ,
          "worst": worst,
          "in": worst_name,
          "largest": largest_move,
          "beyond 2%": outliers,
      }
  )
  assert largest_move > 1e-3, report
  assert differ < 1e-3 * moved and outliers <= 2 and worst < 0.05 * largest_move, report


def _initial_tensors():
  from jxr.model import load_encoder, weights

  enc = load_encoder("tiny")
  return {k: np.asarray(v) for k, v in weights.params_to_hf(enc.config, enc.params).items()}
