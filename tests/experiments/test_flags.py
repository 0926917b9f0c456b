"""Every invalid flag value is rejected with a message naming the flag, before any work."""

import os
import pathlib
import subprocess
import sys
import time

import pytest

import pallas_kernels
from experiments import options
from experiments.options import FlagError
from jxr.model import AttentionConfig
from jxr.train import TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]

BAD = [
    (["--attn", "sparse"], "--attn: expected one of dense, local, block_sparse"),
    (["--preset", "laptop"], "--preset: expected one of cpu, gpu, pod, tiny"),
    (["--attn", "local", "--window", "-1"], "--window: expected an integer >= 0, got -1"),
    (["--attn", "local", "--window", "x"], "--window: expected an integer, got 'x'"),
    (["--attn", "dense", "--window", "8"], "--window: only applies to --attn=local"),
    (["--attn", "local", "--window", "200"], "--window: 200 keys each side covers every passage"),
    (["--attn", "block_sparse", "--block-size", "0"], "--block-size: expected an integer"),
    (["--attn", "block_sparse", "--density", "0"], r"--density: expected a fraction in \(0, 1\]"),
    (["--attn", "block_sparse", "--density", "1.5"], "--density: expected a fraction"),
    (["--attn", "block_sparse", "--density", "x"], "--density: expected a number, got 'x'"),
    (["--attn", "local", "--density", "0.5"], "--density: only applies to --attn=block_sparse"),
    (["--attn", "local", "--band", "1"], "--band: only applies to --attn=block_sparse"),
    (
        ["--attn", "block_sparse", "--density", "0.1"],
        r"--density: requested 0.1, but the band and global blocks alone attend 1.000",
    ),
    (
        ["--attn", "block_sparse", "--random", "0.2", "--density", "0.5"],
        "--density: give --density or --random, not both",
    ),
    (["--attn", "block_sparse", "--random", "2"], r"--random: expected a number in \[0.0, 1.0\]"),
    (["--attn", "block_sparse", "--global-blocks", "-1"], "--global-blocks: expected an integer"),
    (["--model", "no/such/dir/x"], "--model: expected one of"),
    (
        ["--model", "intfloat/does-not-exist"],  # HF_HUB_OFFLINE=1 (conftest): not in the cache
        "--model: intfloat/does-not-exist is not in the local Hugging Face cache",
    ),
    (["--checkpoint-every", "0"], "--checkpoint-every: expected an integer >= 1"),
    (["--checkpoint-minutes", "0"], r"--checkpoint-minutes: expected a number in \(0.0, inf\)"),
    (["--train-data", "squad"], "--train-data: expected one of"),
    (["--train-data", "missing.jsonl"], "--train-data: pairs file missing.jsonl does not exist"),
    (["--train-data", "mlqa-r:el"], r"--train-data: \['el'\] not in mlqa-r"),
    (["--eval-data", "xquad-r,squad"], "--eval-data: expected distinct names"),
    (["--languages", "en,xx"], r"--languages: unknown language codes \['xx'\]"),
    (["--languages", "en,en"], "--languages: language codes repeat"),
    (["--train-data", "mlqa-r", "--languages", "el"], r"--languages: \['el'\] not in mlqa-r"),
    (["--eval-data", "mlqa-r", "--eval-languages", "el,th"], "--eval-languages: none of"),
    (["--eval-questions", "0"], "--eval-questions: expected an integer >= 1"),
    (["--mono-prob", "1.2"], r"--mono-prob: expected a number in \[0.0, 1.0\]"),
    (["--mono-prob", "nan"], "--mono-prob: expected a number"),
    (["--train-steps", "0"], "--train-steps: expected an integer >= 1"),
    (["--batch-size", "1"], "--batch-size: expected an integer >= 2"),
    (["--lr=-1e-5"], "--lr: expected a number in"),
    (["--train-steps", "10", "--warmup-steps", "10"], "--warmup-steps: expected fewer than"),
    (["--max-query-length", "4"], r"--max-query-length: expected an integer in \[8, 512\]"),
    (["--max-passage-length", "1024"], "--max-passage-length: expected an integer in"),
    (
        ["--candidate-context", "article"],
        "--candidate-context: expected one of sentence, paragraph",
    ),
    (["--seed=-1"], "--seed: expected an integer >= 0"),
    (["--mesh", "rows=2"], "--mesh: unknown axis 'rows'"),
    (["--mesh", "data=2,data=2"], "--mesh: axis 'data' given twice"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flag_is_rejected(argv, message, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FlagError, match=message):
    options.parse(["--preset", "tiny", *argv] if "--preset" not in argv else argv)
  assert not (tmp_path / "runs").exists()


SHARED = [
    ("--max-query-length", "max_query_length", 4),
    ("--max-passage-length", "max_passage_length", 1024),
    ("--batch-size", "batch_size", 1),
    ("--lr", "lr", 2.0),
    ("--mono-prob", "mono_prob", 1.5),
    ("--checkpoint-every", "checkpoint_every", 0),
    ("--seed", "seed", -1),
]


@pytest.mark.parametrize("flag, field, value", SHARED, ids=[flag for flag, _, _ in SHARED])
def test_flag_and_train_config_reject_with_one_check(flag, field, value, tmp_path, monkeypatch):
  """A bound lives on the field: the flag's message is the config's, under the flag's name."""
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FlagError) as from_flag:
    options.parse(["--preset", "tiny", flag, str(value)])
  with pytest.raises(ValueError) as from_config:
    TrainConfig(**{field: value})
  assert str(from_flag.value) == str(from_config.value).replace(field, flag, 1)


def test_run_config_checks_itself_like_its_flags():
  config, _ = options.parse(["--preset", "tiny", "--out", "unused"], check_out=False)
  with pytest.raises(ValueError, match=r"^train_steps: expected an integer >= 1, got 0"):
    config.replace(train_steps=0)
  with pytest.raises(ValueError, match=r"^warmup_steps: expected fewer than train_steps"):
    config.replace(warmup_steps=config.train_steps)
  with pytest.raises(ValueError, match=r"^attention.window: 48 keys each side covers every"):
    config.replace(attention=AttentionConfig.local(48))


def test_existing_run_needs_resume_and_same_settings(tmp_path):
  out = tmp_path / "run"
  config, _ = options.parse(["--preset", "tiny", "--out", str(out)])
  out.mkdir()
  (out / "config.json").write_text('{"run": ' + __import__("json").dumps(config.to_json()) + "}")
  with pytest.raises(FlagError, match="already holds a run; pass --resume"):
    options.parse(["--preset", "tiny", "--out", str(out)])
  again, resume = options.parse(["--preset", "tiny", "--out", str(out), "--resume"])
  assert resume and again == config
  with pytest.raises(FlagError, match=r"--resume: .* different settings \(lr\)"):
    options.parse(["--preset", "tiny", "--out", str(out), "--resume", "--lr", "0.5"])


def test_resolved_config_and_default_out(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  sparse = ["--attn", "block_sparse", "--block-size", "8", "--global-blocks", "0"]
  config, resume = options.parse(
      [
          "--preset",
          "cpu",
          *sparse,
          "--density",
          "0.4",
          "--train-data",
          "xquad-r:en,de,zh",
          "--eval-data",
          "xquad-r,mlqa-r",
      ]
  )
  assert not resume
  spec = config.attention
  assert (spec.kind, spec.block_size, spec.band, spec.global_blocks) == ("block_sparse", 8, 1, 0)
  # --density is solved once, on passages of --max-passage-length tokens.
  mask = pallas_kernels.BlockSparseMask.pattern(8, local=1, global_=0, random=spec.random)
  assert abs(pallas_kernels.attended_fraction(mask, [128]) - 0.4) < 0.02
  assert config.languages == ("en", "de", "zh") and config.eval_data == ("xquad-r", "mlqa-r")
  name = pathlib.Path(config.out).name
  assert pathlib.Path(config.out).parent == pathlib.Path("runs")
  assert name.endswith(f"-block_sparse-{config.short_hash()}") and len(name.split("-")[0]) == 8
  # The hash follows the settings, not the output directory or preset name.
  other, _ = options.parse(
      [
          "--preset",
          "cpu",
          *sparse,
          "--density",
          "0.5",
          "--train-data",
          "xquad-r:en,de,zh",
          "--eval-data",
          "xquad-r,mlqa-r",
      ]
  )
  assert other.short_hash() != config.short_hash()
  assert options.RunConfig.from_json(config.to_json()) == config
  with pytest.raises(ValueError, match=r"run config: unknown keys \['colour'\]"):
    options.RunConfig.from_json({**config.to_json(), "colour": "blue"})


def test_command_line_rejects_before_any_work(tmp_path):
  """The real entry point: exit status 2, the flag named on stderr, nothing written, fast."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  start = time.perf_counter()
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "experiments.run",
          "--preset",
          "cpu",
          "--attn",
          "local",
          "--window=-3",
      ],
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  elapsed = time.perf_counter() - start
  assert proc.returncode == 2, proc.stderr
  assert "--window: expected an integer >= 0, got -3" in proc.stderr
  assert list(tmp_path.iterdir()) == []
  assert elapsed < 60  # no model, data or jax backend was touched


def test_help_lists_choices_and_what_each_preset_sets():
  text = " ".join(options.build_parser().format_help().split())
  assert "--preset {cpu,gpu,pod,tiny}" in text and "--attn {dense,local,block_sparse}" in text
  assert "--candidate-context {sentence,paragraph}" in text
  assert "optimizer steps (an integer >= 1); presets: cpu 30, gpu 600, pod 1000, tiny 2" in text
  assert "monolingual, a number in [0.0, 1.0] (default 0.5)" in text
  assert "query tokens (an integer in [8, 512]); presets: cpu 32, gpu 64" in text
