"""Exact cosine scoring in query chunks, reduced to the ranks of relevant candidates.

Every metric in `jxr.eval` is a function of where each query's relevant
candidates land in the ranking, so the device never returns scores: a chunk of
queries is scored against all candidates in float32 and reduced, on the device,
to the rank of each relevant candidate (one plus the number of candidates
scoring strictly higher), both in the pooled ranking and within the candidate's
own language, plus the index of the top-scoring candidate. Peak memory is one
`[chunk, num_candidates]` float32 block per device, never a full `N x M`
matrix; with several local devices the chunk is split across them.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jxr._progress import progress

# Target size of one device's `[chunk, num_candidates]` score block (float32).
_SCORE_BLOCK_BYTES = 8 * 2**20
# Below _PACK_LIMIT candidates both rank counts fit one int32: pooled in the low bits.
_PACK_BITS = 16
_PACK_LIMIT = 1 << _PACK_BITS


@dataclasses.dataclass(frozen=True, eq=False)
class RelevantRanks:
  """Ranks of each query's relevant candidates, padded to `[Q, R]`.

  Row `q` holds the relevant candidates of query `q` in CSR order; entries at
  `valid == False` are padding and hold 0.
  """

  candidate: np.ndarray  # int64 [Q, R]: relevant candidate index
  valid: np.ndarray  # bool [Q, R]
  pooled: np.ndarray  # int64 [Q, R]: 1 + #candidates (all languages) scoring higher
  within_language: np.ndarray  # int64 [Q, R]: same, counting the candidate's language only
  top1: np.ndarray  # int64 [Q]: the best-scoring candidate (lowest index among ties)


def l2_normalise(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (norms taken in float64), as float32."""
  x64 = np.asarray(x, dtype=np.float64)
  return (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).astype(np.float32)


def _rank_chunk(queries, candidates, cand_lang, rel_index, rel_valid, *, pack: bool):
  """Ranks of the relevant candidates of one chunk of queries.

  Args:
    queries: float32 [b, d], unit rows.
    candidates: float32 [M, d], unit rows.
    cand_lang: int32 [M], language id of each candidate.
    rel_index: int32 [b, R], relevant candidate indices (padding: any index).
    rel_valid: bool [b, R].
    pack: count both ranks in one int32 pass (needs M < 2**16).

  Returns:
    (pooled, within_language, top1): int32 [b, R], int32 [b, R], int32 [b].
  """
  # HIGHEST keeps the matmul in true float32 on accelerators (no TF32/bf16 passes).
  scores = jnp.dot(queries, candidates.T, precision=jax.lax.Precision.HIGHEST)
  rel_scores = jnp.take_along_axis(scores, rel_index, axis=1)
  rel_lang = cand_lang[rel_index]
  # [b, R, M] comparisons; XLA fuses them into the reductions, nothing that size is stored.
  higher = scores[:, None, :] > rel_scores[:, :, None]
  same_lang = cand_lang[None, None, :] == rel_lang[:, :, None]
  if pack:
    # Both counts in one pass: pooled in the low 16 bits, same-language in the high 16
    # (uint32: both stay below 2**16 when M < 2**16).
    weight = jnp.where(same_lang, jnp.uint32((1 << _PACK_BITS) + 1), jnp.uint32(1))
    packed = jnp.sum(jnp.where(higher, weight, jnp.uint32(0)), axis=-1, dtype=jnp.uint32)
    pooled = 1 + (packed & ((1 << _PACK_BITS) - 1)).astype(jnp.int32)
    within = 1 + (packed >> _PACK_BITS).astype(jnp.int32)
  else:
    pooled = 1 + jnp.sum(higher, axis=-1, dtype=jnp.int32)
    within = 1 + jnp.sum(higher & same_lang, axis=-1, dtype=jnp.int32)
  top1 = jnp.argmax(scores, axis=1).astype(jnp.int32)
  zero = jnp.zeros_like(pooled)
  return jnp.where(rel_valid, pooled, zero), jnp.where(rel_valid, within, zero), top1


@functools.cache
def _compiled_kernel(devices: tuple[jax.Device, ...], pack: bool):
  """The jitted chunk kernel; over several devices, query rows are split across them."""
  chunk_fn = functools.partial(_rank_chunk, pack=pack)
  if len(devices) == 1:
    return jax.jit(chunk_fn), None
  mesh = Mesh(np.array(devices), ("queries",))
  rows, whole = P("queries"), P()
  kernel = jax.shard_map(
      chunk_fn,
      mesh=mesh,
      in_specs=(rows, whole, whole, rows, rows),
      out_specs=(rows, rows, rows),
  )
  return jax.jit(kernel), mesh


def _pad_relevant(rel_indptr: np.ndarray, rel_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """CSR relevance -> ([Q, R] indices, [Q, R] valid mask), R = the largest relevant set."""
  counts = np.diff(rel_indptr)
  width = max(int(counts.max(initial=0)), 1)
  slot = np.arange(width)
  valid = slot[None, :] < counts[:, None]
  index = np.zeros(valid.shape, dtype=np.int64)
  index[valid] = rel_indices  # CSR order is row-major order of the valid slots
  return index, valid


def default_chunk_size(num_candidates: int, platform: str = "cpu") -> int:
  """Queries per device per step: a float32 score block of ~8 MiB (CPU caches) or
  ~128 MiB (accelerators, where fewer, larger steps keep the device busy); a multiple of 8."""
  block = _SCORE_BLOCK_BYTES if platform == "cpu" else 16 * _SCORE_BLOCK_BYTES
  rows = block // (4 * max(num_candidates, 1))
  return int(np.clip(rows // 8 * 8, 8, 8192))


def relevant_ranks(
    query_emb: np.ndarray,
    cand_emb: np.ndarray,
    cand_lang_ids: np.ndarray,
    rel_indptr: np.ndarray,
    rel_indices: np.ndarray,
    *,
    chunk_size: int | None = None,
    devices: tuple[jax.Device, ...] | None = None,
) -> RelevantRanks:
  """Scores queries against candidates chunk by chunk; returns relevant ranks.

  Args:
    query_emb: float32 [Q, d], unit rows (see `l2_normalise`).
    cand_emb: float32 [M, d], unit rows.
    cand_lang_ids: int [M], a language id per candidate.
    rel_indptr, rel_indices: CSR relevance (as in `RetrievalTask`).
    chunk_size: queries per device per step (default: `default_chunk_size`).
    devices: devices to split each chunk over (default: all local devices).
  """
  devices = tuple(jax.local_devices() if devices is None else devices)
  num_queries, num_cands = query_emb.shape[0], cand_emb.shape[0]
  per_device = (
      default_chunk_size(num_cands, devices[0].platform) if chunk_size is None else int(chunk_size)
  )
  if per_device < 1:
    raise ValueError(f"chunk_size: expected a positive number of queries, got {chunk_size}")
  # Small tasks need no padding beyond one device-multiple of the query count.
  per_device = min(per_device, -(-num_queries // len(devices)))
  step = per_device * len(devices)

  rel_index, rel_valid = _pad_relevant(rel_indptr, rel_indices)
  kernel, mesh = _compiled_kernel(devices, num_cands < _PACK_LIMIT)
  if mesh is None:
    rows = whole = devices[0]
  else:
    rows, whole = NamedSharding(mesh, P("queries")), NamedSharding(mesh, P())
  queries = np.asarray(query_emb, np.float32)
  rel_index32 = rel_index.astype(np.int32)
  candidates = jax.device_put(np.asarray(cand_emb, np.float32), whole)
  cand_lang = jax.device_put(np.asarray(cand_lang_ids, np.int32), whole)

  def padded(x: np.ndarray, start: int) -> np.ndarray:
    block = x[start : start + step]
    if len(block) < step:  # the last chunk keeps the compiled shape
      block = np.concatenate([block, np.zeros((step - len(block),) + x.shape[1:], x.dtype)])
    return block

  pooled = np.zeros(rel_index.shape, np.int64)
  within = np.zeros(rel_index.shape, np.int64)
  top1 = np.zeros(num_queries, np.int64)

  def collect(start: int, outputs) -> None:
    stop = min(start + step, num_queries)
    p, w, t = (np.asarray(o)[: stop - start] for o in outputs)
    pooled[start:stop], within[start:stop], top1[start:stop] = p, w, t

  # One chunk in flight while the previous one is copied back.
  pending = None
  for start in progress(range(0, num_queries, step), desc="evaluate", unit="chunk"):
    outputs = kernel(
        jax.device_put(padded(queries, start), rows),
        candidates,
        cand_lang,
        jax.device_put(padded(rel_index32, start), rows),
        jax.device_put(padded(rel_valid, start), rows),
    )
    if pending is not None:
      collect(*pending)
    pending = (start, outputs)
  if pending is not None:
    collect(*pending)
  return RelevantRanks(rel_index, rel_valid, pooled, within, top1)
