"""Training and encoding throughput per attention kind: dense, local, block-sparse, side by side.

    python benchmarks/train.py [--lengths 128 512 2048] [--model tiny|e5-small] [--quick]

Times the real training step of `jxr.train` (shared-encoder InfoNCE, AdamW,
clipping, dropout on; `jit` over a one-device mesh with donated state) on
random token ids: each step has `--passage-tokens` passage tokens (pairs =
tokens / length) plus 32-token queries. tokens/s counts query and passage
tokens. Encoding is the jitted `Encoder.embed` (forward and pooling, no
dropout) on the same passages, tokens/s counting passage tokens. The encoder is built with as many positions as the longest length:

  tiny      hidden 64, 2 layers, 4 heads, ffn 128 (the "tiny" test encoder's shape)
  e5-small  hidden 384, 12 layers, 12 heads, ffn 1536 (multilingual-e5-small's shape)

both with the bundle's 250,037-row vocabulary (the `tiny` encoder itself has a
28,849-piece shortlist since 2026-12-07) and random weights (throughput
does not depend on the values). Attention runs through `pallas_kernels`
(its blocked XLA path on the CPU, the Pallas kernel on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jxr.model import AttentionConfig, Encoder, load_encoder
from jxr.model.encoder import create_model
from jxr.train import make_mesh
from jxr.train import mesh as meshlib
from jxr.train import step as steplib
from jxr.train.optim import make_optimizer
from jxr.train.trainer import embed_fn_of
from pallas_kernels import BlockSparseMask, attended_fraction, random_for_density

SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
    "e5-small": dict(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536
    ),
}
QUERY_LENGTH = 32


def attention_kinds(
    window: int, block: int, density: float, length: int
) -> dict[str, AttentionConfig]:
  """Dense, local, and block-sparse twice: BigBird's default recipe (local + one
  global + random blocks) and the same without the global block. A global query
  block visits every key block, and the blocked XLA path pads each query block's
  visits to the longest row, so on the CPU the global block costs dense-row time.

  The block-sparse `random` fraction is solved per length so the pattern attends
  as close to `density` as it can at `length`; where the band and global blocks
  alone attend more (short sequences, big blocks), it is those blocks only."""

  def block_sparse(global_blocks: int) -> AttentionConfig:
    floor = attended_fraction(BlockSparseMask.pattern(block, global_=global_blocks), [length])
    random = (
        0.0
        if floor >= density
        else random_for_density(density, [length], block=block, global_=global_blocks)
    )
    return AttentionConfig.block_sparse(block, global_blocks=global_blocks, random=random)

  return {
      "dense": AttentionConfig.dense(),
      f"local (window {window})": AttentionConfig.local(window),
      f"block-sparse {density:.0%} (BigBird, block {block})": block_sparse(1),
      f"block-sparse {density:.0%} (no global, block {block})": block_sparse(0),
  }


def build_encoder(
    shape: str, attention: AttentionConfig, max_length: int, base: Encoder
) -> Encoder:
  config = base.config.replace(
      **SHAPES[shape],
      attention=attention,
      max_position_embeddings=max_length + base.config.position_offset,
  )
  graphdef, params = nnx.split(create_model(config, seed=0), nnx.Param)
  return Encoder(config, graphdef, params, base.tokenizer, name=f"{shape}-random")


def random_batch(pairs: int, length: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)

  def tower(rows, width):
    return rng.integers(5, 250000, size=(rows, width)).astype(np.int32), np.ones(
        (rows, width), np.int32
    )

  q_ids, q_mask = tower(pairs, QUERY_LENGTH)
  p_ids, p_mask = tower(pairs, length)
  return {
      "query_input_ids": q_ids,
      "query_attention_mask": q_mask,
      "passage_input_ids": p_ids,
      "passage_attention_mask": p_mask,
  }


def compiled_step(encoder: Encoder, batch: dict[str, np.ndarray]):
  """`(run, compile seconds)`: `run()` does one training step and waits for it."""
  mesh = make_mesh("data=-1")
  optimizer, schedule = make_optimizer(3e-5, 1000, 10, 0.01, 1.0)
  options = steplib.StepOptions()
  state = steplib.init_state(encoder.params, optimizer, options)
  shardings = steplib.state_shardings(state, meshlib.param_shardings(encoder.params, mesh), mesh)
  holder = {"state": jax.device_put(state, shardings)}
  step = steplib.jit_train_step(
      steplib.make_train_step(embed_fn_of(encoder), optimizer, schedule, options, mesh),
      shardings,
      {k: 2 for k in batch},
      mesh,
  )

  def run() -> float:
    holder["state"], metrics = step(holder["state"], batch)
    return float(metrics["loss"])  # waits for the step

  start = time.perf_counter()
  run()
  return run, time.perf_counter() - start


def compiled_encode(encoder: Encoder, batch: dict[str, np.ndarray]):
  """`(run, compile seconds)`: `run()` embeds the batch's passages and waits for them."""
  passages = {
      "input_ids": batch["passage_input_ids"],
      "attention_mask": batch["passage_attention_mask"],
  }
  embed = jax.jit(encoder.embed)
  # Its own copy: the training step donates the state built from `encoder.params`.
  params = jax.tree.map(jnp.copy, encoder.params)

  def run() -> None:
    jax.block_until_ready(embed(params, passages))

  start = time.perf_counter()
  run()
  return run, time.perf_counter() - start


def time_interleaved(runs: dict[str, object], steps: int) -> dict[str, float]:
  """Median seconds per step of each kind, timed round-robin so that changes in
  the machine's load hit every kind alike."""
  times: dict[str, list[float]] = {name: [] for name in runs}
  for _ in range(steps):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
  return (
      f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {cpu}, {os.cpu_count()} cores, "
      f"jax {jax.__version__}, load average {load[0]:.1f}"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
  parser.add_argument("--model", choices=sorted(SHAPES), default="tiny")
  parser.add_argument(
      "--passage-tokens",
      type=int,
      default=8192,
      help="passage tokens per step (pairs = this / length, at least 2)",
  )
  parser.add_argument(
      "--steps", type=int, default=5, help="timed steps per kind (median), interleaved across kinds"
  )
  parser.add_argument("--window", type=int, default=128)
  parser.add_argument("--block", type=int, default=64)
  parser.add_argument("--density", type=float, default=0.25)
  parser.add_argument("--quick", action="store_true", help="lengths 128 512, one timed step")
  parser.add_argument("--json", help="also write the results here")
  args = parser.parse_args()
  if args.quick:
    args.lengths, args.steps = [128, 512], 1
  for name in ("passage_tokens", "steps", "window", "block"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')}: expected >= 1")

  base = load_encoder("multilingual-e5-small")  # its config: the full vocabulary
  kinds = attention_kinds(args.window, args.block, args.density, max(args.lengths))  # the names
  print(f"# {machine()}")
  print(
      f"# model {args.model} {SHAPES[args.model]}, {args.passage_tokens} passage tokens per step, "
      f"queries {QUERY_LENGTH} tokens, median of {args.steps} steps timed round-robin"
  )
  results = []
  for length in args.lengths:
    pairs = max(2, args.passage_tokens // length)
    batch = random_batch(pairs, length, seed=0)
    runs, compile_s, encodes, encode_compile_s = {}, {}, {}, {}
    for name, attention in attention_kinds(args.window, args.block, args.density, length).items():
      encoder = build_encoder(args.model, attention, max(args.lengths), base)
      # Encoding first: it copies the parameters that the step's donated state then takes.
      encodes[name], encode_compile_s[name] = compiled_encode(encoder, batch)
      runs[name], compile_s[name] = compiled_step(encoder, batch)
    seconds = time_interleaved(runs, args.steps)
    encode_seconds = time_interleaved(encodes, args.steps)
    for name in kinds:
      row = {
          "length": length,
          "attention": name,
          "pairs": pairs,
          "seconds_per_step": seconds[name],
          "tokens_per_s": pairs * (QUERY_LENGTH + length) / seconds[name],
          "compile_s": compile_s[name],
          "encode_tokens_per_s": pairs * length / encode_seconds[name],
          "encode_compile_s": encode_compile_s[name],
      }
      results.append(row)
      print(json.dumps(row), flush=True)
    del runs, encodes

  for title, column in (("train", "tokens_per_s"), ("encode", "encode_tokens_per_s")):
    print(f"\n{title}:\n")
    print(
        "| passage length | pairs/step | "
        + " | ".join(f"{k} tokens/s" for k in kinds)
        + " | "
        + " | ".join(f"{k} / dense" for k in list(kinds)[1:])
        + " |"
    )
    print("| --- " * (2 + 2 * len(kinds) - 1) + "|")
    for length in args.lengths:
      rows = {r["attention"]: r for r in results if r["length"] == length}
      dense = rows["dense"][column]
      cells = [f"{rows[k][column]:,.0f}" for k in kinds]
      ratios = [f"{rows[k][column] / dense:.2f}x" for k in list(kinds)[1:]]
      print(f"| {length} | {rows['dense']['pairs']} | " + " | ".join(cells + ratios) + " |")
  print(f"\n# after the run: {machine()}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"machine": machine(), "model": args.model, "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
