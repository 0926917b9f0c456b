"""Scoring paths: both rank-count kernels, several devices, bounded memory at 20k x 20k."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from eval_toys import lattice_embeddings, parallel_task

import jxr.eval
from jxr.eval import scoring

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _toy(seed=0):
  rng = np.random.default_rng(seed)
  task = parallel_task(23, ("en", "de", "ru", "zh"), distractors=6)  # 92 queries, 116 candidates
  return (
      task,
      lattice_embeddings(rng, task.num_queries),
      lattice_embeddings(rng, task.num_candidates),
  )


def test_packed_and_separate_counts_agree(monkeypatch):
  task, queries, cands = _toy()
  args = (
      jxr.eval.l2_normalise(queries),
      jxr.eval.l2_normalise(cands),
      np.repeat(np.arange(4), 29),
      task.rel_indptr,
      task.rel_indices,
  )
  packed = scoring.relevant_ranks(*args, chunk_size=16)
  monkeypatch.setattr(scoring, "_PACK_LIMIT", 8)  # fewer candidates than that: separate sums
  separate = scoring.relevant_ranks(*args, chunk_size=16)
  for field in ("pooled", "within_language", "top1", "candidate", "valid"):
    np.testing.assert_array_equal(getattr(packed, field), getattr(separate, field))
  assert packed.pooled[packed.valid].max() > 1 and (packed.within_language <= packed.pooled).all()


def _run(script: str, env_extra: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
  env = {**os.environ, **env_extra, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
  done = subprocess.run(
      [sys.executable, "-c", textwrap.dedent(script)],
      capture_output=True,
      text=True,
      env=env,
      timeout=timeout,
  )
  assert done.returncode == 0, done.stderr[-4000:]
  return done


@pytest.mark.multidevice
def test_eight_devices_give_the_single_device_report():
  script = """
      import json
      import jax
      import numpy as np
      import jxr.eval
      from jxr.eval import scoring
      from test_eval_scale import _toy

      assert jax.local_device_count() == 8
      task, queries, cands = _toy()
      assert scoring._compiled_kernel(tuple(jax.local_devices()), True)[1] is not None  # a mesh
      # 92 queries in steps of 8 x 5 = 40 rows: the last step is padded.
      print(json.dumps(jxr.eval.evaluate(task, queries, cands, chunk_size=5)))
  """
  done = _run(
      script, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  )
  report_8 = json.loads(done.stdout.strip().splitlines()[-1])
  task, queries, cands = _toy()
  assert report_8 == json.loads(json.dumps(jxr.eval.evaluate(task, queries, cands)))


@pytest.mark.slow
def test_20k_by_20k_stays_under_2gb():
  # The child measures its own peak RSS, jax runtime included: once before evaluating
  # (inputs built, backend up) and once after. VmHWM belongs to the child's own address
  # space; ru_maxrss would inherit the parent's peak across fork + exec.
  script = """
      import pathlib, resource, time
      import jax
      import numpy as np
      import jxr.eval
      from eval_toys import parallel_task

      def peak():
        status = pathlib.Path("/proc/self/status")
        if status.exists():
          line = next(l for l in status.read_text().splitlines() if l.startswith("VmHWM:"))
          return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes

      task = parallel_task(2000, [f"l{i}" for i in range(10)])  # 20,000 x 20,000, 10 answers each
      rng = np.random.default_rng(0)
      queries = rng.standard_normal((task.num_queries, 384), dtype=np.float32)
      cands = rng.standard_normal((task.num_candidates, 384), dtype=np.float32)
      jax.devices()
      before = peak()
      start = time.perf_counter()
      report = jxr.eval.evaluate(task, queries, cands)
      seconds = time.perf_counter() - start
      print(task.num_queries, task.num_candidates, before, peak(), seconds, report["multilingual"]["map"])
  """
  done = _run(script, {"JAX_PLATFORMS": "cpu"})
  num_queries, num_cands, before, peak, seconds, mean_ap = done.stdout.split()[-6:]
  before, peak = int(before), int(peak)
  assert (int(num_queries), int(num_cands)) == (20_000, 20_000)
  assert 0 < float(mean_ap) < 0.05  # random embeddings: near-chance retrieval
  print(
      f"20k x 20k: peak RSS {peak / 2**30:.2f} GiB ({before / 2**30:.2f} GiB before evaluate), {float(seconds):.1f} s"
  )
  # One float32 20k x 20k score matrix alone would add 1.5 GiB.
  assert peak - before < 2**30
  assert peak < 2 * 2**30
