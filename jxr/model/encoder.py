"""The BERT / XLM-RoBERTa encoder in flax.nnx, with pluggable `pallas_kernels` attention.

Post-LayerNorm transformer blocks (self-attention, GELU feed-forward), word +
position + token-type embeddings, parameters in float32 with an optional
bfloat16 compute dtype. Attention is `pallas_kernels.attention` with the mask
chosen by `AttentionConfig`; padding reaches it as `kv_lengths` (right padding).
On a mesh, `attention_sharding` runs it per device shard (`pallas_kernels.sharding`).

Parameters carry logical axis names (`vocab`, `embed`, `heads`, `mlp`) so that
training can shard them with `nnx.get_partition_spec` + logical axis rules.
Modules are created with eager sharding off, i.e. outside any mesh.

The module is used functionally: `graphdef, params = nnx.split(model, nnx.Param)`
once, then `nnx.merge(graphdef, params)` inside jitted functions.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

import pallas_kernels
from jxr.model.config import AttentionConfig, EncoderConfig

_INIT_STD = 0.02  # BERT's initializer_range


def attention_mask_for(attention: AttentionConfig) -> pallas_kernels.Mask:
  """The `pallas_kernels` mask an attention spec stands for (the only place this is decided)."""
  if attention.kind == "local":
    return pallas_kernels.LocalMask(attention.window, attention.window)
  if attention.kind == "block_sparse":
    return pallas_kernels.BlockSparseMask.pattern(
        attention.block_size,
        local=attention.band,
        global_=attention.global_blocks,
        random=attention.random,
        seed=attention.seed,
    )
  return pallas_kernels.DenseMask()


def _dense(
    in_features: int, out_features: int, axes: tuple, config: EncoderConfig, rngs: nnx.Rngs
) -> nnx.Linear:
  return nnx.Linear(
      in_features,
      out_features,
      dtype=jnp.dtype(config.dtype),
      param_dtype=jnp.float32,
      kernel_init=nnx.with_partitioning(nnx.initializers.normal(_INIT_STD), axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), axes[1:]),
      rngs=rngs,
  )


def _layer_norm(config: EncoderConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Statistics in float32 whatever the compute dtype.
  return nnx.LayerNorm(
      config.hidden_size,
      epsilon=config.layer_norm_eps,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
      rngs=rngs,
  )


def _embed(rows: int, config: EncoderConfig, axes: tuple, rngs: nnx.Rngs) -> nnx.Embed:
  # Gathered in float32, cast afterwards: casting a 250k-row table per step is costly.
  return nnx.Embed(
      rows,
      config.hidden_size,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      embedding_init=nnx.with_partitioning(nnx.initializers.normal(_INIT_STD), axes),
      rngs=rngs,
  )


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  if key is None or rate <= 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class Embeddings(nnx.Module):
  """Word + position + token-type embeddings, then LayerNorm."""

  def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
    self.word = _embed(config.vocab_size, config, ("vocab", "embed"), rngs)
    self.position = _embed(config.max_position_embeddings, config, (None, "embed"), rngs)
    self.token_type = _embed(config.type_vocab_size, config, (None, "embed"), rngs)
    self.norm = _layer_norm(config, rngs)

  def __call__(self, input_ids, token_type_ids, positions) -> jax.Array:
    x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
    return self.norm(x)


class SelfAttention(nnx.Module):
  """Multi-head self-attention through `pallas_kernels.attention`."""

  def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
    hidden = config.hidden_size
    self.num_heads = config.num_attention_heads
    self.head_dim = config.head_dim
    self.query = _dense(hidden, hidden, ("embed", "heads"), config, rngs)
    self.key = _dense(hidden, hidden, ("embed", "heads"), config, rngs)
    self.value = _dense(hidden, hidden, ("embed", "heads"), config, rngs)
    self.out = _dense(hidden, hidden, ("heads", "embed"), config, rngs)

  def __call__(
      self,
      x: jax.Array,
      kv_lengths: jax.Array,
      attend: Callable[..., jax.Array],
  ) -> jax.Array:
    """`attend(q, k, v, kv_lengths=, scale=)` is `pallas_kernels.attention` with the mask bound."""
    batch, length, hidden = x.shape
    # One [hidden, 3 * hidden] matmul instead of three: better use of the CPU/GPU.
    projections = (self.query, self.key, self.value)
    kernel = jnp.concatenate([p.kernel[...] for p in projections], axis=1)
    bias = jnp.concatenate([p.bias[...] for p in projections])
    qkv = x @ kernel.astype(x.dtype) + bias.astype(x.dtype)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3 * self.num_heads, self.head_dim), 3, axis=2)
    context = attend(q, k, v, kv_lengths=kv_lengths, scale=self.head_dim**-0.5)
    return self.out(context.reshape(batch, length, hidden))


class Layer(nnx.Module):
  """Post-LayerNorm block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

  def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
    self.attention = SelfAttention(config, rngs=rngs)
    self.attention_norm = _layer_norm(config, rngs)
    self.mlp_in = _dense(
        config.hidden_size, config.intermediate_size, ("embed", "mlp"), config, rngs
    )
    self.mlp_out = _dense(
        config.intermediate_size, config.hidden_size, ("mlp", "embed"), config, rngs
    )
    self.mlp_norm = _layer_norm(config, rngs)
    self.dropout_rate = config.hidden_dropout_prob
    self.gelu_approximate = config.gelu_approximate

  def __call__(self, x, kv_lengths, attend, dropout_key=None) -> jax.Array:
    keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
    dtype = x.dtype
    attended = self.attention(x, kv_lengths, attend)
    x = self.attention_norm(x + _dropout(attended, self.dropout_rate, keys[0])).astype(dtype)
    h = jax.nn.gelu(self.mlp_in(x), approximate=self.gelu_approximate)
    x = self.mlp_norm(x + _dropout(self.mlp_out(h), self.dropout_rate, keys[1])).astype(dtype)
    return x


class EncoderModel(nnx.Module):
  """Token ids -> hidden states `[B, L, hidden]` (compute dtype)."""

  def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embeddings = Embeddings(config, rngs=rngs)
    self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])

  def __call__(
      self,
      input_ids: jax.Array,
      attention_mask: jax.Array,
      token_type_ids: jax.Array | None = None,
      *,
      dropout_key: jax.Array | None = None,
      attention_sharding: pallas_kernels.AttentionSharding | None = None,
  ) -> jax.Array:
    config = self.config
    batch, length = input_ids.shape
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    positions = jnp.broadcast_to(jnp.arange(length) + config.position_offset, (batch, length))
    kv_lengths = jnp.sum(attention_mask != 0, axis=-1).astype(jnp.int32)
    attend = functools.partial(
        pallas_kernels.attention,
        mask=attention_mask_for(config.attention),
        implementation=config.attention.implementation,
        sharding=attention_sharding,
    )
    keys = [None] * (config.num_hidden_layers + 1)
    if dropout_key is not None:
      keys = list(jax.random.split(dropout_key, config.num_hidden_layers + 1))
    x = self.embeddings(input_ids, token_type_ids, positions)
    x = _dropout(x, config.hidden_dropout_prob, keys[0]).astype(config.dtype)
    for layer, key in zip(self.layers, keys[1:]):
      x = layer(x, kv_lengths, attend, key)
    return x


def create_model(config: EncoderConfig, seed: int = 0) -> EncoderModel:
  """A randomly initialised model (BERT init), built outside any mesh."""
  with nnx.use_eager_sharding(False):
    return EncoderModel(config, rngs=nnx.Rngs(seed))


def abstract_model(config: EncoderConfig) -> EncoderModel:
  """The model with `ShapeDtypeStruct` parameters (no memory, no init work)."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: EncoderModel(config, rngs=nnx.Rngs(0)))


def pool(hidden: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
  """Mean over real tokens (incl. <s>, </s>) or the first token, L2-normalised, float32."""
  hidden = hidden.astype(jnp.float32)
  if pooling == "cls":
    pooled = hidden[:, 0]
  else:
    weights = (attention_mask != 0).astype(jnp.float32)[..., None]
    pooled = jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)
