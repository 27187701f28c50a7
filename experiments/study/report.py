r"""Results and figures of the reproduction study (``python -m experiments.study collect``).

Reads the run directories of :mod:`experiments.study.spec` and writes

- ``docs/results/reproduction.json``: per run its configuration, per-epoch
  curves, final metrics, final-epoch update histogram and step time; and the
  aggregated tables (mean +- sample sd over seeds, ``ddof=1``);
- ``docs/results/reproduction_tables.md``: those tables as markdown, and the
  conditioning study's from ``docs/results/conditioning.json`` next to it
  (the report, ``docs/reproduction.md``, quotes them verbatim; a test checks);
- ``docs/figures/repro_*.png``: depth study, loss multiplier, AdamW vs
  AdamProx, update-magnitude histograms.

Every number in the tables is computed here from the run files, so
``render_tables(json.load(...))`` reproduces the markdown exactly.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from experiments.configs.recipes import get_recipe
from experiments.files import write_figure, write_text

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the checkout

CURVE_KEYS = ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc",
              "update_iqr_octaves", "update_within_one_octave", "update_median_log2")
LABEL = {"adam_l2": "Adam-L2", "adamw": "AdamW", "adamprox": "AdamProx"}
COLOR = {"adam_l2": "tab:red", "adamw": "tab:blue", "adamprox": "tab:green"}


def _mean_sd(values) -> dict:
  v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
  return {"n": len(v), "mean": float(np.mean(v)) if v else None,
          "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None}


def load_runs(scale: str, runs_dir: pathlib.Path) -> list[dict]:
  """One record per run of ``study(scale)`` that has at least one finished epoch."""
  from experiments.study.spec import SCALES, read_summary, run_status, study
  out = []
  for run in study(scale):
    d = runs_dir / run.part / run.name
    try:
      cfg = json.loads((d / "resolved_config.json").read_text())
      rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines() if l.strip()]
    except FileNotFoundError:
      continue
    summary = read_summary(d) or {}
    # A run shorter than the scale (being extended in place) is not complete.
    status = run_status(summary or None, SCALES[scale]["epochs"]) or "running"
    r = get_recipe(run.recipe)
    last = rows[-1] if rows else {}
    out.append(dict(
        part=run.part, name=run.name, recipe=run.recipe, model=r.model,
        optimizer=r.optimizer, use_bn=run.use_bn, loss_multiplier=run.loss_multiplier,
        seed=run.seed, status=status,
        paper_alpha=r.paper_alpha, paper_lambda=r.paper_lambda,
        optax_weight_decay=cfg.get("optax_weight_decay"),
        train_size=cfg.get("train_size"), test_size=cfg.get("test_size"),
        epochs_planned=cfg.get("epochs"), steps_per_epoch=cfg.get("steps_per_epoch"),
        num_params=cfg.get("num_params"), step_impl=cfg.get("step_impl"),
        curves={k: [row.get(k) for row in rows] for k in CURVE_KEYS},
        final={k: last.get(k) for k in ("epoch", "train_loss", "train_acc", "test_loss",
                                        "test_acc", "update_iqr_octaves",
                                        "update_within_one_octave")},
        update_hist_of=last.get("update_hist_of"),
        update_log2_hist=last.get("update_log2_hist"),
        update_log2_edges=last.get("update_log2_edges"),
        median_step_seconds=summary.get("median_step_seconds"),
        compile_seconds_estimate=summary.get("compile_seconds_estimate"),
        wall_seconds=last.get("wall_seconds"),
    ))
  return out


def _complete(runs, **match):
  return [r for r in runs if r["status"] == "complete"
          and all(r[k] == v for k, v in match.items())]


def _paired_gap(runs, key, a, b, **match) -> dict:
  """Per seed: final[key] of optimizer a minus optimizer b; mean +- sd."""
  ra = {r["seed"]: r for r in _complete(runs, optimizer=a, **match)}
  rb = {r["seed"]: r for r in _complete(runs, optimizer=b, **match)}
  return _mean_sd(ra[s]["final"][key] - rb[s]["final"][key] for s in sorted(set(ra) & set(rb)))


def _change_from_x1(runs, rs, model, opt) -> dict:
  """|train loss of the xM run - the x1 run| per epoch, same seed: after
  epoch 1 (mean over seeds) and the largest over epochs and seeds. A
  scale-free optimizer with eps = 0 would give exactly 0."""
  base = {r["seed"]: r["curves"]["train_loss"] for r in
          _complete(runs, part="depth", model=model, optimizer=opt)}
  diffs = [[abs(a - b) for a, b in zip(r["curves"]["train_loss"], base[r["seed"]])]
           for r in rs if r["loss_multiplier"] != 1 and r["seed"] in base]
  if not diffs:
    return {"loss_change_epoch1": None, "loss_change_max": None}
  return {"loss_change_epoch1": float(np.mean([d[0] for d in diffs])),
          "loss_change_max": float(max(max(d) for d in diffs))}


def aggregate(runs: list[dict], scale: str) -> dict:
  """The tables of the report, from the run records."""
  from experiments.study.spec import MULTIPLIERS, OPTIMIZERS, SCALES
  depths, bn_model, mult_model = (SCALES[scale][k] for k in ("depths", "bn_model", "mult_model"))
  tables = {"depth": [], "bn": [], "mult": [], "prox_gap": [], "spread": [], "step_time": []}
  for model in depths:
    for opt in OPTIMIZERS:
      rs = _complete(runs, part="depth", model=model, optimizer=opt)
      tables["depth"].append(dict(
          model=model, optimizer=opt,
          paper_alpha=get_recipe(f"{model}-nobn-{opt}").paper_alpha,
          paper_lambda=get_recipe(f"{model}-nobn-{opt}").paper_lambda,
          train_loss=_mean_sd(r["final"]["train_loss"] for r in rs),
          test_acc=_mean_sd(r["final"]["test_acc"] for r in rs)))
    tables["depth"].append(dict(
        model=model, optimizer="adamw - adam_l2 (paired by seed)",
        train_loss=_paired_gap(runs, "train_loss", "adamw", "adam_l2", part="depth", model=model),
        test_acc=_paired_gap(runs, "test_acc", "adamw", "adam_l2", part="depth", model=model)))
  for bn in (False, True):
    part = "bn" if bn else "depth"
    for opt in ("adam_l2", "adamw"):
      rs = _complete(runs, part=part, model=bn_model, optimizer=opt)
      tables["bn"].append(dict(
          model=bn_model, bn=bn, optimizer=opt, train_loss=_mean_sd(r["final"]["train_loss"] for r in rs),
          test_acc=_mean_sd(r["final"]["test_acc"] for r in rs)))
    tables["bn"].append(dict(
        model=bn_model, bn=bn, optimizer="adamw - adam_l2 (paired by seed)",
        train_loss=_paired_gap(runs, "train_loss", "adamw", "adam_l2", part=part, model=bn_model),
        test_acc=_paired_gap(runs, "test_acc", "adamw", "adam_l2", part=part, model=bn_model)))
  for opt in ("adam_l2", "adamw"):
    for mult in (1, *MULTIPLIERS):
      part = "depth" if mult == 1 else "mult"
      rs = _complete(runs, part=part, model=mult_model, optimizer=opt,
                     loss_multiplier=float(mult))
      tables["mult"].append(dict(
          model=mult_model, optimizer=opt, loss_multiplier=mult,
          # experiments.train records the plain cross-entropy (before the
          # multiplier), so the rows compare as they are.
          train_loss=_mean_sd(r["final"]["train_loss"] for r in rs),
          test_acc=_mean_sd(r["final"]["test_acc"] for r in rs),
          iqr_octaves=_mean_sd(r["final"]["update_iqr_octaves"] for r in rs),
          **_change_from_x1(runs, rs, mult_model, opt)))
  for model in depths:
    w = {r["seed"]: r for r in _complete(runs, part="depth", model=model, optimizer="adamw")}
    p = {r["seed"]: r for r in _complete(runs, part="depth", model=model, optimizer="adamprox")}
    seeds = sorted(set(w) & set(p))
    gap = lambda k, rel: max((abs(a - b) / (abs(a) if rel else 1.0)
                              for s in seeds for a, b in zip(w[s]["curves"][k], p[s]["curves"][k])
                              if a is not None and b is not None), default=None)
    tables["prox_gap"].append(dict(
        model=model, seeds=len(seeds), max_rel_train_loss_gap=gap("train_loss", True),
        max_test_acc_gap=gap("test_acc", False),
        adamw_vs_adam_l2_test_acc_gap=_paired_gap(runs, "test_acc", "adamw", "adam_l2",
                                                  part="depth", model=model)))
  for model in depths:
    for opt in OPTIMIZERS:
      rs = _complete(runs, part="depth", model=model, optimizer=opt)
      tables["spread"].append(dict(
          model=model, optimizer=opt,
          iqr_octaves=_mean_sd(r["final"]["update_iqr_octaves"] for r in rs),
          within_one_octave=_mean_sd(r["final"]["update_within_one_octave"] for r in rs)))
  for model in depths:
    for bn in (False, True):
      rs = [r for r in runs if r["model"] == model and r["use_bn"] == bn
            and r["median_step_seconds"]]
      if rs:
        tables["step_time"].append(dict(
            model=model, bn=bn, runs=len(rs),
            median_step_seconds=float(np.median([r["median_step_seconds"] for r in rs]))))
  return tables


def _blocks(model: str) -> int:
  """Residual blocks of a CIFAR ResNet-n: (n - 2) / 2."""
  return (int(model.removeprefix("resnet")) - 2) // 2


def paper_scale_estimate(bench: dict, scale: str = "paper") -> list[dict]:
  """Wall time of every ``scale`` run on the benchmark machine (training steps
  only), from the step times in ``benchmarks/results/train_step.json`` (the
  step the experiments run on CPU, ``--step kernels`` with every option
  ``auto``, float32, both cores; the newest row of each model); depths not
  benchmarked from a least-squares line in the number of blocks (the step is
  linear in depth, see the fast-training section of the README)."""
  from experiments.input_pipeline import steps_per_epoch
  from experiments.study.spec import study, SCALES
  measured = {}
  for r in sorted(bench["rows"], key=lambda r: r.get("machine", {}).get("date_utc", "")):
    t = r["timings"].get("kernels")
    if (t and r["settings"].get("precision", "float32") == "float32"
        and r["model"].startswith("resnet")):
      measured[(r["model"], r["bn"])] = t["median_s"]
  steps = SCALES[scale]["epochs"] * steps_per_epoch(50_000, 128)
  rows = {}
  for run in study(scale):
    model = get_recipe(run.recipe).model
    key = (model, run.use_bn)
    if key not in rows:
      pts = sorted((_blocks(m), t) for (m, bn), t in measured.items() if bn == run.use_bn)
      if key in measured:
        t, how = measured[key], "measured"
      else:
        slope, icpt = np.polyfit([b for b, _ in pts], [t for _, t in pts], 1)
        t, how = float(icpt + slope * _blocks(model)), "linear fit in depth"
      rows[key] = dict(model=model, bn=run.use_bn, step_seconds=t, source=how,
                       steps_per_run=steps, runs=0)
    rows[key]["runs"] += 1
  for r in rows.values():
    r["hours_per_run"] = r["steps_per_run"] * r["step_seconds"] / 3600
    r["hours_all_runs"] = r["hours_per_run"] * r["runs"]
  return list(rows.values())


def _fmt(ms: dict, scale: float = 1.0, digits: int = 3) -> str:
  if ms["mean"] is None:
    return "n/a"
  s = f"{ms['mean'] * scale:.{digits}f}"
  if ms["sd"] is not None:
    s += f" ± {ms['sd'] * scale:.{digits}f}"
  return s + ("" if ms["n"] == 3 else f" (n={ms['n']})")


def render_conditioning(cond: dict) -> str:
  """The conditioning study's tables (``docs/results/conditioning.json``)."""
  from experiments.toy.conditioning import format_table
  kappas = cond["config"]["kappas"]
  out = ["### Conditioning study (`python -m experiments.toy.conditioning`)", ""]
  for problem, studies in cond["problems"].items():
    for study, table in studies.items():
      out += ["```", format_table(f"{problem} / {study}", table, kappas), "```", ""]
  return "\n".join(out)


def render_tables(results: dict, conditioning: dict | None = None) -> str:
  """The markdown tables of the report, from ``reproduction.json`` (and the
  conditioning study's JSON, if given)."""
  t = results["tables"]
  out = ["<!-- generated by `python -m experiments.study collect`; do not edit -->", ""]
  out += ["### Depth study (no BatchNorm)", "",
          "| model | optimizer | alpha | lambda (paper) | final train loss | final test acc (%) |",
          "|---|---|---|---|---|---|"]
  for r in t["depth"]:
    hp = (f"{r['paper_alpha']:g} | {r['paper_lambda']:g}" if "paper_alpha" in r else " | ")
    name = LABEL.get(r["optimizer"], "AdamW − Adam-L2 (paired)")
    out.append(f"| {r['model']} | {name} | {hp} | {_fmt(r['train_loss'])} | "
               f"{_fmt(r['test_acc'], 100, 1)} |")
  out += ["", "### BatchNorm control (the no-BN settings of the same model)", "",
          "| model | BN | optimizer | final train loss | final test acc (%) |",
          "|---|---|---|---|---|"]
  for r in t["bn"]:
    name = LABEL.get(r["optimizer"], "AdamW − Adam-L2 (paired)")
    out.append(f"| {r['model']} | {'yes' if r['bn'] else 'no'} | {name} | {_fmt(r['train_loss'])} | "
               f"{_fmt(r['test_acc'], 100, 1)} |")
  out += ["", "### Loss multiplier (no BN, fixed x1 settings)", "",
          "| model | optimizer | loss x | final train loss (cross-entropy, before the multiplier) | final test acc (%) "
          "| IQR of log2\\|d\\| (octaves) | \\|train-loss change\\| vs x1 after epoch 1 "
          "| max \\|change\\| over epochs and seeds |",
          "|---|---|---|---|---|---|---|---|"]
  g = lambda v: "" if v is None else f"{v:.1e}"
  for r in t["mult"]:
    out.append(f"| {r['model']} | {LABEL[r['optimizer']]} | {r['loss_multiplier']} | {_fmt(r['train_loss'])} | "
               f"{_fmt(r['test_acc'], 100, 1)} | {_fmt(r['iqr_octaves'], 1, 2)} | "
               f"{g(r.get('loss_change_epoch1'))} | {g(r.get('loss_change_max'))} |")
  out += ["", "### AdamW vs AdamProx (same seeds, every epoch)", "",
          "| model | seeds | max relative train-loss gap | max test-acc gap (points) | "
          "for scale: AdamW − Adam-L2 test acc (points) |", "|---|---|---|---|---|"]
  for r in t["prox_gap"]:
    rel = "n/a" if r["max_rel_train_loss_gap"] is None else f"{r['max_rel_train_loss_gap']:.3f}"
    acc = "n/a" if r["max_test_acc_gap"] is None else f"{100 * r['max_test_acc_gap']:.1f}"
    out.append(f"| {r['model']} | {r['seeds']} | {rel} | {acc} | "
               f"{_fmt(r['adamw_vs_adam_l2_test_acc_gap'], 100, 1)} |")
  out += ["", "### Spread of the Adam direction's magnitudes (last epoch)", "",
          "| model | optimizer | IQR of log2\\|d\\| (octaves) | share within one octave of the median |",
          "|---|---|---|---|"]
  for r in t["spread"]:
    out.append(f"| {r['model']} | {LABEL[r['optimizer']]} | {_fmt(r['iqr_octaves'], 1, 2)} | "
               f"{_fmt(r['within_one_octave'], 1, 3)} |")
  out += ["", "### Measured step time (this study's runs, one pinned CPU core each)", "",
          "| model | BN | runs | median step (s, batch 128) |", "|---|---|---|---|"]
  for r in t["step_time"]:
    out.append(f"| {r['model']} | {'yes' if r['bn'] else 'no'} | {r['runs']} | "
               f"{r['median_step_seconds']:.3f} |")
  if results.get("paper_scale_estimate"):
    est = results["paper_scale_estimate"]
    out += ["", "### The full study (`--scale paper`) on the benchmark machine (2 CPU cores)", "",
            "| model | BN | runs | step (s) | step time from | steps per run | hours per run "
            "| hours, all runs |", "|---|---|---|---|---|---|---|---|"]
    for r in est:
      out.append(f"| {r['model']} | {'yes' if r['bn'] else 'no'} | {r['runs']} | "
                 f"{r['step_seconds']:.2f} | {r['source']} | {r['steps_per_run']:,} | "
                 f"{r['hours_per_run']:.0f} | {r['hours_all_runs']:.0f} |")
    total = sum(r["hours_all_runs"] for r in est)
    out.append(f"| **total** | | {sum(r['runs'] for r in est)} | | | | | "
               f"**{total:.0f} h = {total / 24:.0f} days** |")
  if conditioning is not None:
    out += ["", render_conditioning(conditioning)]
  return "\n".join(out).rstrip("\n") + "\n"


# ------------------------------------------------------------------ figures


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path: pathlib.Path) -> None:
  write_figure(path, fig, dpi=110)


def _mean_curve(rs, key, scale=1.0):
  """Mean and sd over runs of a per-epoch curve (truncated to the shortest)."""
  cs = [[np.nan if v is None else v * scale for v in r["curves"][key]] for r in rs]
  n = min(len(c) for c in cs)
  a = np.asarray([c[:n] for c in cs], float)
  return np.arange(1, n + 1), a.mean(0), a.std(0, ddof=1) if len(a) > 1 else np.zeros(n)


def figure_depth(runs, path: pathlib.Path, depths) -> None:
  from experiments.study.spec import OPTIMIZERS
  plt = _plt()
  fig, axes = plt.subplots(2, len(depths), figsize=(4.2 * len(depths), 7), squeeze=False)
  for j, model in enumerate(depths):
    for opt in OPTIMIZERS:
      rs = _complete(runs, part="depth", model=model, optimizer=opt)
      if not rs:
        continue
      for i, (key, scale) in enumerate((("train_loss", 1.0), ("test_acc", 100.0))):
        x, m, s = _mean_curve(rs, key, scale)
        ax = axes[i, j]
        ax.plot(x, m, color=COLOR[opt], label=f"{LABEL[opt]} (n={len(rs)})",
                ls="--" if opt == "adamprox" else "-")
        ax.fill_between(x, m - s, m + s, color=COLOR[opt], alpha=0.15)
    axes[0, j].set_title(f"{model}, no BN", fontsize=10)
    axes[0, j].set_yscale("log")
    axes[0, j].set_ylabel("train loss")
    axes[1, j].set_ylabel("test accuracy (%)")
    for i in range(2):
      axes[i, j].set_xlabel("epoch")
      axes[i, j].grid(alpha=0.3)
    axes[0, j].legend(fontsize=8)
  fig.suptitle("Depth study: mean ± sd over seeds", fontsize=11)
  fig.tight_layout()
  _save(fig, path)


def figure_mult(runs, path: pathlib.Path, model: str) -> None:
  from experiments.study.spec import MULTIPLIERS
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  styles = {1: "-", 10: "--", 100: ":"}
  for opt in ("adam_l2", "adamw"):
    for mult in (1, *MULTIPLIERS):
      rs = _complete(runs, part="depth" if mult == 1 else "mult", model=model,
                     optimizer=opt, loss_multiplier=float(mult))
      if not rs:
        continue
      for ax, key, scale in ((axes[0], "train_loss", 1.0), (axes[1], "test_acc", 100.0)):
        x, m, s = _mean_curve(rs, key, scale)
        ax.plot(x, m, color=COLOR[opt], ls=styles[mult], label=f"{LABEL[opt]} loss x{mult}")
        ax.fill_between(x, m - s, m + s, color=COLOR[opt], alpha=0.1)
  axes[0].set_ylabel("train cross-entropy (before the multiplier)")
  axes[0].set_yscale("log")
  axes[1].set_ylabel("test accuracy (%)")
  for ax in axes:
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{model} no BN: loss multiplied by 1 / 10 / 100 at fixed hyper-parameters",
               fontsize=10)
  fig.tight_layout()
  _save(fig, path)


def figure_prox(runs, path: pathlib.Path, depths) -> None:
  plt = _plt()
  fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.8), squeeze=False)
  for j, model in enumerate(depths):
    ax = axes[0, j]
    for opt, ls in (("adamw", "-"), ("adamprox", "--")):
      for r in _complete(runs, part="depth", model=model, optimizer=opt):
        ax.plot(range(1, len(r["curves"]["train_loss"]) + 1), r["curves"]["train_loss"],
                color=COLOR[opt], ls=ls, alpha=0.8,
                label=f"{LABEL[opt]}" if r["seed"] == 0 else None)
    ax.set_title(f"{model}: every seed", fontsize=10)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def figure_hist(runs, path: pathlib.Path, models) -> None:
  """AdamW vs Adam-L2 histograms at the shallowest and the deepest model."""
  plt = _plt()
  fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
  for j, model in enumerate(models):
    ax = axes[0, j]
    for opt in ("adam_l2", "adamw"):
      rs = [r for r in _complete(runs, part="depth", model=model, optimizer=opt)
            if r["update_log2_hist"]]
      if not rs:
        continue
      counts = np.sum([np.asarray(r["update_log2_hist"], float) for r in rs], axis=0)
      lo, hi = rs[0]["update_log2_edges"]
      edges = np.linspace(lo, hi, len(counts) + 1)
      density = counts / max(counts.sum(), 1) / (edges[1] - edges[0])
      iqr = _mean_sd(r["final"]["update_iqr_octaves"] for r in rs)
      ax.stairs(density, edges, color=COLOR[opt],
                label=f"{LABEL[opt]}: IQR {iqr['mean']:.2f} octaves (n={len(rs)})")
    ax.set_xlim(-24, 4)
    ax.set_xlabel("log2 |Adam direction m_hat/(sqrt(v_hat)+eps)|, last epoch")
    ax.set_ylabel("density (per octave)")
    ax.set_title(f"{model}, no BN", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def collect(scale: str, runs_dir: pathlib.Path, results: pathlib.Path,
            figures: pathlib.Path) -> int:
  from experiments.study.spec import SCALES
  runs = load_runs(scale, runs_dir)
  if not runs:
    raise SystemExit(f"no finished epochs under {runs_dir}: run "
                     f"`python -m experiments.study run --scale {scale}` first.")
  sc = {k: (list(v) if isinstance(v, tuple) else v) for k, v in SCALES[scale].items()}
  if sc["dataset"].startswith("npz:"):
    sc["dataset"] = "npz:../shared/data/cifar10 (CIFAR-10, JPEG q75 copy)"
  data = {"scale": scale, "protocol": sc, "runs": runs, "tables": aggregate(runs, scale)}
  bench = ROOT / "benchmarks" / "results" / "train_step.json"
  if bench.exists():
    data["paper_scale_estimate"] = paper_scale_estimate(json.loads(bench.read_text()))
  results.parent.mkdir(parents=True, exist_ok=True)
  figures.mkdir(parents=True, exist_ok=True)
  write_text(results, json.dumps(data, indent=1, sort_keys=True) + "\n")
  tables = results.with_name(results.stem + "_tables.md")
  cond_path = results.with_name("conditioning.json")
  cond = json.loads(cond_path.read_text()) if cond_path.exists() else None
  write_text(tables, render_tables(data, cond))
  depths = SCALES[scale]["depths"]
  figure_depth(runs, figures / "repro_depth.png", depths)
  figure_mult(runs, figures / "repro_loss_multiplier.png", SCALES[scale]["mult_model"])
  figure_prox(runs, figures / "repro_adamw_vs_adamprox.png", depths)
  figure_hist(runs, figures / "repro_update_hist.png", (depths[0], depths[-1]))
  done = sum(r["status"] == "complete" for r in runs)
  print(f"{done} complete runs of {len(runs)} started: wrote {results}, {tables} and "
        f"4 figures in {figures}")
  return 0
