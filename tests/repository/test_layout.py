"""The experiments' architecture as assertions: the import graph of
experiments/ and benchmarks/ (every import, also those inside functions) has
no cycle, the dependencies point one way, the CPU kernels hang off one module,
and nothing in experiments/ writes result files except through experiments.files."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("experiments", "benchmarks")


def _modules() -> dict[str, pathlib.Path]:
  mods = {}
  for pkg in PACKAGES:
    for path in sorted((ROOT / pkg).rglob("*.py")):
      parts = list(path.relative_to(ROOT).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      mods[".".join(parts)] = path
  return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
  """The module of ours that importing ``name`` runs (None: a library)."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name or None


def _imports(module: str, path: pathlib.Path) -> set[str]:
  out = set()
  is_pkg = path.name == "__init__.py"
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = module.split(".") if is_pkg else module.split(".")[:-1]
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      names = [f"{base}.{a.name}" for a in node.names] + [base]
    else:
      continue
    for n in names:
      target = _resolve(n)
      if target and target != module:
        out.add(target)
  return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _find_cycle(graph) -> list[str] | None:
  color, stack = {}, []

  def visit(m):
    color[m] = "grey"
    stack.append(m)
    for n in sorted(graph[m]):
      if color.get(n) == "grey":
        return stack[stack.index(n):] + [n]
      if n not in color:
        found = visit(n)
        if found:
          return found
    stack.pop()
    color[m] = "black"
    return None

  for m in sorted(graph):
    if m not in color:
      found = visit(m)
      if found:
        return found
  return None


def test_graph_is_not_empty():
  assert "experiments.training.loop" in GRAPH
  assert "experiments.input_pipeline.datasets" in GRAPH["experiments.training.loop"] or \
      "experiments.input_pipeline" in GRAPH["experiments.training.loop"]


def test_cycle_finder_finds_a_cycle():
  assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
  cycle = _find_cycle(GRAPH)
  assert cycle is None, " -> ".join(cycle)


def test_experiments_never_import_benchmarks():
  bad = {m: sorted(t for t in ts if t.startswith("benchmarks"))
         for m, ts in GRAPH.items() if m.startswith("experiments")}
  assert not {m: t for m, t in bad.items() if t}


def _reach(start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    m = todo.pop()
    for n in GRAPH[m]:
      if n not in seen:
        seen.add(n)
        todo.append(n)
  return seen


@pytest.mark.parametrize("layer,forbidden", [
    ("experiments.models", ("experiments.training", "experiments.input_pipeline",
                            "experiments.kernels")),
    ("experiments.input_pipeline", ("experiments.training", "experiments.kernels",
                                    "experiments.models")),
    # The plain step is the whole step: nothing of the CPU speed layer in it.
    ("experiments.training.train_step", ("experiments.kernels", "experiments.training.loop")),
    # The CPU layer accelerates the plain step and knows nothing of the loop.
    ("experiments.kernels", ("experiments.training.loop", "experiments.training.checkpoint",
                             "experiments.training.metrics", "experiments.training.optimizer",
                             "experiments.training.run_dir")),
    ("experiments.training", ("experiments.study", "experiments.tools",
                              "experiments.toy", "experiments.compare")),
    ("experiments.toy", ("experiments.training", "experiments.kernels")),
])
def test_layers_point_one_way(layer, forbidden):
  for m in [m for m in GRAPH if m == layer or m.startswith(layer + ".")]:
    bad = sorted(t for t in _reach(m) if t.startswith(forbidden))
    assert not bad, f"{m} reaches {bad}"


# (Appending a subprocess's log is not writing a result file.)
_OWN_WRITES = re.compile(r"os\.replace\(|\.savefig\(|open\([^)]*['\"]wb?['\"]")


def test_one_writer_of_result_files():
  offenders = []
  for m, path in MODULES.items():
    if m in ("experiments.files",) or m.startswith("experiments.kernels"):
      continue  # kernels: the compiled .so goes through the compiler's -o
    text = path.read_text()
    if _OWN_WRITES.search(text):
      offenders.append(m)
  assert not offenders, f"write result files through experiments.files: {offenders}"


def test_the_cpu_kernels_are_reached_through_one_module():
  """Only the loop's make_steps/keep_freed_host_memory import experiments.kernels:
  deleting the package leaves one module to edit (tests/harness/test_seam.py runs without it)."""
  importers = sorted(m for m, ts in GRAPH.items()
                     if m.startswith("experiments") and not m.startswith("experiments.kernels")
                     and any(t.startswith("experiments.kernels") for t in ts))
  assert importers == ["experiments.training.loop"], importers


def _documented_commands() -> set[tuple[str, str]]:
  docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
  found = set()
  for path in docs:
    # _generated/ holds tables built from the results files, whose rows quote
    # the commands that measured them then (some modules have moved since).
    if "_build" in path.parts or "_generated" in path.parts:
      continue
    for m in re.finditer(r"python -m ((?:experiments|benchmarks)(?:\.\w+)*)", path.read_text()):
      found.add((str(path.relative_to(ROOT)), m.group(1)))
  return found


@pytest.mark.parametrize("where, module", sorted(_documented_commands()))
def test_every_documented_command_is_a_runnable_module(where, module):
  """`python -m X` in the README or the docs names a module with a main (or a
  package with a __main__), so no command is left pointing at a moved file."""
  path = MODULES.get(module)
  assert path is not None, f"{where}: `python -m {module}`: no such module"
  if path.name == "__init__.py":
    assert (path.parent / "__main__.py").exists(), f"{where}: {module} has no __main__"
  else:
    assert "__main__" in path.read_text(), f"{where}: {module} has no main"
