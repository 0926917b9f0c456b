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

SUPPORTED_MODEL_TYPES = ("bert", "xlm-roberta")
ATTENTION_KINDS = ("dense", "local", "block_sparse")
POOLINGS = ("mean", "cls")
DTYPES = ("float32", "bfloat16")
# HF activation names -> whether GELU is the tanh approximation.
_GELU_APPROXIMATE = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True,
                     "gelu_fast": True}
E5_PREFIXES = ("query: ", "passage: ")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """Which `pallas_kernels` mask the encoder's self-attention uses.

  kind: "dense", "local" (`LocalMask(window, window)`) or "block_sparse"
    (`BlockSparseMask.pattern(block_size, density=density, **layout)`).
  layout: BigBird recipe keywords for `BlockSparseMask.pattern` (`local`,
    `global_`, `random`, `seed`, `per_head`) as sorted `(key, value)` pairs.
  implementation: forwarded to `pallas_kernels.attention` (None = by backend).
  """
  kind: str = "dense"
  window: int | None = None
  block_size: int = 16
  density: float | None = None
  layout: tuple[tuple[str, Any], ...] = ()
  implementation: str | None = None

  def __post_init__(self):
    if self.kind not in ATTENTION_KINDS:
      raise ValueError(f"attn: expected one of {ATTENTION_KINDS}, got {self.kind!r}")
    if self.kind == "local":
      if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 0:
        raise ValueError(f"window: attn='local' needs an int >= 0, got {self.window!r}")
    if self.kind == "block_sparse":
      if not isinstance(self.block_size, int) or self.block_size < 1:
        raise ValueError(f"block_size: expected an int >= 1, got {self.block_size!r}")
      if self.density is not None and not 0.0 < float(self.density) <= 1.0:
        raise ValueError(f"density: expected a fraction in (0, 1], got {self.density!r}")
      allowed = {"local", "global_", "random", "seed", "per_head"}
      unknown = {key for key, _ in self.layout} - allowed
      if unknown:
        raise ValueError(f"layout: unknown BlockSparseMask.pattern keys {sorted(unknown)}; "
                         f"expected some of {sorted(allowed)}")

  def to_json(self) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": self.kind}
    if self.kind == "local":
      out["window"] = self.window
    if self.kind == "block_sparse":
      out.update(block_size=self.block_size, density=self.density, layout=dict(self.layout))
    return out

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> "AttentionConfig":
    return cls(kind=data.get("kind", "dense"), window=data.get("window"),
               block_size=int(data.get("block_size", 16)), density=data.get("density"),
               layout=tuple(sorted(dict(data.get("layout") or {}).items())))


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
      raise ValueError(f"config.json: model_type {self.model_type!r} is not supported; "
                       f"expected one of {SUPPORTED_MODEL_TYPES}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"config.json: hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.hidden_act not in _GELU_APPROXIMATE:
      raise ValueError(f"config.json: hidden_act {self.hidden_act!r} is not supported; "
                       f"expected one of {sorted(_GELU_APPROXIMATE)}")
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
    model_type = data.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f"{source}: model_type {model_type!r} is not supported; expected one "
                       f"of {SUPPORTED_MODEL_TYPES} (BERT / XLM-RoBERTa encoders)")
    if data.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"{source}: position_embedding_type "
                       f"{data['position_embedding_type']!r} is not supported (absolute only)")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings")
    missing = [key for key in required if key not in data]
    if missing:
      raise ValueError(f"{source}: missing keys {missing}")
    jxr = dict(data.get("jxr") or {})
    known = set(required) | {"model_type", "type_vocab_size", "layer_norm_eps", "pad_token_id",
                             "hidden_act", "hidden_dropout_prob", "jxr"}
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
        attention=AttentionConfig.from_json(jxr.get("attention", {})),
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
        model_type=self.model_type, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
        num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
        intermediate_size=self.intermediate_size,
        max_position_embeddings=self.max_position_embeddings,
        type_vocab_size=self.type_vocab_size, layer_norm_eps=self.layer_norm_eps,
        pad_token_id=self.pad_token_id, hidden_act=self.hidden_act,
        hidden_dropout_prob=self.hidden_dropout_prob,
        jxr={"attention": self.attention.to_json(), "pooling": self.pooling,
             "prefixes": {"query": self.query_prefix, "passage": self.passage_prefix},
             "dtype": self.dtype})
    out["architectures"] = [arch]
    return out


def is_e5_name(name: str) -> bool:
  """Whether a model name or path belongs to the e5 family (which wants prefixes)."""
  return "e5" in re.split(r"[-_/\\.\s]", name.lower())
