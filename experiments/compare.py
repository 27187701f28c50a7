r"""The main job: what scale-freeness means, shown in three parts in a few CPU minutes.

``python -m experiments.compare [--out runs/compare]`` runs

1. **the loss multiplied by k** (:mod:`experiments.toy.loss_multiplier`):
   softmax regression on the embedded CIFAR-10 sample, the loss x1, x10,
   x100. AdamW's and AdamProx's trajectories do not move; Adam-L2's does,
   because the multiplier divides its effective L2 strength by ``k``;
2. **coordinates on different scales** (:mod:`experiments.toy.conditioning`,
   the diagonal quadratic): the steps a tuned method needs grow with the
   condition number ``kappa`` for gradient descent and heavy ball, and stay
   flat for the scale-free AdaGrad / Adam; with weight decay, AdamW's
   trajectory is the same for every ``kappa`` and Adam-L2's is not;
3. **a CIFAR network**: ResNet-20 without BatchNorm, Adam-L2 and AdamW at the
   paper's alpha (``resnet20-nobn-*`` recipes, constant step size) and one
   lambda, 5e-3 (in the paper's grid; ``--lam``; the recipes' 5e-4 / 5e-5
   barely act within 72 steps), the loss x1 and x``--multiplier``, on the
   embedded sample (or ``--dataset``). The residual branches whose shortcut is
   the identity start at zero (``--zero-init-residual``: with the paper's
   initialisation a no-BN ResNet stays at chance for the first epochs, see
   the depth study), so the networks learn in a few epochs; the two
   downsampling blocks keep their drawn weights, so no channel is dead.

It prints a table per part with two lines saying what it shows, writes
``OUT/compare.json`` (every number) and ``OUT/compare.png`` (one panel per
part) and prints their paths. The CIFAR runs are ordinary training runs in
``OUT/cifar/<name>`` (rerunning reuses finished ones). About 2-3 minutes on
2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from experiments.configs.default import ConfigError
from experiments.configs import resolve
from experiments.files import write_figure, write_json
from experiments.toy import conditioning, loss_multiplier

CIFAR_OPTIMIZERS = ("adam_l2", "adamw")
LABEL = loss_multiplier.LABEL
# Part 2: the problem, the methods shown and their labels.
COND_PROBLEM = "diag_quadratic"
COND_KAPPAS = (1.0, 1e2, 1e4, 1e6)
COND_STEPS = {"gd": "GD", "sgd_momentum": "heavy ball", "adam_eps0": "Adam",
              "adagrad_eps0": "AdaGrad"}
COND_COLORS = {"gd": "black", "sgd_momentum": "tab:orange", "adam_eps0": "tab:purple",
               "adagrad_eps0": "tab:brown"}


# ------------------------------------------------------------------- parts --


def part_toy(steps: int) -> dict[str, Any]:
  return loss_multiplier.run(loss_multiplier.Config(steps=steps))


def part_conditioning() -> dict[str, Any]:
  cfg = conditioning.Config(problems=(COND_PROBLEM,), kappas=COND_KAPPAS)
  res = conditioning.run(cfg, log=lambda _: None)
  return {"kappas": list(COND_KAPPAS), "budget": cfg.budget, "lam": cfg.lam,
          **res["problems"][COND_PROBLEM]}


def cifar_runs(multiplier: float) -> list[tuple[str, float]]:
  return [(opt, k) for opt in CIFAR_OPTIMIZERS for k in (1.0, multiplier)]


def cifar_config(opt: str, k: float, args) -> Any:
  flags = dict(recipe=f"resnet20-nobn-{opt}", budget="paper", dataset=args.dataset,
               epochs=args.epochs, seed=args.seed, zero_init_residual=True,
               loss_multiplier=k, progress=False,
               out=str(pathlib.Path(args.out) / "cifar" / f"resnet20-nobn-{opt}-x{k:g}"))
  if args.model:
    flags["model"] = args.model
  if args.lam != -1:
    flags["weight_decay"] = args.lam
  if args.train_subset:
    flags["train_subset"] = args.train_subset
  return resolve(flags)


def part_cifar(args, bar) -> list[dict[str, Any]]:
  from experiments.training.loop import run  # imports flax: only when needed
  from experiments.training.run_dir import read_metrics

  rows = []
  for opt, k in cifar_runs(args.multiplier):
    cfg = cifar_config(opt, k, args)
    bar.set_description(f"3/3 CIFAR {LABEL[opt]} x{k:g}")
    summary = run(cfg, log=lambda msg: None)
    metrics = read_metrics(pathlib.Path(cfg.out), cfg.epochs)
    rows.append(dict(optimizer=opt, multiplier=k, lr=cfg.lr, lam=cfg.weight_decay,
                     train_loss=summary["train_loss"], test_acc=summary["test_acc"],
                     curve=[m["train_loss"] for m in metrics],
                     update_iqr=metrics[-1].get("update_iqr_octaves", float("nan")),
                     seconds=summary.get("wall_seconds")))
    bar.update(1)
  for r in rows:  # how far each run's loss curve is from its x1 run's
    ref = next(x for x in rows if x["optimizer"] == r["optimizer"] and x["multiplier"] == 1)
    r["curve_change"] = max(abs(a - b) for a, b in zip(r["curve"], ref["curve"]))
  return rows


# ----------------------------------------------------------------- tables --


def conditioning_table(c: dict[str, Any]) -> str:
  ks = [f"{k:g}" for k in c["kappas"]]
  lines = ["| method | " + " | ".join(f"kappa {k}" for k in ks) + " |",
           "|---" * (len(ks) + 1) + "|"]
  for name, label in COND_STEPS.items():
    cells = [("> %d" % c["budget"]) if v is None else str(v)
             for v in (c["steps_to_tol"][name][str(k)] for k in c["kappas"])]
    lines.append(f"| steps to 1e-3, {label} (tuned) | " + " | ".join(cells) + " |")
  for name in loss_multiplier.OPTIMIZERS:
    cells = [f"{c['traj_change'][name][str(k)]:.1e}" for k in c["kappas"]]
    lines.append(f"| trajectory change vs kappa 1, {LABEL[name]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def cifar_table(rows: list[dict[str, Any]]) -> str:
  lines = ["| optimizer | alpha | lambda (paper) | loss x | train loss | test acc "
           "| max change of the loss curve vs x1 | update IQR (octaves) |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {LABEL[r['optimizer']]} | {r['lr']:g} | {r['lam']:g} | {r['multiplier']:g} "
                 f"| {r['train_loss']:.4f} | {r['test_acc']:.3f} | {r['curve_change']:.1e} "
                 f"| {r['update_iqr']:.2f} |")
  return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
  return f"{a / b:.0e}x" if b > 0 else "infinitely"


def explain_toy(toy) -> str:
  l2, w = (loss_multiplier.largest_change(toy, o) for o in ("adam_l2", "adamw"))
  return (f"Multiplying the loss by up to {max(toy['config']['multipliers']):g} moved Adam-L2's "
          f"trajectory by {l2:.1e} of its length and AdamW's by {w:.1e} ({_ratio(l2, w)} less):\n"
          "Adam normalises the gradient, so k cancels for AdamW, but Adam-L2's L2 term is "
          "normalised with it and becomes k times weaker.")


def explain_conditioning(c) -> str:
  key, k_max = str(c["kappas"][-1]), f"{c['kappas'][-1]:g}"
  gd = c["steps_to_tol"]["gd"][key]
  adam = c["steps_to_tol"]["adam_eps0"]
  flat = len(set(adam.values())) == 1
  l2 = c["traj_change"]["adam_l2"][key]
  w = c["traj_change"]["adamw"][key]
  return (f"Gradient descent needs {'more than ' + str(c['budget']) if gd is None else gd} steps "
          f"at kappa {k_max}; Adam's count is {'the same at every kappa' if flat else 'not flat'} "
          f"(scale-free).\nWith weight decay, kappa {k_max} moves Adam-L2's trajectory by "
          f"{l2:.1e} of ||x*|| and AdamW's by {w:.1e}: only the decoupled decay stays scale-free.")


def explain_cifar(rows, k) -> str:
  ch = {r["optimizer"]: r["curve_change"] for r in rows if r["multiplier"] == k}
  l2, w = ch["adam_l2"], ch["adamw"]
  head = (f"The x{k:g} loss changed Adam-L2's training-loss curve by up to {l2:.1e} and "
          f"AdamW's by {w:.1e}")
  if l2 > 3 * w:
    return (head + f" ({_ratio(l2, w)} less): the same split on a real network.\n"
            "AdamW's small change is float rounding and eps, amplified by the network; "
            "Adam-L2's is its L2 term made k times weaker.")
  return (head + ": at this length and lambda the L2 term does not yet separate\n"
          "Adam-L2 from float rounding; train longer (--epochs) or with a larger --lam.")


# ----------------------------------------------------------------- figure --


def figure(toy, cond, cifar) -> Any:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  n = 3 if cifar else 2
  fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4))
  colors = {"adam_l2": "tab:red", "adamw": "tab:blue", "adamprox": "tab:green"}
  ax = axes[0]
  for opt, per_k in toy["distance"].items():
    for k, d in per_k.items():
      if float(k) == 1:
        continue
      ax.semilogy(np.arange(1, len(d) + 1), np.maximum(d, 1e-12), color=colors[opt],
                  ls="-" if float(k) == max(map(float, per_k)) else "--",
                  label=f"{LABEL[opt]} x{float(k):g}")
  ax.set(title="1. loss x k: distance from the x1 trajectory", xlabel="step",
         ylabel="||w_t(k) - w_t(1)|| / path length")
  ax.legend(fontsize=7)
  ax = axes[1]
  budget = cond["budget"]
  for name, label in COND_STEPS.items():
    ys = [budget * 1.5 if v is None else v
          for v in (cond["steps_to_tol"][name][str(k)] for k in cond["kappas"])]
    ax.loglog(cond["kappas"], ys, "o-", color=COND_COLORS[name], label=label)
  ax.axhline(budget, color="gray", lw=0.8, ls=":")
  ax.text(cond["kappas"][0], budget * 1.1, "budget (points above: not reached)", fontsize=7)
  ax.set(title="2. steps to tolerance vs condition number", xlabel="kappa",
         ylabel="steps (best over a step-size grid)")
  ax.legend(fontsize=7)
  if cifar:
    ax = axes[2]
    for r in cifar:
      ax.plot(np.arange(1, len(r["curve"]) + 1), r["curve"], color=colors[r["optimizer"]],
              ls="-" if r["multiplier"] == 1 else "--", marker="o", ms=3,
              label=f"{LABEL[r['optimizer']]} x{r['multiplier']:g}")
    ax.set(title="3. ResNet-20 without BN: training loss", xlabel="epoch",
           ylabel="training loss (without the multiplier)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


# ------------------------------------------------------------------- main --


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m experiments.compare",
                              description=__doc__.split("\n")[0])
  p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
  p.add_argument("--toy-steps", type=int, default=loss_multiplier.Config.steps,
                 help="steps of part 1 (default %(default)s)")
  p.add_argument("--epochs", type=int, default=6, help="epochs of the CIFAR runs (default 6)")
  p.add_argument("--multiplier", type=float, default=100.0,
                 help="the CIFAR runs' loss multiplier besides 1 (default 100)")
  p.add_argument("--dataset", default="sample",
                 help="the CIFAR runs' data: sample (embedded, default) | npz:DIR | cifar10")
  p.add_argument("--train-subset", type=int, default=None, help="train on N images only")
  p.add_argument("--model", default=None,
                 help="another ResNet for part 3 (default: resnet20, the recipes' model)")
  p.add_argument("--lam", type=float, default=5e-3,
                 help="lambda (paper convention) of both CIFAR optimizers (default "
                 "%(default)g); --lam -1 keeps the recipes' (Adam-L2 5e-4, AdamW 5e-5)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--skip-cifar", action="store_true", help="parts 1 and 2 only (seconds)")
  p.add_argument("--no-progress", dest="progress", action="store_false",
                 help="no progress bar")
  return p


def main(argv=None) -> int:
  p = build_parser()
  args = p.parse_args(argv)
  for name in ("toy_steps", "epochs"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
  if not (args.multiplier > 0 and math.isfinite(args.multiplier)) or args.multiplier == 1:
    p.error(f"--multiplier must be a positive number other than 1, got {args.multiplier}.")
  if not args.skip_cifar:
    try:  # bad flags fail now, not after the first two parts
      for opt, k in cifar_runs(args.multiplier):
        cifar_config(opt, k, args)
    except ConfigError as e:
      p.error(str(e))
  out = pathlib.Path(args.out)
  n_tasks = 2 + (0 if args.skip_cifar else len(cifar_runs(args.multiplier)))
  t0 = time.perf_counter()
  with tqdm(total=n_tasks, unit="task", disable=not args.progress, file=sys.stderr) as bar:
    bar.set_description("1/3 loss x k")
    toy = part_toy(args.toy_steps)
    bar.update(1)
    bar.set_description("2/3 conditioning")
    cond = part_conditioning()
    bar.update(1)
    cifar = [] if args.skip_cifar else part_cifar(args, bar)
  sections = [
      ("1. The loss multiplied by k (softmax regression on the CIFAR-10 sample, "
       f"{args.toy_steps} steps, lambda {toy['config']['lam']:g})",
       loss_multiplier.format_table(toy), explain_toy(toy)),
      (f"2. Coordinates on scales 1..1/kappa (diagonal quadratic, {cond['budget']} steps; "
       f"weight decay {cond['lam']:g})", conditioning_table(cond), explain_conditioning(cond)),
  ]
  if cifar:
    sections.append((
        f"3. {(args.model or 'resnet20').replace('resnet', 'ResNet-')} without BatchNorm on "
        f"{args.dataset}, {args.epochs} epochs, constant step size, identity-shortcut "
        "residual branches initialised at zero", cifar_table(cifar),
        explain_cifar(cifar, args.multiplier)))
  for title, table, note in sections:
    print(f"\n{title}\n\n{table}\n\n{note}")
  result = {"loss_multiplier": toy, "conditioning": cond,
            "cifar": [{k: v for k, v in r.items()} for r in cifar],
            "args": vars(args), "seconds": time.perf_counter() - t0}
  json_path = write_json(out / "compare.json", result)
  fig_path = write_figure(out / "compare.png", figure(toy, cond, cifar))
  print(f"\nwrote {json_path} and {fig_path} ({result['seconds'] / 60:.1f} min)")
  return 0


if __name__ == "__main__":
  # Before the first JAX computation, on a CPU backend: the step's scratch
  # buffer is then reused, not re-faulted every step (experiments.kernels).
  from experiments.training.loop import keep_freed_host_memory
  keep_freed_host_memory()
  sys.exit(main())
