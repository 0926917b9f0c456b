"""`python -m jxr.eval` end to end on XQuAD-R restricted to two languages."""

import json
import subprocess
import sys
import types

import numpy as np
import pytest

import jxr.data
import jxr.eval
from jxr.eval import cli

LANGUAGES = ("en", "de")


@pytest.fixture(scope="module")
def task(lareqa_dir):
  return jxr.data.load_lareqa("xquad-r", data_dir=lareqa_dir, languages=LANGUAGES)


def _planted_embeddings(task, noise, seed=0):
  """Queries near a random vector of their question; answer sentences near it too.

  (A sentence answering several questions keeps the last one's vector, so mAP stays below 1.)
  """
  rng = np.random.default_rng(seed)
  ids = sorted(set(task.query_id.tolist()))
  centre = dict(zip(ids, rng.normal(size=(len(ids), 32))))
  queries = np.stack([centre[q] for q in task.query_id.tolist()])
  cands = rng.normal(size=(task.num_candidates, 32))
  for q in range(task.num_queries):
    cands[task.relevant(q)] = centre[task.query_id[q]]
  queries += noise * rng.normal(size=queries.shape)
  cands += noise * rng.normal(size=cands.shape)
  return queries.astype(np.float32), cands.astype(np.float32)


def test_cli_end_to_end(task, lareqa_dir, tmp_path):
  queries, cands = _planted_embeddings(task, noise=0.3)
  np.save(tmp_path / "q.npy", queries)
  np.save(tmp_path / "c.npy", cands)
  out = tmp_path / "eval"
  argv = ["--dataset", "xquad-r", "--data-dir", str(lareqa_dir), "--languages", "en", "de"]
  argv += [
      "--query-emb",
      str(tmp_path / "q.npy"),
      "--cand-emb",
      str(tmp_path / "c.npy"),
      "--out",
      str(out),
  ]
  done = subprocess.run(
      [sys.executable, "-m", "jxr.eval", *argv], capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr
  report = json.loads((out / "report.json").read_text())
  assert report["dataset"] == "xquad-r" and report["languages"] == list(LANGUAGES)
  assert report["num_queries"] == task.num_queries == 2 * 1190
  assert report["num_candidates"] == task.num_candidates
  assert report["matrices"]["num_queries"] == [[1190, 1190], [1190, 1190]]
  assert report == json.loads(json.dumps(jxr.eval.evaluate(task, queries, cands)))
  assert report["multilingual"]["map"] > 0.5  # the planted answers are found (random: ~0.001)
  assert f"mAP {report['multilingual']['map']:.4f}" in done.stdout
  assert (out / "matrix_map.png").stat().st_size > 0 and (out / "summary.md").exists()
  assert (out / "matrix_map.csv").read_text().splitlines()[0] == ",en,de"


class FakeEncoder:
  """Stands in for jxr.model's encoder: records calls, embeds by question / answer."""

  def __init__(self, task):
    self.task, self.calls = task, []

  def encode(self, texts, kind, contexts=None, batch_size=64, max_length=None):
    assert max_length is None  # --model keeps the model's own lengths
    self.calls.append((kind, len(texts), None if contexts is None else len(contexts), batch_size))
    queries, cands = _planted_embeddings(self.task, noise=0.1)
    return queries if kind == "query" else cands


def test_cli_model_branch(task, lareqa_dir, tmp_path, monkeypatch, capsys):
  encoder = FakeEncoder(task)
  names = []
  # A stand-in jxr.model module: this tests the CLI's wiring, not the encoder.
  fake_model = types.ModuleType("jxr.model")
  fake_model.load_encoder = lambda name: names.append(name) or encoder
  monkeypatch.setitem(sys.modules, "jxr.model", fake_model)
  out = tmp_path / "model_eval"
  argv = ["--dataset", "xquad-r", "--data-dir", str(lareqa_dir), "--languages", "en,de"]
  code = cli.main(
      [*argv, "--model", "tiny", "--batch-size", "8", "--out", str(out), "--save-embeddings"]
  )
  assert code == 0
  assert names == ["tiny"]
  assert encoder.calls == [
      ("query", task.num_queries, None, 8),
      ("passage", task.num_candidates, task.num_candidates, 8),
  ]
  assert np.load(out / "query_emb.npy").shape == (task.num_queries, 32)
  assert json.loads((out / "report.json").read_text())["multilingual"]["map"] > 0.5
  assert "xquad-r (2 languages" in capsys.readouterr().out


def _refused(argv, capsys, message):
  """The CLI exits with status 2 and one stderr line that names the flag; writes nothing."""
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err, err


def test_cli_bad_inputs_exit_2_naming_the_flag(task, lareqa_dir, tmp_path, capsys):
  np.save(tmp_path / "c.npy", np.ones((task.num_candidates, 4), np.float32))
  np.save(tmp_path / "q.npy", np.ones((5, 4), np.float32))
  (tmp_path / "text.npy").write_text("not an array")
  out = tmp_path / "o"
  argv = [
      "--dataset",
      "xquad-r",
      "--data-dir",
      str(lareqa_dir),
      "--languages",
      "en",
      "de",
      "--out",
      str(out),
  ]
  c = ["--cand-emb", str(tmp_path / "c.npy")]
  _refused(
      [*argv, "--query-emb", str(tmp_path / "missing.npy"), *c], capsys, "--query-emb: no such file"
  )
  _refused(
      [*argv, "--query-emb", str(tmp_path / "text.npy"), *c],
      capsys,
      "--query-emb: " + str(tmp_path / "text.npy") + " is not a .npy array",
  )
  _refused(
      [*argv, "--query-emb", str(tmp_path / "q.npy"), *c], capsys, "--query-emb: expected 2380 rows"
  )
  _refused(
      [
          "--dataset",
          "xquad-r",
          "--data-dir",
          str(lareqa_dir),
          "--languages",
          "en",
          "xx",
          "--query-emb",
          str(tmp_path / "q.npy"),
          *c,
          "--out",
          str(out),
      ],
      capsys,
      "--languages:",
  )
  _refused([*argv, "--model", str(tmp_path / "no-such-model")], capsys, "--model:")
  _refused(
      [*argv, "--query-emb", str(tmp_path / "q.npy"), *c, "--trec", "100000"],
      capsys,
      "--trec: expected at most",
  )
  _refused(["--run", str(tmp_path), "--out", str(out)], capsys, "--run: expected a finished")
  assert not out.exists()


def test_cli_writes_trec_files(task, lareqa_dir, tmp_path):
  queries, cands = _planted_embeddings(task, noise=0.3)
  np.save(tmp_path / "q.npy", queries)
  np.save(tmp_path / "c.npy", cands)
  out = tmp_path / "eval"
  argv = [
      "--dataset",
      "xquad-r",
      "--data-dir",
      str(lareqa_dir),
      "--languages",
      "en,de",
      "--query-emb",
      str(tmp_path / "q.npy"),
      "--cand-emb",
      str(tmp_path / "c.npy"),
      "--out",
      str(out),
      "--trec",
      "3",
  ]
  assert cli.main(argv) == 0
  run = (out / "run.trec").read_text().splitlines()
  assert len(run) == 3 * task.num_queries
  assert run[0].split()[:4] == [f"en-{task.query_id[0]}", "Q0", run[0].split()[2], "1"]
  qrels = (out / "qrels.trec").read_text().splitlines()
  assert len(qrels) == len(task.rel_indices)


@pytest.mark.parametrize(
    "extra",
    [
        [],  # neither embeddings nor a model
        ["--query-emb", "q.npy"],  # only one file
        ["--model", "tiny", "--query-emb", "q.npy", "--cand-emb", "c.npy"],  # both
        ["--query-emb", "q.npy", "--cand-emb", "c.npy", "--save-embeddings"],
        ["--model", "tiny", "--k", "0"],
        ["--model", "tiny", "--trec", "0"],
        ["--run", "r", "--model", "tiny"],  # two sources
        ["--run", "r", "--languages", "en"],  # --run brings its own
    ],
)
def test_cli_rejects_bad_arguments(extra, tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["--dataset", "xquad-r", "--out", str(tmp_path), *extra])
  assert exit_info.value.code == 2
  assert "error:" in capsys.readouterr().err
