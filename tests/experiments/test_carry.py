"""experiments.carry: real weights and the data for a machine without network, under 32 MiB."""

import numpy as np
import pytest

import jxr.data
import jxr.model
from experiments import carry, options


@pytest.mark.slow
def test_the_carry_folder_runs_offline_as_the_originals(lareqa_dir, tmp_path):
  assert carry.main([str(tmp_path / "carry"), "--data-dir", str(lareqa_dir)]) == 0
  folder = tmp_path / "carry"
  model_path = folder / carry.BUNDLE_NAME
  total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
  print(f"\nmodel {model_path.stat().st_size / 2**20:.1f} MiB, all {total / 2**20:.1f} MiB")
  assert model_path.stat().st_size < 32 * 2**20 and total < 40 * 2**20
  for name in ("xquad-r", "mlqa-r"):  # the gzipped files load as the release does
    assert sorted(p.name for p in (folder / "lareqa" / name).iterdir()) == sorted(
        f"{lang}.json.gz" for lang in jxr.data.LANGUAGES[name]
    )
    ours = jxr.data.load_lareqa(name, data_dir=folder / "lareqa")
    theirs = jxr.data.load_lareqa(name, data_dir=lareqa_dir)
    for field in ("query_id", "query_text", "cand_text", "cand_context", "rel_indices"):
      np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field), err_msg=field)
  config, _ = options.parse(
      ["--preset", "tiny", "--model", str(model_path), "--out", str(tmp_path / "run")]
  )  # the flag takes a bundle file
  assert config.model == str(model_path)
  full, small = jxr.model.load_encoder("multilingual-e5-small"), jxr.model.load_encoder(
      str(model_path)
  )
  task = jxr.data.load_lareqa("mlqa-r", data_dir=lareqa_dir)
  rows = np.random.default_rng(0).choice(task.num_candidates, 8, replace=False)
  texts = [str(t) for t in task.cand_text[rows]]
  contexts = [str(c) for c in task.cand_context[rows]]
  assert small.token_ids(texts, contexts=contexts) != full.token_ids(
      texts, contexts=contexts
  )  # renumbered
  np.testing.assert_array_equal(
      small.encode(texts, contexts=contexts, max_length=128),
      full.encode(texts, contexts=contexts, max_length=128),
  )
