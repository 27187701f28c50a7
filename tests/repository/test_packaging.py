"""What `pip install proxopt` gives: the library only, typed, licensed, light.

The wheel and sdist are built with setuptools' PEP 517 backend in a
subprocess (the same backend pip uses, without network access).
"""

import email
import pathlib
import subprocess
import sys
import tarfile
import types
import zipfile

import pytest

import proxopt

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_implementation_modules_are_private():
  files = sorted(p.name for p in (ROOT / "proxopt").glob("*.py"))
  public = [f for f in files if not f.startswith("_")]
  assert public == ["testing.py"], public
  import proxopt._proximal as module  # pylint: disable=import-outside-toplevel
  assert isinstance(module, types.ModuleType)
  assert callable(proxopt.proximal) and not isinstance(proxopt.proximal, types.ModuleType)
  modules = [n for n in proxopt.__all__ if isinstance(getattr(proxopt, n), types.ModuleType)]
  assert modules == ["testing"]
  assert len(set(proxopt.__all__)) == len(proxopt.__all__)


def test_import_needs_only_jax_optax_chex_numpy():
  code = (
      "import sys, proxopt\n"
      "heavy = {'flax', 'torch', 'tensorflow', 'tensorflow_datasets', 'matplotlib',\n"
      "         'orbax', 'experiments', 'benchmarks', 'tqdm', 'pytest'}\n"
      "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, cwd=ROOT / "tests")
  assert out.stdout.strip() == "[]", out.stdout


def _build(kind, tmp_path):
  code = (
      "import sys\n"
      "from setuptools import build_meta\n"
      f"print(build_meta.build_{kind}(sys.argv[1]))\n"
  )
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                        capture_output=True, text=True)
  if proc.returncode != 0:
    if "No module named 'setuptools'" in proc.stderr:
      pytest.skip("setuptools is not installed in this environment")
    raise AssertionError(proc.stderr[-3000:])
  return tmp_path / proc.stdout.strip().splitlines()[-1]


def test_wheel_holds_only_the_library(tmp_path):
  wheel = _build("wheel", tmp_path)
  with zipfile.ZipFile(wheel) as zf:
    names = zf.namelist()
    dist_info = next(n.split("/")[0] for n in names if ".dist-info/" in n)
    meta = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
  top = {n.split("/")[0] for n in names}
  assert top == {"proxopt", dist_info}, top
  assert "proxopt/py.typed" in names
  assert not any(n.endswith((".npz", ".cc", ".json", ".png")) for n in names)
  assert any(n.endswith("licenses/LICENSE") for n in names)
  assert meta["Version"] == proxopt.__version__
  assert meta["License-Expression"] == "Apache-2.0"
  required = sorted(
      r.split(">")[0].split("=")[0].split("<")[0].strip()
      for r in meta.get_all("Requires-Dist") if "extra ==" not in r
  )
  assert required == ["chex", "jax", "numpy", "optax"]
  assert sum(zf.getinfo(n).file_size for n in names) < 1_000_000


def test_sdist_leaves_out_experiments_and_data(tmp_path):
  sdist = _build("sdist", tmp_path)
  with tarfile.open(sdist) as tf:
    names = [m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name]
  assert "LICENSE" in names and "pyproject.toml" in names
  assert "proxopt/py.typed" in names
  for prefix in ("experiments", "benchmarks", "docs", "tests"):
    assert not any(n.startswith(prefix) for n in names), prefix


def test_license_is_the_apache_2_text():
  text = (ROOT / "LICENSE").read_text()
  assert text.lstrip().startswith("Apache License")
  assert "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_version_is_written_once():
  pyproject = (ROOT / "pyproject.toml").read_text()
  assert 'dynamic = ["version"]' in pyproject
  assert "proxopt._version.__version__" in pyproject
  assert proxopt.__version__ in (ROOT / "CHANGELOG.md").read_text() or (
      proxopt.__version__.split(".dev")[0] in (ROOT / "CHANGELOG.md").read_text())
