"""experiments.toy.trajectories: the classic step-size lessons hold as assertions."""

import json
import os

import numpy as np
import pytest

import proxopt
from experiments.toy import trajectories as tr

STEPS = tr.DEFAULT_STEPS


@pytest.fixture(scope="module")
def results():
  return tr.run(STEPS)


def _final(results, problem, method):
  return results[problem][method]["final_loss"]


def test_sgd_step_size_lessons_on_quadratic(results):
  q = results["quadratic"]
  # Above 2 / kappa the steep coordinate is amplified by |1 - lr kappa| > 1.
  assert tr.PROBLEMS["quadratic"].lr["sgd_large"] > 2 / tr.KAPPA
  assert q["sgd_large"]["diverged"] and q["sgd_large"]["final_loss"] is None
  loss = q["sgd_large"]["loss"]
  assert np.isfinite(loss[1]) and not np.isfinite(loss[-1])
  # A good step converges; a 17x smaller one crawls along the shallow axis.
  good, small = _final(results, "quadratic", "sgd_good"), _final(results, "quadratic", "sgd_small")
  assert good < 1e-6
  assert small > 1e3 * good
  x_small = q["sgd_small"]["path"][-1]
  assert abs(x_small[1]) < 1e-3 < 1.0 < abs(x_small[0])  # steep axis done, shallow not


def test_stability_threshold_is_two_over_kappa():
  quad = tr.PROBLEMS["quadratic"]
  below = tr.losses(quad, tr.run_path(quad.fn, proxopt.classic("sgd", 0.99 * 2 / tr.KAPPA), quad.start, 400))
  above = tr.losses(quad, tr.run_path(quad.fn, proxopt.classic("sgd", 1.01 * 2 / tr.KAPPA), quad.start, 400))
  assert below[-1] < below[0] and np.isfinite(below).all()
  assert above[-1] > above[0]


def test_adam_and_momentum_beat_plain_sgd_at_same_budget(results):
  for method in ("adam", "momentum", "nesterov", "adagrad"):
    assert _final(results, "quadratic", method) < _final(results, "quadratic", "sgd_good"), method
  assert _final(results, "rosenbrock", "momentum") < 0.1 * _final(results, "rosenbrock", "sgd_good")


def test_adaptive_methods_equalize_coordinates(results):
  """First step: SGD moves mostly along the steep axis, adaptive ones equally."""
  start = np.asarray(tr.PROBLEMS["quadratic"].start)
  ratio = {}
  for method in ("sgd_good", "adagrad", "rmsprop", "adam"):
    step = results["quadratic"][method]["path"][1] - start
    ratio[method] = abs(step[1]) / abs(step[0])
  # SGD: |dy/dx| = kappa * |y0 / x0|.
  assert ratio["sgd_good"] == pytest.approx(tr.KAPPA * 1.5 / 4.5, rel=1e-9)
  for method in ("adagrad", "rmsprop", "adam"):
    # (AdaGrad starts its accumulator at 0.1, so it is only nearly 1.)
    assert ratio[method] == pytest.approx(1.0, rel=1e-2), method


def test_saddle_small_steps_linger_adaptive_escape(results):
  s = results["saddle"]
  assert _final(results, "saddle", "sgd_small") > 0.2  # f still ~ f(0, 0) = 0
  assert abs(s["sgd_small"]["path"][-1][1]) < 0.1
  for method in ("adam", "rmsprop", "adagrad", "sgd_good"):
    assert _final(results, "saddle", method) < 1e-3, method
  assert s["sgd_large"]["diverged"]


def test_decoupled_decay_moves_the_fixed_point(results):
  # Rosenbrock's minimum (1, 1) is away from 0: decay pulls AdamW/AdamProx off
  # it, by nearly the same amount (AdamW is AdamProx to first order).
  adamw, adamprox = _final(results, "rosenbrock", "adamw"), _final(results, "rosenbrock", "adamprox")
  assert adamw > 3 * _final(results, "rosenbrock", "adam")
  assert adamprox == pytest.approx(adamw, rel=0.05)
  pw = results["rosenbrock"]["adamw"]["path"][-1]
  pp = results["rosenbrock"]["adamprox"]["path"][-1]
  assert np.linalg.norm(pw - pp) < 0.02


def test_schedule_path_uses_step_decay(results):
  """The scheduled path equals momentum driven by the same step_decay by hand."""
  quad = tr.PROBLEMS["quadratic"]
  lr0 = 2 * quad.lr["momentum"]
  path = results["quadratic"]["momentum_step_decay"]["path"]
  x, buf = np.asarray(quad.start, np.float64), np.zeros(2)
  for t in range(STEPS):
    g = np.array([x[0], tr.KAPPA * x[1]])
    buf = g + 0.9 * buf
    # optax evaluates the schedule in float32: lr0 rounded, then exact halvings.
    x = x - float(np.float32(lr0)) * 0.5 ** (t // (STEPS // 4)) * buf
    np.testing.assert_allclose(path[t + 1], x, rtol=1e-9, atol=1e-12)


def test_cli_writes_png_and_json(tmp_path, capsys):
  out = tr.main(["--out", str(tmp_path), "--steps", "25", "--problems", "quadratic"])
  png = tmp_path / "trajectories.png"
  js = tmp_path / "trajectories.json"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
  data = json.loads(js.read_text())
  assert data == out and data["steps"] == 25
  finals = data["problems"]["quadratic"]["final_loss"]
  assert set(finals) == set(tr.METHODS)
  # The JSON number is the loss at the end of that path.
  quad = tr.PROBLEMS["quadratic"]
  want = tr.losses(quad, tr.run_path(quad.fn, proxopt.classic("adam", quad.lr["adam"]), quad.start, 25))[-1]
  assert finals["adam"] == pytest.approx(want, rel=1e-12)
  printed = capsys.readouterr().out
  assert "Adam" in printed and "quadratic" in printed
  assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # atomic writes


def test_cli_rejects_bad_steps(tmp_path):
  with pytest.raises(SystemExit):
    tr.main(["--out", str(tmp_path), "--steps", "0"])
