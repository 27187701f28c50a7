"""The CPU speed layer is one seam away: the harness trains with
experiments.kernels unimportable (as if deleted), picks the plain step on a
non-CPU backend without touching the kernels, and tunes host memory only on a
CPU backend or when asked."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import optax
import pytest
from flax import nnx

from experiments import train
from experiments.models.resnet import ResNet
from experiments.training import loop

REPO = pathlib.Path(__file__).resolve().parents[2]

# Runs `python -m experiments.train ARGS` with every import of experiments.kernels failing.
_WITHOUT_KERNELS = r"""
import importlib.abc, runpy, sys

class NoKernels(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name == "experiments.kernels" or name.startswith("experiments.kernels."):
      raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
    return None

sys.meta_path.insert(0, NoKernels())
sys.argv = ["experiments.train", *sys.argv[1:]]
runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
"""

TINY = ["--dataset", "sample", "--model", "resnet20", "--batch-size", "32", "--train-subset", "64",
        "--test-subset", "32", "--eval-batch-size", "32", "--epochs", "1", "--no-progress"]


def _without_kernels(*args):
  return subprocess.run([sys.executable, "-c", _WITHOUT_KERNELS, *args], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=600)


@pytest.mark.slow  # a whole CLI run in a subprocess (~22 s idle)
def test_harness_trains_with_the_kernels_package_unimportable(tmp_path):
  out = tmp_path / "run"
  proc = _without_kernels(*TINY, "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "experiments.kernels" not in proc.stderr  # nothing warned, nothing crashed
  resolved = json.loads((out / "resolved_config.json").read_text())
  assert (resolved["step_impl"], resolved["step_conv"], resolved["step_batch_norm"],
          resolved["step_relu"]) == ("plain", "xla", "flax", "xla")
  assert "experiments.kernels not importable" in resolved["step_conv_reason"]
  assert resolved["host_memory"].startswith("default (experiments.kernels not importable")
  summary = json.loads((out / "summary.json").read_text())
  assert summary["status"] == "complete" and summary["test_acc"] is not None
  # Asking for the kernels without the package names the flag and the fix, before training.
  proc = _without_kernels(*TINY, "--step", "kernels:conv=onednn", "--out", str(tmp_path / "asked"))
  assert proc.returncode == 2
  assert ("--step kernels:conv=onednn needs the CPU speed layer experiments.kernels"
          in proc.stderr and "use --step auto or plain" in proc.stderr)
  assert not (tmp_path / "asked").exists()


def test_plain_step_on_a_non_cpu_backend_never_reaches_the_kernels(monkeypatch):
  import experiments.kernels.train_step as fast

  def boom(*a, **k):
    raise AssertionError("the CPU speed layer was reached on a GPU backend")

  monkeypatch.setattr(fast, "make_train_step", boom)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  model = ResNet(8, 10, use_bn=True, rngs=nnx.Rngs(0))
  cfg = train.config_from_argv(["--model", "resnet20"])
  train_step, eval_step, info = loop.make_steps(cfg, model, optax.sgd(0.1), None)
  assert info["step_impl"] == "plain" and info["step_conv_reason"] == "plain step: backend 'gpu'"
  # Asked for explicitly, the kernels step still goes to the CPU layer (which names the fix).
  cfg = train.config_from_argv(["--step", "kernels:impl=blockwise"])
  with pytest.raises(AssertionError, match="reached"):
    loop.make_steps(cfg, model, optax.sgd(0.1), None)


def test_step_plain_never_reaches_the_kernels_on_a_cpu_backend(monkeypatch):
  import experiments.kernels.train_step as fast

  def boom(*a, **k):
    raise AssertionError("the CPU speed layer was reached with --step plain")

  monkeypatch.setattr(fast, "make_train_step", boom)
  model = ResNet(8, 10, use_bn=False, rngs=nnx.Rngs(0))
  cfg = train.config_from_argv(["--step", "plain"])
  _, _, info = loop.make_steps(cfg, model, optax.sgd(0.1), None)
  assert (info["step_impl"], info["step_conv"]) == ("plain", "xla")
  assert info["step_conv_reason"] == "plain step: --step plain"


def test_cpu_backend_reaches_the_kernels_layer():
  if jax.default_backend() != "cpu":
    pytest.skip("CPU backend only")
  model = ResNet(8, 10, use_bn=False, rngs=nnx.Rngs(0))
  cfg = train.config_from_argv(["--step", "kernels:impl=nofusion,conv=xla"])
  train_step, _, info = loop.make_steps(cfg, model, optax.sgd(0.1), None)
  assert (info["step_impl"], info["step_conv"]) == ("nofusion", "xla")
  assert info["step_conv_reason"] == "requested"
  assert train_step.conv_grad_chunk == 8  # the CPU layer's chunked weight gradient


@pytest.mark.parametrize("env, expected", [
    ({"JAX_PLATFORMS": "cuda"}, "default (not a CPU backend: JAX_PLATFORMS=cuda)"),
    ({"JAX_PLATFORMS": "cuda", "EXPERIMENTS_HOST_MEMORY": "keep"}, "kept"),
    ({"JAX_PLATFORMS": "cpu"}, "kept"),
    ({"JAX_PLATFORMS": "cpu", "EXPERIMENTS_HOST_MEMORY": "default"},
     "default (EXPERIMENTS_HOST_MEMORY=default)"),
])
def test_host_memory_is_tuned_only_on_a_cpu_backend_or_when_asked(env, expected):
  if not sys.platform.startswith("linux"):
    pytest.skip("glibc's mallopt: Linux only")
  probe = "from experiments.training.loop import keep_freed_host_memory as k; print(k())"
  env = {k: v for k, v in os.environ.items() if k != "EXPERIMENTS_HOST_MEMORY"} | env
  out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120, check=True).stdout.strip().splitlines()[-1]
  assert out == expected

