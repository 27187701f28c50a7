"""Write the benchmark tables from ``benchmarks/results/*.json`` at build time.

On ``builder-inited`` every ``benchmarks/results/<name>.json`` is turned into
``docs/_generated/<name>.md`` by ``benchmarks.report`` (the same code as
``python -m benchmarks.report``); ``docs/benchmarks.md`` includes them. No
number is copied by hand: re-run a benchmark, rebuild the site.
"""

from __future__ import annotations

import glob
import json
import os

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "_generated")


def write_tables(out_dir: str = OUT) -> list[str]:
  """Write one Markdown table file per benchmark JSON; return their paths."""
  from benchmarks import report

  os.makedirs(out_dir, exist_ok=True)
  written = []
  for path in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results",
                                            "*.json"))):
    with open(path) as f:
      d = json.load(f)
    table = (report.optimizer_table(d) if "bandwidth_gbs" in d
             else report.train_table(d))
    name = os.path.splitext(os.path.basename(path))[0]
    dest = os.path.join(out_dir, f"{name}.md")
    text = table + "\n"
    # Rewrite only on change, so Sphinx does not re-read every page.
    if not os.path.exists(dest) or open(dest).read() != text:
      with open(dest, "w") as f:
        f.write(text)
    written.append(dest)
  return written


def _on_init(app):
  write_tables()


def setup(app):
  app.connect("builder-inited", _on_init)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
