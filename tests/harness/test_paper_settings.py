"""Tests of the published-settings study (experiments.study.paper_settings and
its report): the runs and their resolved configs, the portable records with
per-example predictions, the sitting deadline, the paired statistics, and the
loop's ``eval_every`` / ``save_predictions`` they rely on."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import numpy as np
import pytest

from experiments import train
from experiments.configs.recipes import get_recipe
from experiments.study import depth, paper_settings as ps
from experiments.study import paper_settings_report as rep


def test_runs_are_the_published_settings_paired_by_seed(tmp_path):
  p = ps.PROTOCOLS["cpu"]
  plan = ps.planned(p)
  # the eight runs of the comparison (ResNet-20 pairs first), then the extras
  assert [(r.model, r.seed, r.optimizer) for r in plan[:8]] == [
      (m, s, o) for m in ("resnet20", "resnet56") for s in (0, 1) for o in ("adam_l2", "adamw")]
  assert [(r.model, r.optimizer) for r in plan[8:]] == [
      ("resnet110", "adam_l2"), ("resnet110", "adamw"), ("resnet56", "adamprox"),
      ("resnet56", "adamprox")]
  published = {("resnet20", "adam_l2"): (1e-3, 5e-4), ("resnet20", "adamw"): (1e-3, 5e-5),
               ("resnet56", "adam_l2"): (5e-4, 5e-4), ("resnet56", "adamw"): (5e-4, 5e-5)}
  for run in plan[:8]:
    cfg = train.config_from_argv(run.flags(p, tmp_path))
    assert (cfg.lr, cfg.weight_decay) == published[(run.model, run.optimizer)]
    assert (cfg.model, cfg.use_bn, cfg.zero_init_residual, cfg.convention, cfg.schedule) == (
        run.model, False, False, "paper", "constant")
    assert (cfg.batch_size, cfg.epochs, cfg.train_subset, cfg.val_size, cfg.test_subset) == (
        128, 100, 10_000, 2_000, None)
    assert (cfg.eval_every, cfg.save_predictions, cfg.augment) == (5, True, True)
    # pairing: the seed sets both the initialisation and the data order
    assert cfg.seed == cfg.init_seed == run.seed
    assert cfg.loss_multiplier == get_recipe(run.recipe).loss_multiplier == 1.0


def _fake_run_dir(runs_dir: pathlib.Path, run: ps.PaperRun, status="complete",
                  wall=1800.0) -> None:
  d = runs_dir / run.name
  d.mkdir(parents=True)
  (d / "resolved_config.json").write_text(json.dumps(
      {"model": run.model, "lr": 1e-3, "weight_decay": 5e-4, "out": str(d.resolve()),
       "dataset": "npz:/abs/data/cifar10", "data_dir": None}))
  rows = [{"epoch": e, "train_loss": 2.0 / e, "val_acc": 0.1 * e, "update_log2_hist": [e, 1],
           **({"test_acc": 0.3} if e == 2 else {})} for e in (1, 2)]
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  if status:
    (d / "summary.json").write_text(json.dumps(
        {"status": status, "val_acc": 0.2, "test_acc": 0.3, "epochs": 2, "wall_seconds": wall}))
  np.savez(d / "test_predictions.npz", epoch=np.int32(2),
           predictions=np.array([1, 2, 3, 0], np.uint8), labels=np.array([1, 2, 0, 0]))


def test_export_is_portable_and_keeps_the_predictions(tmp_path):
  p = ps.PROTOCOLS["smoke"]
  run = ps.planned(p)[0]
  _fake_run_dir(tmp_path / "runs", run, status=None)
  assert ps.export(run, p, tmp_path / "runs", tmp_path / "rec") is None  # unfinished
  (tmp_path / "runs" / run.name / "summary.json").write_text(json.dumps(
      {"status": "complete", "epochs": 2, "test_acc": 0.3}))
  rec = json.loads(ps.export(run, p, tmp_path / "runs", tmp_path / "rec").read_text())
  assert rec["config"]["out"] == run.name and rec["config"]["dataset"] == "npz:cifar10"
  assert str(tmp_path) not in json.dumps(rec)
  assert rec["curves"]["test_acc"] == [None, 0.3] and rec["curves"]["train_loss"] == [2.0, 1.0]
  assert rec["test_predictions"] == {"epoch": 2, "predicted": "1230", "label": "1200"}
  assert rec["run"] == dataclasses.asdict(run) and ps.load_result(run.name, tmp_path / "rec")


def _strings(obj):
  if isinstance(obj, str):
    yield obj
  elif isinstance(obj, dict):
    for v in obj.values():
      yield from _strings(v)
  elif isinstance(obj, list):
    for v in obj:
      yield from _strings(v)


@pytest.mark.parametrize("folder", ["depth_study", "paper_settings"])
def test_committed_records_carry_no_machine_path(folder):
  files = sorted((depth.ROOT / "docs" / "results" / folder).glob("*.json"))
  if not files:
    pytest.skip(f"no {folder} records committed yet")
  for f in files:
    for s in _strings(json.loads(f.read_text())):
      assert not (s.startswith("/") or s.startswith("npz:/") or s.startswith("~")), (f.name, s)


def test_a_run_starts_only_if_its_estimate_ends_before_the_deadline(tmp_path, monkeypatch):
  import datetime

  p = ps.PROTOCOLS["cpu"]
  plan = ps.planned(p)
  runs_dir, res = tmp_path / "runs", tmp_path / "rec"
  # A recorded ResNet-20 run of 30 minutes: the next ResNet-20 run is
  # estimated at 30 minutes, a ResNet-56 run at 30 * 56 / 20 = 84.
  _fake_run_dir(runs_dir, plan[0], wall=1800.0)
  ps.export(plan[0], p, runs_dir, res)
  assert ps.estimated_seconds(plan[1], res) == 1800.0
  assert ps.estimated_seconds(plan[4], res) == pytest.approx(1800.0 * 56 / 20)
  started = []
  clock = [datetime.datetime(2026, 1, 1, 12, 0)]
  monkeypatch.setattr(ps, "_now", lambda: clock[0])

  class Done:
    returncode = 0

    def wait(self):
      return 0

  def fake_launch(flags, log, core):
    name = pathlib.Path(flags[flags.index("--out") + 1]).name
    run = next(r for r in plan if r.name == name)
    started.append(name)
    wall = 1800.0 if run.model == "resnet20" else 5040.0
    _fake_run_dir(runs_dir, run, wall=wall)
    clock[0] += datetime.timedelta(seconds=wall)
    return Done()

  monkeypatch.setattr(ps, "launch_train", fake_launch)
  # 12:00 + 30 min (run 2) + 30 min (run 3) = 13:00; run 4 would end at 13:31
  until = datetime.datetime(2026, 1, 1, 13, 20)
  assert ps.run_study(p, runs_dir, res, until=until) == 0
  assert started == [plan[1].name, plan[2].name]
  # without a deadline, --max-runs bounds the count: run 4, then a ResNet-56 run
  assert ps.run_study(p, runs_dir, res, max_runs=2) == 0
  assert started[2:] == [plan[3].name, plan[4].name]


def test_paired_prediction_stats_against_the_closed_form():
  rng = np.random.default_rng(0)
  n, a_only, b_only, both = 1000, 30, 10, 700
  labels = rng.integers(0, 10, n)
  ca = np.zeros(n, bool)
  cb = np.zeros(n, bool)
  ca[:both] = cb[:both] = True
  ca[both:both + a_only] = True
  cb[both + a_only:both + a_only + b_only] = True
  wrong = (labels + 1) % 10
  rec = lambda c: {"test_predictions": {
      "predicted": "".join(map(str, np.where(c, labels, wrong))),
      "label": "".join(map(str, labels))}}
  s = rep.paired_prediction_stats(rec(ca), rec(cb))
  diff = (a_only - b_only) / n
  # d_i in {-1, 0, 1}: sample variance of the per-image differences, ddof=1
  var = ((a_only + b_only) / n - diff ** 2) * n / (n - 1)
  assert (s["n"], s["a_only"], s["b_only"]) == (n, a_only, b_only)
  assert s["diff"] == pytest.approx(diff, abs=1e-15)
  assert s["se"] == pytest.approx(math.sqrt(var / n), rel=1e-12)
  other = rec(cb)
  other["test_predictions"]["label"] = "0" * n  # different test sets: no pairing
  assert rep.paired_prediction_stats(rec(ca), other) is None


def test_in_range_iqr_of_a_histogram():
  # uniform on [-8, 0]: quartiles at -6 and -2
  assert rep.in_range_iqr_octaves([5] * 16, [-8.0, 0.0]) == pytest.approx(4.0)
  # all mass in one bin of width 0.5: the IQR is half that bin
  assert rep.in_range_iqr_octaves([0, 0, 8, 0], [0.0, 2.0]) == pytest.approx(0.25)
  assert rep.in_range_iqr_octaves([0, 0], [0.0, 1.0]) is None


def _fake_record(model, opt, seed, losses, tests, correct, hours=0.5):
  labels = "".join(str(i % 10) for i in range(len(correct)))
  pred = "".join(l if c else str((int(l) + 1) % 10) for l, c in zip(labels, correct))
  return {"run": {"model": model, "optimizer": opt, "seed": seed}, "status": "complete",
          "protocol": dataclasses.asdict(ps.PROTOCOLS["cpu"]),
          "config": {"lr": 1e-3, "weight_decay": 5e-4},
          "final": {"epochs": len(losses), "train_loss": losses[-1], "val_acc": 0.5,
                    "wall_seconds": hours * 3600},
          "curves": {"epoch": list(range(1, len(losses) + 1)), "train_loss": losses,
                     "test_acc": tests, "val_acc": [0.1, 0.25] + [0.5] * (len(losses) - 2)},
          "final_update_hist": {"update_log2_hist": [0, 4, 4, 0],
                                "update_log2_edges": [-4.0, 0.0], "update_iqr_octaves": 3.0},
          "test_predictions": {"epoch": len(losses), "predicted": pred, "label": labels}}


def test_report_pairs_by_seed_and_renders_every_number(tmp_path):
  recs = []
  for seed in (0, 1):
    for model, gap in (("resnet20", 0.1), ("resnet56", 0.3)):
      base = [2.0, 1.0, 0.5, 0.4]
      recs.append(_fake_record(model, "adam_l2", seed, base, [None, 0.5, None, 0.6],
                               [True] * 6 + [False] * 4))
      recs.append(_fake_record(model, "adamw", seed, [x - gap for x in base],
                               [None, 0.55, None, 0.7], [True] * 7 + [False] * 3))
  for i, r in enumerate(recs):
    (tmp_path / f"{i}.json").write_text(json.dumps(r))
  records = rep.load_records(tmp_path)
  s = rep.summarize(records)
  assert [(p["model"], p["seed"]) for p in s["pairs"]] == [
      ("resnet20", 0), ("resnet20", 1), ("resnet56", 0), ("resnet56", 1)]
  p56 = s["pairs"][2]
  assert p56["train_loss_gap"] == pytest.approx(-0.3)
  assert p56["train_loss_gap_curve"] == pytest.approx([-0.3] * 4)
  assert p56["test_acc_gap_last3"] == pytest.approx((0.55 + 0.7) / 2 - (0.5 + 0.6) / 2)
  assert (p56["final_test"]["a_only"], p56["final_test"]["b_only"]) == (1, 0)
  d = {x["model"]: x for x in s["depths"]}
  assert d["resnet56"]["train_loss_gap"]["values"] == pytest.approx([-0.3, -0.3])
  r0 = s["runs"][0]
  assert (r0["leaves_chance_epoch"], r0["iqr_in_range"], r0["iqr_loop"]) == (2, 1.0, 3.0)
  assert s["hours"] == pytest.approx(8 * 0.5)
  md = rep.render(s, records[0]["protocol"])
  assert "| resnet56 | 0 | -0.3000 | -0.3000 | +7.50 | +10.00 ± 10.00 | 1 / 0 | +0.00 |" in md
  paths = rep.figures(records, s, tmp_path / "fig")
  assert [x.name for x in paths] == ["paper_settings_curves.png", "paper_settings_gap.png"]


def test_committed_report_is_traceable():
  md = depth.ROOT / "docs" / "results" / "paper_settings.md"
  if not md.exists():
    pytest.skip("the study's report is not committed yet")
  records = rep.load_records(ps.RESULTS)
  assert md.read_text() == rep.render(rep.summarize(records), records[0]["protocol"])


@pytest.mark.slow  # trains a ResNet-20 for 3 short epochs
def test_loop_evaluates_every_n_epochs_and_saves_matching_predictions(tmp_path):
  from experiments.training.loop import run

  cfg = train.config_from_argv([
      "--dataset", "sample", "--model", "resnet20", "--no-bn", "--epochs", "3",
      "--train-subset", "256", "--batch-size", "128", "--eval-every", "2",
      "--save-predictions", "--step", "plain", "--out", str(tmp_path / "r"), "--no-progress",
      "--no-update-hist"])
  summary = run(cfg, log=lambda *_: None)
  rows = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
  assert ["test_acc" in r for r in rows] == [False, True, True]  # epoch 2, and the last
  with np.load(tmp_path / "r" / "test_predictions.npz") as f:
    assert int(f["epoch"]) == 3
    from experiments.input_pipeline import load_dataset
    assert np.array_equal(f["labels"], load_dataset("sample").test.labels)
    # the saved predictions are the ones the reported accuracy was computed from
    assert float(np.mean(f["predictions"] == f["labels"])) == pytest.approx(summary["test_acc"])
  assert summary["best_test_acc"] == max(rows[1]["test_acc"], rows[2]["test_acc"])
