"""Flags, presets and the fully resolved configuration of one experiment run.

`parse(argv)` turns command-line flags into a frozen `RunConfig`: the preset
(chosen from the available devices unless given) fills every value the flags
leave out, and every value is checked before any data or model is loaded, so a
bad flag fails in milliseconds with a message naming the flag.

The configuration's short hash names the default output directory
(`runs/<date>-<attn>-<hash>`), so the same flags map to the same run and
`--resume` finds it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jxr import fields
from jxr.data.lareqa import LANGUAGES
from jxr.model.config import ATTENTION_KINDS, AttentionConfig
from jxr.train.config import TrainConfig

CANDIDATE_CONTEXTS = ("sentence", "paragraph")
PRESETS_ORDER = ("cpu", "gpu", "pod", "tiny")
BUNDLED_MODELS = ("multilingual-e5-small", "tiny")
# Fields that do not change what is computed: left out of the hash.
_UNHASHED = ("out", "preset", "checkpoint_every", "checkpoint_minutes")  # change no result


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything one run depends on; `config.json` holds it (plus the question ids)."""

  preset: str = fields.declare(check=fields.OneOf(PRESETS_ORDER))
  model: str = fields.like(TrainConfig, "model")
  attention: AttentionConfig = fields.declare()  # it checks its own fields
  train_data: str = fields.like(TrainConfig, "train_data")  # a LAReQA name or a JSONL of pairs
  languages: tuple[str, ...] | None = fields.declare()  # training languages, in order (None: all)
  eval_data: tuple[str, ...] = fields.declare()
  eval_languages: tuple[str, ...] | None = fields.declare()
  # per dataset: whole articles until this many questions (None: all)
  eval_questions: int | None = fields.declare(check=fields.Int(1, optional=True))
  mono_prob: float = fields.like(TrainConfig, "mono_prob")
  train_steps: int = fields.like(TrainConfig, "steps")
  batch_size: int = fields.like(TrainConfig, "batch_size")
  lr: float = fields.like(TrainConfig, "lr")
  warmup_steps: int = fields.like(TrainConfig, "warmup_steps")
  max_query_length: int = fields.like(TrainConfig, "max_query_length")
  max_passage_length: int = fields.like(TrainConfig, "max_passage_length")
  candidate_context: str = fields.declare(check=fields.OneOf(CANDIDATE_CONTEXTS))
  seed: int = fields.like(TrainConfig, "seed")
  mesh: str = fields.like(TrainConfig, "mesh")
  eval_fraction: float = fields.like(TrainConfig, "eval_fraction")  # XQuAD-R articles held out
  split_seed: int = fields.like(TrainConfig, "split_seed")
  eval_batch_size: int = fields.declare(check=fields.Int(1))
  eval_pools: tuple[int, ...] = fields.declare()  # nested pools of the first n of LANGUAGE_ORDER
  eval_only: tuple[AttentionConfig, ...] = fields.declare()  # re-evaluations under these masks
  # learning curve: evaluate a fixed subset every this many steps (None: no curve)
  curve_every: int | None = fields.like(TrainConfig, "eval_every")
  curve_questions: int = fields.declare(check=fields.Int(1))  # the subset: whole articles until
  out: str = fields.declare()
  # Training lost to a crash or preemption: checkpoints every this many steps and minutes.
  checkpoint_every: int | None = fields.like(TrainConfig, "checkpoint_every", None)
  checkpoint_minutes: float | None = fields.like(TrainConfig, "checkpoint_minutes", None)

  def __post_init__(self):
    fields.check_all(self)
    if self.warmup_steps >= self.train_steps:
      raise ValueError(
          f"warmup_steps: expected fewer than train_steps ({self.train_steps}), "
          f"got {self.warmup_steps}"
      )
    if self.attention.kind == "local" and self.attention.window >= self.max_passage_length:
      raise ValueError(
          f"attention.window: {self.attention.window} keys each side covers every passage of "
          f"max_passage_length {self.max_passage_length}: that is dense attention"
      )

  def to_json(self) -> dict[str, Any]:
    data = dataclasses.asdict(self)
    data["attention"] = self.attention.to_json()
    data["eval_only"] = [spec.to_json() for spec in self.eval_only]
    data["eval_pools"] = list(self.eval_pools)
    for key in ("languages", "eval_data", "eval_languages"):
      data[key] = None if data[key] is None else list(data[key])
    return data

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> RunConfig:
    # One policy for every config's from_json (TrainConfig, AttentionConfig): an unknown key is
    # an error naming it, never silently dropped; a missing key takes the field's default.
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"run config: unknown keys {unknown} (written by another jxr version?)")
    values = dict(data)
    for key in ("languages", "eval_data", "eval_languages"):
      if values.get(key) is not None:
        values[key] = tuple(values[key])
    values["attention"] = AttentionConfig.from_json(values["attention"])
    values["eval_only"] = tuple(AttentionConfig.from_json(v) for v in values["eval_only"])
    values["eval_pools"] = tuple(values["eval_pools"])
    return cls(**values)

  def replace(self, **changes: Any) -> RunConfig:
    return dataclasses.replace(self, **changes)

  @property
  def train_dataset(self) -> str | None:
    """The LAReQA name trained on, or None for a JSONL file of pairs."""
    name = self.train_data.split(":", 1)[0]
    return name if name in LANGUAGES else None

  def short_hash(self) -> str:
    data = {k: v for k, v in self.to_json().items() if k not in _UNHASHED}
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


# ------------------------------------------------------------------------ presets

# The attention each kind gets when its flags are not given (see `attention_from_flags`).
# Training languages and evaluation pools are prefixes of this order: 2 = en, de; 4 adds two
# non-Latin scripts (zh, ar); 7 = exactly MLQA-R's languages; 11 = all of XQuAD-R.
LANGUAGE_ORDER = ("en", "de", "zh", "ar", "es", "hi", "vi", "ru", "el", "th", "tr")
POOL_SIZES = (2, 4, 7, 11)

ATTENTION_DEFAULTS = dict(
    window=16, block_size=16, band=1, global_blocks=1, random=0.1, attn_seed=0
)

_COMMON = dict(
    model="multilingual-e5-small",
    attention=AttentionConfig.dense(),
    train_data="xquad-r",
    languages=None,
    eval_languages=None,
    eval_questions=None,
    mono_prob=0.5,
    warmup_steps=0,
    candidate_context="paragraph",
    seed=0,
    mesh="data=-1",
    eval_fraction=0.5,
    split_seed=0,
    eval_batch_size=64,
    eval_pools=POOL_SIZES,
    eval_only=(),
    curve_every=None,
    curve_questions=30,
)

# What each preset trades away is documented in README.md ("Presets").
PRESETS: dict[str, dict[str, Any]] = {
    # 2 CPU cores, under 10 minutes: a short fine-tune, a small held-out slice.
    "cpu": dict(
        _COMMON,
        eval_data=("xquad-r",),
        eval_languages=("en", "de", "ru", "zh"),
        eval_questions=150,
        train_steps=30,
        batch_size=16,
        lr=1e-4,
        warmup_steps=3,
        max_query_length=32,
        max_passage_length=128,
        eval_batch_size=32,
        checkpoint_minutes=5.0,
    ),
    # One GPU: the study's cell (see experiments/sweep.py for its budget).
    "gpu": dict(
        _COMMON,
        eval_data=("xquad-r", "mlqa-r"),
        train_steps=600,
        batch_size=64,
        lr=3e-5,
        warmup_steps=60,
        max_query_length=64,
        max_passage_length=256,
        eval_batch_size=256,
        checkpoint_minutes=2.0,
    ),
    # Many hosts: a larger global batch over every device of every process.
    "pod": dict(
        _COMMON,
        eval_data=("xquad-r", "mlqa-r"),
        train_steps=1000,
        batch_size=256,
        lr=5e-5,
        warmup_steps=100,
        max_query_length=64,
        max_passage_length=256,
        eval_batch_size=512,
        checkpoint_minutes=2.0,
    ),
    # Tests: a random 2-layer encoder, seconds per stage.
    "tiny": dict(
        _COMMON,
        model="tiny",
        languages=("en", "de"),
        eval_data=("xquad-r",),
        eval_languages=("en", "de"),
        eval_questions=12,
        train_steps=2,
        batch_size=4,
        lr=1e-3,
        max_query_length=24,
        max_passage_length=48,
        eval_batch_size=32,
        checkpoint_minutes=5.0,
    ),
}


def default_preset() -> str:
  """ "pod" across several processes or on a TPU, "gpu" with a GPU, else "cpu"."""
  import jax  # only here: querying devices starts the backend

  if jax.process_count() > 1 or jax.default_backend() == "tpu":
    return "pod"
  return "gpu" if jax.default_backend() == "gpu" else "cpu"


# ------------------------------------------------------------------------ parsing


class FlagError(ValueError):
  """A flag's value is invalid; the message names the flag."""


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m experiments.run",
      description="Zero-shot evaluation, hybrid-batch fine-tuning and evaluation again of a "
      "multilingual encoder with dense, local or block-sparse attention on LAReQA.",
  )
  a = p.add_argument
  a(
      "--preset",
      metavar="{" + ",".join(PRESETS_ORDER) + "}",
      help="the defaults below (default: "
      "from the devices: pod with several processes or a TPU, gpu with a GPU, else cpu)",
  )
  d = ATTENTION_DEFAULTS
  a("--attn", metavar="{" + ",".join(ATTENTION_KINDS) + "}", help="attention kind (default dense)")
  a("--window", help=f"local: keys on each side of a query (default {d['window']})")
  a("--block-size", help=f"block_sparse: layout block in tokens (default {d['block_size']})")
  a("--band", help=f"block_sparse: key blocks on each side of the diagonal (default {d['band']})")
  a(
      "--global-blocks",
      help="block_sparse: leading blocks that see and are seen by every block "
      f"(default {d['global_blocks']})",
  )
  a(
      "--random",
      help="block_sparse: fraction of the other blocks made active, drawn by a "
      f"seeded hash of their position, in [0, 1] (default {d['random']})",
  )
  a(
      "--density",
      help="block_sparse: instead of --random, the attended fraction to reach on "
      "passages of --max-passage-length tokens (an error if band and global blocks exceed it)",
  )
  a("--attn-seed", help=f"block_sparse: seed of the random blocks (default {d['attn_seed']})")
  a(
      "--model",
      help="multilingual-e5-small (bundled), tiny, a bundle file (experiments.carry), a checkpoint directory or a HF id"
      + _presets("model"),
  )
  a(
      "--train-data",
      help="xquad-r or mlqa-r (optionally NAME:lang,lang) or a pairs .jsonl file"
      + _presets("train_data"),
  )
  a(
      "--eval-data",
      help="LAReQA names, comma separated (xquad-r is evaluated on its held-out "
      "articles when it is also the training data)" + _presets("eval_data"),
  )
  a("--languages", help="training languages, comma separated, in order")
  a(
      "--eval-languages",
      help="evaluation languages, comma separated (each dataset keeps those " "it has)",
  )
  a(
      "--eval-questions",
      help="per dataset: whole articles, in a seeded order, until this many "
      "questions ('all' for every question)" + _presets("eval_questions"),
  )
  a(
      "--mono-prob",
      help=f"probability that a batch is monolingual, {_bounds('mono_prob')}"
      + _presets("mono_prob"),
  )
  a("--train-steps", help=f"optimizer steps ({_bounds('train_steps')})" + _presets("train_steps"))
  a(
      "--batch-size",
      help=f"global batch of (query, passage) pairs, {_bounds('batch_size')}"
      + _presets("batch_size"),
  )
  a("--lr", help=f"peak learning rate, {_bounds('lr')}" + _presets("lr"))
  a(
      "--warmup-steps",
      help=f"linear warmup steps ({_bounds('warmup_steps')}, below --train-steps)"
      + _presets("warmup_steps"),
  )
  a(
      "--max-query-length",
      help=f"query tokens ({_bounds('max_query_length')})" + _presets("max_query_length"),
  )
  a(
      "--max-passage-length",
      help=f"passage tokens ({_bounds('max_passage_length')})" + _presets("max_passage_length"),
  )
  a(
      "--candidate-context",
      metavar="{" + ",".join(CANDIDATE_CONTEXTS) + "}",
      help="sentence (the answer sentence alone) or paragraph (the "
      "sentence with its paragraph)" + _presets("candidate_context"),
  )
  a("--seed", help=f"training seed, {_bounds('seed')}")
  a("--mesh", help="device mesh, e.g. data=-1 or data=4,model=2")
  a(
      "--checkpoint-every",
      metavar="STEPS",
      help=f"also checkpoint every this many steps, {_bounds('checkpoint_every')}",
  )
  a(
      "--checkpoint-minutes",
      metavar="M",
      help="checkpoint when M minutes passed since the last, "
      f"{_bounds('checkpoint_minutes')}" + _presets("checkpoint_minutes"),
  )
  a("--out", help="run directory (default runs/<date>-<attn>-<hash of the config>)")
  a("--resume", action="store_true", help="continue the run in --out (or the default one)")
  return p


def _presets(field: str) -> str:
  """`; presets: cpu 30, gpu 600, ...`: what each preset sets `field` to, for --help."""

  def show(value):
    if isinstance(value, tuple):
      return ",".join(map(str, value))
    return "all" if value is None else str(value)

  values = [show(PRESETS[name][field]) for name in PRESETS_ORDER]
  if len(set(values)) == 1:
    return f" (default {values[0]})"
  return "; presets: " + ", ".join(f"{name} {v}" for name, v in zip(PRESETS_ORDER, values))


def flag_of(name: str) -> str:
  """The flag that sets config field `name` (`attention.<field>` for the attention spec's)."""
  if name.startswith("attention."):
    name = {"kind": "attn", "seed": "attn_seed"}.get(name.removeprefix("attention."), name)
  return "--" + name.removeprefix("attention.").replace("_", "-")


def _parse(name: str, text: str) -> Any:
  """Flag text -> the value of config field `name`, checked by the field's own check."""
  if name.startswith("attention."):
    check = fields.check_of(AttentionConfig, name.removeprefix("attention."))
  else:
    check = fields.check_of(RunConfig, name)
  try:
    value = check.parse(text)
  except ValueError as e:  # the text is not of the field's type
    raise FlagError(f"{flag_of(name)}: {e}") from None
  try:
    check.check(flag_of(name), value)
  except ValueError as e:  # already named by the flag
    raise FlagError(str(e)) from None
  return value


def _bounds(name: str) -> str:
  """`an integer in [8, 512]`: what field `name` accepts, for --help."""
  return fields.check_of(RunConfig, name).describe()


def _codes(flag: str, text: str) -> tuple[str, ...]:
  codes = tuple(c.strip() for c in text.split(",") if c.strip())
  if not codes:
    raise FlagError(f"{flag}: expected comma-separated language codes, got {text!r}")
  if len(set(codes)) != len(codes):
    raise FlagError(f"{flag}: language codes repeat in {text!r}")
  known = sorted({c for langs in LANGUAGES.values() for c in langs})
  unknown = [c for c in codes if c not in known]
  if unknown:
    raise FlagError(f"{flag}: unknown language codes {unknown}; LAReQA has {' '.join(known)}")
  return codes


def _mesh(text: str) -> str:
  from jxr.train.mesh import parse_mesh_spec

  try:
    sizes = parse_mesh_spec(text)
  except ValueError as e:
    raise FlagError(f"--{e}") from None
  return ",".join(f"{axis}={size}" for axis, size in sizes.items())


def _model(text: str) -> str:
  if text in BUNDLED_MODELS:
    return text
  from jxr.model import bundle, weights

  path = pathlib.Path(text).expanduser()
  if path.is_file() and bundle.is_bundle(path):  # jxr.model.save_bundle's output
    return str(path)
  if path.exists():
    try:
      weights.resolve_checkpoint(path)  # config.json and weights, or a message saying which
    except FileNotFoundError as err:
      raise FlagError(f"--model: {err} (expected a Hugging Face or jxr checkpoint)") from None
    return str(path)
  if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.startswith((".", "/")):
    problem = weights.hub_model_problem(text)
    if problem:
      raise FlagError(f"--model: {problem}")
    return text
  raise FlagError(
      f"--model: expected one of {BUNDLED_MODELS}, an existing checkpoint directory "
      f"or a Hugging Face id (org/name), got {text!r}"
  )


def _train_data(text: str) -> tuple[str, tuple[str, ...] | None]:
  """`(train_data, languages from NAME:langs or None)`."""
  name, sep, langs = text.partition(":")
  if name in LANGUAGES:
    codes = _codes("--train-data", langs) if sep else None
    if codes:
      missing = [c for c in codes if c not in LANGUAGES[name]]
      if missing:
        raise FlagError(
            f"--train-data: {missing} not in {name} (it has " f"{' '.join(LANGUAGES[name])})"
        )
    return name, codes
  path = pathlib.Path(text).expanduser()
  if path.suffix == ".jsonl":
    if not path.is_file():
      raise FlagError(f"--train-data: pairs file {path} does not exist")
    return str(path), None
  raise FlagError(
      f"--train-data: expected one of {sorted(LANGUAGES)} (optionally NAME:lang,lang)"
      f" or an existing .jsonl file of pairs, got {text!r}"
  )


def _eval_data(text: str) -> tuple[str, ...]:
  names = tuple(s.strip() for s in text.split(",") if s.strip())
  unknown = [n for n in names if n not in LANGUAGES]
  if not names or unknown or len(set(names)) != len(names):
    raise FlagError(
        f"--eval-data: expected distinct names from {sorted(LANGUAGES)}, comma "
        f"separated, got {text!r}"
    )
  return names


_KIND_FLAGS = {
    "local": ("window",),
    "block_sparse": ("block_size", "band", "global_blocks", "random", "density", "attn_seed"),
}


def attention_from_flags(args: argparse.Namespace, max_passage_length: int) -> AttentionConfig:
  """The attention spec of `--attn` and its flags (defaults: `ATTENTION_DEFAULTS`).

  `--density` is solved here, once, for the random-block fraction that reaches
  it on passages of `max_passage_length` tokens; the spec carries the fraction.
  """
  kind = args.attn or "dense"
  if kind not in ATTENTION_KINDS:
    raise FlagError(f"--attn: expected one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
  given = [
      name for name in ("window", *_KIND_FLAGS["block_sparse"]) if getattr(args, name) is not None
  ]
  for name in given:
    if name not in _KIND_FLAGS.get(kind, ()):
      needed = next(k for k, names in _KIND_FLAGS.items() if name in names)
      raise FlagError(
          f"--{name.replace('_', '-')}: only applies to --attn={needed}, " f"got --attn={kind}"
      )
  value = (
      lambda name: getattr(args, name)
      if getattr(args, name) is not None
      else str(ATTENTION_DEFAULTS[name])  # noqa: E731
  )
  if kind == "local":
    return AttentionConfig.local(_parse("attention.window", value("window")))
  if kind == "block_sparse":
    if args.density is not None and args.random is not None:
      raise FlagError("--density: give --density or --random, not both")
    block_size = _parse("attention.block_size", value("block_size"))
    band = _parse("attention.band", value("band"))
    global_blocks = _parse("attention.global_blocks", value("global_blocks"))
    seed = _parse("attention.seed", value("attn_seed"))
    if args.density is None:
      random = _parse("attention.random", value("random"))
    else:
      import pallas_kernels  # only here: it imports jax

      try:
        density = fields.Number.parse(args.density)
      except ValueError as e:
        raise FlagError(f"--density: {e}") from None
      try:  # the density's bounds and reachability are the mask library's to check
        random = pallas_kernels.random_for_density(
            density,
            [max_passage_length],
            block=block_size,
            local=band,
            global_=global_blocks,
            seed=seed,
        )
      except ValueError as e:
        # The floor message speaks of the library's arguments: name the flags that set them.
        flags = " (--block-size, --band, --global-blocks)" if "band" in str(e) else ""
        raise FlagError(f"--{e}{flags}") from None
    return AttentionConfig.block_sparse(
        block_size, band=band, global_blocks=global_blocks, random=random, seed=seed
    )
  return AttentionConfig.dense()


# Flags whose text is one RunConfig field of the same name, parsed and checked by that field.
_PLAIN_FLAGS = (
    "mono_prob",
    "train_steps",
    "batch_size",
    "lr",
    "warmup_steps",
    "max_query_length",
    "max_passage_length",
    "candidate_context",
    "seed",
    "checkpoint_every",
    "checkpoint_minutes",
)


def _flag_error(error: ValueError) -> FlagError:
  """A config's `field: message` as `--flag: message`."""
  name, sep, message = str(error).partition(": ")
  known = name.startswith("attention.") or name in {f.name for f in dataclasses.fields(RunConfig)}
  return FlagError(f"{flag_of(name)}: {message}" if sep and known else str(error))


def resolve(args: argparse.Namespace, preset: str | None = None) -> RunConfig:
  """The preset's values overridden by the given flags, all checked."""
  preset = args.preset if args.preset is not None else preset
  if preset is None:
    preset = default_preset()
  if preset not in PRESETS:
    raise FlagError(f"--preset: expected one of {', '.join(PRESETS_ORDER)}, got {preset!r}")
  values: dict[str, Any] = dict(PRESETS[preset], preset=preset, out="")
  given = lambda name: getattr(args, name) is not None  # noqa: E731

  if given("model"):
    values["model"] = _model(args.model)
  if given("train_data"):
    values["train_data"], train_langs = _train_data(args.train_data)
    if train_langs is not None:
      values["languages"] = train_langs
    elif values["train_data"] not in LANGUAGES:
      values["languages"] = None  # a pairs file brings its own languages
  if given("languages"):
    values["languages"] = _codes("--languages", args.languages)
  name = values["train_data"] if values["train_data"] in LANGUAGES else None
  if values["languages"] is not None and name is not None:
    missing = [c for c in values["languages"] if c not in LANGUAGES[name]]
    if missing:
      raise FlagError(f"--languages: {missing} not in {name} (it has {' '.join(LANGUAGES[name])})")
  if given("eval_data"):
    values["eval_data"] = _eval_data(args.eval_data)
  if given("eval_languages"):
    values["eval_languages"] = _codes("--eval-languages", args.eval_languages)
  if values["eval_languages"] is not None:
    for dataset in values["eval_data"]:
      if len(set(values["eval_languages"]) & set(LANGUAGES[dataset])) < 1:
        raise FlagError(
            f"--eval-languages: none of {list(values['eval_languages'])} is in "
            f"{dataset} (it has {' '.join(LANGUAGES[dataset])})"
        )
  if given("eval_questions"):
    values["eval_questions"] = (
        None if args.eval_questions == "all" else _parse("eval_questions", args.eval_questions)
    )
  for name in _PLAIN_FLAGS:
    if given(name):
      values[name] = _parse(name, getattr(args, name))
  if given("mesh"):
    values["mesh"] = _mesh(args.mesh)
  values["attention"] = attention_from_flags(args, values["max_passage_length"])
  try:  # what no single flag decides: the checks across fields
    config = RunConfig(**values)
  except ValueError as e:
    raise _flag_error(e) from None

  out = args.out if args.out is not None else ""
  if out and pathlib.Path(out).exists() and not pathlib.Path(out).is_dir():
    raise FlagError(f"--out: {out} exists and is not a directory")
  return config.replace(out=out)


def default_out(
    config: RunConfig, root: str | os.PathLike = "runs", today: datetime.date | None = None
) -> pathlib.Path:
  """`runs/<date>-<attn>-<hash>`; an existing run of the same config is reused by --resume."""
  today = today or datetime.datetime.now(datetime.timezone.utc).date()
  return pathlib.Path(root) / f"{today:%Y%m%d}-{config.attention.kind}-{config.short_hash()}"


def find_existing(config: RunConfig, root: str | os.PathLike = "runs") -> pathlib.Path | None:
  """The newest run directory of this config (any date), for --resume without --out."""
  matches = sorted(pathlib.Path(root).glob(f"*-{config.attention.kind}-{config.short_hash()}"))
  return matches[-1] if matches else None


def choose_out(config: RunConfig, resume: bool, check: bool = True) -> RunConfig:
  """Fills `out` and checks it against --resume: a finished or foreign run is never clobbered.

  `check=False` skips the checks (processes other than 0 of a pod, which see
  process 0's files appear)."""
  if config.out:
    out = pathlib.Path(config.out)
  else:
    out = (find_existing(config) if resume else None) or default_out(config)
  saved = out / "config.json"
  if not check:
    return config.replace(out=str(out))
  if saved.exists():
    if not resume:
      raise FlagError(
          f"--out: {out} already holds a run; pass --resume to continue it or choose "
          "another --out"
      )
    previous = RunConfig.from_json(json.loads(saved.read_text())["run"])
    if previous.short_hash() != config.short_hash():
      changed = sorted(
          k
          for k, v in config.to_json().items()
          if k not in _UNHASHED and previous.to_json().get(k) != v
      )
      raise FlagError(
          f"--resume: {out} was started with different settings ({', '.join(changed)}"
          "); give the same flags, or another --out"
      )
  elif resume and out.exists() and any(out.iterdir()):
    raise FlagError(f"--resume: {out} has no config.json; it is not a run directory")
  return config.replace(out=str(out))


def parse(
    argv: Sequence[str] | None = None, *, preset: str | None = None, check_out: bool = True
) -> tuple[RunConfig, bool]:
  """`(config with out filled, resume)`; raises FlagError on any bad value.

  `preset` is used when no --preset flag is given (None: from the devices).
  """
  parser = build_parser()
  args = parser.parse_args(argv)
  config = resolve(args, preset)
  return choose_out(config, args.resume, check_out), bool(args.resume)
