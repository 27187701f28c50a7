"""Sweep (grid, resume, CSV, heatmap) and plot (curves, update histograms) on tiny runs."""

import csv
import json

import jax
import numpy as np
import pytest
from PIL import Image

from experiments.tools import plot, sweep
from experiments.training.checkpoint import load_arrays

# Trains a grid of runs: with the long tests (CI runs them too).
pytestmark = pytest.mark.slow

TRAIN_FLAGS = ["--dataset", "sample", "--model", "resnet20", "--no-bn", "--epochs", "1",
               "--batch-size", "32", "--train-subset", "64", "--test-subset", "32",
               "--eval-batch-size", "32", "--optimizer", "adamw", "--convention", "paper",
               "--step", "plain", "--no-progress"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  old = {k: getattr(jax.config, k) for k in (
      "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  out = tmp_path_factory.mktemp("sweep")
  argv = ["--lrs", "1e-3,5e-4", "--wds", "1e-4", "--seeds", "3", "--out", str(out),
          "--"] + TRAIN_FLAGS
  assert sweep.main(argv) == 0
  yield out, argv
  for k, v in old.items():
    jax.config.update(k, v)


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_sweep_writes_one_row_per_grid_point(swept):
  out, _ = swept
  rows = _csv(out / "results.csv")
  assert [(float(r["lr"]), float(r["weight_decay"]), int(r["seed"])) for r in rows] == [
      (1e-3, 1e-4, 3), (5e-4, 1e-4, 3)]
  for r in rows:
    summary = json.loads((sweep.run_dir(out, float(r["lr"]), 1e-4, 3) / "summary.json").read_text())
    assert r["status"] == "complete"
    assert float(r["final_test_error"]) == pytest.approx(1 - summary["test_acc"])
    assert float(r["final_train_loss"]) == pytest.approx(summary["train_loss"])
  im = Image.open(out / "heatmap.png")
  assert im.size[0] > 100 and im.size[1] > 100


def test_grid_points_of_a_seed_share_initial_weights_and_differ_in_lr(swept):
  out, _ = swept
  cfgs = [json.loads((sweep.run_dir(out, lr, 1e-4, 3) / "config.json").read_text())
          for lr in (1e-3, 5e-4)]
  assert [c["init_seed"] for c in cfgs] == [3, 3]
  assert [c["lr"] for c in cfgs] == [1e-3, 5e-4]
  assert all(c["weight_decay"] == 1e-4 and c["convention"] == "paper" for c in cfgs)
  # different learning rates give different final weights
  a, _ = load_arrays(sweep.run_dir(out, 1e-3, 1e-4, 3) / "checkpoints")
  b, _ = load_arrays(sweep.run_dir(out, 5e-4, 1e-4, 3) / "checkpoints")
  kernel = "params/stem/conv/kernel/value"
  assert kernel in a, sorted(a)[:5]
  assert not np.array_equal(a[kernel], b[kernel])


def test_rerunning_the_sweep_reuses_finished_runs(swept, capsys):
  out, argv = swept
  before = (out / "results.csv").read_text()
  mtimes = [p.stat().st_mtime for p in sorted(out.glob("*/checkpoint.npz"))]
  assert sweep.main(argv) == 0
  assert "already complete" in capsys.readouterr().out
  assert (out / "results.csv").read_text() == before
  assert [p.stat().st_mtime for p in sorted(out.glob("*/checkpoint.npz"))] == mtimes


def test_sweep_rejects_flags_it_sets(tmp_path):
  with pytest.raises(SystemExit):
    sweep.main(["--lrs", "1e-3", "--wds", "0", "--out", str(tmp_path), "--", "--lr", "1"])
  with pytest.raises(SystemExit):
    sweep.main(["--out", str(tmp_path)])  # no grid


def test_plot_draws_curves_and_histograms(swept, tmp_path):
  out, _ = swept
  dirs = [str(sweep.run_dir(out, lr, 1e-4, 3)) for lr in (1e-3, 5e-4)]
  assert plot.main(dirs + ["--out", str(tmp_path / "fig")]) == 0
  for name in ("fig_curves.png", "fig_update_hist.png"):
    im = Image.open(tmp_path / name)
    assert im.size[0] > 300
  cfg, rows = plot.load_run(dirs[0])
  assert plot.default_label(cfg) == "adamw lr=0.001 wd=0.0001 (paper)"
  with pytest.raises(SystemExit):
    plot.main([str(tmp_path / "missing")])


def test_plot_histogram_density_integrates_to_one(tmp_path):
  d = tmp_path / "run"
  d.mkdir()
  (d / "config.json").write_text(json.dumps(
      {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0}))
  hist = [0] * 160
  hist[40], hist[41] = 3, 1
  (d / "metrics.jsonl").write_text(json.dumps(
      {"epoch": 1, "train_loss": 1.0, "test_acc": 0.5, "update_log2_hist": hist,
       "update_log2_edges": [-32.0, 8.0]}) + "\n")
  runs = [plot.load_run(d)]
  assert plot.plot_update_hist(runs, ["a"], tmp_path / "h.png", None) == 1
  assert plot.plot_update_hist(runs, ["a"], tmp_path / "h2.png", epoch=5) == 0
