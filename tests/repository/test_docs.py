"""The documentation covers the public API (no Sphinx build needed).

The full build (``python -m sphinx -W --keep-going -b html docs
docs/_build/html``) runs in ``.ci/run``; ``docs/ext/coverage_check.py`` fails
it too when a public name has no page. These tests check the same from the
sources, in well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import re

import proxopt
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs")


def _coverage_module():
  spec = importlib.util.spec_from_file_location(
      "coverage_check", os.path.join(DOCS, "ext", "coverage_check.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _groups() -> dict[str, list[str]]:
  """``proxopt.__all__`` split by its ``# group`` comments in __init__.py."""
  src = open(os.path.join(ROOT, "proxopt", "__init__.py")).read()
  body = src[src.index("__all__"):]
  groups, current = {}, None
  for line in body.splitlines()[1:]:
    s = line.strip()
    if s.startswith("#"):
      current = s.lstrip("# ").split()[0]
      groups[current] = []
    elif s.startswith('"') and current:
      groups[current].append(s.strip('",'))
    elif s.startswith(")"):
      break
  return groups


def test_every_public_name_has_an_api_page():
  documented = _coverage_module().documented_names()
  missing = [n for n in proxopt.__all__ if n not in documented]
  assert not missing, (
      f"in proxopt.__all__ but on no docs/api/*.md page: {missing}")


def test_api_pages_document_only_public_names():
  documented = _coverage_module().documented_names()
  public = set(proxopt.__all__) | {
      f"testing.{n}" for n in proxopt.testing.__all__}
  stale = [n for n in documented if n not in public
           and n.removeprefix("testing.") not in proxopt.testing.__all__]
  assert not stale, f"documented but not public: {stale}"


def test_api_pages_follow_the_groups_of_all():
  documented = _coverage_module().documented_names()
  for group, names in _groups().items():
    pages = {documented.get(n) for n in names}
    assert pages == {group}, (group, {n: documented.get(n) for n in names})


def test_testing_namespace_is_documented_name_by_name():
  text = open(os.path.join(DOCS, "api", "testing.md")).read()
  for name in proxopt.testing.__all__:
    assert re.search(rf"^\s+{name}\s*$", text, re.M), name


def test_every_api_page_and_guide_is_in_a_toctree():
  index = open(os.path.join(DOCS, "index.md")).read()
  api_index = open(os.path.join(DOCS, "api", "index.md")).read()
  for fname in os.listdir(os.path.join(DOCS, "guides")):
    if fname.endswith(".md"):
      assert f"guides/{fname[:-3]}" in index, fname
  for fname in os.listdir(os.path.join(DOCS, "api")):
    if fname.endswith(".md") and fname != "index.md":
      assert f"\n{fname[:-3]}\n" in api_index, fname


def test_benchmark_tables_are_generated_from_the_json(tmp_path):
  spec = importlib.util.spec_from_file_location(
      "benchmark_tables", os.path.join(DOCS, "ext", "benchmark_tables.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  import sys
  sys.path.insert(0, ROOT)
  try:
    written = mod.write_tables(str(tmp_path))
  finally:
    sys.path.remove(ROOT)
  names = sorted(os.path.basename(p) for p in written)
  assert names == ["optimizer_step.md", "train_step.md"]
  bench = open(os.path.join(DOCS, "benchmarks.md")).read()
  for n in names:
    assert f"{{include}} _generated/{n}" in bench
    assert "| ---" in open(tmp_path / n).read() or "|---" in open(
        tmp_path / n).read()


def _public_functions():
  import inspect
  objs = [(n, getattr(proxopt, n)) for n in proxopt.__all__]
  objs += [(f"testing.{n}", getattr(proxopt.testing, n))
           for n in proxopt.testing.__all__]
  return [(n, o) for n, o in objs if inspect.isfunction(o)]


@pytest.mark.parametrize("name,fn", _public_functions(),
                         ids=[n for n, _ in _public_functions()])
def test_public_function_docstring_is_optax_grade(name, fn):
  import inspect
  doc = inspect.getdoc(fn) or ""
  lines = doc.splitlines()
  assert lines and lines[0].strip(), f"{name}: no one-line summary"
  params = [p for p in inspect.signature(fn).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL,)]
  if params:
    assert "Args:" in doc, f"{name}: no Args section"
    args = doc.split("Args:", 1)[1]
    for p in params:
      label = f"**{p.name}" if p.kind == p.VAR_KEYWORD else p.name
      assert re.search(rf"^\s+{re.escape(label)}:", args, re.M), (
          f"{name}: parameter {p.name!r} not documented under Args")
  assert "Returns:" in doc or "Raises:" in doc, f"{name}: no Returns section"
  assert ">>>" in doc, f"{name}: no runnable example"
  assert "References:" in doc, f"{name}: no References section"


@pytest.mark.parametrize("name,fn", _public_functions(),
                         ids=[n for n, _ in _public_functions()])
def test_docstring_is_written_out_in_the_source(name, fn):
  # Issue #23: the alias docstrings were pasted together at import by a
  # template, so the source did not show what `help()` shows. Every public
  # docstring is now the literal in the source.
  import ast
  import inspect
  src = inspect.getsource(fn)
  node = ast.parse(src.replace("\n" + " " * (len(src) - len(src.lstrip())), "\n")
                   if src[:1].isspace() else src).body[0]
  assert ast.get_docstring(node) == inspect.getdoc(fn), (
      f"{name}: the docstring is changed after definition (template?)")


# The guides' code must run as printed: each page's ```python blocks, joined in
# order, in a fresh interpreter (pages owned by the experiments docs are
# checked there).
_GUIDES_RUN_ELSEWHERE = {"experiments.md", "cpu_training.md"}
_GUIDES = sorted(f for f in os.listdir(os.path.join(DOCS, "guides"))
                 if f.endswith(".md") and f not in _GUIDES_RUN_ELSEWHERE)


@pytest.mark.parametrize("page", _GUIDES)
def test_guide_code_runs(page):
  import subprocess
  import sys
  text = open(os.path.join(DOCS, "guides", page)).read()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  if not blocks:
    pytest.skip("no Python code on this page")
  proc = subprocess.run([sys.executable, "-c", "\n\n".join(blocks)], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"{page}:\n{proc.stderr[-4000:]}"
