"""Tests of benchmarks/: what the benchmarks rely on (memory footprint of the
optimizer state, the PyTorch peer being the same network, the blocked step's
numerics) and smoke runs of both CLIs that check the JSON, never speed."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxopt
from benchmarks import blocked, optimizer_step

# Only the tests that need PyTorch take the `torch` / `torch_peer` fixtures
# (skipped without torch, marked `torch`); the optimizer-state, HLO and
# blocked-step invariants run without it
# (test_torch_free_tests_run_without_torch checks that).


@pytest.fixture
def torch_peer(torch):
  from benchmarks import torch_peer as peer  # imports torch
  return peer


def _shape_tree(depth):
  return {k: jax.ShapeDtypeStruct(s, jnp.float32)
          for k, s in optimizer_step.resnet_param_shapes(depth).items()}


# ------------------------------------------------------ optimizer state bytes
ADAM_FAMILY = ["proxopt.adamw", "proxopt.adamprox", "proxopt.adam_l2",
               "adam+proximal(l1)", "optax.adamw"]


@pytest.mark.parametrize("name", ADAM_FAMILY)
def test_adam_family_state_is_exactly_two_moment_buffers(name):
  params = _shape_tree(110)
  n = 1_719_866
  info = optimizer_step.state_bytes(optimizer_step.make_tx(name), params)
  assert info["params"] == n
  # m and v in float32, nothing else parameter-sized (prox adds no buffer).
  assert info["state_param_sized_bytes"] == 2 * 4 * n
  # The rest is step counters: a few int32 scalars.
  assert info["state_other_bytes"] <= 4 * 4


def test_allocated_state_bytes_match_param_count():
  # The same property on real buffers (not just shapes): ResNet-20 tree.
  shapes = optimizer_step.resnet_param_shapes(20)
  params = {k: jnp.zeros(s, jnp.float32) for k, s in shapes.items()}
  n = sum(x.size for x in params.values())
  for tx in (proxopt.adamprox(1e-3, weight_decay=1e-4), proxopt.adamw(1e-3, weight_decay=1e-4),
             optax.chain(optax.adam(1e-3), proxopt.proximal(proxopt.l1(1e-5), 1e-3))):
    state = tx.init(params)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    big = sum(x.nbytes for x in jax.tree.leaves(state) if x.ndim > 0)
    assert big == 8 * n
    assert nbytes - big <= 16


def test_tracker_state_is_histograms_not_param_copies():
  info = optimizer_step.state_bytes(
      optimizer_step.make_tx("adamprox+track_update_scales"), _shape_tree(20))
  assert info["state_param_sized_bytes"] == 8 * info["params"]


def test_prox_and_decay_add_no_memory_pass():
  # AdamW's decay and AdamProx's prox fuse into the loop that writes the
  # params: the compiled step moves exactly the bytes of optax.adamw's.
  params = {k: jnp.zeros(s) for k, s in
            optimizer_step.resnet_param_shapes(8).items()}
  ref = optimizer_step.hlo_traffic(optimizer_step.make_tx("optax.adamw"), params)
  assert ref["hlo_bytes_per_param"] >= 28
  assert ref["hlo_param_loops"] >= len(params)
  for name in ("proxopt.adamw", "proxopt.adamprox", "adam+proximal(l1)"):
    assert optimizer_step.hlo_traffic(
        optimizer_step.make_tx(name), params) == ref, name
  # The analysis does see an extra pass: Adam-L2 reads x in the m and v loops.
  l2 = optimizer_step.hlo_traffic(optimizer_step.make_tx("proxopt.adam_l2"),
                                  params)
  assert l2["hlo_bytes_per_param"] > ref["hlo_bytes_per_param"]


# ------------------------------------------------------ parameter tree shapes
@pytest.mark.torch
def test_resnet_shapes_match_torch_peer(torch_peer):
  # The same count as the torch peer's ResNet-110 (its construction is too
  # slow for this test; it is in torch_peer's doctest).
  assert sum(int(np.prod(s)) for s in optimizer_step.resnet_param_shapes(
      20).values()) == torch_peer.param_count(
          torch_peer.make_resnet(20, bn=False))
  bn = optimizer_step.resnet_param_shapes(20, bn=True)
  assert sum(int(np.prod(s)) for s in bn.values()) == torch_peer.param_count(
      torch_peer.make_resnet(20, bn=True)) == 269_722


def test_resnet_shapes_are_the_experiments_model_at_the_published_size():
  # 1.7M parameters in 111 leaves for ResNet-110 without BN, as published.
  shapes = optimizer_step.resnet_param_shapes(110)
  assert sum(int(np.prod(s)) for s in shapes.values()) == 1_719_866
  assert len(shapes) == 111
  bn = optimizer_step.resnet_param_shapes(20, bn=True)
  assert sum(int(np.prod(s)) for s in bn.values()) == 269_722


# ------------------------------------------ the PyTorch peer is the same model
def _copy_flax_to_torch(torch, model, tmodel):
  def conv(dst, src):  # HWIO -> OIHW
    dst.weight.data = torch.from_numpy(
        np.asarray(src.kernel[...]).transpose(3, 2, 0, 1).copy())

  conv(tmodel.stem, model.stem.conv)
  for tb, fb in zip(tmodel.blocks, model.blocks):
    conv(tb.conv1, fb.conv1)
    conv(tb.conv2, fb.conv2)
  tmodel.head.weight.data = torch.from_numpy(
      np.asarray(model.head.fc.kernel[...]).T.copy())
  tmodel.head.bias.data = torch.from_numpy(
      np.array(model.head.fc.bias[...]))


@pytest.mark.torch
@pytest.mark.parametrize("bn", [False, True])
def test_torch_peer_computes_the_same_function(torch, torch_peer, bn):
  from experiments.models.resnet import ResNet
  from flax import nnx
  model = ResNet(8, 10, use_bn=bn, rngs=nnx.Rngs(0))  # every block kind
  model.train()  # BN on batch statistics on both sides
  tmodel = torch_peer.make_resnet(8, bn=bn, seed=0)
  tmodel.train()
  _copy_flax_to_torch(torch, model, tmodel)
  x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
  want = np.asarray(model(jnp.asarray(x)))
  got = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.torch
def test_torch_peer_init_scale_matches_kaiming_fan_in(torch_peer):
  tmodel = torch_peer.make_resnet(56, bn=False, seed=0)
  w = tmodel.blocks[20].conv2.weight.detach().numpy()  # 64 -> 64, 3x3
  assert abs(w.std() / np.sqrt(2.0 / (64 * 9)) - 1) < 0.02
  assert np.all(tmodel.head.bias.detach().numpy() == 0)


@pytest.mark.torch
def test_torch_peer_step_learns_and_bad_input(torch, torch_peer):
  model = torch_peer.make_resnet(8, bn=False, seed=0)
  step = torch_peer.make_train_step(
      model, torch_peer.make_optimizer(model, "adamw", 1e-2, 1e-4))
  g = torch.Generator().manual_seed(0)
  x, y = torch.randn(8, 3, 32, 32, generator=g), torch.arange(8) % 10
  losses = [step(x, y) for _ in range(8)]
  assert losses[-1] < 0.5 * losses[0]
  with pytest.raises(ValueError, match="6n\\+2"):
    torch_peer.make_resnet(21)
  with pytest.raises(ValueError, match="impl"):
    torch_peer.make_optimizer(model, "adamw", impl="cuda")
  with pytest.raises(ValueError, match="name"):
    torch_peer.make_optimizer(model, "lion")


@pytest.mark.torch
def test_benchmark_doctests(torch_peer):
  res = doctest.testmod(torch_peer)
  assert res.attempted > 0 and res.failed == 0


# --------------------------------------------------- the blocked (experimental)
@pytest.mark.parametrize("kind,ref", [
    ("adamprox", lambda: proxopt.adamprox(1e-2, weight_decay=0.5)),
    ("adamw", lambda: proxopt.adamw(1e-2, weight_decay=0.5)),
])
def test_blocked_adam_equals_proxopt_alias(kind, ref):
  n, chunk = 4 * 1024, 1024
  init, step = blocked.blocked_adam(1e-2, 0.5, kind=kind, chunk=chunk)
  tx = ref()
  x0 = jax.random.normal(jax.random.key(0), (n,))
  xb, sb = jnp.array(x0), init(x0)  # a copy: the jitted step donates it
  xr, sr = x0, tx.init(x0)
  jstep = jax.jit(step, donate_argnums=(0, 1))
  for i in range(4):
    g = jax.random.normal(jax.random.key(i + 1), (n,))
    xb, sb = jstep(xb, sb, g)
    u, sr = tx.update(g, sr, xr)
    xr = optax.apply_updates(xr, u)
  np.testing.assert_allclose(xb, xr, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sb.mu, sr[0].mu, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(sb.nu, sr[0].nu, rtol=1e-5, atol=1e-9)
  assert int(sb.count) == 4


def test_blocked_adam_updates_in_place_without_copies():
  # The point of the read-back trick: no full-size copy inside the loop.
  n = 8 * 1024
  init, step = blocked.blocked_adam(1e-3, 1e-4, chunk=1024)
  x = jnp.ones(n)
  hlo = jax.jit(step, donate_argnums=(0, 1)).lower(x, init(x), x).compile().as_text()
  full_copies = [l for l in hlo.splitlines()
                 if " copy(" in l and f"f32[{n}]" in l.split("=")[1]]
  assert full_copies == []
  assert "while" in hlo


def test_blocked_adam_bad_input():
  with pytest.raises(ValueError, match="kind"):
    blocked.blocked_adam(1e-3, 0.0, kind="sgd")
  init, step = blocked.blocked_adam(1e-3, 0.0, chunk=1000)
  x = jnp.ones(2500)
  with pytest.raises(ValueError, match="multiple of"):
    step(x, init(x), x)
  with pytest.raises(ValueError, match="1-D"):
    step(jnp.ones((4, 4)), init(jnp.ones((4, 4))), jnp.ones((4, 4)))


# ------------------------------------------------------------- CLI smoke runs
@pytest.mark.torch
def test_optimizer_step_quick_json(torch, tmp_path):
  path = tmp_path / "opt.json"
  argv = ["--quick", "--json", str(path), "--trees", "flat64m", "--reps", "2",
          "--candidates", "proxopt.adamprox,proxopt.adamw,optax.adamw,"
          "adamprox_blocked,torch.AdamW(fused),torch.AdamW(foreach)"]
  out = optimizer_step.main(argv)
  data = json.loads(path.read_text())
  assert data["results"] == json.loads(json.dumps(out["results"]))
  assert {"machine", "bandwidth_gbs", "results", "ratios"} <= set(data)
  assert data["machine"]["cpu_count"] >= 1 and "loadavg_start" in data["machine"]
  assert data["bandwidth_gbs"] == max(data["bandwidth_probes"].values()) > 0
  med = {}
  for r in data["results"]:
    assert {"tree", "optimizer", "median_s", "params", "roofline_fraction"} <= set(r)
    assert r["params"] == 2**20 and r["tree"] == "flat64m"
    assert 0 < r["min_s"] <= r["median_s"]
    floor = 28 * r["params"] / (data["bandwidth_gbs"] * 1e9)
    assert r["roofline_fraction"] == pytest.approx(floor / r["median_s"])
    med[r["optimizer"]] = r["median_s"]
  assert set(med) == {"proxopt.adamprox", "proxopt.adamw", "optax.adamw",
                      "adamprox_blocked", "torch.AdamW(fused)",
                      "torch.AdamW(foreach)"}
  rat = data["ratios"]
  assert rat["adamprox_over_optax_adamw"] == pytest.approx(
      med["proxopt.adamprox"] / med["optax.adamw"])
  assert rat["adamw_over_optax_adamw"] == pytest.approx(
      med["proxopt.adamw"] / med["optax.adamw"])
  torch_best = min(med["torch.AdamW(fused)"], med["torch.AdamW(foreach)"])
  assert rat["adamprox_over_torch_adamw"] == pytest.approx(
      med["proxopt.adamprox"] / torch_best)
  # --resume keeps the finished tree instead of re-measuring it.
  again = optimizer_step.main(argv + ["--resume"])
  assert [r["median_s"] for r in again["results"]] == [
      r["median_s"] for r in data["results"]]


def test_optimizer_step_bad_args():
  for argv in (["--trees", "mlp"], ["--candidates", "sgd"], ["--reps", "0"],
               ["--resume"]):
    with pytest.raises(SystemExit):
      optimizer_step.parse_args(argv)


@pytest.mark.torch
@pytest.mark.slow
def test_train_step_quick_json(torch, tmp_path):
  from benchmarks import train_step
  path = tmp_path / "train.json"
  out = train_step.main(["--quick", "--json", str(path), "--bn", "off",
                         "--reps", "1", "--threads", "2", "--also-threads", "1"])
  data = json.loads(path.read_text())
  assert data["results"] == json.loads(json.dumps(out["results"]))
  (r,) = data["results"]
  assert (r["model"], r["bn"], r["batch"]) == ("resnet8", False, 8)
  for k in ("jax_step_s", "torch_step_s", "compile_s"):
    assert r[k] >= 0 and np.isfinite(r[k])
  assert r["jax_step_s"] > 0 and r["torch_step_s"] > 0
  assert r["jax_over_torch"] == pytest.approx(r["jax_step_s"] / r["torch_step_s"])
  assert r["jax_images_per_s"] == pytest.approx(8 / r["jax_step_s"])
  assert r["first_call_s"] >= r["compile_s"]
  assert set(r["torch_step_s_by_threads"]) == {"1", "2"}
  assert set(r["torch_cl_step_s_by_threads"]) == {"1", "2"}
  assert r["torch_step_s_by_threads"]["2"] == r["torch_step_s"]
  assert r["torch_cl_step_s_by_threads"]["2"] == r["torch_cl_step_s"]
  # The best PyTorch is the fastest of both memory formats and thread counts.
  every = {**{f"nchw_{k}": v for k, v in r["torch_step_s_by_threads"].items()},
           **{f"cl_{k}": v for k, v in r["torch_cl_step_s_by_threads"].items()}}
  assert r["torch_best_step_s"] == min(every.values())
  assert every[r["torch_best_config"]] == r["torch_best_step_s"]
  assert r["jax_over_torch_best"] == pytest.approx(r["jax_step_s"] / r["torch_best_step_s"])
  assert r["conv"] == "auto" and r["conv_resolved"] in ("onednn", "xla")
  # Timed in a fresh process that keeps freed memory (on Linux).
  if sys.platform.startswith("linux"):
    assert r["host_memory"] == "kept"
  for argv in (["--depths", "21"], ["--bn", "maybe"], ["--impls", "fast"],
               ["--also-threads", "x"], ["--threads", "0"], ["--convs", "cudnn"]):
    with pytest.raises(SystemExit):
      train_step.parse_args(argv)


@pytest.mark.torch
def test_train_step_bf16_mode_builds_and_steps(torch):
  """--precision bfloat16: both sides build (ResNet-8 with BN, batch 8) and
  take one finite step; nothing is timed. The torch side keeps float32
  master weights. The JAX side's conv='auto' resolves as in float32 (oneDNN
  has bfloat16 kernels)."""
  from benchmarks import train_step
  from experiments.kernels import onednn
  steps = train_step.build_steps(8, True, 8, "plain", "adamw", conv="auto",
                                 precision="bfloat16")
  f = steps["jax_step"]
  conv = "onednn" if jax.default_backend() == "cpu" and onednn.available() else "xla"
  assert (f.precision, f.conv) == ("bfloat16", conv)
  loss = steps["jax"]()
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
  for fmt in ("nchw", "cl"):
    assert np.isfinite(steps["torch"][fmt]())
  for tmodel in steps["torch_models"].values():
    assert {p.dtype for p in tmodel.parameters()} == {torch.float32}
  args = train_step.parse_args(["--precision", "bfloat16", "--quick"])
  assert args.precision == "bfloat16"
  args = train_step.parse_args(["--precision", "bfloat16", "--convs", "onednn,xla"])
  assert args.convs == ["onednn", "xla"]
  with pytest.raises(SystemExit):
    train_step.parse_args(["--precision", "float16"])


@pytest.mark.torch
def test_torch_peer_bf16_autocast_step(torch, torch_peer):
  model = torch_peer.make_resnet(8, bn=True, seed=0)
  opt = torch_peer.make_optimizer(model, "adamw", 1e-2, 1e-4)
  step = torch_peer.make_train_step(model, opt, precision="bfloat16")
  g = torch.Generator().manual_seed(0)
  x, y = torch.randn(8, 3, 32, 32, generator=g), torch.arange(8) % 10
  with torch.autocast("cpu", dtype=torch.bfloat16):  # what the step wraps
    assert model(x).dtype == torch.bfloat16
  losses = [step(x, y) for _ in range(3)]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  # float32 master weights, gradients and Adam moments.
  assert {p.dtype for p in model.parameters()} == {torch.float32}
  assert {p.grad.dtype for p in model.parameters()} == {torch.float32}
  assert {v.dtype for s in opt.state.values() for k, v in s.items()
          if k in ("exp_avg", "exp_avg_sq")} == {torch.float32}
  with pytest.raises(ValueError, match="precision.*float32, bfloat16"):
    torch_peer.make_train_step(model, opt, precision="float16")


# ------------------------------------------ the torch-free part needs no torch
_BLOCK_TORCH = """
import sys
sys.modules["torch"] = None   # `import torch` now raises ImportError
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def test_torch_free_tests_run_without_torch(tmp_path):
  """With torch unimportable, every unmarked test here runs and passes."""
  report = tmp_path / "report.xml"
  me = os.path.relpath(__file__, os.getcwd())
  proc = subprocess.run(
      [sys.executable, "-c", _BLOCK_TORCH, me, "-q",
       "-k", "not run_without_torch", f"--junitxml={report}"],
      capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  passed, skipped = set(), {}
  for case in ET.parse(report).getroot().iter("testcase"):
    name = case.get("name").split("[")[0]
    assert case.find("failure") is None and case.find("error") is None, name
    if case.find("skipped") is not None:
      skipped[name] = case.find("skipped").get("message", "")
    else:
      passed.add(name)
  module = sys.modules[__name__]
  marks = lambda n: {m.name for m in getattr(getattr(module, n), "pytestmark", [])}
  # The default run deselects the slow ones (pytest -m slow runs them).
  tests = {n for n in dir(module) if n.startswith("test_")
           and n != "test_torch_free_tests_run_without_torch" and "slow" not in marks(n)}
  needs_torch = {n for n in tests if "torch" in marks(n)}
  # Everything not marked `torch` passed, nothing of it skipped ...
  assert passed == tests - needs_torch, (passed, skipped)
  assert len(passed) >= 8
  # ... and the torch tests were skipped because torch is missing.
  assert set(skipped) == needs_torch
  assert all("torch" in why for why in skipped.values()), skipped


def test_train_step_batch_norms_option():
  """--batch-norms is looped like --convs and keys the resumable rows (rows
  written before it existed count as 'auto'); nothing is built or timed."""
  from benchmarks import train_step
  assert train_step.parse_args([]).batch_norms == ["auto"]
  args = train_step.parse_args(["--bn", "on", "--batch-norms", "flax,onednn"])
  assert args.batch_norms == ["flax", "onednn"]
  with pytest.raises(SystemExit):
    train_step.parse_args(["--batch-norms", "xla"])
  old = {"model": "resnet20", "bn": True, "batch": 128, "impl": "auto",
         "optimizer": "adamw"}
  assert train_step._key(old)[-2] == "auto"
  assert train_step._key({**old, "batch_norm": "flax"})[-2] == "flax"


def test_train_step_relus_option():
  """--relus is looped like --batch-norms (models with BN once) and keys the
  resumable rows (rows written before it existed count as 'auto')."""
  from benchmarks import train_step
  assert train_step.parse_args([]).relus == ["auto"]
  assert train_step.parse_args(["--relus", "onednn,xla"]).relus == ["onednn", "xla"]
  with pytest.raises(SystemExit):
    train_step.parse_args(["--relus", "fused"])
  old = {"model": "resnet20", "bn": False, "batch": 128, "impl": "auto",
         "optimizer": "adamw"}
  assert train_step._key(old)[-1] == "auto"
  assert train_step._key({**old, "relu": "xla"})[-1] == "xla"
  assert train_step._key({**old, "relu": "xla"}) != train_step._key(old)
