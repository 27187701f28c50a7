r"""Quick real comparison: AdamW vs Adam-L2 vs AdamProx on a no-BN ResNet.

``python -m experiments.compare`` trains the paper's recipes
``<model>-nobn-{adam_l2,adamw,adamprox}`` (Zhuang et al., 2022: the published
alpha and lambda, constant step size, crop + flip, decay on every parameter)
on the CIFAR-10 sample embedded in the repository, then prints a table of the
final metrics and of the spread of the update magnitudes (inter-quartile
range of ``log2|Adam direction|`` over the last epoch, in octaves: the
quantity the paper histograms; ``experiments.train.histogram_of``). Each run
is an ordinary ``experiments.train`` run in ``--out/<recipe>``: rerunning
resumes or reuses them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from experiments import recipes, train

OPTIMIZERS = ("adam_l2", "adamw", "adamprox")


def results_table(rows: list[dict]) -> str:
  head = ("| optimizer | alpha | lambda (paper) | optax wd | train loss | test acc "
          "| best test acc | update IQR (octaves) | minutes |")
  lines = [head, "|---" * (head.count("|") - 1) + "|"]
  for r in rows:
    lines.append(
        f"| {r['optimizer']} | {r['alpha']:g} | {r['lambda']:g} | {r['optax_wd']:.3g} "
        f"| {r['train_loss']:.3f} | {r['test_acc']:.3f} | {r['best_test_acc']:.3f} "
        f"| {r['update_iqr']:.2f} | {r['minutes']:.1f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__.split("\n")[0])
  p.add_argument("--model", default="resnet20",
                 choices=("resnet20", "resnet44", "resnet56", "resnet110", "resnet218"))
  p.add_argument("--epochs", type=int, default=8)
  p.add_argument("--dataset", default="sample", help="sample | npz:DIR | cifar10")
  p.add_argument("--train-subset", type=int, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="runs/compare")
  p.add_argument("--progress", action="store_true", default=None)
  args = p.parse_args(argv)
  rows = []
  for opt in OPTIMIZERS:
    name = f"{args.model}-nobn-{opt}"
    recipe = recipes.get_recipe(name)
    flags = {"recipe": name, "scale": "quick", "epochs": args.epochs,
             "dataset": args.dataset, "seed": args.seed,
             "out": str(pathlib.Path(args.out) / name), "progress": args.progress}
    if args.train_subset:
      flags["train_subset"] = args.train_subset
    cfg = train.resolve_config(flags)
    print(f"== {name}: alpha={recipe.paper_alpha:g} lambda={recipe.paper_lambda:g} "
          f"(optax weight_decay={recipe.weight_decay:g})", flush=True)
    t0 = time.perf_counter()
    summary = train.run(cfg)
    metrics = [json.loads(l) for l in
               (pathlib.Path(cfg["out"]) / "metrics.jsonl").read_text().splitlines()]
    rows.append(dict(
        optimizer=opt, alpha=recipe.paper_alpha, **{"lambda": recipe.paper_lambda},
        optax_wd=recipe.weight_decay, train_loss=summary["train_loss"],
        test_acc=summary["test_acc"], best_test_acc=summary["best_test_acc"],
        update_iqr=metrics[-1].get("update_iqr_octaves", float("nan")),
        minutes=(summary.get("wall_seconds") or (time.perf_counter() - t0)) / 60))
  print()
  print(f"{args.model} without BatchNorm, {args.epochs} epochs on {args.dataset} "
        f"(seed {args.seed}); paper recipes, constant step size:")
  print(results_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
