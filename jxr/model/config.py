"""Encoder configuration: a frozen dataclass read from / written to HF `config.json`.

The Hugging Face keys describe the architecture (`bert`, `xlm-roberta`); a
`"jxr"` entry adds what HF has no key for: the attention variant and its
parameters, the pooling, and the query/passage prefixes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from jxr import fields

SUPPORTED_MODEL_TYPES = ("bert", "xlm-roberta")
# transformers model type of a sparse export (jxr.model.export) -> the architecture it extends
SPARSE_EXPORT_TYPES = {"jxr-bert": "bert", "jxr-xlm-roberta": "xlm-roberta"}
ATTENTION_KINDS = ("dense", "local", "block_sparse")
POOLINGS = ("mean", "cls")
DTYPES = ("float32", "bfloat16")
# HF activation names -> whether GELU is the tanh approximation.
_GELU_APPROXIMATE = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True}
E5_PREFIXES = ("query: ", "passage: ")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """The attention spec: which `pallas_kernels` mask the encoder's self-attention uses.

  One frozen, hashable value that the command line builds once and every layer
  carries unchanged (run and train configs, the sweep's arms, the saved model
  config, the attended-fraction measurement); `jxr.model.attention_mask_for`
  is the one function that turns it into a mask. Fields a kind does not use are
  None, so two specs are equal exactly when they attend the same pairs.

  kind: "dense", "local" or "block_sparse".
  window: local: keys on each side of a query (`LocalMask(window, window)`).
  block_size, band, global_blocks, random, seed: block_sparse:
    `BlockSparseMask.pattern(block_size, local=band, global_=global_blocks,
    random=random, seed=seed)`: the band of key blocks on each side of the
    diagonal, the leading blocks that see and are seen by every block, and the
    fraction of the other blocks made active by a seeded hash of their
    coordinates (so a sequence sees the same blocks whatever it is padded to).
  implementation: forwarded to `pallas_kernels.attention` (None: by backend);
    not part of the spec's JSON (it changes speed, not results).
  """

  kind: str = fields.declare("dense", fields.OneOf(ATTENTION_KINDS))
  window: int | None = fields.declare(None, fields.Int(0, optional=True))
  block_size: int | None = fields.declare(None, fields.Int(1, optional=True))
  band: int | None = fields.declare(None, fields.Int(0, optional=True))
  global_blocks: int | None = fields.declare(None, fields.Int(0, optional=True))
  random: float | None = fields.declare(None, fields.Number(0.0, 1.0, optional=True))
  seed: int | None = fields.declare(None, fields.Int(0, optional=True))
  implementation: str | None = dataclasses.field(default=None, compare=False)

  def __post_init__(self):
    fields.check_all(self, prefix="attention.")
    used = _KIND_FIELDS.get(self.kind, ())
    stray = [name for name in _SPEC_FIELDS if name not in used and getattr(self, name) is not None]
    if stray:
      raise ValueError(f"attention: {', '.join(stray)} do not apply to kind {self.kind!r}")
    absent = [name for name in used if getattr(self, name) is None]
    if absent:
      raise ValueError(f"attention.{absent[0]}: required by kind {self.kind!r}, got None")
    if self.random is not None:
      object.__setattr__(self, "random", float(self.random))

  @classmethod
  def dense(cls) -> AttentionConfig:
    return cls("dense")

  @classmethod
  def local(cls, window: int) -> AttentionConfig:
    return cls("local", window=window)

  @classmethod
  def block_sparse(
      cls,
      block_size: int = 16,
      *,
      band: int = 1,
      global_blocks: int = 1,
      random: float = 0.0,
      seed: int = 0,
  ) -> AttentionConfig:
    return cls(
        "block_sparse",
        block_size=block_size,
        band=band,
        global_blocks=global_blocks,
        random=random,
        seed=seed,
    )

  @property
  def label(self) -> str:
    """A short name for tables and directories: dense, local-w16, block_sparse-b8-n1-g0-r0.113."""
    if self.kind == "local":
      return f"local-w{self.window}"
    if self.kind == "block_sparse":
      seed = f"-s{self.seed}" if self.seed else ""
      return (
          f"block_sparse-b{self.block_size}-n{self.band}-g{self.global_blocks}"
          f"-r{self.random:.3f}{seed}"
      )
    return "dense"

  def to_json(self) -> dict[str, Any]:
    return {
        "kind": self.kind,
        **{name: getattr(self, name) for name in _SPEC_FIELDS if getattr(self, name) is not None},
    }

  @classmethod
  def from_json(cls, data: Any) -> AttentionConfig:
    if not isinstance(data, dict):
      raise ValueError(f"attention: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"kind", *_SPEC_FIELDS})
    if unknown:
      raise ValueError(
          f"attention: unknown keys {unknown}; expected kind and some of " f"{list(_SPEC_FIELDS)}"
      )
    return cls(**data)


_KIND_FIELDS = {
    "local": ("window",),
    "block_sparse": ("block_size", "band", "global_blocks", "random", "seed"),
}
_SPEC_FIELDS = ("window", "block_size", "band", "global_blocks", "random", "seed")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Architecture (HF keys) plus jxr's attention, pooling, prefixes and dtype."""

  model_type: str
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention: AttentionConfig = AttentionConfig()
  pooling: str = "mean"
  query_prefix: str = ""
  passage_prefix: str = ""
  dtype: str = "float32"
  # Other keys of the source config.json, kept so `save` writes them back.
  extra_json: str = "{}"

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"config.json: model_type {self.model_type!r} is not supported; "
          f"expected one of {SUPPORTED_MODEL_TYPES}"
      )
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
          f"config.json: hidden_size {self.hidden_size} is not a multiple of "
          f"num_attention_heads {self.num_attention_heads}"
      )
    if self.hidden_act not in _GELU_APPROXIMATE:
      raise ValueError(
          f"config.json: hidden_act {self.hidden_act!r} is not supported; "
          f"expected one of {sorted(_GELU_APPROXIMATE)}"
      )
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling: expected one of {POOLINGS}, got {self.pooling!r}")
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype: expected one of {DTYPES}, got {self.dtype!r}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def position_offset(self) -> int:
    """First position id of a sequence: RoBERTa counts from padding_idx + 1."""
    return self.pad_token_id + 1 if self.model_type == "xlm-roberta" else 0

  @property
  def max_length(self) -> int:
    """Longest sequence the position table can hold."""
    return self.max_position_embeddings - self.position_offset

  @property
  def gelu_approximate(self) -> bool:
    return _GELU_APPROXIMATE[self.hidden_act]

  def replace(self, **changes) -> "EncoderConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf_dict(cls, data: dict[str, Any], *, source: str = "config.json") -> "EncoderConfig":
    """Reads a HF `config.json` dict (bert / xlm-roberta), and its `"jxr"` entry if any."""
    if not isinstance(data, dict):
      raise ValueError(f"{source}: expected a JSON object")
    model_type = SPARSE_EXPORT_TYPES.get(data.get("model_type"), data.get("model_type"))
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"{source}: model_type {model_type!r} is not supported; expected one "
          f"of {SUPPORTED_MODEL_TYPES} (BERT / XLM-RoBERTa encoders)"
      )
    if data.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(
          f"{source}: position_embedding_type "
          f"{data['position_embedding_type']!r} is not supported (absolute only)"
      )
    required = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    )
    missing = [key for key in required if key not in data]
    if missing:
      raise ValueError(f"{source}: missing keys {missing}")
    jxr = dict(data.get("jxr") or {})
    # architectures and auto_map are rewritten by every export, never carried over
    known = set(required) | {
        "model_type",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
        "hidden_act",
        "hidden_dropout_prob",
        "jxr",
        "architectures",
        "auto_map",
    }
    extra = {k: v for k, v in data.items() if k not in known}
    default_prefixes = E5_PREFIXES if is_e5_name(str(data.get("_name_or_path", ""))) else ("", "")
    prefixes = jxr.get("prefixes", {})
    return cls(
        model_type=model_type,
        vocab_size=int(data["vocab_size"]),
        hidden_size=int(data["hidden_size"]),
        num_hidden_layers=int(data["num_hidden_layers"]),
        num_attention_heads=int(data["num_attention_heads"]),
        intermediate_size=int(data["intermediate_size"]),
        max_position_embeddings=int(data["max_position_embeddings"]),
        type_vocab_size=int(data.get("type_vocab_size", 2)),
        layer_norm_eps=float(data.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(data.get("pad_token_id", 1 if model_type == "xlm-roberta" else 0)),
        hidden_act=str(data.get("hidden_act", "gelu")),
        hidden_dropout_prob=float(data.get("hidden_dropout_prob", 0.1)),
        attention=AttentionConfig.from_json(jxr.get("attention", {"kind": "dense"})),
        pooling=jxr.get("pooling", "mean"),
        query_prefix=prefixes.get("query", default_prefixes[0]),
        passage_prefix=prefixes.get("passage", default_prefixes[1]),
        dtype=jxr.get("dtype", "float32"),
        extra_json=json.dumps(extra, sort_keys=True),
    )

  def to_hf_dict(self) -> dict[str, Any]:
    """HF `config.json` content (AutoModel-loadable) with the `"jxr"` entry."""
    arch = {"bert": "BertModel", "xlm-roberta": "XLMRobertaModel"}[self.model_type]
    out: dict[str, Any] = {"architectures": [arch], "position_embedding_type": "absolute"}
    out.update(json.loads(self.extra_json))
    out.update(
        model_type=self.model_type,
        vocab_size=self.vocab_size,
        hidden_size=self.hidden_size,
        num_hidden_layers=self.num_hidden_layers,
        num_attention_heads=self.num_attention_heads,
        intermediate_size=self.intermediate_size,
        max_position_embeddings=self.max_position_embeddings,
        type_vocab_size=self.type_vocab_size,
        layer_norm_eps=self.layer_norm_eps,
        pad_token_id=self.pad_token_id,
        hidden_act=self.hidden_act,
        hidden_dropout_prob=self.hidden_dropout_prob,
        jxr={
            "attention": self.attention.to_json(),
            "pooling": self.pooling,
            "prefixes": {"query": self.query_prefix, "passage": self.passage_prefix},
            "dtype": self.dtype,
        },
    )
    out["architectures"] = [arch]
    # jxr never drops attention probabilities; say so rather than carry the source's value.
    out["attention_probs_dropout_prob"] = 0.0
    return out


def is_e5_name(name: str) -> bool:
  """Whether a model name or path belongs to the e5 family (which wants prefixes)."""
  return "e5" in re.split(r"[-_/\\.\s]", name.lower())
