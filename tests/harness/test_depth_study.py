"""Tests of the depth study's definition (experiments.study.depth): the grid,
the selection on validation, the runs it plans from a partial record, the
exported record and the resolved training configs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import train
from experiments.study import depth


def _record(results, run, val_acc, status="complete", val_loss=1.0):
  results.mkdir(parents=True, exist_ok=True)
  (results / f"{run.name}.json").write_text(json.dumps(
      {"status": status, "final": {"val_acc": val_acc, "val_loss": val_loss}}))


def test_grid_is_two_by_two_per_optimizer_on_the_grid_model():
  p = depth.PROTOCOLS["cpu"]
  grid = depth.grid_runs(p)
  assert len(grid) == len({r.name for r in grid}) == 12
  for opt in depth.OPTIMIZERS:
    pts = {(r.lr, r.lam) for r in grid if r.optimizer == opt}
    assert pts == {(a, l) for a in p.alphas for l in p.lambda_grid(opt)}
  assert {(r.model, r.seed, r.use_bn) for r in grid} == {("resnet20", 0, False)}


def test_flags_resolve_to_the_protocol(tmp_path):
  p = depth.PROTOCOLS["cpu"]
  run = depth.DepthRun("final", "resnet56", "adamw", 1e-3, 5e-3, 1)
  cfg = train.config_from_argv(run.flags(p, tmp_path))
  assert (cfg.model, cfg.use_bn, cfg.optimizer, cfg.lr, cfg.weight_decay) == (
      "resnet56", False, "adamw", 1e-3, 5e-3)
  assert (cfg.convention, cfg.schedule, cfg.epochs, cfg.zero_init_residual) == (
      "paper", "cosine_epoch", 30, True)
  assert (cfg.train_subset, cfg.val_size, cfg.test_subset) == (10_000, 2_000, 2_000)
  assert cfg.seed == cfg.init_seed == 1 and cfg.out == str(tmp_path / run.name)


def test_selection_uses_validation_and_plans_the_next_stage(tmp_path):
  p = depth.PROTOCOLS["cpu"]
  res = tmp_path / "rec"
  assert depth.select(p, res) == {}
  assert depth.planned(p, res) == depth.grid_runs(p)  # nothing but the grid yet
  adamw = [r for r in depth.grid_runs(p) if r.optimizer == "adamw"]
  for i, r in enumerate(adamw):
    # The best validation accuracy belongs to a diverged run: it ranks last.
    _record(res, r, val_acc=[0.5, 0.6, 0.9, 0.55][i],
            status="diverged" if i == 2 else "complete")
  assert depth.select(p, res) == {"adamw": (adamw[1].lr, adamw[1].lam)}
  plan = depth.planned(p, res)
  # The deep seed-0 run first; ResNet-20 seed 0 at the chosen point is the grid
  # run itself (not planned twice); then the grid, the BN control, seed 1.
  assert plan[1:13] == depth.grid_runs(p)
  extra = plan[:1] + plan[13:]
  assert [(r.stage, r.model, r.seed, r.use_bn) for r in extra] == [
      ("final", "resnet56", 0, False), ("bn", "resnet20", 0, True),
      ("final", "resnet56", 1, False), ("final", "resnet20", 1, False),
      ("bn", "resnet20", 1, True)]
  assert all((r.optimizer, r.lr, r.lam) == ("adamw", adamw[1].lr, adamw[1].lam) for r in extra)
  # Ties on accuracy go to the lower validation loss.
  for i, r in enumerate(adamw):
    _record(res, r, val_acc=0.5, val_loss=[2.0, 1.0, 3.0, 0.5][i])
  assert depth.select(p, res)["adamw"] == (adamw[3].lr, adamw[3].lam)


def test_export_writes_the_record_of_a_finished_run_only(tmp_path):
  p = depth.PROTOCOLS["smoke"]
  run = depth.grid_runs(p)[0]
  d = tmp_path / "runs" / run.name
  d.mkdir(parents=True)
  (d / "resolved_config.json").write_text(json.dumps({"model": run.model}))
  rows = [{"epoch": e, "train_loss": 2.0 / e, "val_acc": 0.1 * e, "update_log2_hist": [e, 1]}
          for e in (1, 2)]
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert depth.export(run, p, tmp_path / "runs", tmp_path / "rec") is None  # no summary yet
  (d / "summary.json").write_text(json.dumps({"status": "complete", "val_acc": 0.2,
                                              "test_acc": 0.3, "epochs": 2}))
  path = depth.export(run, p, tmp_path / "runs", tmp_path / "rec")
  rec = json.loads(path.read_text())
  assert rec["curves"]["train_loss"] == [2.0, 1.0] and rec["curves"]["val_acc"] == [0.1, 0.2]
  assert rec["final"]["test_acc"] == 0.3 and rec["final_update_hist"]["update_log2_hist"] == [2, 1]
  assert rec["run"] == dataclasses.asdict(run) and depth.load_result(run.name, tmp_path / "rec")


@pytest.mark.slow
def test_smoke_study_runs_end_to_end(tmp_path):
  res = tmp_path / "rec"
  p = dataclasses.replace(depth.PROTOCOLS["smoke"], epochs=1, train_subset=256)
  assert depth.run_study(p, tmp_path / "runs", workers=2, pin=False, results=res,
                         max_runs=2) == 0
  assert len(list(res.glob("*.json"))) == 2


def _fake_records(tmp_path):
  """A complete fake study: grid (val acc favours alpha 1e-3, lambda 5e-3),
  then the selected point on resnet20/56 for seeds 0, 1 and the BN control."""
  p = depth.PROTOCOLS["cpu"]
  res = tmp_path / "rec"
  res.mkdir()
  proto = dataclasses.asdict(p)
  def write(run, test_acc, train_loss, status="complete"):
    rec = {"run": dataclasses.asdict(run), "protocol": proto, "status": status,
           "final": {"val_acc": 0.5 + run.lr * 10 + run.lam, "val_loss": 1.0,
                     "test_acc": test_acc, "train_loss": train_loss, "wall_seconds": 600.0},
           "curves": {"train_loss": [2.0, train_loss], "test_acc": [0.2, test_acc],
                      "update_iqr_octaves": [5.0, 2.0 + run.seed]},
           "final_update_hist": {"update_log2_hist": [0, 2, 4, 2, 0],
                                 "update_log2_edges": [-10.0, 0.0]}}
    (res / f"{run.name}.json").write_text(json.dumps(rec))
  base = {"adam_l2": 0.50, "adamw": 0.60, "adamprox": 0.61}
  for r in depth.grid_runs(p):
    write(r, base[r.optimizer] - 0.01, 1.0)
  for r in [r for r in depth.planned(p, res) if r.stage != "grid"]:
    depth_drop = 0.1 if r.model == "resnet56" and r.optimizer == "adam_l2" else 0.0
    write(r, base[r.optimizer] - depth_drop + 0.01 * r.seed, 1.0 + depth_drop)
  return p, res


def test_report_tables_pair_seeds_and_figures(tmp_path):
  from experiments.study import depth_report as rep
  p, res = _fake_records(tmp_path)
  records = rep.load_records(res)
  assert len(records) == 12 + 3 * 3 + 3 * 2  # grid, finals (the grid run is R20 seed 0), BN
  s = rep.summarize(records)
  assert s["selected"] == {o: [1e-3, 5e-3] for o in depth.OPTIMIZERS}
  c = s["cells"]["nobn/resnet56/adam_l2"]
  assert c["seeds"] == [0, 1] and c["test_acc"]["mean"] == pytest.approx(0.405)
  # R20 seed 0 is the selected grid run (test 0.49), seed 1 the final run (0.51).
  assert s["cells"]["nobn/resnet20/adam_l2"]["test_acc"]["values"] == pytest.approx([0.49, 0.51])
  gap56 = next(x for x in s["pairs"] if (x["bn"], x["model"], x["a"]) == ("nobn", "resnet56", "adamw"))
  assert gap56["test_acc"]["values"] == pytest.approx([0.2, 0.2])
  assert gap56["train_loss"]["values"] == pytest.approx([-0.1, -0.1])
  assert s["core_hours"] == pytest.approx(len(records) * 600 / 3600)
  # The last epoch's IQR as the training loop summarised it.
  assert c["update_iqr"]["values"] == [2.0, 3.0]
  md = rep.render(s, dataclasses.asdict(p))
  assert "| without | resnet56 | AdamW − Adam-L2 | 20.0 ± 0.0 (n=2) | +20.0, +20.0 |" in md
  assert md.count("**yes**") == 3
  paths = rep.figures(records, tmp_path / "fig")
  assert [x.name for x in paths] == ["depth_curves.png", "depth_gap.png", "depth_hist.png"]


def test_committed_depth_report_is_traceable():
  from experiments.study import depth_report as rep
  md = depth.ROOT / "docs" / "results" / "depth_study.md"
  if not md.exists():
    pytest.skip("the depth study's report is not committed yet")
  records = rep.load_records(depth.RESULTS)
  assert md.read_text() == rep.render(rep.summarize(records), records[0]["protocol"])
