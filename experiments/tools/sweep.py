r"""Grid sweeps over learning rate x weight decay x seeds: ``python -m experiments.tools.sweep``.

Every grid point is an ordinary ``experiments.train`` run in
``OUT/lr<lr>_wd<wd>_s<seed>``, so a sweep is resumable: rerunning the same
command skips finished runs and resumes interrupted ones. All grid points of
one seed start from the same initial weights (``--init-seed`` = the seed,
or one fixed ``--init-seed`` for all), as in Zhuang et al. (2022).

Outputs, rewritten atomically after every run: ``OUT/results.csv`` (one row
per run: lr, weight_decay, seed, status, final/best test error, final train
loss) and ``OUT/heatmap.png`` (final test error averaged over seeds, weight
decay x learning rate; diverged runs are marked). ``--paper-grid`` uses the
paper's grid (alpha in {5e-5, 1e-4, 5e-4, 1e-3, 5e-3}, lambda in {0, 1e-5,
5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2}, paper convention).

Any other flag is passed to ``experiments.train`` unchanged, e.g.::

  python -m experiments.tools.sweep --lrs 5e-4,1e-3 --wds 0,5e-5,1e-4 --seeds 0,1 \
      --out runs/sweep-r20 -- --model resnet20 --no-bn --optimizer adamw \
      --convention paper --epochs 300
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import pathlib
import sys

import numpy as np

from experiments import train
from experiments.configs.default import ConfigError
from experiments.configs import resolve
from experiments.files import write_figure, write_json, write_text
from experiments.training.loop import NonFiniteLoss, run


def _floats(text: str) -> list[float]:
  try:
    return [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _ints(text: str) -> list[int]:
  try:
    return [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def run_dir(out: pathlib.Path, lr: float, wd: float, seed: int) -> pathlib.Path:
  return out / f"lr{lr:g}_wd{wd:g}_s{seed}"


FIELDS = ("lr", "weight_decay", "seed", "status", "final_test_error",
          "best_test_error", "final_train_loss", "epochs", "dir")


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=FIELDS)
  w.writeheader()
  for r in rows:
    w.writerow(r)
  write_text(path, buf.getvalue())


def write_heatmap(path: pathlib.Path, rows: list[dict], lrs, wds, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  grid = np.full((len(wds), len(lrs)), np.nan)
  diverged = np.zeros_like(grid, bool)
  for i, wd in enumerate(wds):
    for j, lr in enumerate(lrs):
      errs = [r["final_test_error"] for r in rows if r["lr"] == lr and r["weight_decay"] == wd]
      errs = [e for e in errs if e is not None and not math.isnan(e)]
      diverged[i, j] = any(r["status"] == "diverged" for r in rows
                           if r["lr"] == lr and r["weight_decay"] == wd)
      if errs:
        grid[i, j] = float(np.mean(errs))
  fig, ax = plt.subplots(figsize=(1.2 * len(lrs) + 2.5, 0.6 * len(wds) + 2))
  im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
  ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
  ax.set_yticks(range(len(wds)), [f"{v:g}" for v in wds])
  ax.set_xlabel("learning rate (alpha)")
  ax.set_ylabel("weight decay")
  for i in range(len(wds)):
    for j in range(len(lrs)):
      text = "div" if diverged[i, j] and np.isnan(grid[i, j]) else (
          "" if np.isnan(grid[i, j]) else f"{100 * grid[i, j]:.1f}")
      ax.text(j, i, text, ha="center", va="center", color="w", fontsize=8)
  fig.colorbar(im, ax=ax, label="final test error")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  write_figure(path, fig)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(
      prog="python -m experiments.tools.sweep", description=__doc__.split("\n")[0],
      epilog="Flags after the sweep's own (optionally after --) go to experiments.train.")
  p.add_argument("--lrs", type=_floats, help="comma-separated learning rates")
  p.add_argument("--wds", type=_floats, help="comma-separated weight decays (in --convention units)")
  p.add_argument("--seeds", type=_ints, default=[0])
  p.add_argument("--paper-grid", action="store_true", help="the paper's alpha x lambda grid")
  p.add_argument("--out", required=True, help="sweep directory")
  args, rest = p.parse_known_args(argv)
  if rest and rest[0] == "--":
    rest = rest[1:]
  if args.paper_grid:
    from experiments.configs.recipes import PAPER_ALPHAS, PAPER_LAMBDAS
    lrs, wds = list(args.lrs or PAPER_ALPHAS), list(args.wds or PAPER_LAMBDAS)
    if "--convention" not in rest:
      rest += ["--convention", "paper"]
  else:
    if not args.lrs or args.wds is None:
      p.error("give --lrs and --wds (comma-separated), or --paper-grid.")
    lrs, wds = args.lrs, args.wds
  for flag in ("--lr", "--weight-decay", "--seed", "--out"):
    if flag in rest:
      p.error(f"{flag} is set by the sweep for each grid point; remove it.")
  base = vars(train.build_parser().parse_args(rest))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  write_json(out / "sweep.json",
             {"lrs": lrs, "wds": wds, "seeds": args.seeds, "train_flags": rest})
  rows = []
  total = len(lrs) * len(wds) * len(args.seeds)
  k = 0
  for seed in args.seeds:
    for wd in wds:
      for lr in lrs:
        k += 1
        d = run_dir(out, lr, wd, seed)
        flags = dict(base, lr=lr, weight_decay=wd, seed=seed, out=str(d))
        flags.setdefault("init_seed", seed)  # one initialisation per seed across the grid
        print(f"[{k}/{total}] lr={lr:g} weight_decay={wd:g} seed={seed} -> {d}", flush=True)
        try:
          cfg = resolve(flags)
          summary = run(cfg)
          status = summary["status"]
        except NonFiniteLoss as e:
          print(f"  diverged: {e}", flush=True)
          status, summary = "diverged", {}
        except ConfigError as e:
          p.error(str(e))
        test_acc = summary.get("test_acc")
        best = summary.get("best_test_acc")
        rows.append(dict(
            lr=lr, weight_decay=wd, seed=seed, status=status,
            final_test_error=None if test_acc is None else 1 - test_acc,
            best_test_error=None if best is None else 1 - best,
            final_train_loss=summary.get("train_loss"), epochs=summary.get("epochs"),
            dir=str(d)))
        write_csv(out / "results.csv", rows)
        write_heatmap(out / "heatmap.png", rows, lrs, wds,
                      f"{base.get('model', 'resnet20')} {base.get('optimizer', 'adamw')}: "
                      f"final test error (%), mean over {len(args.seeds)} seed(s)")
  print(f"wrote {out / 'results.csv'} and {out / 'heatmap.png'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
