"""The step on one device: gradient cache vs plain gradients, accumulation, non-finite skips."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jxr.model import load_encoder
from jxr.train import make_mesh
from jxr.train import mesh as meshlib
from jxr.train import step as steplib
from jxr.train.optim import make_optimizer
from jxr.train.trainer import embed_fn_of

POISON = 7  # a first token id that makes the test encoder return NaN


@pytest.fixture(scope="module")
def encoder():
  return load_encoder("tiny", max_length=48)


def _batch(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 16000, size=(rows, 24)).astype(np.int32)
  mask = (np.arange(24)[None] < rng.integers(6, 25, size=(rows, 1))).astype(np.int32)
  return {
      "query_input_ids": ids[:, :12],
      "query_attention_mask": mask[:, :12],
      "passage_input_ids": ids[::-1].copy(),
      "passage_attention_mask": mask[::-1].copy(),
  }


def _assert_trees_close(a, b, atol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(
        np.asarray(x), np.asarray(y), atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path)
    )


def test_gradient_cache_equals_plain_gradients_with_dropout(encoder):
  """Both differentiate the same chunked forward pass with the same dropout keys;
  the cache does it in two passes through the embeddings. (That chunking itself
  does not change the loss without dropout is checked on 8 devices, in
  test_train_multidevice.py.)"""
  embed = embed_fn_of(encoder)
  assert encoder.config.hidden_dropout_prob > 0
  batch = _batch(8)
  key = jax.random.key(42)
  options = steplib.StepOptions(grad_cache_chunk=4, learn_temperature=True, symmetric=True)
  params = {"encoder": encoder.params, "log_temperature": jnp.log(jnp.float32(0.05))}

  @jax.jit
  def both_ways(params, batch):
    return (
        steplib.plain_loss_and_grads(embed, params, batch, key, options),
        steplib.cached_loss_and_grads(embed, params, batch, key, options),
        [
            steplib.embed_in_chunks(
                embed, params["encoder"], steplib.tower(batch, "query"), k, 0, 2, None
            )
            for k in (key, None)
        ],
    )

  (plain_loss, plain), (cache_loss, cache), (with_dropout, no_dropout) = both_ways(params, batch)
  assert float(cache_loss) == pytest.approx(float(plain_loss), rel=1e-6)
  _assert_trees_close(cache, plain, atol=1e-5)
  assert float(jnp.abs(cache["log_temperature"])) > 0
  # Dropout was on: the same rows embed differently without it.
  assert float(jnp.max(jnp.abs(with_dropout - no_dropout))) > 1e-3


def test_gradient_accumulation_is_the_mean_over_strided_micro_batches(encoder):
  embed = embed_fn_of(encoder)
  batch = _batch(8, seed=1)
  params = {"encoder": encoder.params}
  accumulated = jax.jit(
      lambda p, b: steplib.loss_and_grads(embed, p, b, None, steplib.StepOptions(grad_accum=2))
  )(params, batch)
  single = jax.jit(
      lambda p, b: steplib.plain_loss_and_grads(embed, p, b, None, steplib.StepOptions())
  )
  halves = [single(params, {k: v[i::2] for k, v in batch.items()}) for i in range(2)]
  assert float(accumulated[0]) == pytest.approx(
      (float(halves[0][0]) + float(halves[1][0])) / 2, rel=1e-6
  )
  _assert_trees_close(
      accumulated[1], jax.tree.map(lambda a, b: (a + b) / 2, halves[0][1], halves[1][1]), atol=1e-6
  )


def test_split_rows_round_trip():
  x = jnp.arange(24).reshape(12, 2)
  parts = steplib.split_rows(x, 3, None)
  assert parts.shape == (3, 4, 2)
  np.testing.assert_array_equal(parts[1][:, 0], [2, 8, 14, 20])  # rows 1, 4, 7, 10
  np.testing.assert_array_equal(steplib.merge_rows(parts), x)


def test_non_finite_step_is_skipped_counted_and_training_continues(encoder):
  real = embed_fn_of(encoder)

  def embed(params, batch, key):
    poisoned = batch["input_ids"][0, 0] == POISON
    return real(params, batch, key) * jnp.where(poisoned, jnp.nan, 1.0)

  mesh = make_mesh("data=-1")
  optimizer, schedule = make_optimizer(1e-3, 10, 0, 0.01, 1.0)
  options = steplib.StepOptions()
  state = steplib.init_state(encoder.params, optimizer, options)
  shardings = steplib.state_shardings(state, meshlib.param_shardings(encoder.params, mesh), mesh)
  state = jax.device_put(state, shardings)
  step = steplib.jit_train_step(
      steplib.make_train_step(embed, optimizer, schedule, options, mesh),
      shardings,
      {k: 2 for k in _batch(4)},
      mesh,
  )
  leaf = lambda s: np.array(s.params["encoder"]["layers"][0]["mlp_in"]["kernel"][...])
  poisoned = _batch(4, seed=2)
  poisoned["query_input_ids"][0, 0] = POISON

  history = []
  for batch in (_batch(4, seed=3), poisoned, _batch(4, seed=4)):
    before, count = leaf(state), int(state.opt_state[1][0].count)
    state, metrics = step(state, batch)
    history.append((before, count, metrics))
  (_, _, m1), (before2, count2, m2), (before3, _, m3) = history
  assert [bool(m["skipped"]) for m in (m1, m2, m3)] == [False, True, False]
  assert [int(m["skipped_steps"]) for m in (m1, m2, m3)] == [0, 1, 1]
  assert not np.isfinite(float(m2["grad_norm"]))
  # The skipped step changed nothing but the step counter ...
  np.testing.assert_array_equal(before2, before3)
  assert int(state.opt_state[1][0].count) == count2 + 1
  assert int(state.step) == 3 and int(state.skipped) == 1
  # ... and the next one trained normally.
  assert np.isfinite(float(m3["loss"])) and np.max(np.abs(leaf(state) - before3)) > 0
