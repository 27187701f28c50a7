r"""Tables and figures of the published-settings study (:mod:`experiments.study.paper_settings`).

``python -m experiments.study.paper_settings collect`` reads the records in
``docs/results/paper_settings/*.json`` (nothing else: a fresh clone rebuilds
the report) and writes

- ``docs/results/paper_settings.md``: per run, the final training loss,
  validation and test accuracy (the mean of the last three test
  evaluations), the epoch where validation accuracy first reaches 20% (twice
  chance) and the spread of the Adam direction at the last epoch; per pair of
  one seed (same initialisation, batches and augmentation), the paired
  differences AdamW - Adam-L2: training loss at the end and averaged over the
  last ten epochs, and test accuracy with its per-example standard error
  (from the saved predictions: ``sd(d_i)/sqrt(n)`` with ``d_i`` in {-1, 0, 1}
  the per-image difference in correctness, and the two discordant counts of
  McNemar's test); per depth, mean +- sd over seeds;
- ``docs/figures/paper_settings_curves.png``: paired training-loss curves
  per depth (log scale) and the gap AdamW - Adam-L2 per epoch;
- ``docs/figures/paper_settings_gap.png``: the gaps against depth with error
  bars.

The spread is the inter-quartile range in octaves of the pooled histogram of
``log2|m_hat / (sqrt(v_hat) + eps)|`` recorded at the last epoch, counting
only the values inside its range (``in-range``): the loop's own
``update_iqr_octaves`` also counts values below the range, which are the
directions an L2 term has driven towards 0.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np

from experiments.files import write_figure, write_text
from experiments.study.depth_report import _fmt, _ms, in_range_iqr_octaves, load_records
from experiments.study.report import COLOR, LABEL

CHANCE_EXIT = 0.20  # validation accuracy that counts as having left chance (10 classes)
LAST_TESTS = 3  # final test accuracy: the mean of the last three evaluations
LAST_EPOCHS = 10  # the training-loss gap is also averaged over the last ten epochs
PAIR = ("adamw", "adam_l2")


def _depth(model: str) -> int:
  return int(model.replace("resnet", ""))


def run_summary(rec: dict) -> dict:
  """The numbers of one run."""
  cur = rec["curves"]
  tests = [v for v in cur["test_acc"] if v is not None]
  val = cur.get("val_acc") or []
  exit_epoch = next((e for e, v in zip(cur["epoch"], val) if v is not None and v >= CHANCE_EXIT),
                    None)
  h = rec.get("final_update_hist") or {}
  iqr = (in_range_iqr_octaves(h["update_log2_hist"], h["update_log2_edges"])
         if h.get("update_log2_hist") else None)
  return {
      "name": f"{rec['run']['model']}-{rec['run']['optimizer']}-s{rec['run']['seed']}",
      "model": rec["run"]["model"], "optimizer": rec["run"]["optimizer"],
      "seed": rec["run"]["seed"], "status": rec["status"],
      "alpha": rec["config"]["lr"], "lam": rec["config"]["weight_decay"],
      "epochs": rec["final"].get("epochs"), "train_loss": rec["final"].get("train_loss"),
      "train_loss_last": float(np.mean(cur["train_loss"][-LAST_EPOCHS:])),
      "val_acc": rec["final"].get("val_acc"),
      "test_acc_last3": float(np.mean(tests[-LAST_TESTS:])) if tests else None,
      "test_acc_last3_swing": (float(np.ptp(tests[-LAST_TESTS:])) if len(tests) >= LAST_TESTS
                               else None),
      "leaves_chance_epoch": exit_epoch, "iqr_in_range": iqr,
      "iqr_loop": (h.get("update_iqr_octaves") if h.get("update_iqr_octaves") is not None
                   else (cur.get("update_iqr_octaves") or [None])[-1]),
      "minutes": (rec["final"].get("wall_seconds") or 0.0) / 60,
  }


def paired_prediction_stats(a: dict, b: dict) -> dict | None:
  """Per-example comparison of two runs' final test predictions:
  ``diff`` = acc(a) - acc(b), its standard error ``sd(d_i)/sqrt(n)``, and the
  discordant counts (a right and b wrong, a wrong and b right)."""
  pa, pb = a.get("test_predictions"), b.get("test_predictions")
  if not pa or not pb or pa["label"] != pb["label"]:
    return None
  lab = np.frombuffer(pa["label"].encode(), np.uint8)
  ca = np.frombuffer(pa["predicted"].encode(), np.uint8) == lab
  cb = np.frombuffer(pb["predicted"].encode(), np.uint8) == lab
  d = ca.astype(float) - cb.astype(float)
  return {"n": int(d.size), "diff": float(d.mean()),
          "se": float(d.std(ddof=1) / math.sqrt(d.size)),
          "a_only": int((ca & ~cb).sum()), "b_only": int((~ca & cb).sum())}


def summarize(records: list[dict]) -> dict:
  """The numbers of the report, JSON-ready."""
  runs = sorted((run_summary(r) for r in records),
                key=lambda s: (_depth(s["model"]), s["seed"], s["optimizer"]))
  by = {(r["run"]["model"], r["run"]["seed"], r["run"]["optimizer"]): r for r in records}
  pairs = []
  for (model, seed, opt), rec in sorted(by.items(), key=lambda kv: (_depth(kv[0][0]), kv[0][1])):
    if opt != PAIR[0] or (model, seed, PAIR[1]) not in by:
      continue
    other = by[(model, seed, PAIR[1])]
    if rec["status"] != "complete" or other["status"] != "complete":
      continue
    sa, sb = run_summary(rec), run_summary(other)
    la, lb = rec["curves"]["train_loss"], other["curves"]["train_loss"]
    n = min(len(la), len(lb))
    pairs.append({
        "model": model, "seed": seed,
        "train_loss_gap": sa["train_loss"] - sb["train_loss"],
        "train_loss_gap_last": sa["train_loss_last"] - sb["train_loss_last"],
        "train_loss_gap_curve": [x - y for x, y in zip(la[:n], lb[:n])],
        "test_acc_gap_last3": sa["test_acc_last3"] - sb["test_acc_last3"],
        "val_acc_gap": sa["val_acc"] - sb["val_acc"],
        "final_test": paired_prediction_stats(rec, other),
    })
  depths = []
  for model in sorted({p["model"] for p in pairs}, key=_depth):
    ps = [p for p in pairs if p["model"] == model]
    depths.append({"model": model, "seeds": [p["seed"] for p in ps],
                   **{k: _ms(p[k] for p in ps) for k in (
                       "train_loss_gap", "train_loss_gap_last", "test_acc_gap_last3",
                       "val_acc_gap")}})
  hours = sum(r["minutes"] for r in runs) / 60
  return {"runs": runs, "pairs": pairs, "depths": depths, "hours": hours}


def _num(v, digits=3, scale=1.0, sign=False) -> str:
  if v is None:
    return "-"
  return f"{v * scale:{'+' if sign else ''}.{digits}f}"


def render(summary: dict, protocol: dict | None) -> str:
  out = ["<!-- generated by `python -m experiments.study.paper_settings collect`; "
         "do not edit -->", ""]
  if protocol:
    out += [f"Protocol: {protocol['dataset']} (JPEG-q75 copy of CIFAR-10), "
            f"{protocol['train_subset']} training images, a disjoint {protocol['val_size']}-image "
            f"validation split, the full test set (every {protocol['eval_every']} epochs); "
            f"{protocol['epochs']} epochs at batch 128, constant step size, the paper's "
            f"initialisation and published (alpha, lambda); no BatchNorm. "
            f"{len(summary['runs'])} runs recorded, {summary['hours']:.1f} hours of "
            "training (wall time, one run at a time on 2 cores).", ""]
  out += ["### Runs", "",
          "| model | optimizer | seed | alpha | lambda (paper) | train loss | val acc "
          "| test acc (last 3 evals) | val acc >= 20% at epoch | IQR in-range (octaves) "
          "| IQR with out-of-range | minutes |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in summary["runs"]:
    out.append(
        f"| {r['model']} | {LABEL[r['optimizer']]} | {r['seed']} | {r['alpha']:g} "
        f"| {r['lam']:g} | {_num(r['train_loss'], 4)} | {_num(r['val_acc'], 1, 100)} "
        f"| {_num(r['test_acc_last3'], 1, 100)} | {r['leaves_chance_epoch'] or 'never'} "
        f"| {_num(r['iqr_in_range'], 2)} | {_num(r['iqr_loop'], 2)} | {r['minutes']:.0f} |"
        + ("" if r["status"] == "complete" else f" {r['status']}"))
  out += ["", f"### Paired differences {LABEL[PAIR[0]]} − {LABEL[PAIR[1]]} "
          "(same seed = same initialisation, batches and augmentation)", "",
          "| model | seed | train loss (final) | train loss (last 10 epochs) "
          "| test acc, last 3 evals (points) | final test acc ± per-example SE (points) "
          f"| images only {LABEL[PAIR[0]]} / only {LABEL[PAIR[1]]} gets right | val acc (points) |",
          "|---|---|---|---|---|---|---|---|"]
  for p in summary["pairs"]:
    ft = p["final_test"]
    out.append(
        f"| {p['model']} | {p['seed']} | {_num(p['train_loss_gap'], 4, sign=True)} "
        f"| {_num(p['train_loss_gap_last'], 4, sign=True)} "
        f"| {_num(p['test_acc_gap_last3'], 2, 100, True)} "
        + (f"| {ft['diff'] * 100:+.2f} ± {ft['se'] * 100:.2f} | {ft['a_only']} / {ft['b_only']} "
           if ft else "| - | - ")
        + f"| {_num(p['val_acc_gap'], 2, 100, True)} |")
  swings = [r["test_acc_last3_swing"] for r in summary["runs"]
            if r["test_acc_last3_swing"] is not None]
  if summary["pairs"] and swings:
    out += ["", "The per-example standard error covers the sampling of the test images only, for "
            "the two final iterates. With a constant step size one iterate's test accuracy moves "
            "between evaluations five epochs apart (up to "
            f"{max(swings) * 100:.1f} points over the last three evaluations of these runs), so "
            "the mean of the last three evaluations is the test statistic to compare."]
  out += ["", "### Per depth (mean ± sd over seeds)", "",
          "| model | train loss gap (final) | train loss gap (last 10 epochs) "
          "| test acc gap, last 3 evals (points) | val acc gap (points) |",
          "|---|---|---|---|---|"]
  for d in summary["depths"]:
    out.append(f"| {d['model']} | {_fmt(d['train_loss_gap'], 1, 4)} "
               f"| {_fmt(d['train_loss_gap_last'], 1, 4)} "
               f"| {_fmt(d['test_acc_gap_last3'], 100, 2)} | {_fmt(d['val_acc_gap'], 100, 2)} |")
  return "\n".join(out) + "\n"


def figures(records: list[dict], summary: dict, fig_dir: pathlib.Path) -> list[pathlib.Path]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  models = sorted({r["run"]["model"] for r in records}, key=_depth)
  if not models:
    return []
  paths = []
  fig, axes = plt.subplots(2, len(models), figsize=(4.4 * len(models), 6.4), squeeze=False)
  for j, model in enumerate(models):
    for rec in records:
      r = rec["run"]
      if r["model"] != model or r["optimizer"] not in PAIR:
        continue
      # From epoch 2: without BN the deep networks' first epoch is a blow-up (mean
      # loss 551 at depth 56) that would flatten every later difference.
      y = rec["curves"]["train_loss"][1:]
      axes[0, j].plot(rec["curves"]["epoch"][1:], y, color=COLOR[r["optimizer"]],
                      ls="-" if r["seed"] == 0 else "--", lw=1,
                      label=f"{LABEL[r['optimizer']]} s{r['seed']}")
    for p in summary["pairs"]:
      if p["model"] == model:
        g = p["train_loss_gap_curve"][1:]
        axes[1, j].plot(np.arange(2, len(g) + 2), g, color="k",
                        ls="-" if p["seed"] == 0 else "--", lw=1, label=f"seed {p['seed']}")
    axes[0, j].set(title=f"{model}, no BN", ylabel="training loss", yscale="log")
    axes[1, j].axhline(0, color="0.6", lw=0.8)
    axes[1, j].set(xlabel="epoch (from 2)",
                   ylabel=f"training loss {LABEL[PAIR[0]]} − {LABEL[PAIR[1]]}")
    axes[0, j].legend(fontsize=7)
    if summary["pairs"]:
      axes[1, j].legend(fontsize=7)
  fig.tight_layout()
  paths.append(write_figure(fig_dir / "paper_settings_curves.png", fig))

  if summary["depths"]:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    x = [_depth(d["model"]) for d in summary["depths"]]
    for ax, key, sc, lab in (
        (axes[0], "train_loss_gap_last", 1, "training loss gap (last 10 epochs)"),
        (axes[1], "test_acc_gap_last3", 100, "test accuracy gap (points)")):
      ax.errorbar(x, [d[key]["mean"] * sc for d in summary["depths"]],
                  yerr=[(d[key]["sd"] or 0) * sc for d in summary["depths"]],
                  marker="o", capsize=3, color=COLOR[PAIR[0]])
      for p in summary["pairs"]:
        ax.plot(_depth(p["model"]), p[key] * sc, "x", color="0.4")
      ax.axhline(0, color="0.6", lw=0.8)
      ax.set(xlabel="depth (no BN)", ylabel=lab, xticks=x)
    # The pair in one title: in the y labels it was cut off at this height.
    fig.suptitle(f"{LABEL[PAIR[0]]} − {LABEL[PAIR[1]]}, mean ± sd over seeds (x: one seed)")
    fig.tight_layout()
    paths.append(write_figure(fig_dir / "paper_settings_gap.png", fig))
  return paths


def collect(results: pathlib.Path, out_md: pathlib.Path, fig_dir: pathlib.Path) -> int:
  records = load_records(results)
  if not records:
    raise SystemExit(f"no records in {results}: run `python -m experiments.study.paper_settings "
                     "run` first.")
  s = summarize(records)
  write_text(out_md, render(s, records[0].get("protocol")))
  paths = figures(records, s, fig_dir)
  print(f"wrote {out_md} and {', '.join(map(str, paths))}")
  return 0
