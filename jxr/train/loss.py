"""InfoNCE over the global batch: every query against every positive (and extra negative).

Embeddings come in L2-normalised, so a dot product is the cosine similarity.
Under `jit` with the batch sharded over devices the `[B, B]` similarity matrix
is global: XLA gathers the passages it needs, so in-batch negatives span all
devices and processes without any explicit collective here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Learnable temperatures are kept >= this (CLIP caps the logit scale at 100).
MIN_TEMPERATURE = 0.01


def info_nce(
    queries: jax.Array,
    passages: jax.Array,
    temperature: jax.Array | float,
    *,
    negatives: jax.Array | None = None,
    negative_mask: jax.Array | None = None,
    symmetric: bool = False,
) -> jax.Array:
  """Mean contrastive loss of a batch, float32 scalar.

  Args:
    queries: `[B, d]` query embeddings (unit norm).
    passages: `[B, d]` their positives; row `i` is query `i`'s, the other rows are
      its negatives.
    temperature: the softmax temperature (E5: 0.05).
    negatives: optional `[M, d]` extra negatives shared by every query.
    negative_mask: optional `[M]` bool, False for padding rows of `negatives`.
    symmetric: also classify each passage against all queries, and average both.
  """
  queries = queries.astype(jnp.float32)
  passages = passages.astype(jnp.float32)
  labels = jnp.arange(queries.shape[0])
  logits = queries @ passages.T / temperature
  if negatives is not None:
    extra = queries @ negatives.astype(jnp.float32).T / temperature
    if negative_mask is not None:
      extra = jnp.where(negative_mask[None, :], extra, -jnp.inf)
    logits = jnp.concatenate([logits, extra], axis=1)
  loss = _cross_entropy(logits, labels)
  if symmetric:
    loss = 0.5 * (loss + _cross_entropy(passages @ queries.T / temperature, labels))
  return loss


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  target = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - target)


def temperature_of(log_temperature: jax.Array) -> jax.Array:
  """A learnable temperature from its unconstrained log, floored at `MIN_TEMPERATURE`."""
  return jnp.maximum(jnp.exp(log_temperature), MIN_TEMPERATURE)
