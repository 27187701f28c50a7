"""Tests for experiments.toy.conditioning (small kappa set, tiny budget, in-process)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.toy import conditioning as cond

CFG = cond.Config(
    kappas=(1.0, 1e2, 1e4),
    dim=8,
    budget=300,
    lr_grid=tuple(2.0**k for k in range(-6, 2)),
    half_lives=(math.inf, 50.0),
    lr_ii=0.05,
    half_life_ii=60.0,
)
KS = [str(k) for k in CFG.kappas]
DIAGONAL = ("diag_quadratic", "diag_logcosh")


@pytest.fixture(scope="module")
def results():
  return cond.run(CFG, checkpoint=None, log=lambda _: None)


@pytest.mark.parametrize("problem", DIAGONAL)
def test_scale_free_methods_need_the_same_steps_gd_grows(results, problem):
  steps = results["problems"][problem]["steps_to_tol"]
  for name in ("adam_eps0", "adagrad_eps0"):
    row = [steps[name][k] for k in KS]
    assert row[0] is not None and row[0] < CFG.budget
    assert row == [row[0]] * len(row), (name, row)
  gd = [steps["gd"][k] for k in KS]
  assert gd[0] is not None
  # GD's steps grow with kappa (None = not within the budget).
  assert gd[1] is None or gd[1] > gd[0]
  assert gd[2] is None or (gd[1] is not None and gd[2] > gd[1])
  assert gd[2] is None  # kappa = 1e4 needs far more than 300 steps


def _gd_steps_numpy(h, b, cfg):
  """Closed form: e_t = b * prod_{s<t} (1 - lr_s h); best over the grid."""
  best = None
  for lr0 in cfg.lr_grid:
    for hl in cfg.half_lives:
      e = b.copy()
      last_bad = 0
      for t in range(1, cfg.budget + 1):
        lr = lr0 * (1.0 if math.isinf(hl) else 2.0 ** (-(t - 1) / hl))
        e = e * (1 - lr * h)
        if not np.linalg.norm(e) / np.linalg.norm(b) <= cfg.tol:
          last_bad = t
      steps = last_bad + 1
      if steps <= cfg.budget and (best is None or steps < best):
        best = steps
  return best


def test_gd_steps_match_closed_form(results):
  data = cond.problem_data(CFG)
  got = results["problems"]["diag_quadratic"]["steps_to_tol"]["gd"]
  for i, k in enumerate(KS):
    assert got[k] == _gd_steps_numpy(data["h"][i], data["b"], CFG), k
  assert got["1.0"] == 1  # lr0 = 1 solves h = 1 in one step


@pytest.mark.parametrize("problem", DIAGONAL)
def test_decoupled_trajectories_identical_across_kappa(results, problem):
  change = results["problems"][problem]["traj_change"]
  for name in cond.STUDY_II:
    assert change[name]["1.0"] == 0.0
  for k in KS[1:]:
    assert change["adamw"][k] <= 1e-12
    assert change["adamprox"][k] <= 1e-12
    assert change["adam_l2"][k] > 1e-2


def test_rotated_quadratic_negative_control(results):
  """Honest result: a rotation defeats per-coordinate scale-freeness."""
  steps = results["problems"]["rotated_quadratic"]["steps_to_tol"]
  adam = [steps["adam_eps0"][k] for k in KS]
  assert adam[0] is not None
  assert adam[2] is None or adam[2] > adam[0]
  change = results["problems"]["rotated_quadratic"]["traj_change"]
  for name in cond.STUDY_II:
    assert change[name][KS[-1]] > 1e-2


def test_dist_to_regularized_minimizer(results):
  dist = results["problems"]["diag_quadratic"]["dist_to_reg_min"]
  # Adam-L2 minimizes f + lam/2 ||x||^2; AdamW's fixed point does not depend
  # on kappa, so its distance to the kappa-dependent x*_lambda grows.
  assert all(dist["adam_l2"][k] < 1e-3 for k in KS)
  assert dist["adamw"][KS[-1]] > dist["adamw"][KS[0]] > 1e-2


@pytest.mark.parametrize("problem", cond.PROBLEMS)
def test_regularized_minimizer_is_stationary(x64, problem):
  data = cond.problem_data(CFG)
  h, b, q = data["h"][1], data["b"], data["q"]
  x = cond.regularized_minimizer(problem, h, b, q, CFG.lam)
  grad = cond.grad_fn_for(problem, jnp.asarray(h), jnp.asarray(b), jnp.asarray(q))
  g = np.asarray(grad(jnp.asarray(x))) + CFG.lam * x
  np.testing.assert_allclose(g, 0.0, atol=1e-12)


def _check_schema(obj, kappas):
  assert set(obj["metric"]) == {"steps_to_tol", "traj_change", "dist_to_reg_min"}
  assert all(isinstance(v, str) and v for v in obj["metric"].values())
  for problem, studies in obj["problems"].items():
    assert problem in cond.PROBLEMS
    assert set(studies) == set(obj["metric"])
    for study, table in studies.items():
      expected = cond.STUDY_I if study == "steps_to_tol" else cond.STUDY_II
      assert set(table) == set(expected)
      for row in table.values():
        assert set(row) == {str(float(k)) for k in kappas}
        for v in row.values():
          assert v is None or (isinstance(v, (int, float)) and math.isfinite(v))


def test_results_schema(results):
  _check_schema(json.loads(json.dumps(results)), CFG.kappas)


def test_cli_writes_json_and_pngs(tmp_path, capsys):
  out = tmp_path / "res"
  cond.main(["--out", str(out), "--kappas", "1", "10", "--dim", "4",
             "--budget", "40", "--problems", "diag_quadratic"])
  obj = json.loads((out / "conditioning.json").read_text())
  _check_schema(obj, [1, 10])
  assert not (out / "conditioning.partial.json").exists()
  for study in obj["metric"]:
    png = (out / f"conditioning_{study}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
  printed = capsys.readouterr().out
  assert "diag_quadratic / steps_to_tol" in printed and "adam_eps0" in printed


def test_checkpoint_resume(tmp_path, monkeypatch):
  """Resume logic only: the studies are replaced by cheap recorders."""
  calls = []

  def fake_steps(problem, cfg, data):
    calls.append(problem)
    return {"gd": {"1.0": len(calls)}}, {"gd": {"1.0": None}}

  monkeypatch.setattr(cond, "study_steps_to_tol", fake_steps)
  monkeypatch.setattr(cond, "study_weight_decay", lambda p, c, d: ({}, {}))
  cfg = cond.Config(kappas=(1.0,), dim=2, problems=("diag_quadratic", "diag_logcosh"))
  ckpt = str(tmp_path / "ckpt.json")
  logs = []
  first = cond.run(cfg, checkpoint=ckpt, log=logs.append)
  assert calls == ["diag_quadratic", "diag_logcosh"]
  saved = json.loads(open(ckpt).read())
  assert saved["config_key"] == cfg.key() and set(saved["problems"]) == set(calls)
  # Simulate an interruption after the first problem.
  del saved["problems"]["diag_logcosh"]
  with open(ckpt, "w") as f:
    json.dump(saved, f)
  logs.clear()
  second = cond.run(cfg, checkpoint=ckpt, log=logs.append)
  assert any("resuming" in line for line in logs)
  assert calls[2:] == ["diag_logcosh"]  # only the missing problem re-ran
  assert second["problems"]["diag_quadratic"] == first["problems"]["diag_quadratic"]
  # A different configuration does not reuse the checkpoint.
  logs.clear()
  cond.run(cond.Config(kappas=(1.0,), dim=3, problems=cfg.problems),
           checkpoint=ckpt, log=logs.append)
  assert not any("resuming" in line for line in logs) and len(calls) == 5


def test_cli_rejects_bad_flags():
  with pytest.raises(SystemExit):
    cond.main(["--kappas", "0.5", "--no-plots"])
  with pytest.raises(SystemExit):
    cond.main(["--budget", "1", "--no-plots"])
  with pytest.raises(ValueError, match="include 1"):
    cond.study_weight_decay("diag_quadratic", cond.Config(kappas=(10.0,)),
                            cond.problem_data(cond.Config(kappas=(10.0,))))
