"""Hugging Face checkpoints <-> encoder parameters.

Reads `model.safetensors` (also sharded, with its index) or `pytorch_model.bin`
(a torch zip-pickle, read here with a restricted unpickler, no torch needed),
maps HF BERT / XLM-R names onto the nnx parameter tree and back, and resolves
a name to a local directory (downloading through `huggingface_hub` only when
the files are not already local and the hub is not offline).
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import re
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jxr.model.config import EncoderConfig

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_DOWNLOAD_PATTERNS = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "vocab.txt",
]
# Prefixes that task heads put in front of the encoder's own names.
_MODEL_PREFIXES = ("bert.", "roberta.", "model.", "encoder_model.")

# HF module names inside a layer -> our (module path, is_linear).
_LAYER_MODULES = {
    "attention.self.query": ("attention", "query"),
    "attention.self.key": ("attention", "key"),
    "attention.self.value": ("attention", "value"),
    "attention.output.dense": ("attention", "out"),
    "attention.output.LayerNorm": ("attention_norm",),
    "intermediate.dense": ("mlp_in",),
    "output.dense": ("mlp_out",),
    "output.LayerNorm": ("mlp_norm",),
}
_EMBEDDINGS = {
    "word_embeddings": "word",
    "position_embeddings": "position",
    "token_type_embeddings": "token_type",
}


def hf_parameter_names(config: EncoderConfig) -> dict[str, tuple[tuple, bool]]:
  """HF name -> (our parameter path, transpose?) for every encoder parameter."""
  names: dict[str, tuple[tuple, bool]] = {}
  for hf, ours in _EMBEDDINGS.items():
    names[f"embeddings.{hf}.weight"] = (("embeddings", ours, "embedding"), False)
  names["embeddings.LayerNorm.weight"] = (("embeddings", "norm", "scale"), False)
  names["embeddings.LayerNorm.bias"] = (("embeddings", "norm", "bias"), False)
  for i in range(config.num_hidden_layers):
    for hf, path in _LAYER_MODULES.items():
      base = ("layers", i) + path
      if hf.endswith("LayerNorm"):
        names[f"encoder.layer.{i}.{hf}.weight"] = (base + ("scale",), False)
      else:  # torch Linear stores [out, in]; nnx.Linear's kernel is [in, out]
        names[f"encoder.layer.{i}.{hf}.weight"] = (base + ("kernel",), True)
      names[f"encoder.layer.{i}.{hf}.bias"] = (base + ("bias",), False)
  return names


def _canonical(name: str) -> str:
  for prefix in _MODEL_PREFIXES:
    if name.startswith(prefix):
      name = name[len(prefix) :]
      break
  return re.sub(
      r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
  )


def params_from_hf(
    config: EncoderConfig,
    tensors: dict[str, np.ndarray],
    abstract: nnx.State,
    *,
    source: str = "checkpoint",
) -> tuple[nnx.State, dict[str, np.ndarray]]:
  """Fill an abstract parameter state from HF tensors.

  Returns the parameters and the checkpoint's `pooler.*` tensors (not used by
  the encoder), which `save` writes back unchanged so AutoModel finds them.
  """
  by_name = {_canonical(k): v for k, v in tensors.items()}
  wanted = hf_parameter_names(config)
  missing = sorted(set(wanted) - set(by_name))
  if missing:
    shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
    raise ValueError(f"{source}: missing tensor(s) {shown}")
  flat = {}
  for hf, (path, transpose) in wanted.items():
    array = np.asarray(by_name[hf])
    flat[path] = array.T if transpose else array
  params = _fill(abstract, flat, source)
  # Keep HF's pooler (part of BertModel / XLMRobertaModel); drop task heads.
  extra = {k: np.asarray(v) for k, v in by_name.items() if k.startswith("pooler.")}
  return params, extra


def _path_key(path) -> tuple:
  """A jax key path into an nnx State -> our tuple path (without the Variable's `.value`)."""
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  return tuple(getattr(p, "key", getattr(p, "idx", None)) for p in path)


def _fill(abstract: nnx.State, flat: dict[tuple, np.ndarray], source: str) -> nnx.State:

  def leaf(path, spec):
    key = _path_key(path)
    array = flat[key]
    if tuple(array.shape) != tuple(spec.shape):
      hf = ".".join(map(str, key))
      raise ValueError(
          f"{source}: tensor for {hf} has shape {tuple(array.shape)}, the config "
          f"expects {tuple(spec.shape)}"
      )
    return jnp.asarray(array, spec.dtype)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def params_to_hf(config: EncoderConfig, params: nnx.State) -> dict[str, np.ndarray]:
  """Parameters -> HF-named float32 numpy arrays (torch Linear layout)."""
  flat = {}
  for path, value in jax.tree_util.tree_leaves_with_path(params):
    flat[_path_key(path)] = value
  out = {}
  for hf, (path, transpose) in hf_parameter_names(config).items():
    array = np.asarray(jax.device_get(flat[path]), np.float32)
    out[hf] = np.ascontiguousarray(array.T if transpose else array)
  return out


# ---------------------------------------------------------------- reading files


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  out = {}
  with safe_open(str(path), framework="numpy") as f:
    for name in f.keys():
      try:
        out[name] = f.get_tensor(name)
      except (TypeError, ValueError):  # bfloat16 has no numpy dtype: go through jax
        with safe_open(str(path), framework="flax") as g:
          out[name] = np.asarray(g.get_tensor(name), np.float32)
  return out


_TORCH_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "BoolStorage": np.bool_,
    "ByteStorage": np.uint8,
    "BFloat16Storage": "bfloat16",
}


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a torch `state_dict` into numpy arrays, allowing only tensor rebuilds."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self.archive, self.prefix = archive, prefix

  def find_class(self, module: str, name: str):
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch" and name in _TORCH_DTYPES:
      return name
    if module == "collections" and name == "OrderedDict":
      import collections

      return collections.OrderedDict
    raise pickle.UnpicklingError(f"pytorch_model.bin: refusing to load {module}.{name}")

  def persistent_load(self, pid):
    _, storage_type, key, _, _ = pid
    dtype = _TORCH_DTYPES[storage_type]
    raw = self.archive.read(f"{self.prefix}/data/{key}")
    if dtype == "bfloat16":
      as_u16 = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
      return as_u16.view(np.float32)
    return np.frombuffer(raw, dtype)


def _rebuild_tensor(storage, offset, size, stride, *args):
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
  ).copy()


def read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
  """A torch-saved state dict (zip format) as numpy arrays, without importing torch."""
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if not pkl:
      raise ValueError(f"{path}: not a torch zip checkpoint (no data.pkl)")
    prefix = pkl[0][: -len("/data.pkl")]
    with archive.open(pkl[0]) as f:
      state = _TorchUnpickler(f, archive, prefix).load()
  if not isinstance(state, dict):
    raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
  return dict(state)


def read_checkpoint_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of a HF checkpoint directory."""
  single = directory / "model.safetensors"
  index = directory / "model.safetensors.index.json"
  torch_bin = directory / "pytorch_model.bin"
  if single.is_file():
    return read_safetensors(single)
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    out = {}
    for shard in shards:
      out.update(read_safetensors(directory / shard))
    return out
  if torch_bin.is_file():
    return read_torch_bin(torch_bin)
  raise FileNotFoundError(f"{directory}: no weights; expected one of {WEIGHT_FILES}")


def write_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray]) -> None:
  from safetensors.numpy import save_file

  save_file(
      {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"}
  )


# ---------------------------------------------------------------- resolving names


def _looks_like_path(name: str) -> bool:
  return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_checkpoint(name_or_path: str | os.PathLike) -> pathlib.Path:
  """A local directory holding config.json and weights, downloading if allowed."""
  path = pathlib.Path(os.path.expanduser(str(name_or_path)))
  if path.is_dir():
    if not (path / "config.json").is_file():
      raise FileNotFoundError(
          f"{path}: no config.json (a HF checkpoint directory needs "
          f"config.json and one of {WEIGHT_FILES})"
      )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
      raise FileNotFoundError(f"{path}: no weights; expected one of {WEIGHT_FILES}")
    return path
  name = str(name_or_path)
  if _looks_like_path(name) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
    raise FileNotFoundError(
        f"name_or_path: {name!r} is not an existing directory nor a "
        f"Hugging Face model id (owner/name)"
    )
  return _hub_snapshot(name)


def hub_model_problem(repo_id: str) -> str | None:
  """Why `repo_id` cannot load here (None when it can): checked before a run writes anything.

  A model in the local Hugging Face cache loads; offline (HF_HUB_OFFLINE) nothing else does;
  online the hub is asked whether the repository exists (unreachable: the load will tell).
  """
  import huggingface_hub

  if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str):
    return None
  if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
    return (
        f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
        f"download it once with network access, or pass a checkpoint directory"
    )
  try:
    exists = huggingface_hub.repo_exists(repo_id)
  except Exception:  # the hub is unreachable: loading will report it
    return None
  return None if exists else f"no model {repo_id!r} on the Hugging Face hub"


def _hub_snapshot(repo_id: str) -> pathlib.Path:
  try:
    import huggingface_hub
  except ImportError as err:  # pragma: no cover - a declared dependency
    raise FileNotFoundError("huggingface_hub is needed to fetch models by name") from err
  offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
  errors = []
  for local_only in (True,) if offline else (True, False):
    try:
      folder = pathlib.Path(
          huggingface_hub.snapshot_download(
              repo_id, allow_patterns=_DOWNLOAD_PATTERNS, local_files_only=local_only
          )
      )
    except Exception as err:  # the hub raises many error types; all mean "not here"
      errors.append(err)
      continue
    if (folder / "config.json").is_file() and any((folder / f).is_file() for f in WEIGHT_FILES):
      return folder
    if not local_only:
      # No safetensors on the hub: fetch the torch checkpoint instead.
      folder = pathlib.Path(
          huggingface_hub.snapshot_download(
              repo_id, allow_patterns=_DOWNLOAD_PATTERNS + ["pytorch_model.bin"]
          )
      )
      if (folder / "config.json").is_file() and any((folder / f).is_file() for f in WEIGHT_FILES):
        return folder
  raise FileNotFoundError(
      f"model {repo_id!r} is not available offline. Either put config.json, "
      f"model.safetensors (or pytorch_model.bin) and tokenizer.json in a directory and pass "
      f"its path, or download it once with network access (it then lives in the Hugging Face "
      f"cache, {os.environ.get('HF_HOME', '~/.cache/huggingface')}), or unset "
      f"HF_HUB_OFFLINE. Last error: {errors[-1] if errors else 'none'}"
  )


def read_config(directory: pathlib.Path) -> dict[str, Any]:
  path = directory / "config.json"
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise ValueError(f"{path}: not valid JSON ({err})") from err
