"""README's "The answer so far" against report.json: the published one, and fabricated ones."""

import json
import math
import pathlib
import re

import pytest

from experiments import answer, report
from tests.experiments import fabricate as fab

ROOT = pathlib.Path(__file__).resolve().parents[2]
STUDY_DIR = "docs/study-cpu"
# A signed or plain decimal with 3 or 4 places: how the section prints every measured value.
NUMBER = re.compile(r"(?<![\w.])[+-]?\d+\.\d{3,4}(?![\d])")


def _published():
  return answer.load_study(ROOT / STUDY_DIR, STUDY_DIR)


def _floats(value):
  if isinstance(value, float):
    yield value
  elif isinstance(value, dict):
    for v in value.values():
      yield from _floats(v)
  elif isinstance(value, list):
    for v in value:
      yield from _floats(v)


def test_readme_section_is_report_json_rendered():
  readme = (ROOT / "README.md").read_text()
  assert readme.index(answer.BEGIN) < readme.index("## Run")  # near the top
  assert answer.readme_section(readme) == answer.answer_section(
      _published()
  ), f"README.md is stale: run python -m experiments.answer {STUDY_DIR} --readme README.md"


def test_every_number_in_the_readme_section_is_in_report_json():
  section = answer.readme_section((ROOT / "README.md").read_text())
  rep = json.loads((ROOT / STUDY_DIR / "report.json").read_text())
  values = list(_floats(rep))
  numbers = NUMBER.findall(section)
  assert len(numbers) > 20
  for text in numbers:
    places = len(text.split(".")[1])
    assert any(math.isclose(round(v, places), float(text), abs_tol=1e-12) for v in values), text
  p = rep["primary"]
  assert f"**{p['difference']:+.4f} [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}]**" in section
  assert f"{p['questions']} held-out" in section and f"{p['clusters']} article" in section


# ---------------------------------------------------------------------- fabricated studies


BS, LOC = "block_sparse-b8-n1-g0-r0.113", "local-w17"
DESIGN = report.Design(matched=((BS, LOC, 0.125),), primary=(BS, LOC))
RUN = {
    "model": "tiny",
    "train_steps": 30,
    "batch_size": 16,
    "max_passage_length": 128,
    "eval_questions": 100,
    "curve_questions": 30,
}


def _study(effects, *, mono=None, curves=False, counts=(2, 11)):
  worlds = [
      fab.world("mlqa-r", num_articles=10, questions_per_article=3),
      fab.world(
          "xquad-r",
          num_articles=4,
          questions_per_article=6,
          paragraphs_per_article=3,
          languages=fab.LANGUAGES,
      ),
  ]
  cells = fab.study(
      worlds,
      effects,
      counts=counts,
      seeds=(0, 1),
      noise=0.002,
      fractions={LOC: 0.118, BS: 0.113},
      eval_only={LOC: lambda n: -0.05},
      mono=mono,
      curves=curves,
  )
  rep = json.loads(json.dumps(report.build_report(cells, DESIGN, num_samples=200)))
  return answer.Study("docs/study-x", rep, "study-x", len(cells) + 2, RUN)


@pytest.fixture(scope="module")
def clear_effect():
  return _study(
      {"dense": lambda n: 0.0, LOC: lambda n: -0.01, BS: lambda n: -0.06},
      mono={1.0: {"dense": lambda n: -0.02, LOC: lambda n: -0.03, BS: lambda n: -0.08}},
      curves=True,
  )


def test_a_clear_effect_is_named_with_its_numbers(clear_effect):
  text = answer.answer_section(clear_effect)
  p = clear_effect.report["primary"]
  assert p["difference"] == pytest.approx(-0.05, abs=0.005)
  assert f"**{answer.interval(p)}**: block-sparse retrieves worse." in text
  done = len(clear_effect.report["cells"])
  assert f"**{done} of the grid's {done + 2} cells have finished**" in text
  # X-X-mono ran (0.5 minus 1.0 is +0.02 for every kind); X-Y did not.
  rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
  mono_row = rows["| hybrid minus X-X-mono training"]
  estimates = [float(cell.split()[0]) for cell in mono_row.strip(" |").split(" | ")[1:]]
  assert estimates == pytest.approx([0.02] * 3, abs=0.001)
  assert rows["| hybrid minus X-Y training"].count("not run") == 3
  assert (
      "0.3000 -> 0.4000 -> 0.5000 (steps 0, 5, 10)"
      in rows["| learning curve, Mul. on 30 questions"]
  )
  assert "Mul. still rises over the last 5 steps" in text and "has not converged" in text
  assert text.startswith(answer.BEGIN) and text.endswith(answer.END)
  assert "](docs/study-x/vs_training_mlqa-r.png)" in text


def test_no_effect_says_so():
  study = _study({"dense": lambda n: 0.0, LOC: lambda n: -0.02, BS: lambda n: -0.02})
  text = answer.answer_section(study)
  assert "its interval includes zero, so the two are not distinguishable" in text
  assert "Hybrid against X-X-mono and X-Y training has not run yet." in text
  assert "no learning curve was logged" in text


def test_a_report_without_primary_is_refused():
  with pytest.raises(ValueError, match="no primary contrast"):
    answer.answer_section(answer.Study("d", {"primary": None, "cells": [{}]}, "g", 1, RUN))


def test_cli_rewrites_checks_and_refuses_without_writing(tmp_path, clear_effect, capsys):
  study = tmp_path / "study"
  (study / "cells" / "c").mkdir(parents=True)
  rep = {**clear_effect.report, "cells": [{**clear_effect.report["cells"][0], "name": "c"}]}
  (study / "report.json").write_text(json.dumps(rep))
  (study / "sweep.json").write_text(json.dumps({"preset": "study-x", "cells": ["c"]}))
  (study / "cells" / "c" / "config.json").write_text(json.dumps({"run": RUN}))
  readme = tmp_path / "README.md"
  readme.write_text(f"# x\n\n{answer.BEGIN}\nold\n{answer.END}\n\n## Run\n")
  args = [str(study), "--readme", str(readme)]
  assert answer.main([*args, "--check"]) == 1
  assert answer.main(args) == 0
  assert answer.main([*args, "--check"]) == 0
  written = readme.read_text()
  assert written.startswith("# x\n\n" + answer.BEGIN) and written.endswith("\n\n## Run\n")
  assert "old" not in written
  bare = tmp_path / "BARE.md"
  bare.write_text("# no markers\n")
  assert answer.main([str(study), "--readme", str(bare)]) == 2
  assert "--readme: expected the markers" in capsys.readouterr().err
  assert bare.read_text() == "# no markers\n" and not list(tmp_path.glob("*.tmp"))
  with pytest.raises(SystemExit) as exit_:
    answer.main([str(tmp_path / "missing")])
  assert exit_.value.code == 2 and "study: expected a directory with report.json" in (
      capsys.readouterr().err
  )
