"""The README is executable documentation: its commands and code must work.

- `.ci/run` must run exactly the test command the README gives (CI runs the README's command, not another one).
- Every ```python block of the README runs: the blocks of one section in order, in one fresh interpreter (later
  blocks may use names defined by earlier ones, as a reader would), and every block on its own too (a reader copies
  one block: it must carry its own imports).
- The README is a library's front page: at most about 10 KB, with a Flax NNX quickstart that masks the decay, and
  links that point at files of the repository.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _bash_blocks() -> list[str]:
  return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_readme_has_exactly_two_setup_commands_first():
  setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
  commands = [line for b in blocks for line in b.strip().splitlines()]
  assert len(commands) == 2, commands
  assert "python -m experiments.compare" in commands[0]
  assert "python -m pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
  setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
  test_command = [
      line.strip()
      for b in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
      for line in b.splitlines()
      if "pytest" in line
  ]
  assert len(test_command) == 1
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  ci_commands = [line.strip() for line in ci if not line.strip().startswith("#")]
  # The README's command verbatim, prefixed only by the interpreter of the CI venv.
  assert any(line == test_command[0] for line in ci_commands), (
      f"README test command {test_command[0]!r} is not a line of .ci/run"
  )


def _sections_with_python() -> list[tuple[str, str]]:
  sections = []
  for section in README.split("\n## ")[1:]:
    title = section.splitlines()[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    if blocks:
      sections.append((title, "\n\n".join(blocks)))
  return sections


SECTIONS = _sections_with_python()


def test_readme_has_runnable_examples():
  assert len(SECTIONS) >= 1, [t for t, _ in SECTIONS]
  assert len(re.findall(r"```python\n", README)) >= 3


@pytest.mark.parametrize("title,script", SECTIONS, ids=[t[:30] for t, _ in SECTIONS])
def test_readme_python_blocks_run(title, script):
  # One interpreter per section: blocks of a section build on each other, and
  # one section's global settings (e.g. x64) must not leak into the next.
  proc = subprocess.run(
      [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
      timeout=600,
  )
  assert proc.returncode == 0, f"section {title!r} failed:\n{proc.stderr[-4000:]}"


def _python_blocks() -> list[tuple[str, str]]:
  blocks = []
  for section in README.split("\n## ")[1:]:
    for sub in re.split(r"\n### ", section):
      title = sub.splitlines()[0]
      for i, b in enumerate(re.findall(r"```python\n(.*?)```", sub, flags=re.S)):
        blocks.append((f"{title} [{i}]", b))
  return blocks


BLOCKS = _python_blocks()


@pytest.mark.slow  # one interpreter per block (~17 s idle); the blocks run in order in the default run
@pytest.mark.parametrize("title,block", BLOCKS, ids=[t[:30] for t, _ in BLOCKS])
def test_readme_python_block_runs_alone(title, block):
  if any(script == block for _, script in SECTIONS):
    pytest.skip("its section is this block alone: test_readme_python_blocks_run runs it")
  proc = subprocess.run(
      [sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True,
      timeout=600,
  )
  assert proc.returncode == 0, f"block {title!r} fails on its own:\n{proc.stderr[-4000:]}"


def test_readme_has_an_nnx_quickstart_with_a_mask():
  nnx = [b for t, b in BLOCKS if "nnx" in b]
  assert any("nnx.Optimizer" in b and "mask=" in b and "ndim > 1" in b for b in nnx), (
      "the README needs a Flax NNX quickstart with a mask excluding biases and norm scales")


def test_readme_links_point_at_files():
  for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
    if target.startswith(("http://", "https://")):
      continue
    assert (ROOT / target).exists(), target


def test_readme_tells_how_to_build_the_docs():
  assert "python -m sphinx -W --keep-going -b html docs docs/_build/html" in README
  ci = (ROOT / ".ci" / "run").read_text()
  assert "python -m sphinx -W --keep-going -b html docs docs/_build/html" in ci
