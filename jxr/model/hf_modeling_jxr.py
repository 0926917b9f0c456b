"""transformers modeling code shipped inside a jxr export whose attention is sparse.

`Encoder.save` copies this file into the export as `modeling_jxr.py`; the export's
config.json names it in `auto_map`, so

    transformers.AutoModel.from_pretrained(export_dir, trust_remote_code=True)

builds BERT / XLM-RoBERTa whose self-attention sees only the query-key pairs jxr's
mask allows (jxr's docs/DESIGN.md, "Mask semantics"), applied as an additive
attention mask on top of padding. Without `trust_remote_code` transformers refuses
the unknown model type instead of running dense attention.

The file stands alone on purpose (torch, numpy and transformers only), so an
export loads where jxr is not installed; jxr itself never imports it. Its mask
rules repeat jxr's, and jxr's tests hold the two to the same hidden states.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import torch
from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

_U64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's output function on uint64 arrays (wrapping), as jxr's block-sparse recipe."""
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def _random_blocks(seed: int, num_blocks: int, fraction: float) -> np.ndarray:
  """bool [n, n]: block (qb, kb) drawn active, hashed from (seed, head 0, qb, kb) alone."""
  qb = np.arange(num_blocks, dtype=np.uint64)[:, None]
  kb = np.arange(num_blocks, dtype=np.uint64)[None, :]
  with np.errstate(over="ignore"):
    x = _splitmix64(np.full((1, 1), seed & _U64, np.uint64))
    x = _splitmix64(_splitmix64(_splitmix64(x ^ np.uint64(0)) ^ qb) ^ kb)
  return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def allowed_pairs(attention: dict, length: int) -> np.ndarray:
  """bool [length, length]: query i may attend to key j under jxr's attention spec."""
  return _allowed_pairs(json.dumps(attention, sort_keys=True), length)


@functools.lru_cache(maxsize=64)  # one mask per (spec, padded length), not one per forward
def _allowed_pairs(spec: str, length: int) -> np.ndarray:
  attention = json.loads(spec)
  kind = attention["kind"]
  i = np.arange(length)[:, None]
  j = np.arange(length)[None, :]
  if kind == "dense":
    return np.ones((length, length), bool)
  if kind == "local":
    return np.abs(i - j) <= attention["window"]
  if kind == "block_sparse":
    block = attention["block_size"]
    n = -(-length // block)
    qb, kb = np.arange(n)[:, None], np.arange(n)[None, :]
    g = attention.get("global_blocks") or 0
    layout = (np.abs(qb - kb) <= attention["band"]) | (qb < g) | (kb < g)
    if attention.get("random"):
      layout |= _random_blocks(attention.get("seed") or 0, n, attention["random"])
    return layout[i // block, j // block]
  raise ValueError(f"config.json jxr.attention: unknown kind {kind!r}")


class _JxrAttention:
  """Replaces the padding mask with (allowed pair and real key), as an additive 4-D mask."""

  def __init__(self, config, add_pooling_layer=None):
    # The pooler exists only when the export carries its weights (jxr pools without it).
    if add_pooling_layer is None:
      add_pooling_layer = bool(config.jxr.get("pooler", False))
    super().__init__(config, add_pooling_layer=add_pooling_layer)

  def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
    shaped = input_ids if input_ids is not None else inputs_embeds
    batch, length = shaped.shape[0], shaped.shape[1]
    device = shaped.device
    keys = (
        torch.ones(batch, length, dtype=torch.bool, device=device)
        if attention_mask is None
        else attention_mask.to(device=device, dtype=torch.bool)
    )
    pairs = torch.as_tensor(allowed_pairs(self.config.jxr["attention"], length), device=device)
    allowed = pairs[None, None, :, :] & keys[:, None, None, :]
    dtype = self.embeddings.word_embeddings.weight.dtype
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
    additive = additive.masked_fill(~allowed, torch.finfo(dtype).min)
    return super().forward(
        input_ids=input_ids, attention_mask=additive, inputs_embeds=inputs_embeds, **kwargs
    )


class JxrBertConfig(BertConfig):
  model_type = "jxr-bert"


class JxrXLMRobertaConfig(XLMRobertaConfig):
  model_type = "jxr-xlm-roberta"


class JxrBertModel(_JxrAttention, BertModel):
  config_class = JxrBertConfig


class JxrXLMRobertaModel(_JxrAttention, XLMRobertaModel):
  config_class = JxrXLMRobertaConfig
