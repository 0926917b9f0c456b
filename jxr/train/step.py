"""The training step: contrastive gradients (plain, accumulated, or gradient-cached), then AdamW.

Row layout. A global batch of B rows is sharded over the batch mesh axes in
contiguous blocks. Micro-batches (gradient accumulation) and gradient-cache
chunks take *strided* rows (`chunk i = rows i, i + n, i + 2n, ...`): reshaping
`[B] -> [c, n]` keeps each device's rows on that device, so every chunk is
spread over all devices and slicing one costs no communication.

Dropout. The key of a step is `fold_in(seed_key, step)`; micro-batch `m`, tower
`t` (0 queries, 1 passages, 2 negatives) and chunk `i` fold in after it. The
gradient cache re-runs each chunk with the key of its first pass, so both passes
see the same dropout masks and its gradients equal the plain ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jxr.train import loss as losses
from jxr.train.mesh import batch_sharding, replicated

# embed_fn(params, {"input_ids", "attention_mask"}, dropout_key | None) -> [n, d] unit vectors.
EmbedFn = Callable[[Any, dict[str, jax.Array], jax.Array | None], jax.Array]
TOWERS = (("query", 0), ("passage", 1), ("negative", 2))


@flax.struct.dataclass
class TrainState:
  """Trainable parameters (`{"encoder": ..., "log_temperature"?: ...}`), optimiser
  state, the number of finished steps and of skipped (non-finite) ones."""

  params: Any
  opt_state: Any
  step: jax.Array
  skipped: jax.Array


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """The static parts of a step."""

  temperature: float = 0.05
  learn_temperature: bool = False
  symmetric: bool = False
  grad_accum: int = 1
  grad_cache_chunk: int | None = None
  dropout: bool = True
  seed: int = 0


def init_state(
    encoder_params: Any, optimizer: optax.GradientTransformation, options: StepOptions
) -> TrainState:
  params = {"encoder": encoder_params}
  if options.learn_temperature:
    params["log_temperature"] = jnp.log(jnp.float32(options.temperature))
  return TrainState(
      params=params,
      opt_state=optimizer.init(params),
      step=jnp.zeros((), jnp.int32),
      skipped=jnp.zeros((), jnp.int32),
  )


def state_shardings(state: TrainState, encoder_shardings: Any, mesh: Mesh) -> TrainState:
  """Optimiser moments follow their parameters; everything else is replicated."""
  param_shardings = {"encoder": encoder_shardings}
  if "log_temperature" in state.params:
    param_shardings["log_temperature"] = replicated(mesh)
  shapes = jax.eval_shape(lambda: state.opt_state)
  # optax states hold copies of the params tree (mu, nu): match them by structure.
  params_structure = jax.tree.structure(state.params)

  def opt_shardings(node):
    if jax.tree.structure(node) == params_structure:
      return param_shardings
    return jax.tree.map(lambda _: replicated(mesh), node)

  is_params_like = lambda node: jax.tree.structure(node) == params_structure
  opt = jax.tree.map(opt_shardings, shapes, is_leaf=is_params_like)
  return TrainState(
      params=param_shardings, opt_state=opt, step=replicated(mesh), skipped=replicated(mesh)
  )


# ---------------------------------------------------------------------- row layout


def split_rows(x: jax.Array, parts: int, mesh: Mesh | None) -> jax.Array:
  """`[B, ...] -> [parts, B // parts, ...]`, part `i` = rows `i, i + parts, ...`."""
  rows = x.shape[0] // parts
  y = jnp.swapaxes(x.reshape(rows, parts, *x.shape[1:]), 0, 1)
  if mesh is not None:
    spec = PartitionSpec(None, batch_sharding(mesh, 1).spec[0], *([None] * (x.ndim - 1)))
    y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))
  return y


def merge_rows(y: jax.Array) -> jax.Array:
  """Inverse of `split_rows`."""
  return jnp.swapaxes(y, 0, 1).reshape(y.shape[0] * y.shape[1], *y.shape[2:])


def tower(batch: dict[str, jax.Array], name: str) -> dict[str, jax.Array]:
  return {
      "input_ids": batch[f"{name}_input_ids"],
      "attention_mask": batch[f"{name}_attention_mask"],
  }


def towers(batch: dict[str, jax.Array]) -> list[tuple[str, int]]:
  return [(name, t) for name, t in TOWERS if f"{name}_input_ids" in batch]


# ---------------------------------------------------------------------- loss on embeddings


def _embedding_loss(options: StepOptions) -> Callable[..., jax.Array]:
  def loss_fn(
      embeddings: dict[str, jax.Array], params: dict[str, Any], negative_mask: jax.Array | None
  ) -> jax.Array:
    if options.learn_temperature:
      temperature = losses.temperature_of(params["log_temperature"])
    else:
      temperature = options.temperature
    return losses.info_nce(
        embeddings["query"],
        embeddings["passage"],
        temperature,
        negatives=embeddings.get("negative"),
        negative_mask=negative_mask,
        symmetric=options.symmetric,
    )

  return loss_fn


def _chunk_count(rows: int, options: StepOptions) -> int:
  return 1 if options.grad_cache_chunk is None else rows // options.grad_cache_chunk


def _chunk_key(key: jax.Array | None, tower: int, chunk) -> jax.Array | None:
  return None if key is None else jax.random.fold_in(jax.random.fold_in(key, tower), chunk)


def embed_in_chunks(
    embed_fn: EmbedFn,
    encoder_params: Any,
    tower: dict[str, jax.Array],
    key: jax.Array | None,
    tower_index: int,
    chunks: int,
    mesh: Mesh | None,
) -> jax.Array:
  """`[rows, d]` embeddings computed `chunks` strided chunks at a time (differentiable)."""
  if chunks == 1:
    return embed_fn(encoder_params, tower, _chunk_key(key, tower_index, 0))
  split = {k: split_rows(v, chunks, mesh) for k, v in tower.items()}

  def body(_, xs):
    index, chunk = xs
    return None, embed_fn(encoder_params, chunk, _chunk_key(key, tower_index, index))

  _, out = jax.lax.scan(body, None, (jnp.arange(chunks), split))
  return merge_rows(out)


def plain_loss_and_grads(
    embed_fn: EmbedFn,
    params: dict[str, Any],
    batch: dict[str, jax.Array],
    key: jax.Array | None,
    options: StepOptions,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, Any]:
  """Loss and gradients by differentiating through the embeddings (chunked like the cache)."""
  loss_fn = _embedding_loss(options)
  chunks = _chunk_count(batch["query_input_ids"].shape[0], options)

  def total(params):
    embeddings = {
        name: embed_in_chunks(embed_fn, params["encoder"], tower(batch, name), key, t, chunks, mesh)
        for name, t in towers(batch)
    }
    return loss_fn(embeddings, params, batch.get("negative_mask"))

  return jax.value_and_grad(total)(params)


def cached_loss_and_grads(
    embed_fn: EmbedFn,
    params: dict[str, Any],
    batch: dict[str, jax.Array],
    key: jax.Array | None,
    options: StepOptions,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, Any]:
  """Gradient cache (Gao et al. 2021): embed all chunks without gradients, take
  the loss gradient w.r.t. the embeddings, then back-propagate chunk by chunk.

  Peak activation memory is that of one chunk, whatever the batch size.
  """
  loss_fn = _embedding_loss(options)
  chunks = _chunk_count(batch["query_input_ids"].shape[0], options)
  encoder_params = params["encoder"]
  present = towers(batch)
  embeddings = {
      name: jax.lax.stop_gradient(
          embed_in_chunks(embed_fn, encoder_params, tower(batch, name), key, t, chunks, mesh)
      )
      for name, t in present
  }
  loss, (embedding_grads, params_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
      embeddings, params, batch.get("negative_mask")
  )

  grads = jax.tree.map(jnp.zeros_like, encoder_params)
  for name, t in present:
    split = {k: split_rows(v, chunks, mesh) for k, v in tower(batch, name).items()}
    cotangents = split_rows(embedding_grads[name], chunks, mesh)

    def body(acc, xs, t=t):
      index, chunk, cotangent = xs
      _, vjp = jax.vjp(lambda p: embed_fn(p, chunk, _chunk_key(key, t, index)), encoder_params)
      return jax.tree.map(jnp.add, acc, vjp(cotangent)[0]), None

    grads, _ = jax.lax.scan(body, grads, (jnp.arange(chunks), split, cotangents))
  params_grads = dict(params_grads, encoder=grads)
  return loss, params_grads


def loss_and_grads(
    embed_fn: EmbedFn,
    params: dict[str, Any],
    batch: dict[str, jax.Array],
    key: jax.Array | None,
    options: StepOptions,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, Any]:
  """Mean loss and gradients over `grad_accum` micro-batches (strided rows)."""
  compute = plain_loss_and_grads if options.grad_cache_chunk is None else cached_loss_and_grads
  if options.grad_accum == 1:
    return compute(
        embed_fn, params, batch, None if key is None else jax.random.fold_in(key, 0), options, mesh
    )
  micro = {k: split_rows(v, options.grad_accum, mesh) for k, v in batch.items()}

  def body(carry, xs):
    index, micro_batch = xs
    micro_key = None if key is None else jax.random.fold_in(key, index)
    loss, grads = compute(embed_fn, params, micro_batch, micro_key, options, mesh)
    total_loss, total_grads = carry
    return (total_loss + loss, jax.tree.map(jnp.add, total_grads, grads)), None

  zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), _ = jax.lax.scan(body, zero, (jnp.arange(options.grad_accum), micro))
  scale = 1.0 / options.grad_accum
  return loss * scale, jax.tree.map(lambda g: g * scale, grads)


# ---------------------------------------------------------------------- the step


def make_train_step(
    embed_fn: EmbedFn,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    options: StepOptions,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """`step(state, batch) -> (state, metrics)`, pure (wrap it in `jax.jit`).

  A step whose gradients are not finite leaves parameters and optimiser state
  as they were, advances `step` (its batch is consumed) and counts it in `skipped`.
  """
  base_key = jax.random.key(options.seed)

  def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(base_key, state.step) if options.dropout else None
    loss, grads = loss_and_grads(embed_fn, state.params, batch, key, options, mesh)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        step=state.step + 1,
        skipped=state.skipped + (~finite).astype(jnp.int32),
    )
    tokens = sum(jnp.sum(batch[f"{name}_attention_mask"]) for name, _ in towers(batch))
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "lr": schedule(state.step),
        "skipped": ~finite,
        "skipped_steps": new_state.skipped,
        "tokens": tokens,
    }
    if options.learn_temperature:
      metrics["temperature"] = losses.temperature_of(new_state.params["log_temperature"])
    return new_state, metrics

  return step


def jit_train_step(
    step: Callable, shardings: TrainState, batch_spec: dict[str, int], mesh: Mesh
) -> Callable:
  """`jax.jit` with explicit shardings: state in place (donated), batch rows over
  the batch axes, metrics replicated. `batch_spec` maps batch keys to ndim."""
  batch = {name: batch_sharding(mesh, ndim) for name, ndim in batch_spec.items()}
  return jax.jit(
      step,
      in_shardings=(shardings, batch),
      out_shardings=(shardings, replicated(mesh)),
      donate_argnums=(0,),
  )


__all__ = [
    "TrainState",
    "StepOptions",
    "init_state",
    "state_shardings",
    "make_train_step",
    "jit_train_step",
    "plain_loss_and_grads",
    "cached_loss_and_grads",
    "loss_and_grads",
    "embed_in_chunks",
    "split_rows",
    "merge_rows",
    "tower",
    "towers",
]
