"""Tests of ``experiments.tools.second_moment``: the summary's arithmetic on
arrays with a known answer, and, end to end, that its gradients are the ones the
train step saw (after one Adam step, v_hat = g^2 of that step exactly), and that the
report quotes the committed measurements."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from experiments import train
from experiments.tools import second_moment as sm
from experiments.training import loop


def test_summary_counts_shrink_and_spreads_on_known_arrays():
  rng = np.random.default_rng(0)
  g2 = {"a": rng.uniform(1e-6, 1e-2, 1000), "b": rng.uniform(1e-6, 1e-2, (10, 100))}
  # a: v_hat = g2 (no memory); b: v_hat = 4^3 g2 (every step 3 octaves smaller).
  nu = {"a": g2["a"].copy(), "b": 64.0 * g2["b"]}
  mu = {k: 0.3 * np.sqrt(v) * rng.choice([-1, 1], v.shape) for k, v in g2.items()}
  s = sm.memory_summary(mu, nu, g2, eps=0.0)
  assert s["coordinates"] == s["with_ratio"] == 2000
  assert s["share_step_shrunk_by_octaves"] == {"1": pytest.approx(0.5), "2": pytest.approx(0.5),
                                                "4": 0.0}
  assert s["log2_nu_over_g2_quantiles"]["p10"] == pytest.approx(0.0, abs=1e-12)
  assert s["log2_nu_over_g2_quantiles"]["p90"] == pytest.approx(6.0)
  # With g2 in place of v_hat every |u| is 0.3: no spread; with v_hat, half are 2^-3 of that.
  assert s["direction_with_g2"] == {"iqr_octaves": pytest.approx(0.0, abs=1e-9),
                                    "median_log2": pytest.approx(np.log2(0.3))}
  assert s["direction"]["iqr_octaves"] == pytest.approx(3.0)
  by_name = {l["name"]: l for l in s["layers"]}
  assert by_name["b"]["log2_nu_over_g2_median"] == pytest.approx(6.0)
  assert by_name["a"]["size"] == 1000 and by_name["b"]["size"] == 1000


def test_coordinates_without_gradient_have_no_ratio_and_mismatch_is_refused():
  g2 = {"w": np.array([0.0, 1.0, 4.0])}
  nu = {"w": np.array([0.0, 4.0, 4.0])}
  s = sm.memory_summary({"w": np.ones(3)}, nu, g2, eps=1e-8)
  assert s["with_ratio"] == 2 and s["coordinates"] == 3
  # v_hat's quantiles leave out the empty moment (else p10 would be -inf).
  assert s["log2_nu_quantiles"] == {p: 2.0 for p in ("p10", "p25", "p50", "p75", "p90")}
  with pytest.raises(ValueError, match="same parameter paths"):
    sm.memory_summary({"w": np.ones(3)}, nu, {"v": np.ones(3)}, eps=1e-8)


def test_weights_vs_init_separates_a_shrink_from_the_rest():
  rng = np.random.default_rng(1)
  w0 = {"a": rng.normal(size=(50, 4)), "b": rng.normal(size=30)}
  ortho = {k: rng.normal(size=v.shape) for k, v in w0.items()}
  flat0 = np.concatenate([v.ravel() for v in w0.values()])
  flat1 = np.concatenate([v.ravel() for v in ortho.values()])
  flat1 -= flat1 @ flat0 / (flat0 @ flat0) * flat0  # orthogonal to w0
  off, rest = 0, {}
  for k, v in w0.items():
    rest[k] = flat1[off:off + v.size].reshape(v.shape); off += v.size
  r = 0.3 * np.linalg.norm(flat0) / np.linalg.norm(flat1)
  s = sm.weights_vs_init(w0, {k: 0.7 * w0[k] + r * rest[k] for k in w0})
  assert s == pytest.approx({"scale": 0.7, "rest": 0.3, "norm_ratio": np.hypot(0.7, 0.3)})


def test_l2_shrink_is_the_step_size_times_wd_over_sqrt_v_weighted_by_the_squared_weights():
  # Two coordinates: v_hat 1 (rate 1e-3 * 0.5 / 1) and 1e-4 (rate 5e-4 / 1e-2 = 0.05), the
  # second holding 3/4 of |w|^2: the norm-weighted rate is 1/4 * 5e-4 + 3/4 * 0.05.
  params = {"a": np.array([1.0]), "b": np.array([np.sqrt(3.0)])}
  nu = {"a": np.array([1.0]), "b": np.array([1e-4])}
  s = sm.l2_shrink_per_step(params, nu, step_size=1e-3, wd=0.5, eps=0.0)
  assert s["norm_weighted"] == pytest.approx(0.25 * 5e-4 + 0.75 * 0.05)
  assert s["median"] == pytest.approx((5e-4 + 0.05) / 2)


def test_only_adam_aliases_are_accepted():
  assert sm.adam_hyperparameters("adamw") == {"b1": 0.9, "b2": 0.999, "eps": 1e-8}
  with pytest.raises(ValueError, match="not an Adam alias"):
    sm.adam_hyperparameters("sgdw")


@pytest.mark.slow
@pytest.mark.parametrize("weight_decay", ["0", "1"])
def test_after_one_step_the_second_moment_is_the_measured_gradient_squared(tmp_path, capsys, weight_decay):
  # One step of 32 images (one batch per epoch) at a negligible step size: the
  # checkpoint's v_hat is g_1^2, and the tool, asked for epoch 1's first batch
  # (same images, same augmentation key) at almost the same parameters, must
  # measure that g_1^2. A wrong batch, key, bias correction or restored state fails;
  # with Adam-L2's wd = 1 (wd * x comparable to the loss gradient) so does leaving
  # the L2 term out of the g Adam receives.
  out = tmp_path / "run"
  cfg = train.config_from_argv([
      "--dataset", "sample", "--model", "resnet20", "--no-bn", "--batch-size", "32",
      "--train-subset", "32", "--test-subset", "32", "--eval-batch-size", "32",
      "--optimizer", "adam_l2", "--lr", "1e-12", "--weight-decay", weight_decay, "--epochs", "1",
      "--step", "plain", "--no-progress", "--out", str(out)])
  loop.run(cfg, log=lambda *_: None)
  s = sm.measure(out, batches=1, epoch=1)
  assert (s["adam_count"], s["checkpoint_epoch"], s["gradient_epoch"]) == (1, 1, 1)
  q = s["log2_nu_over_g2_quantiles"]
  assert abs(q["p10"]) < 1e-3 and abs(q["p90"]) < 1e-3, q
  assert s["share_step_shrunk_by_octaves"]["1"] < 1e-3
  # One step of 1e-12 leaves the weights where they started.
  assert s["weights_vs_init"] == pytest.approx({"norm_ratio": 1.0, "scale": 1.0, "rest": 0.0}, abs=1e-6)
  # ...and the next epoch's batch (other images) is a different gradient.
  other = sm.measure(out, batches=1, epoch=2)["log2_nu_over_g2_quantiles"]
  assert other["p90"] - other["p10"] > 1.0, other
  # The CLI writes the same summary.
  assert sm.main([str(out), "--batches", "1", "--epoch", "1", "--out", str(tmp_path / "s.json")]) == 0
  written = json.loads((tmp_path / "s.json").read_text())
  assert written["log2_nu_over_g2_quantiles"] == pytest.approx(q)
  assert "shrunk by >= 1 / 2 / 4 octaves" in capsys.readouterr().out
  # Adam-L2 with wd > 0 reports its L2 term's shrink (1e-12 * 1 / sqrt(v_hat)); without wd it has none.
  assert ("l2_shrink_per_step" in s) == (weight_decay != "0")
  if weight_decay != "0":
    assert 0 < s["l2_shrink_per_step"]["median"] < 1e-6


def _report_table(text: str, header: str) -> dict[str, list[str]]:
  """The rows (label -> cells) of the markdown table in ``text`` whose header row starts with ``header``."""
  lines = text.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith(f"| {header} |"))
  rows = {}
  for line in lines[start:]:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip("|").split("|")]
    rows[cells[0]] = cells[1:]
  return rows


def test_the_reports_second_moment_tables_are_the_committed_measurements():
  # docs/reproduction.md quotes the tool's measurements by hand; each quoted cell must be
  # what the committed JSON (and, for the decay and L2 columns, the committed run's own
  # alpha and lambda) gives at the printed precision.
  root = pathlib.Path(__file__).resolve().parents[2]
  text = (root / "docs" / "reproduction.md").read_text()
  measured = json.loads((root / "docs" / "results" / "paper_settings_second_moment.json").read_text())
  runs = root / "docs" / "results" / "paper_settings"
  pct = lambda x: f"{100 * x:.0f}%"
  num = lambda x, f: format(x, f).replace("-", "−")
  sci = lambda x: "{:.1e}".format(x).replace("e-0", "e-")

  def check(header, run, rows):
    table = _report_table(text, header)
    cps = {c["checkpoint_epoch"]: c for c in measured["checkpoints"] if c["run"] == run}
    epochs = [int(e) for e in table[header]]
    assert epochs == sorted(cps), (header, epochs, sorted(cps))
    cfg = json.loads((runs / f"{run}.json").read_text())["config"]
    for label, cell in rows.items():
      assert table[label] == [cell(cps[e], cfg) for e in epochs], label

  # Every table opens with the memory's size and the share of steps it shrinks.
  memory_rows = {
      "median log2(v_hat / mean g^2)": lambda c, _: f"{c['log2_nu_over_g2_quantiles']['p50']:.1f}",
      "coordinates whose step is shrunk >= 2x / >= 16x": lambda c, _: (
          f"{pct(c['share_step_shrunk_by_octaves']['1'])} / {pct(c['share_step_shrunk_by_octaves']['4'])}"),
  }
  check("AdamW, ResNet-56, seed 0, after epoch", "resnet56-nobn-adamw-s0", {
      **memory_rows,
      "update spread with v_hat (octaves; the recorded one)": lambda c, _: f"{c['direction']['iqr_octaves']:.2f}",
      "update spread with mean g^2 in place of v_hat": lambda c, _: f"{c['direction_with_g2']['iqr_octaves']:.2f}",
      "AdamW's weights: scale c of w ~ c w0 (decay alone: (1 + 5e-5)^-t)": lambda c, cfg: (
          f"{c['weights_vs_init']['scale']:.3f} ({(1 + cfg['weight_decay']) ** -c['adam_count']:.3f})"),
      "rest, norm of w - c w0 over that of w0": lambda c, _: f"{c['weights_vs_init']['rest']:.2f}",
  })
  # The seed-1 tables of both optimizers go on with the same two rows.
  seed1_rows = {
      **memory_rows,
      "update spread with v_hat (octaves) / with mean g^2 in its place": lambda c, _: (
          f"{c['direction']['iqr_octaves']:.2f} / {c['direction_with_g2']['iqr_octaves']:.2f}"),
      "median v_hat (log2)": lambda c, _: num(c["log2_nu_quantiles"]["p50"], ".1f"),
  }
  check("Adam-L2, ResNet-56, seed 1, after epoch", "resnet56-nobn-adam_l2-s1", {
      **seed1_rows,
      "shrink of a weight by the L2 term per step, alpha lambda / sqrt(v_hat), median coordinate "
      "(AdamW's decay: 5e-5)": lambda c, cfg: sci(
          cfg["lr"] * cfg["weight_decay"] / 2 ** (c["log2_nu_quantiles"]["p50"] / 2)),
      "the same weighted by x^2 (the rate at which the weights' squared norm shrinks)": lambda c, _: sci(
          c["l2_shrink_per_step"]["norm_weighted"]),
      "Adam-L2's weights: scale c of w ~ c w0 / rest": lambda c, _: (
          f"{c['weights_vs_init']['scale']:.3f} / {c['weights_vs_init']['rest']:.2f}"),
  })
  check("AdamW, ResNet-56, seed 1, after epoch", "resnet56-nobn-adamw-s1", {
      **seed1_rows,
      "AdamW's weights: scale c of w ~ c w0 (decay alone) / rest": lambda c, cfg: (
          f"{c['weights_vs_init']['scale']:.3f} ({(1 + cfg['weight_decay']) ** -c['adam_count']:.3f}) / "
          f"{c['weights_vs_init']['rest']:.2f}"),
  })
