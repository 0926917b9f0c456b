"""`train(config)`: the training loop that ties data, model, mesh, step, checkpoints and metrics.

    result = train(TrainConfig(model="tiny", train_data="xquad-r", steps=100, out_dir="runs/a"))
    result = train(config, resume=True)        # after Ctrl-C: continues where it stopped

Every process runs this same function: each draws the same global batch from
the sampler, tokenises only its own rows and hands them to `jax.jit` as its
slice of a global array. Process 0 alone writes config, metrics and the export;
checkpoints are collective (orbax).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jxr import _failpoints
from jxr._progress import progress
from jxr.data import HybridSampler, TrainingPairs, collate, read_pairs, training_pairs
from jxr.data.collate import encode as encode_texts
from jxr.data.collate import pad as pad_rows
from jxr.data.lareqa import training_set
from jxr.model import Encoder, load_encoder
from jxr.train import mesh as meshlib
from jxr.train import signals
from jxr.train.checkpoint import Checkpoints, abstract_like
from jxr.train.config import LAREQA_NAMES, TrainConfig, TrainResult
from jxr.train.metrics import MetricsWriter, StepLog
from jxr.train.optim import make_optimizer
from jxr.train.step import (
    StepOptions,
    TrainState,
    init_state,
    jit_train_step,
    make_train_step,
    state_shardings,
)
from pallas_kernels import AttentionSharding

EvalHook = Callable[[int, Encoder], "dict[str, Any] | None"]
# Fields a resumed run may change: they do not alter what is computed.
RESUMABLE_CHANGES = (
    "mesh",
    "out_dir",
    "checkpoint_every",
    "checkpoint_minutes",
    "keep_checkpoints",
    "eval_every",
    "log_every",
)


# ---------------------------------------------------------------------- data


def load_training_pairs(config: TrainConfig) -> TrainingPairs:
  """LAReQA: the training articles of `split_by_article`; otherwise a JSONL pairs file."""
  if config.train_data in LAREQA_NAMES:
    return training_pairs(
        training_set(
            config.train_data,
            languages=config.languages,
            eval_fraction=config.eval_fraction,
            split_seed=config.split_seed,
        )
    )
  path = pathlib.Path(config.train_data)
  if not path.is_file():
    raise FileNotFoundError(
        f"train_data: {config.train_data!r} is neither a LAReQA name "
        f"{LAREQA_NAMES} nor a JSONL pairs file"
    )
  return read_pairs(path)


def batch_arrays(
    batch, pairs: TrainingPairs, encoder: Encoder, config: TrainConfig
) -> dict[str, np.ndarray]:
  """This process's rows of a batch as int32 arrays (plus one hard negative per row
  when the pairs have any: row `i` takes its `step`-th negative, cyclically)."""
  tokens = collate(
      batch,
      encoder.tokenizer,
      config.max_query_length,
      config.max_passage_length,
      config.candidate_context,
      query_prefix=encoder.config.query_prefix,
      passage_prefix=encoder.config.passage_prefix,
      pad_id=encoder.pad_id,
  )
  arrays = {
      "query_input_ids": tokens.query_input_ids,
      "query_attention_mask": tokens.query_attention_mask,
      "passage_input_ids": tokens.passage_input_ids,
      "passage_attention_mask": tokens.passage_attention_mask,
  }
  if len(pairs.negative_index):
    texts, present = [], []
    for pair in batch.pair_index:
      negatives = pairs.negatives(int(pair))
      present.append(len(negatives) > 0)
      row = negatives[batch.step % len(negatives)] if len(negatives) else pairs.positive_index[pair]
      texts.append(encoder.config.passage_prefix + str(pairs.passage_text[row]))
    ids, mask = pad_rows(
        encode_texts(encoder.tokenizer, texts, config.max_passage_length),
        config.max_passage_length,
        encoder.pad_id,
    )
    arrays.update(
        negative_input_ids=ids,
        negative_attention_mask=mask,
        negative_mask=np.asarray(present, bool),
    )
  return arrays


def batch_id(batch) -> str:
  """A short fingerprint of the pairs in a batch (to check that runs saw the same data)."""
  return hashlib.sha1(np.ascontiguousarray(batch.pair_index, np.int64).tobytes()).hexdigest()[:12]


# ---------------------------------------------------------------------- interrupts


class _SaveClock:
  """Checkpoints by wall time as well as by steps. With several processes process 0's clock
  decides for all: an orbax save is collective, so every process must agree to save."""

  def __init__(self, minutes: float | None):
    self.seconds = None if not minutes else 60.0 * minutes
    self.reset()

  def reset(self) -> None:
    self.last = time.monotonic()

  def due(self) -> bool:
    if self.seconds is None:
      return False
    due = time.monotonic() - self.last >= self.seconds
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
    return due


# ---------------------------------------------------------------------- setup


def _check_resume_config(saved: TrainConfig, config: TrainConfig) -> None:
  changed = [
      f.name
      for f in dataclasses.fields(TrainConfig)
      if getattr(saved, f.name) != getattr(config, f.name) and f.name not in RESUMABLE_CHANGES
  ]
  if changed:
    raise ValueError(
        f"config: resuming needs the saved run's settings; {changed} differ from "
        f"{config.out_dir}/config.json (only {list(RESUMABLE_CHANGES)} may change)"
    )


def _check_mesh_fit(config: TrainConfig, mesh) -> None:
  ways = meshlib.data_parallel_size(mesh)
  if config.micro_batch_size % ways:
    raise ValueError(
        f"batch_size: {config.batch_size} pairs over grad_accum={config.grad_accum} "
        f"micro-batches do not split over the mesh's {ways} data-parallel devices"
    )
  if config.grad_cache_chunk is not None and config.grad_cache_chunk % ways:
    raise ValueError(
        f"grad_cache_chunk: {config.grad_cache_chunk} rows do not split over the "
        f"mesh's {ways} data-parallel devices"
    )
  if config.batch_size % jax.process_count():
    raise ValueError(
        f"batch_size: {config.batch_size} is not a multiple of the "
        f"{jax.process_count()} processes"
    )


def _load_model(config: TrainConfig) -> Encoder:
  encoder = load_encoder(
      config.model,
      attention=config.attention,
      dtype=config.dtype,
      max_length=max(config.max_query_length, config.max_passage_length),
      seed=config.seed,
  )
  for name in ("max_query_length", "max_passage_length"):
    if getattr(config, name) > encoder.config.max_length:
      raise ValueError(
          f"{name}: {getattr(config, name)} exceeds the model's "
          f"{encoder.config.max_length} positions"
      )
  return encoder


def embed_fn_of(encoder: Encoder, attention_sharding: AttentionSharding | None = None):
  """`embed_fn(params, batch, key)` for the step: dropout on exactly when a key is given.

  `attention_sharding` runs attention on each device's rows and heads (a mesh's).
  """

  def embed_fn(params, batch, key):
    return encoder.embed(
        params,
        batch,
        deterministic=key is None,
        rngs=key,
        attention_sharding=attention_sharding,
    )

  return embed_fn


def host_params(params: Any) -> Any:
  """Parameters gathered to this host (all processes take part)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    params = multihost_utils.process_allgather(params, tiled=True)
  return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), params)


@dataclasses.dataclass(frozen=True)
class StepProgram:
  """What a jitted training step computes, compared by value: two runs that differ only in
  data, languages or mixing (a sweep's cells at one arm and seed) compile one program."""

  encoder: Encoder  # its graph and config, not its parameters
  optimization: tuple  # make_optimizer's arguments
  options: StepOptions
  mesh: jax.sharding.Mesh
  shardings: TrainState
  batch_spec: dict[str, int]

  def key(self) -> tuple:
    leaves, treedef = jax.tree.flatten(self.shardings)
    return (
        self.encoder.graphdef,
        self.encoder.config,
        self.optimization,
        self.options,
        self.mesh,
        treedef,
        tuple(leaves),
        tuple(sorted(self.batch_spec.items())),
    )

  def __eq__(self, other) -> bool:
    return isinstance(other, StepProgram) and self.key() == other.key()

  def __hash__(self) -> int:
    return hash(self.key())


@functools.lru_cache(maxsize=8)
def compiled_train_step(program: StepProgram) -> Callable:
  """The jitted step of `program`, built once per distinct program in this process."""
  optimizer, schedule = make_optimizer(*program.optimization)
  step_fn = make_train_step(
      embed_fn_of(program.encoder, meshlib.attention_sharding(program.mesh)),
      optimizer,
      schedule,
      program.options,
      program.mesh,
  )
  return jit_train_step(step_fn, program.shardings, program.batch_spec, program.mesh)


# ---------------------------------------------------------------------- train


def train(
    config: TrainConfig, resume: bool = False, eval_hook: EvalHook | None = None
) -> TrainResult:
  """Fine-tunes `config.model` contrastively; see docs/DESIGN.md (jxr.train).

  With `resume`, continues from the newest checkpoint in `config.out_dir` (made
  on any mesh) with the same batches, as if never stopped. Checkpoints are written
  every `checkpoint_every` steps and `checkpoint_minutes` of wall time. Ctrl-C, or
  SIGTERM while the loop runs (`jxr.train.signals`), saves the last finished step,
  then re-raises (`KeyboardInterrupt` / `signals.Terminated`).
  """
  if not isinstance(config, TrainConfig):
    raise ValueError(f"config: expected a TrainConfig, got {type(config).__name__}")
  if eval_hook is not None and not callable(eval_hook):
    raise ValueError(
        f"eval_hook: expected a callable (step, encoder) -> dict | None, "
        f"got {type(eval_hook).__name__}"
    )
  meshlib.maybe_initialize_distributed()
  primary = meshlib.is_primary()
  run_dir = pathlib.Path(config.out_dir).absolute()
  checkpoint_dir = run_dir / "checkpoints"
  if resume:
    if not (run_dir / "config.json").is_file():
      raise FileNotFoundError(f"out_dir: nothing to resume, {run_dir / 'config.json'} is missing")
    _check_resume_config(TrainConfig.load(run_dir / "config.json"), config)
  elif checkpoint_dir.is_dir() and any(checkpoint_dir.iterdir()):
    raise ValueError(
        f"out_dir: {run_dir} already holds checkpoints; pass resume=True to continue "
        "that run or choose another out_dir"
    )
  mesh = meshlib.make_mesh(config.mesh)
  _check_mesh_fit(config, mesh)

  pairs = load_training_pairs(config)
  sampler = HybridSampler(
      pairs,
      config.batch_size,
      config.mono_prob,
      config.seed,
      languages=config.languages,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )
  encoder = _load_model(config)

  optimization = (
      config.lr,
      config.steps,
      config.warmup_steps,
      config.weight_decay,
      config.clip_norm,
  )
  optimizer, _ = make_optimizer(*optimization)
  options = StepOptions(
      temperature=config.temperature,
      learn_temperature=config.learn_temperature,
      symmetric=config.symmetric,
      grad_accum=config.grad_accum,
      grad_cache_chunk=config.grad_cache_chunk,
      dropout=encoder.config.hidden_dropout_prob > 0,
      seed=config.seed,
  )
  encoder_shardings = meshlib.param_shardings(encoder.params, mesh)
  abstract = jax.eval_shape(lambda p: init_state(p, optimizer, options), encoder.params)
  shardings = state_shardings(abstract, encoder_shardings, mesh)

  checkpoints = Checkpoints(checkpoint_dir, config.keep_checkpoints)
  start = checkpoints.latest_step() if resume else None
  resumed_from: list[int] = []
  if start is not None:
    state, meta = checkpoints.restore(start, abstract_like(abstract, shardings))
    sampler.load_state_dict(meta["sampler"])
    resumed_from = [*meta.get("resumed_from", []), start]
  else:
    params = jax.device_put(encoder.params, encoder_shardings)
    state = jax.jit(lambda p: init_state(p, optimizer, options), out_shardings=shardings)(params)
  # The state owns the parameters now (and donates them each step).
  encoder = dataclasses.replace(encoder, params=None)
  if primary:
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.json")
  writer = MetricsWriter(run_dir, resume_step=start if resume else None, enabled=primary)

  batch_spec = {
      name: np.ndim(x)
      for name, x in batch_arrays(sampler.batch_at(0), pairs, encoder, config).items()
  }
  train_step = compiled_train_step(
      StepProgram(encoder, optimization, options, mesh, shardings, batch_spec)
  )

  def current_encoder(state: TrainState) -> Encoder:
    return dataclasses.replace(encoder, params=state.params["encoder"])

  def save(state: TrainState) -> None:
    done = int(state.step)
    meta = {
        "step": done,
        "sampler": dict(sampler.state_dict(), step=done),
        "config": config.to_json(),
        "resumed_from": resumed_from,
    }
    checkpoints.save(done, state, meta)
    clock.reset()

  deferred = signals.Deferred()
  clock = _SaveClock(config.checkpoint_minutes)
  first = int(state.step)
  bar = progress(total=config.steps, initial=first, desc="train", unit="step")
  log = StepLog(writer, config.log_every, config.steps, bar)
  with signals.terminate_as_exception():  # SIGTERM in the loop: save, as on Ctrl-C
    try:
      for step in range(first, config.steps):
        # A step is one unit, from drawing its batch to logging its row: a stop that
        # lands inside waits for the end, so the saved state never has a step without
        # its row (or a drawn batch without its step).
        with deferred():
          batch = next(sampler)
          arrays = meshlib.global_batch(batch_arrays(batch, pairs, encoder, config), mesh)
          state, metrics = train_step(state, arrays)
          done = step + 1
          log.add(
              done,
              {"kind": batch.kind, "language": batch.language, "batch_id": batch_id(batch)},
              metrics,
          )
        _failpoints.reached(f"step:{done}")
        bar.update(1)
        if eval_hook and config.eval_every and done % config.eval_every == 0:
          log.collect()
          result = eval_hook(done, current_encoder(state))
          if result is not None and not isinstance(result, dict):
            raise ValueError(f"eval_hook: expected a dict or None, got {type(result).__name__}")
          log.write(done, result)
          log.restart_clock()  # evaluation time is not training time
        elif log.due(done):
          log.write()
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or clock.due():
          save(state)
      log.write()
      save(state)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (signals.Terminated)
      log.write()  # rows of the finished steps, then their checkpoint
      save(state)
      raise
    finally:
      checkpoints.close()
      writer.close()
      bar.close()

  final = dataclasses.replace(encoder, params=host_params(state.params["encoder"]))
  export_dir = None
  if primary:
    export_dir = final.save(run_dir / "model")
  return TrainResult(
      encoder=final,
      steps=int(state.step),
      skipped_steps=int(state.skipped),
      final_loss=log.last_loss,
      run_dir=run_dir,
      export_dir=export_dir,
      resumed_from_steps=tuple(resumed_from),
  )
