"""What an export directory holds besides weights and tokenizer: the HF config, the modeling
code a sparse model needs, and the sentence-transformers packaging.

- Dense models stay plain BERT / XLM-RoBERTa (`AutoModel.from_pretrained(dir)`). A model whose
  source had no pooler weights (the bundle, `tiny`) is exported without one, never with invented
  weights: `AutoModel.from_pretrained(dir, add_pooling_layer=False)` loads it with nothing missing
  (plain `BertModel` cannot read that choice from config.json, so without the argument
  transformers builds a pooler and reports it MISSING); sentence-transformers gets the argument
  from `sentence_bert_config.json`.
- Sparse models get model type `jxr-<base>` and `auto_map` pointing at `modeling_jxr.py`
  (a copy of `jxr/model/hf_modeling_jxr.py`): transformers runs them with jxr's mask under
  `trust_remote_code=True` and refuses them without it, instead of running dense.
- Every export is a sentence-transformers model (`modules.json`: Transformer, Pooling,
  Normalize) with the model's query / passage prefixes as its prompts "query" / "passage".
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

from jxr.model.config import SPARSE_EXPORT_TYPES, EncoderConfig

REMOTE_CODE = pathlib.Path(__file__).with_name("hf_modeling_jxr.py")
REMOTE_MODULE = "modeling_jxr"
# The classes of REMOTE_CODE for each model type of a sparse export.
REMOTE_CLASSES = {
    "jxr-bert": ("JxrBertConfig", "JxrBertModel"),
    "jxr-xlm-roberta": ("JxrXLMRobertaConfig", "JxrXLMRobertaModel"),
}
PROMPTS = ("query", "passage")  # sentence-transformers prompt names for Encoder's two kinds


def needs_remote_code(config: EncoderConfig) -> bool:
  return config.attention.kind != "dense"


def hf_config(config: EncoderConfig, *, max_length: int, has_pooler: bool) -> dict[str, Any]:
  """config.json: `EncoderConfig.to_hf_dict` plus what transformers needs to load it faithfully."""
  out = config.to_hf_dict()
  out["jxr"].update(max_length=max_length, pooler=has_pooler)
  if needs_remote_code(config):
    model_type = next(t for t, base in SPARSE_EXPORT_TYPES.items() if base == config.model_type)
    config_class, model_class = REMOTE_CLASSES[model_type]
    out.update(
        model_type=model_type,
        architectures=[model_class],
        auto_map={
            "AutoConfig": f"{REMOTE_MODULE}.{config_class}",
            "AutoModel": f"{REMOTE_MODULE}.{model_class}",
        },
    )
  return out


def write_remote_code(directory: pathlib.Path) -> None:
  shutil.copyfile(REMOTE_CODE, directory / f"{REMOTE_MODULE}.py")


def sentence_transformers_files(
    config: EncoderConfig, *, max_length: int, has_pooler: bool
) -> dict[str, Any]:
  """Relative path -> JSON content of the sentence-transformers packaging."""
  modules = [
      ("", "sentence_transformers.models.Transformer"),
      ("1_Pooling", "sentence_transformers.models.Pooling"),
      ("2_Normalize", "sentence_transformers.models.Normalize"),
  ]
  return {
      "modules.json": [
          {"idx": i, "name": str(i), "path": path, "type": kind}
          for i, (path, kind) in enumerate(modules)
      ],
      "sentence_bert_config.json": {
          "max_seq_length": max_length,
          "do_lower_case": False,
          # Passed to from_pretrained: no pooler to build when the export has no pooler weights.
          "model_kwargs": {"add_pooling_layer": has_pooler},
      },
      "1_Pooling/config.json": {
          "word_embedding_dimension": config.hidden_size,
          "pooling_mode_cls_token": config.pooling == "cls",
          "pooling_mode_mean_tokens": config.pooling == "mean",
          "pooling_mode_max_tokens": False,
          "pooling_mode_mean_sqrt_len_tokens": False,
          "include_prompt": True,
      },  # jxr pools over the prefix too
      "2_Normalize/.keep": None,
      "config_sentence_transformers.json": {
          "model_type": "SentenceTransformer",
          "prompts": dict(zip(PROMPTS, (config.query_prefix, config.passage_prefix))),
          "default_prompt_name": None,
          "similarity_fn_name": "cosine",
      },
  }


def write_export_files(
    directory: pathlib.Path, config: EncoderConfig, *, max_length: int, has_pooler: bool
) -> None:
  """Everything but the weights and the tokenizer (which `Encoder.save` writes)."""
  text = json.dumps(
      hf_config(config, max_length=max_length, has_pooler=has_pooler), indent=2, sort_keys=True
  )
  (directory / "config.json").write_text(text + "\n")
  if needs_remote_code(config):
    write_remote_code(directory)
  for relative, content in sentence_transformers_files(
      config, max_length=max_length, has_pooler=has_pooler
  ).items():
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("" if content is None else json.dumps(content, indent=2) + "\n")
