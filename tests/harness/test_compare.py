"""Tests of the main job (experiments.compare) and of its first part
(experiments.toy.loss_multiplier): the numbers it prints are the properties
it claims, and it writes its JSON and figure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import compare
from experiments.toy import loss_multiplier as lm


def _row(result, opt, k):
  return next(r for r in result["rows"] if r["optimizer"] == opt and r["multiplier"] == k)


@pytest.mark.slow  # the toy problem at three loss multipliers (~5 s idle)
def test_loss_multiplier_moves_adam_l2_only():
  res = lm.run(lm.Config(steps=100, multipliers=(1.0, 10.0, 100.0)))
  assert lm.largest_change(res, "adamw") < 1e-4
  assert lm.largest_change(res, "adamprox") < 1e-4
  assert lm.largest_change(res, "adam_l2") > 1e-2
  for opt in ("adamw", "adamprox"):
    assert _row(res, opt, 100.0)["weight_norm"] == pytest.approx(
        _row(res, opt, 1.0)["weight_norm"], rel=1e-5)
  # The per-step distance curve ends at the reported change's scale.
  d = res["distance"]["adam_l2"][100.0]
  assert len(d) == 100 and max(d) == pytest.approx(_row(res, "adam_l2", 100.0)["traj_change"])


def test_multiplying_the_loss_by_k_divides_adam_l2s_lambda_by_k():
  """Adam-L2 at (lambda, loss x10) runs Adam-L2 at (lambda/10, loss x1), up to eps."""
  a = lm.run(lm.Config(steps=60, lam=1e-2, multipliers=(1.0, 10.0), optimizers=("adam_l2",)))
  b = lm.run(lm.Config(steps=60, lam=1e-3, multipliers=(1.0,), optimizers=("adam_l2",)))
  for key in ("weight_norm", "train_loss"):
    assert _row(a, "adam_l2", 10.0)[key] == pytest.approx(_row(b, "adam_l2", 1.0)[key], rel=1e-4)
    # ...and not Adam-L2 at lambda itself.
    assert _row(a, "adam_l2", 1.0)[key] != pytest.approx(_row(b, "adam_l2", 1.0)[key], rel=1e-3)


@pytest.mark.parametrize("bad", [dict(multipliers=(10.0, 1.0)), dict(multipliers=(1.0, -1.0)),
                                 dict(steps=0)])
def test_loss_multiplier_rejects_bad_config(bad):
  with pytest.raises(ValueError, match="multipliers|steps"):
    lm.run(lm.Config(**bad))


@pytest.mark.slow  # the whole main job, CIFAR part included
def test_compare_prints_tables_and_writes_json_and_figure(tmp_path, capsys):
  out = tmp_path / "cmp"
  assert compare.main(["--out", str(out), "--toy-steps", "40", "--epochs", "2",
                       "--train-subset", "128", "--no-progress"]) == 0
  text = capsys.readouterr().out
  for title in ("1. The loss multiplied by k", "2. Coordinates on scales", "3. ResNet-20"):
    assert title in text
  assert f"wrote {out / 'compare.json'} and {out / 'compare.png'}" in text
  data = json.loads((out / "compare.json").read_text())
  assert {(r["optimizer"], r["multiplier"]) for r in data["cifar"]} == {
      ("adam_l2", 1.0), ("adam_l2", 100.0), ("adamw", 1.0), ("adamw", 100.0)}
  for r in data["cifar"]:
    assert len(r["curve"]) == 2 and np.isfinite(r["train_loss"]) and r["lam"] == 5e-3
    assert (r["curve_change"] == 0) if r["multiplier"] == 1 else np.isfinite(r["curve_change"])
  assert next(r for r in data["cifar"] if r["optimizer"] == "adam_l2"
              and r["multiplier"] == 100)["curve_change"] > 0
  # Part 2: GD's tuned step count grows with kappa, Adam's does not.
  steps = data["conditioning"]["steps_to_tol"]
  assert len(set(steps["adam_eps0"].values())) == 1
  assert steps["gd"]["1.0"] < (steps["gd"]["100.0"] or np.inf)
  assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # --skip-cifar: parts 1 and 2 alone.
  assert compare.main(["--out", str(out), "--toy-steps", "40", "--epochs", "2",
                       "--train-subset", "128", "--no-progress", "--skip-cifar"]) == 0


@pytest.mark.parametrize("argv, msg", [
    (["--multiplier", "1"], "--multiplier must be a positive number other than 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--dataset", "mnist"], "unknown dataset"),
])
def test_compare_bad_flags_fail_first(argv, msg, capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    compare.main(argv + ["--out", str(tmp_path)])
  assert e.value.code == 2 and msg in capsys.readouterr().err
  assert not (tmp_path / "compare.json").exists()
