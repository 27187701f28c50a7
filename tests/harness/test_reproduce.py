"""Tests for experiments.study: spec (the study definition), runner and report
(aggregation, tables, figures) and for the committed report's traceability."""

import json
import pathlib

import numpy as np
import pytest

from experiments import train
from experiments.configs.default import Config
from experiments.configs.recipes import get_recipe
from experiments.study import report as reproduce_report
from experiments.study import runner
from experiments.study import spec as reproduce
from experiments.training.optimizer import optax_weight_decay

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _resolved(run, scale="cpu", runs_dir=pathlib.Path("/tmp/r")):
  return train.config_from_argv(run.flags(scale, runs_dir)).to_dict()


def test_study_covers_the_issue_and_uses_the_paper_settings():
  runs = reproduce.study("cpu")
  assert len(runs) == len({(r.part, r.name) for r in runs}) == 45
  assert {r.seed for r in runs} == {0, 1, 2}
  # Seed 0 of every part comes first, so partial studies are balanced.
  assert [r.seed for r in runs] == sorted(r.seed for r in runs)
  for run in runs:
    cfg = _resolved(run)
    rec = get_recipe(run.recipe)
    assert (cfg["model"], cfg["optimizer"]) == (rec.model, rec.optimizer)
    assert cfg["lr"] == rec.paper_alpha and cfg["weight_decay"] == rec.paper_lambda
    assert cfg["convention"] == "paper" and cfg["schedule"] == "constant"
    assert cfg["use_bn"] == run.use_bn and cfg["loss_multiplier"] == run.loss_multiplier
    assert cfg["seed"] == cfg["init_seed"] == run.seed
    assert (cfg["epochs"], cfg["train_subset"], cfg["test_subset"]) == (5, 5120, 2000)
    assert cfg["out"].endswith(f"{run.part}/{run.name}")
    # The optax coefficient is lambda/alpha for the decoupled optimizers.
    want = rec.paper_lambda if rec.optimizer == "adam_l2" else rec.paper_lambda / rec.paper_alpha
    assert optax_weight_decay(Config.from_dict(cfg)) == pytest.approx(want, rel=1e-12)
  depth = {(get_recipe(r.recipe).model, get_recipe(r.recipe).optimizer)
           for r in runs if r.part == "depth"}
  assert depth == {(m, o) for m in reproduce.SCALES["cpu"]["depths"] for o in reproduce.OPTIMIZERS}
  assert {r.loss_multiplier for r in runs if r.part == "mult"} == {10.0, 100.0}
  assert all(r.use_bn for r in runs if r.part == "bn")


def test_paper_scale_is_the_published_protocol():
  runs = reproduce.study("paper")
  assert len(runs) == 3 * (5 * 3 + 2 + 4)
  for run in runs:
    cfg = _resolved(run, scale="paper")
    assert (cfg["dataset"], cfg["epochs"], cfg["batch_size"]) == ("cifar10", 300, 128)
    assert cfg["train_subset"] is None and cfg["test_subset"] is None
  assert {get_recipe(r.recipe).model for r in runs if r.part == "depth"} == {
      "resnet20", "resnet44", "resnet56", "resnet110", "resnet218"}
  assert {get_recipe(r.recipe).model for r in runs if r.part != "depth"} == {"resnet110"}


def _fake_run_dir(d: pathlib.Path, rng, epochs=3, status="complete"):
  d.mkdir(parents=True)
  (d / "resolved_config.json").write_text(json.dumps(
      {"optax_weight_decay": 0.05, "train_size": 256, "test_size": 200, "epochs": epochs,
       "steps_per_epoch": 2, "num_params": 10, "step_impl": "nofusion"}))
  rows = []
  for e in range(1, epochs + 1):
    hist = rng.integers(0, 50, 160).tolist()
    rows.append({"epoch": e, "step": 2 * e, "train_loss": float(rng.uniform(0.5, 2)),
                 "train_acc": 0.3, "test_loss": 2.0, "test_acc": float(rng.uniform(0.2, 0.6)),
                 "update_iqr_octaves": float(rng.uniform(1, 5)),
                 "update_within_one_octave": 0.4, "update_median_log2": -3.0,
                 "update_hist_of": "adam_direction", "update_log2_hist": hist,
                 "update_log2_edges": [-32.0, 8.0], "wall_seconds": 10.0 * e})
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (d / "summary.json").write_text(json.dumps({"status": status, "epochs": epochs,
                                              "median_step_seconds": 0.5}))
  return rows


def test_collect_tables_equal_numpy_and_render(tmp_path):
  rng = np.random.default_rng(0)
  runs_dir = tmp_path / "runs"
  written = {}
  for run in reproduce.study("smoke"):
    # One unfinished run and one finished but shorter than the scale (being
    # extended): both must be left out of every mean.
    key = (run.part, run.seed, run.recipe)
    status = "running" if key == ("depth", 1, "resnet44-nobn-adamw") else "complete"
    epochs = 1 if key == ("depth", 1, "resnet56-nobn-adamw") else 3
    written[(run.part, run.name)] = _fake_run_dir(runs_dir / run.part / run.name, rng,
                                                  epochs=epochs, status=status)
  results, figs = tmp_path / "res" / "reproduction.json", tmp_path / "figs"
  assert reproduce_report.collect("smoke", runs_dir, results, figs) == 0
  data = json.loads(results.read_text())
  for name in ("repro_depth.png", "repro_loss_multiplier.png", "repro_adamw_vs_adamprox.png",
               "repro_update_hist.png"):
    assert (figs / name).stat().st_size > 10_000
  t = data["tables"]

  def final(part, name, key):
    return written[(part, name)][-1][key]

  row = next(r for r in t["depth"] if (r["model"], r["optimizer"]) == ("resnet44", "adam_l2"))
  vals = [final("depth", f"resnet44-nobn-adam_l2-s{s}", "test_acc") for s in (0, 1)]
  assert row["test_acc"]["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
  assert row["test_acc"]["sd"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
  row = next(r for r in t["depth"] if (r["model"], r["optimizer"]) == ("resnet44", "adamw"))
  assert row["test_acc"]["n"] == 1 and row["test_acc"]["sd"] is None  # the running one is out
  row56 = next(r for r in t["depth"] if (r["model"], r["optimizer"]) == ("resnet56", "adamw"))
  assert row56["test_acc"]["n"] == 1  # the 1-epoch one is out (smoke scale: 2 epochs)
  gap = next(r for r in t["depth"] if r["model"] == "resnet20" and "paired" in r["optimizer"])
  diffs = [final("depth", f"resnet20-nobn-adamw-s{s}", "train_loss")
           - final("depth", f"resnet20-nobn-adam_l2-s{s}", "train_loss") for s in (0, 1)]
  assert gap["train_loss"]["mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
  # Loss-multiplier rows: the recorded cross-entropy (train.py logs it before the multiplier).
  m = next(r for r in t["mult"] if (r["optimizer"], r["loss_multiplier"]) == ("adamw", 100))
  vals = [final("mult", f"resnet20-nobn-x100-adamw-s{s}", "train_loss") for s in (0, 1)]
  assert m["train_loss"]["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
  x1 = [written[("depth", f"resnet20-nobn-adamw-s{s}")] for s in (0, 1)]
  x100 = [written[("mult", f"resnet20-nobn-x100-adamw-s{s}")] for s in (0, 1)]
  assert m["loss_change_epoch1"] == pytest.approx(
      np.mean([abs(a[0]["train_loss"] - b[0]["train_loss"]) for a, b in zip(x100, x1)]), abs=1e-12)
  assert m["loss_change_max"] == pytest.approx(max(
      abs(ra["train_loss"] - rb["train_loss"]) for a, b in zip(x100, x1) for ra, rb in zip(a, b)),
      abs=1e-12)
  # AdamW vs AdamProx: the largest gap over every epoch and seed.
  p = next(r for r in t["prox_gap"] if r["model"] == "resnet20")
  want = max(abs(a["test_acc"] - b["test_acc"])
             for s in (0, 1)
             for a, b in zip(written[("depth", f"resnet20-nobn-adamw-s{s}")],
                             written[("depth", f"resnet20-nobn-adamprox-s{s}")]))
  assert p["max_test_acc_gap"] == pytest.approx(want, abs=1e-12)
  md = results.with_name("reproduction_tables.md").read_text()
  assert md == reproduce_report.render_tables(data)
  assert f"{100 * row['test_acc']['mean']:.1f} (n=1)" in md


def test_collect_without_runs_says_what_to_do(tmp_path):
  with pytest.raises(SystemExit, match="study run --scale smoke"):
    reproduce_report.collect("smoke", tmp_path, tmp_path / "r.json", tmp_path / "f")


def test_committed_report_is_traceable():
  """docs/reproduction.md quotes the generated tables verbatim; they are what
  render_tables makes of the committed JSON; every figure it names exists."""
  results = ROOT / "docs" / "results" / "reproduction.json"
  report = ROOT / "docs" / "reproduction.md"
  if not results.exists():
    pytest.skip("the study's results are not committed yet")
  data = json.loads(results.read_text())
  tables = results.with_name("reproduction_tables.md").read_text()
  cond = json.loads(results.with_name("conditioning.json").read_text())
  assert tables == reproduce_report.render_tables(data, cond)
  text = report.read_text()
  assert tables.strip() in text
  import re
  for fig in re.findall(r"\((figures/[\w./-]+\.png)\)", text):
    assert (ROOT / "docs" / fig).exists(), fig


def test_paper_scale_estimate_uses_measured_steps_and_a_depth_line():
  def row(model, bn, step, t, date="2026-12-04", precision="float32"):
    return {"model": model, "bn": bn, "settings": {"precision": precision},
            "machine": {"date_utc": date}, "timings": {step: {"median_s": t}}}

  bench = {"rows": [
      row("resnet20", False, "kernels", 0.5),
      row("resnet20", False, "kernels", 7.0, date="2026-12-01"),  # older: superseded
      row("resnet56", False, "kernels", 1.4),
      row("resnet110", False, "kernels", 2.75),
      row("resnet110", True, "kernels", 3.0),
      # Not the step the experiments run (plain, non-default kernels, bfloat16): ignored.
      row("resnet20", False, "plain", 9.0, date="2026-12-05"),
      row("resnet20", False, "kernels:relu=xla", 9.0, date="2026-12-05"),
      row("resnet110", True, "kernels:batch_norm=flax", 9.0, date="2026-12-05"),
      row("resnet56", False, "kernels", 9.0, date="2026-12-05", precision="bfloat16"),
  ]}
  rows = {(r["model"], r["bn"]): r for r in reproduce_report.paper_scale_estimate(bench)}
  assert rows[("resnet20", False)]["step_seconds"] == 0.5
  assert rows[("resnet20", False)]["source"] == "measured"
  assert rows[("resnet110", True)]["step_seconds"] == 3.0
  # These points lie on t = 0.05 * blocks + 0.05 exactly (blocks = (n - 2) / 2).
  assert rows[("resnet44", False)]["step_seconds"] == pytest.approx(0.05 * 21 + 0.05)
  assert rows[("resnet218", False)]["step_seconds"] == pytest.approx(0.05 * 108 + 0.05)
  r = rows[("resnet110", False)]
  assert r["steps_per_run"] == 300 * 390 and r["runs"] == 3 * (3 + 4)
  assert r["hours_all_runs"] == pytest.approx(21 * 300 * 390 * 2.75 / 3600)
  assert sum(x["runs"] for x in rows.values()) == len(reproduce.study("paper"))


def test_epochs_override_reaches_every_command(capsys, monkeypatch):
  monkeypatch.setattr(reproduce, "SCALES", dict(reproduce.SCALES))  # undo the override after
  assert runner.main(["commands", "--scale", "cpu", "--epochs", "30"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 45 and all("--epochs 30 " in l for l in lines)
  with pytest.raises(SystemExit):
    runner.main(["commands", "--scale", "cpu", "--epochs", "0"])
