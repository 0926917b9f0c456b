"""`python -m experiments.run`: zero-shot evaluation, fine-tuning, evaluation again.

    python -m experiments.run --attn=local                  # the CPU default, < 10 min on 2 cores
    python -m experiments.run --preset gpu --attn block_sparse --density 0.25
    python -m experiments.run --out runs/X --resume         # after Ctrl-C

Flags are parsed and checked by `experiments.options` (every bad value fails
before any work), the stages run in `experiments.pipeline`; this module only
wires them and prints the headline numbers. `--help` lists every flag.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from experiments import options, pipeline
from jxr.train import signals

_VERDICT_BYTES = 4096  # the longest flag error process 0 sends to the others


def _multi_process() -> bool:
  """Whether the environment describes a multi-process (pod) run."""
  env = os.environ
  return (
      bool(env.get("JAX_COORDINATOR_ADDRESS"))
      or int(env.get("SLURM_NTASKS", "1") or 1) > 1
      or len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
      or env.get("JXR_DISTRIBUTED") == "1"
  )


def _start_distributed() -> None:
  import jax

  from jxr.train import maybe_initialize_distributed

  if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU pods (and tests)
  maybe_initialize_distributed()


def _is_primary() -> bool:
  if not _multi_process():
    return True
  import jax

  return jax.process_index() == 0


def _agreed(error: str | None) -> str | None:
  """On a pod, process 0's verdict on the flags for every process (only it checks --out, as
  the others would see its files appear), so all of them refuse or none does."""
  if not _multi_process():
    return error
  import numpy as np
  from jax.experimental import multihost_utils

  mine = np.zeros(_VERDICT_BYTES, np.uint8)
  text = (error or "").encode()[:_VERDICT_BYTES]
  mine[: len(text)] = np.frombuffer(text, np.uint8)
  verdict = bytes(np.asarray(multihost_utils.broadcast_one_to_all(mine))).rstrip(b"\0").decode()
  return verdict or error


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = options.build_parser()
  error = None
  try:
    # Every value is checked before any data or model is touched. On a pod,
    # jax.distributed starts first: the default preset queries the devices.
    if _multi_process():
      _start_distributed()
    config, resume = options.parse(argv, check_out=_is_primary())
  except options.FlagError as e:
    error = str(e)
  error = _agreed(error)
  if error:
    parser.error(error)
  print(
      f"experiments.run: preset {config.preset}, attention {config.attention.label}, "
      f"run directory {config.out}",
      flush=True,
  )
  try:
    with signals.terminate_as_exception():  # preemption (SIGTERM) stops like Ctrl-C
      results = pipeline.run(config, resume=resume, log=lambda m: print(m, flush=True))
  except KeyboardInterrupt as stop:
    terminated = isinstance(stop, signals.Terminated)
    print(
        f"\n{'terminated (SIGTERM)' if terminated else 'interrupted'}: the run is resumable "
        f"with\n  python -m experiments.run {' '.join(_resume_args(argv, config.out))}",
        file=sys.stderr,
        flush=True,
    )
    return signals.EXIT_TERMINATED if terminated else signals.EXIT_INTERRUPTED
  print(pipeline.headline(results, config.out), flush=True)
  return 0


def _resume_args(argv: Sequence[str], out: str) -> list[str]:
  args = [a for a in argv if a != "--resume"]
  if not any(a == "--out" or a.startswith("--out=") for a in args):
    args += ["--out", out]
  return args + ["--resume"]


if __name__ == "__main__":
  sys.exit(main())
