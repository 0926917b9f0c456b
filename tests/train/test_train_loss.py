"""InfoNCE against a float64 numpy formula, temperature handling, optimiser schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jxr.train import info_nce
from jxr.train.loss import MIN_TEMPERATURE, temperature_of
from jxr.train.optim import decay_mask, learning_rate_schedule, make_optimizer


def _unit(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_loss(q, p, t, negatives=None, mask=None, symmetric=False):
  """-mean_i log softmax_j(q_i . c_j / t)[i] over candidates c = positives (+ negatives)."""

  def one_way(a, b, extra=None):
    total = 0.0
    for i in range(len(a)):
      scores = [a[i] @ b[j] / t for j in range(len(b))]
      if extra is not None:
        scores += [a[i] @ extra[j] / t for j in range(len(extra)) if mask[j]]
      scores = np.asarray(scores, np.float64)
      total += np.log(np.sum(np.exp(scores - scores.max()))) + scores.max() - scores[i]
    return total / len(a)

  loss = one_way(q, p, negatives)
  return 0.5 * (loss + one_way(p, q)) if symmetric else loss


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_info_nce_matches_numpy(symmetric, temperature):
  rng = np.random.default_rng(3)
  q, p = _unit(rng, (12, 16)), _unit(rng, (12, 16))
  got = info_nce(
      jnp.asarray(q, jnp.float32), jnp.asarray(p, jnp.float32), temperature, symmetric=symmetric
  )
  assert float(got) == pytest.approx(_numpy_loss(q, p, temperature, symmetric=symmetric), rel=1e-5)


def test_info_nce_extra_negatives_and_padding_mask():
  rng = np.random.default_rng(4)
  q, p, n = _unit(rng, (6, 8)), _unit(rng, (6, 8)), _unit(rng, (5, 8))
  mask = np.array([True, False, True, True, False])
  got = info_nce(
      jnp.asarray(q, jnp.float32),
      jnp.asarray(p, jnp.float32),
      0.1,
      negatives=jnp.asarray(n, jnp.float32),
      negative_mask=jnp.asarray(mask),
  )
  assert float(got) == pytest.approx(_numpy_loss(q, p, 0.1, n, mask), rel=1e-5)
  # Masked rows really are ignored: the same loss as with only the kept negatives.
  kept = info_nce(
      jnp.asarray(q, jnp.float32),
      jnp.asarray(p, jnp.float32),
      0.1,
      negatives=jnp.asarray(n[mask], jnp.float32),
  )
  assert float(got) == pytest.approx(float(kept), rel=1e-6)


def test_info_nce_perfect_match_is_near_zero_and_confused_is_log_batch():
  eye = jnp.eye(8)
  assert float(info_nce(eye, eye, 0.01)) < 1e-6
  same = jnp.ones((8, 4)) / 2.0
  assert float(info_nce(same, same, 0.05)) == pytest.approx(np.log(8), rel=1e-6)


def test_learnable_temperature_gradient_and_floor():
  rng = np.random.default_rng(5)
  q, p = (jnp.asarray(_unit(rng, (8, 8)), jnp.float32) for _ in range(2))
  log_t = jnp.log(jnp.float32(0.05))
  grad = jax.grad(lambda lt: info_nce(q, p, temperature_of(lt)))(log_t)
  eps = 1e-3
  numeric = (info_nce(q, p, jnp.exp(log_t + eps)) - info_nce(q, p, jnp.exp(log_t - eps))) / (
      2 * eps
  )
  assert float(grad) == pytest.approx(float(numeric), rel=1e-2)
  assert float(temperature_of(jnp.log(jnp.float32(1e-6)))) == pytest.approx(MIN_TEMPERATURE)


def test_schedule_warms_up_then_decays_to_zero():
  schedule = learning_rate_schedule(1e-3, 10, 4)
  values = [float(schedule(i)) for i in range(11)]
  assert values[0] == 0.0 and values[4] == pytest.approx(1e-3)
  assert all(a < b for a, b in zip(values[:4], values[1:5]))
  assert all(a > b for a, b in zip(values[4:10], values[5:11]))
  assert values[10] == pytest.approx(0.0, abs=1e-12)
  no_warmup = learning_rate_schedule(1e-3, 10, 0)
  assert float(no_warmup(0)) == pytest.approx(1e-3)


def test_weight_decay_only_on_matrices_and_clipping():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  assert decay_mask(params) == {"w": True, "b": False}
  optimizer, _ = make_optimizer(0.1, 10, 0, weight_decay=0.5, clip_norm=1.0)
  state = optimizer.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = optimizer.update(zero, state, params)
  # With zero gradients only weight decay moves: matrices shrink, biases stay.
  assert float(jnp.max(jnp.abs(updates["b"]))) == 0.0
  assert float(updates["w"][0, 0]) == pytest.approx(-0.1 * 0.5)
