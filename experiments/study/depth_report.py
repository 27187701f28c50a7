r"""Tables and figures of the depth study (:mod:`experiments.study.depth`).

``python -m experiments.study.depth collect`` reads the records in
``docs/results/depth_study/*.json`` (nothing else: a fresh clone can rebuild
the report) and writes

- ``docs/results/depth_study.md``: the grid with the selected points, the
  final results per depth and optimizer (mean +- sample sd over seeds,
  ``ddof=1``), the paired differences between optimizers (runs of one seed
  share the initialisation and the data order), the BN control, the spread
  of the update magnitudes at the end of training, and the CPU time used;
- ``docs/figures/depth_curves.png`` (training loss and test accuracy per
  epoch), ``depth_gap.png`` (final test accuracy and training loss against
  depth, error bars = sd over seeds), ``depth_hist.png`` (the histogram of
  ``log2|Adam direction|`` at the end of training, the paper's Fig. 4).

Every number is computed here from the records, so the markdown is a pure
function of the committed JSON (a test checks).
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from experiments.files import write_figure, write_text

from experiments.study.report import COLOR, LABEL

OPTIMIZERS = tuple(LABEL)
PAIRS = (("adamw", "adam_l2"), ("adamprox", "adamw"))


def load_records(results: pathlib.Path) -> list[dict]:
  """Every record, sorted by name."""
  return [json.loads(p.read_text()) for p in sorted(pathlib.Path(results).glob("*.json"))]


def _ms(values) -> dict:
  v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
  return {"n": len(v), "mean": float(np.mean(v)) if v else None,
          "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None, "values": v}


def _fmt(ms: dict, scale: float = 1.0, digits: int = 3) -> str:
  if not ms["n"]:
    return "-"
  s = f"{ms['mean'] * scale:.{digits}f}"
  if ms["sd"] is not None:
    s += f" ± {ms['sd'] * scale:.{digits}f}"
  return s + f" (n={ms['n']})"


def in_range_iqr_octaves(counts, edges) -> float | None:
  """Inter-quartile range (octaves = log2 units) of a histogram with equal
  bins between ``edges = [lo, hi]``, interpolating linearly inside a bin."""
  c = np.asarray(counts, float)
  if c.sum() <= 0:
    return None
  x = np.linspace(edges[0], edges[1], len(c) + 1)
  cdf = np.concatenate([[0.0], np.cumsum(c)]) / c.sum()
  q = np.interp([0.25, 0.75], cdf, x)
  return float(q[1] - q[0])


def summarize(records: list[dict]) -> dict:
  """The numbers of the report, JSON-ready."""
  by_cell: dict[tuple, list[dict]] = {}
  for rec in records:
    r = rec["run"]
    cell = ("bn" if r["use_bn"] else "nobn", r["model"], r["optimizer"])
    if r["stage"] == "grid":
      continue
    by_cell.setdefault(cell, []).append(rec)
  # The grid run at the selected point is the seed-0 run of the final cell.
  grid = [rec for rec in records if rec["run"]["stage"] == "grid"]
  selected = {}
  for opt in OPTIMIZERS:
    pts = [g for g in grid if g["run"]["optimizer"] == opt]
    proto = pts[0]["protocol"] if pts else {}
    size = len(proto.get("alphas", ())) * len(dict(proto.get("lambdas", ())).get(opt, ()))
    if pts and len(pts) == size:
      best = min(pts, key=lambda g: (g["status"] != "complete",
                                     -(g["final"].get("val_acc") or 0.0),
                                     g["final"].get("val_loss") or math.inf))
      selected[opt] = (best["run"]["lr"], best["run"]["lam"])
      key = ("nobn", best["run"]["model"], opt)
      by_cell.setdefault(key, []).append(best)
  cells = {}
  for (bn, model, opt), recs in sorted(by_cell.items()):
    recs = sorted(recs, key=lambda x: x["run"]["seed"])
    done = [x for x in recs if x["status"] == "complete"]
    cells[f"{bn}/{model}/{opt}"] = {
        "bn": bn, "model": model, "optimizer": opt,
        "seeds": [x["run"]["seed"] for x in done],
        "diverged": sum(x["status"] == "diverged" for x in recs),
        **{k: _ms(x["final"].get(k) for x in done)
           for k in ("test_acc", "val_acc", "train_loss", "train_acc")},
        # The loop's own summary of the last epoch (proxopt.update_scale_summary,
        # which also counts the values outside the histogram's range).
        "update_iqr": _ms(x["curves"]["update_iqr_octaves"][-1] for x in done),
        # The same on the recorded histogram's range only: the values below it
        # are directions an L2 term drove towards 0 (dead weights, issue #22).
        "update_iqr_in_range": _ms(
            in_range_iqr_octaves(x["final_update_hist"]["update_log2_hist"],
                                 x["final_update_hist"]["update_log2_edges"])
            for x in done if x["final_update_hist"].get("update_log2_hist")),
        "zero_update_share": _ms(x["final_update_hist"].get("update_zero_fraction")
                                 for x in done),
    }
  pairs = []
  for bn in ("nobn", "bn"):
    models = sorted({c["model"] for c in cells.values() if c["bn"] == bn},
                    key=lambda m: int(m.replace("resnet", "")))
    for model in models:
      for a, b in PAIRS:
        ca, cb = cells.get(f"{bn}/{model}/{a}"), cells.get(f"{bn}/{model}/{b}")
        if not ca or not cb:
          continue
        seeds = sorted(set(ca["seeds"]) & set(cb["seeds"]))
        if not seeds:
          continue
        diff = {}
        for k in ("test_acc", "val_acc", "train_loss"):
          va = dict(zip(ca["seeds"], ca[k]["values"]))
          vb = dict(zip(cb["seeds"], cb[k]["values"]))
          diff[k] = _ms(va[s] - vb[s] for s in seeds)
        # test and validation are two independent 2,000-image samples of the
        # same distribution: their mean halves the sampling variance.
        diff["pooled_acc"] = _ms((a + b) / 2 for a, b in zip(diff["test_acc"]["values"],
                                                             diff["val_acc"]["values"]))
        pairs.append({"bn": bn, "model": model, "a": a, "b": b, "seeds": seeds, **diff})
  core_s = sum((rec["final"].get("wall_seconds") or 0.0) for rec in records)
  return {"grid": [{"optimizer": g["run"]["optimizer"], "lr": g["run"]["lr"],
                    "lam": g["run"]["lam"], "status": g["status"],
                    **{k: g["final"].get(k) for k in ("val_acc", "val_loss", "test_acc",
                                                      "train_loss")}} for g in grid],
          "selected": {k: list(v) for k, v in selected.items()},
          "cells": cells, "pairs": pairs, "runs": len(records),
          "core_hours": core_s / 3600}


def render(summary: dict, protocol: dict | None = None) -> str:
  out = ["<!-- generated by `python -m experiments.study.depth collect`; do not edit -->", ""]
  if protocol:
    out += [f"Protocol: {protocol['dataset']}, {protocol['train_subset']} training images, "
            f"{protocol['val_size']} "
            f"validation, {protocol['test_subset']} test images; {protocol['epochs']} epochs, "
            f"schedule {protocol['schedule']}, zero-init residual branches: "
            f"{protocol['zero_init_residual']}. {summary['runs']} runs recorded, "
            f"{summary['core_hours']:.1f} core-hours of training.", ""]
  dead = {c["model"]: c["zero_update_share"]["mean"] for c in summary["cells"].values()
          if c["bn"] == "nobn" and c["optimizer"] == "adamw" and c["zero_update_share"]["n"]}
  if protocol and protocol.get("zero_init_residual") and dead and max(dead.values()) > 0.3:
    shares = " and ".join(f"{v:.1%} of {m}'s" for m, v in sorted(
        dead.items(), key=lambda kv: int(kv[0].replace("resnet", ""))))
    out += ["**These networks had dead channels (issue #22).** The code of these runs zeroed the "
            "last convolution of every residual branch, including the first block of stages 2 "
            "and 3, whose option-A shortcut pads the new channels with zeros: those channels "
            "stayed at exactly 0 through every later block, and no weight writing into them "
            "ever received a gradient. The share of exactly-zero AdamW updates at the last "
            f"epoch, {shares} parameters, is that dead share (Adam-L2's is lower only because "
            "its L2 term keeps shrinking the dead weights, which also stretches its "
            "out-of-range update IQR). The networks trained a 16-channel residual stream, not "
            "the paper's ResNets: every verdict drawn from these tables is about that network. "
            "`zero_init_residual` now zeroes only branches whose shortcut is the identity.", ""]
  out += ["### Grid (ResNet-20 without BN, seed 0), selected on validation accuracy", "",
          "| optimizer | alpha | lambda (paper) | val acc | val loss | test acc | train loss "
          "| selected |", "|---|---|---|---|---|---|---|---|"]
  for g in summary["grid"]:
    sel = summary["selected"].get(g["optimizer"]) == [g["lr"], g["lam"]]
    num = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"
    out.append(f"| {LABEL[g['optimizer']]} | {g['lr']:g} | {g['lam']:g} | {num(g['val_acc'])} "
               f"| {num(g['val_loss'])} | {num(g['test_acc'])} | {num(g['train_loss'])} "
               f"| {'**yes**' if sel else ('diverged' if g['status'] == 'diverged' else '')} |")
  out += ["", "### Final results at the selected settings (mean ± sd over seeds)", "",
          "| BN | model | optimizer | test acc (%) | val acc (%) | train loss "
          "| update IQR (octaves) | IQR in-range (octaves) | zero-update share |",
          "|---|---|---|---|---|---|---|---|---|"]
  for c in summary["cells"].values():
    out.append(f"| {'with' if c['bn'] == 'bn' else 'without'} | {c['model']} "
               f"| {LABEL[c['optimizer']]} | {_fmt(c['test_acc'], 100, 1)} "
               f"| {_fmt(c['val_acc'], 100, 1)} | {_fmt(c['train_loss'])} "
               f"| {_fmt(c['update_iqr'], 1, 2)} | {_fmt(c['update_iqr_in_range'], 1, 2)} "
               f"| {_fmt(c['zero_update_share'], 1, 3)} |")
  out += ["", "### Paired differences (same seed = same initialisation and data order)", "",
          "| BN | model | difference | test acc (points) | per seed | val acc (points) "
          "| test and val pooled (points) | train loss | per seed |",
          "|---|---|---|---|---|---|---|---|---|"]
  for p in summary["pairs"]:
    per = lambda ms, s=1.0, d=1: ", ".join(f"{v * s:+.{d}f}" for v in ms["values"])
    out.append(f"| {'with' if p['bn'] == 'bn' else 'without'} | {p['model']} "
               f"| {LABEL[p['a']]} − {LABEL[p['b']]} | {_fmt(p['test_acc'], 100, 1)} "
               f"| {per(p['test_acc'], 100)} | {_fmt(p['val_acc'], 100, 1)} "
               f"| {_fmt(p['pooled_acc'], 100, 1)} | {_fmt(p['train_loss'])} "
               f"| {per(p['train_loss'], 1, 3)} |")
  return "\n".join(out) + "\n"


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _final_records(records):
  sel = summarize(records)["selected"]
  out = []
  for rec in records:
    r = rec["run"]
    if r["stage"] == "grid" and sel.get(r["optimizer"]) != [r["lr"], r["lam"]]:
      continue
    if rec["status"] == "complete":
      out.append(rec)
  return out


def figures(records: list[dict], fig_dir: pathlib.Path) -> list[pathlib.Path]:
  plt = _plt()
  recs = _final_records(records)
  paths = []
  groups = sorted({(r["run"]["use_bn"], r["run"]["model"]) for r in recs},
                  key=lambda g: (g[0], int(g[1].replace("resnet", ""))))
  if not groups:
    return paths
  fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 6.5), squeeze=False)
  for j, (bn, model) in enumerate(groups):
    for opt in OPTIMIZERS:
      rs = [r for r in recs if (r["run"]["use_bn"], r["run"]["model"], r["run"]["optimizer"])
            == (bn, model, opt)]
      for i, key in enumerate(("train_loss", "test_acc")):
        for k, r in enumerate(rs):
          y = r["curves"][key]
          axes[i, j].plot(np.arange(1, len(y) + 1), y, color=COLOR[opt], alpha=0.8,
                          ls="-" if k == 0 else "--",
                          label=f"{LABEL[opt]} s{r['run']['seed']}")
    axes[0, j].set(title=f"{model} {'with' if bn else 'without'} BN", ylabel="training loss")
    axes[1, j].set(xlabel="epoch", ylabel="test accuracy")
    axes[0, j].legend(fontsize=6)
  fig.tight_layout()
  paths.append(write_figure(fig_dir / "depth_curves.png", fig))

  s = summarize(records)
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
  for opt in OPTIMIZERS:
    cs = sorted((c for c in s["cells"].values() if c["bn"] == "nobn" and c["optimizer"] == opt
                 and c["test_acc"]["n"]), key=lambda c: int(c["model"].replace("resnet", "")))
    if not cs:
      continue
    x = [int(c["model"].replace("resnet", "")) for c in cs]
    for ax, key, sc in ((axes[0], "test_acc", 100), (axes[1], "train_loss", 1)):
      ax.errorbar(x, [c[key]["mean"] * sc for c in cs],
                  yerr=[(c[key]["sd"] or 0) * sc for c in cs], marker="o", capsize=3,
                  color=COLOR[opt], label=LABEL[opt])
  axes[0].set(xlabel="depth (no BN)", ylabel="final test accuracy (%)")
  axes[1].set(xlabel="depth (no BN)", ylabel="final training loss")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  paths.append(write_figure(fig_dir / "depth_gap.png", fig))

  fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
  for j, (bn, model) in enumerate(groups):
    ax = axes[0, j]
    for opt in OPTIMIZERS:
      rs = [r for r in recs if (r["run"]["use_bn"], r["run"]["model"], r["run"]["optimizer"])
            == (bn, model, opt) and r["final_update_hist"].get("update_log2_hist")]
      if not rs:
        continue
      h = rs[0]["final_update_hist"]
      counts = np.asarray(h["update_log2_hist"], float)
      x = np.linspace(*h["update_log2_edges"], len(counts) + 1)
      width = x[1] - x[0]
      ax.step(x[:-1], counts / counts.sum() / width, where="post", color=COLOR[opt],
              label=f"{LABEL[opt]} (seed {rs[0]['run']['seed']})")
    ax.set(title=f"{model} {'with' if bn else 'without'} BN, last epoch",
           xlabel="log2 |Adam direction|", ylabel="density")
    ax.legend(fontsize=7)
  fig.tight_layout()
  paths.append(write_figure(fig_dir / "depth_hist.png", fig))
  return paths


def collect(results: pathlib.Path, out_md: pathlib.Path, fig_dir: pathlib.Path) -> int:
  records = load_records(results)
  if not records:
    raise SystemExit(f"no records in {results}: run `python -m experiments.study.depth run` "
                     "first.")
  s = summarize(records)
  write_text(out_md, render(s, records[0].get("protocol")))
  paths = figures(records, fig_dir)
  print(f"wrote {out_md} and " + (", ".join(map(str, paths)) if paths else
                                   "no figures yet (no run at a selected setting)"))
  return 0
