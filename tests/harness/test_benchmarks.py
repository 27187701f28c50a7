"""Tests of benchmarks/: what the benchmarks rely on (memory footprint of the
optimizer state, the PyTorch peer being the same network, the blocked step's
numerics), the train-step benchmark's arguments, results file and report,
and smoke runs of both CLIs that check the JSON, never speed."""

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


@pytest.mark.slow  # two ResNets in two frameworks (~9 s idle)
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


# ------------------------------------------------------ the train-step benchmark
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "train_step.json")
SETTINGS_KEYS = {"batch", "reps", "precision", "optimizer", "steps", "torch_threads",
                 "torch_formats", "augment", "order", "warmup_rounds", "process",
                 "keep_freed_memory"}
JAX_KEYS = {"median_s", "first_call_s", "compile_s", "module", "impl", "conv",
            "conv_grad_chunk", "batch_norm", "relu", "precision"}
TORCH_KEYS = {"median_s", "module", "memory_format", "threads", "precision"}


def _check_row(row):
  """The row format every row of the results file has (module docstring)."""
  assert {"model", "depth", "bn", "settings", "timings", "same_as", "host_memory",
          "loadavg", "command", "machine"} <= set(row), sorted(row)
  assert row["model"] == f"resnet{row['depth']}" and (row["depth"] - 2) % 6 == 0
  s = row["settings"]
  assert set(s) == SETTINGS_KEYS, sorted(s)
  assert s["precision"] in ("float32", "bfloat16") and s["reps"] >= 1
  assert row["command"].startswith("python -m ")
  assert row["loadavg"] and all(len(v) in (1, 3) for v in row["loadavg"].values())
  jax_names = [n for n in row["timings"] if not n.startswith("torch_")]
  # Every requested step is timed or names the step with its kernels.
  assert set(jax_names) | set(row["same_as"]) == set(s["steps"])
  assert set(row["same_as"].values()) <= set(jax_names)
  for name, t in row["timings"].items():
    assert t["median_s"] > 0 and t["precision"] == s["precision"]
    if "q25_s" in t:
      assert t["q25_s"] <= t["median_s"] <= t["q75_s"]
    if "times_s" in t:
      assert len(t["times_s"]) == s["reps"]
    if name.startswith("torch_"):
      assert TORCH_KEYS <= set(t), (name, sorted(t))
      assert name == f"torch_{t['memory_format']}_{t['threads']}t"
      assert t["threads"] in s["torch_threads"] and t["memory_format"] in s["torch_formats"]
    else:
      assert JAX_KEYS <= set(t), (name, sorted(t))
      assert 0 <= t["compile_s"] <= t["first_call_s"]
  torch_names = {n for n in row["timings"] if n.startswith("torch_")}
  assert torch_names == {f"torch_{f}_{n}t" for f in s["torch_formats"]
                         for n in s["torch_threads"]}


def test_train_step_results_file_has_the_row_format():
  """Every row of the recorded results (the converted older runs included)
  has the documented format, and the report renders all of them."""
  from benchmarks import report, train_step
  with open(RESULTS) as f:
    data = json.load(f)
  assert set(data) == {"description", "rows"}
  for row in data["rows"]:
    _check_row(row)
  keys = [train_step.row_key(r) for r in data["rows"]]
  assert len(set(keys)) == len(keys), "two rows of one model and settings"
  table = report.train_table(data)
  assert table.count("| model | step |") == len({report._run_of(r) for r in data["rows"]})
  # A line per candidate, timed or not, under one header line per run.
  lines = [l for l in table.splitlines() if l.startswith("| ")]
  assert len(lines) == table.count("| model | step |") + sum(
      len(r["timings"]) + len(r["same_as"]) for r in data["rows"])


def test_train_step_parse_step():
  from benchmarks import train_step
  assert doctest.testmod(train_step).failed == 0
  assert train_step.parse_step("plain") is None
  assert train_step.parse_step("kernels") == {}
  assert train_step.parse_step("kernels:relu=xla,batch_norm=flax") == {
      "relu": "xla", "batch_norm": "flax"}
  assert train_step.parse_step("kernels:chunk=0") == {"conv_grad_chunk": 0}
  for bad, match in (("auto", "use plain, kernels"), ("kernels:", "OPTION=VALUE"),
                     ("plain:conv=xla", "unknown --step"), ("kernels:fast", "OPTION=VALUE"),
                     ("kernels:impl=fast", "unknown impl"),
                     ("kernels:conv=cudnn", "valid: auto, xla, onednn"),
                     ("kernels:chunk=-2", "int >= 0"), ("kernels:chunk=x", "int >= 0"),
                     ("kernels:impl=plain,impl=nofusion", "each option once"),
                     ("kernels:conv=onednn,chunk=8", "whole"),
                     ("kernels:precision=bfloat16", "unknown option 'precision'")):
    with pytest.raises(ValueError, match=match):
      train_step.parse_step(bad)


def test_train_step_args():
  from benchmarks import train_step
  a = train_step.parse_args([])
  assert (a.depths, a.bn_depths, a.steps, a.batch, a.reps) == (
      [20, 56, 110], [20, 56, 110], ["kernels", "plain"], 128, 5)
  assert a.torch_threads == [1, os.cpu_count()] and a.torch_formats == ["nchw", "cl"]
  a = train_step.parse_args(["--quick", "--bn-depths", "", "--torch-threads", ""])
  assert (a.depths, a.bn_depths, a.batch, a.reps, a.torch_threads) == ([8], [], 8, 2, [])
  a = train_step.parse_args(["--depths", "", "--bn-depths", "20", "--precision", "bfloat16",
                             "--step", "kernels", "--step", "kernels:batch_norm=flax,relu=xla",
                             "--reps", "3"])
  assert (a.depths, a.bn_depths, a.precision, a.reps) == ([], [20], "bfloat16", 3)
  assert a.steps == ["kernels", "kernels:batch_norm=flax,relu=xla"]
  for argv in (["--depths", "21"], ["--bn-depths", "x"], ["--depths", "", "--bn-depths", ""],
               ["--step", "fast"], ["--step", "plain", "--step", "plain"],
               ["--step", "kernels:impl=nofusion,chunk=8", "--precision", "bfloat16"],
               ["--torch-threads", "0"], ["--torch-threads", "a"],
               ["--torch-formats", "nhwc"], ["--precision", "float16"],
               ["--batch", "0"], ["--reps", "0"], ["--resume"], ["--optimizer", "sgd"],
               ["--plot-only", "--json", "x.json"], ["--plot-only", "--figure", "x.png"]):
    with pytest.raises(SystemExit):
      train_step.parse_args(argv)


def test_train_step_resume_key_is_the_settings(monkeypatch):
  from benchmarks import train_step
  s = train_step.settings_of(train_step.parse_args(["--reps", "7"]))
  assert set(s) == SETTINGS_KEYS and s["keep_freed_memory"] is True
  row = {"depth": 20, "bn": False, "settings": s}
  key = train_step.row_key
  assert key(row) == key({**row, "settings": dict(reversed(list(s.items())))})
  for change in ({"reps": 5}, {"steps": ["plain", "kernels"]}, {"precision": "bfloat16"},
                 {"torch_threads": [2]}, {"augment": True}, {"order": "fixed"}):
    assert key(row) != key({**row, "settings": {**s, **change}}), change
  assert key(row) != key({**row, "bn": True}) != key({**row, "depth": 56})
  monkeypatch.setenv("EXPERIMENTS_HOST_MEMORY", "default")
  s2 = train_step.settings_of(train_step.parse_args(["--reps", "7"]))
  assert s2["keep_freed_memory"] is False and key(row) != key({**row, "settings": s2})


def _fake_row(depth, bn, settings, scale):
  """What a measuring process returns, with made-up times (no timing here)."""
  timings = {}
  for i, spec in enumerate(settings["steps"]):
    t = scale * depth * (i + 1) / 100
    timings[spec] = {"median_s": t, "q25_s": 0.9 * t, "q75_s": 1.1 * t, "first_call_s": t + 2,
                     "compile_s": 2.0, "module": "experiments.kernels.train_step",
                     "impl": "nofusion", "conv": "onednn", "conv_grad_chunk": 0,
                     "batch_norm": "onednn" if bn else "flax", "relu": "onednn",
                     "precision": settings["precision"]}
  for f in settings["torch_formats"]:
    for n in settings["torch_threads"]:
      timings[f"torch_{f}_{n}t"] = {"median_s": depth / 100 * n, "module": "benchmarks.torch_peer",
                                    "memory_format": f, "threads": n,
                                    "precision": settings["precision"]}
  return {"model": f"resnet{depth}", "depth": depth, "bn": bn, "settings": settings,
          "timings": timings, "same_as": {}, "host_memory": "kept",
          "loadavg": {"start": [1.0, 1.0, 1.0], "end": [1.5, 1.0, 1.0]},
          "utc": f"2026-12-0{int(scale)}T10:00:00Z", "machine": {"cpu": "test", "cpu_count": 2}}


def test_train_step_writes_resumes_and_replaces_rows(tmp_path, monkeypatch, capsys):
  """Rows are written after every model, --resume skips what the file holds
  with the same settings, a rerun replaces it, other settings are kept, and
  --plot-only draws from the file. The measuring process is faked."""
  from benchmarks import train_step
  path = tmp_path / "r.json"
  calls = []

  def measure(depth, bn, settings, scale=1.0):
    if calls:  # the previous model is already on disk
      assert len(json.loads(path.read_text())["rows"]) >= 1
    calls.append((depth, bn, settings["reps"]))
    return _fake_row(depth, bn, settings, scale)

  monkeypatch.setattr(train_step, "_measure_in_fresh_process", measure)
  argv = ["--depths", "20,56", "--bn-depths", "20", "--torch-threads", "1,2",
          "--json", str(path)]
  out = train_step.main(argv)
  data = json.loads(path.read_text())
  assert out == data and calls == [(20, False, 5), (56, False, 5), (20, True, 5)]
  assert [(r["depth"], r["bn"]) for r in data["rows"]] == [(20, False), (56, False), (20, True)]
  for row in data["rows"]:
    _check_row(row)
    assert row["command"] == ("python -m benchmarks.train_step --depths 20,56 --bn-depths 20 "
                              f"--torch-threads 1,2 --json {path}")
  table = capsys.readouterr().out
  # ResNet-56 no BN: kernels 0.56 s / fastest PyTorch (nchw and cl, 1 thread) 0.56 s.
  assert "| ResNet-56 no BN | `kernels` |" in table and "| 0.560 | 0.504-0.616 | 1.00 |" in table
  assert "| `plain` |" in table and "| 2.00 |" in table  # plain: 1.12 s, twice PyTorch

  calls.clear()
  train_step.main(argv + ["--resume"])
  assert calls == [] and json.loads(path.read_text()) == data
  # Another --reps is other settings: measured and added, the old rows kept.
  train_step.main(argv + ["--reps", "3", "--bn-depths", ""])
  assert calls == [(20, False, 3), (56, False, 3)]
  assert len(json.loads(path.read_text())["rows"]) == 5
  # Without --resume the same settings are measured again and replace their row.
  monkeypatch.setattr(train_step, "_measure_in_fresh_process",
                      lambda d, bn, s: measure(d, bn, s, scale=2.0))
  calls.clear()
  train_step.main(["--depths", "20", "--bn-depths", "", "--torch-threads", "1,2",
                   "--json", str(path)])
  rows = json.loads(path.read_text())["rows"]
  assert calls == [(20, False, 5)] and len(rows) == 5
  (new,) = [r for r in rows if r["depth"] == 20 and not r["bn"] and r["settings"]["reps"] == 5]
  assert new["timings"]["kernels"]["median_s"] == pytest.approx(0.4)
  assert new["command"].endswith("--bn-depths '' --torch-threads 1,2 --json " + str(path))

  fig = tmp_path / "f.png"
  calls.clear()
  train_step.main(argv + ["--plot-only", "--figure", str(fig)])
  assert calls == [] and fig.stat().st_size > 10_000
  with pytest.raises(SystemExit, match="no row"):
    train_step.main(argv + ["--plot-only", "--figure", str(fig), "--reps", "9"])
  other = tmp_path / "other.json"
  other.write_text(json.dumps({"machine": {}, "results": []}))
  with pytest.raises(SystemExit, match="not a results file"):
    train_step.main(["--json", str(other)])


def test_train_step_report_groups_runs_and_names_same_kernels():
  from benchmarks import report, train_step
  s = train_step.settings_of(train_step.parse_args([
      "--step", "kernels", "--step", "kernels:batch_norm=flax", "--torch-threads", "2"]))
  old = _fake_row(20, False, s, 1.0)
  old["command"] = "python -m benchmarks.train_step --depths 20"
  resumed = _fake_row(56, False, s, 1.0)
  resumed["command"] = "python -m benchmarks.train_step --depths 20 --resume"
  new = _fake_row(20, True, {**s, "reps": 7}, 3.0)
  new["command"] = "python -m benchmarks.train_step --reps 7"
  del old["timings"]["kernels:batch_norm=flax"]
  old["same_as"] = {"kernels:batch_norm=flax": "kernels"}
  table = report.train_table({"rows": [old, resumed, new]})
  # Two runs (--resume continues one), the newest first.
  assert table.count("| model | step |") == 2
  assert table.index("`python -m benchmarks.train_step --reps 7`") < table.index(
      "`python -m benchmarks.train_step --depths 20`")
  assert "| | `kernels:batch_norm=flax` | the kernels of `kernels` (timed once) |" in table
  assert "nofusion / onednn / BN onednn / fused ReLU" in table  # with BN
  assert "| `torch_cl_2t` | PyTorch channels-last, 2 threads | 0.400 | - | 1.00 | - |" in table
  assert report.fastest_torch(old) == "torch_nchw_2t"
  assert report.fastest_torch({"timings": {"kernels": {"median_s": 1.0}}}) is None


@pytest.mark.slow  # compiles every benchmark candidate (~9 s idle)
@pytest.mark.torch
def test_train_step_candidates_build_and_step(torch):
  """The candidates of a bfloat16 run with BN build (ResNet-8, batch 8;
  nothing is timed): a kernels step and PyTorch take one finite step and
  PyTorch's master weights stay float32; the plain step is the experiments'
  own module; a step resolving to the same kernels is built once.
  (The slow smoke run below steps the plain one too.)"""
  from benchmarks import train_step
  from experiments.kernels import onednn
  s = train_step.settings_of(train_step.parse_args([
      "--quick", "--precision", "bfloat16", "--step", "kernels:impl=plain", "--step", "plain",
      "--step", "kernels:relu=auto,impl=plain", "--torch-threads", "1"]))
  built = train_step.build_candidates(8, True, s)
  assert list(built["run"]) == ["kernels:impl=plain", "plain", "torch_nchw_1t", "torch_cl_1t"]
  assert built["same_as"] == {"kernels:relu=auto,impl=plain": "kernels:impl=plain"}
  info = built["info"]
  conv = "onednn" if jax.default_backend() == "cpu" and onednn.available() else "xla"
  assert (info["kernels:impl=plain"]["precision"], info["kernels:impl=plain"]["conv"]) == (
      "bfloat16", conv)
  assert info["plain"] == {"module": "experiments.training.train_step", "impl": "plain",
                           "conv": "xla", "conv_grad_chunk": 0, "batch_norm": "flax",
                           "relu": "xla", "precision": "bfloat16"}
  for name in ("kernels:impl=plain", "torch_nchw_1t", "torch_cl_1t"):
    assert np.isfinite(float(built["run"][name]())), name
  for tmodel in built["torch_models"].values():
    assert {p.dtype for p in tmodel.parameters()} == {torch.float32}


@pytest.mark.torch
@pytest.mark.slow
def test_train_step_quick_json(torch, tmp_path):
  """The smoke run end to end: a fresh measuring process, the row format,
  resume, the figure."""
  from benchmarks import train_step
  path, fig = tmp_path / "train.json", tmp_path / "train.png"
  argv = ["--quick", "--bn-depths", "", "--reps", "2", "--torch-threads", "1,2",
          "--step", "kernels", "--step", "plain", "--step", "kernels:batch_norm=flax",
          "--json", str(path)]
  out = train_step.main(argv + ["--figure", str(fig)])
  data = json.loads(path.read_text())
  assert out == data and fig.stat().st_size > 10_000
  (row,) = data["rows"]
  _check_row(row)
  assert (row["model"], row["bn"], row["settings"]["batch"]) == ("resnet8", False, 8)
  # Without BN, batch_norm=flax changes nothing: timed once.
  assert row["same_as"] == {"kernels:batch_norm=flax": "kernels"}
  assert set(row["timings"]) == {"kernels", "plain", "torch_nchw_1t", "torch_nchw_2t",
                                 "torch_cl_1t", "torch_cl_2t"}
  assert row["timings"]["plain"]["impl"] == "plain"
  if sys.platform.startswith("linux"):  # measured in a process that keeps freed memory
    assert row["host_memory"] == "kept"
  assert train_step.main(argv + ["--resume"]) == data

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


@pytest.mark.slow  # a pytest run in a subprocess (~12 s idle)
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
