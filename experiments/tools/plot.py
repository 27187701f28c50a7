r"""Figures from run directories: ``python -m experiments.tools.plot DIR... --out PREFIX``.

Reads each ``DIR/config.json`` and ``DIR/metrics.jsonl`` (written by
``experiments.train``) and draws:

- ``PREFIX_curves.png``: training loss, test accuracy and the spread of the
  update magnitudes (inter-quartile range of ``log2|u|``, in octaves) per
  epoch, one line per run;
- ``PREFIX_update_hist.png``: the histogram of ``log2|u|`` over the last
  epoch of each run (or ``--epoch N``), as a density over octaves, where
  ``u`` is the Adam direction for the Adam aliases and the whole step
  ``x_{t+1} - x_t`` otherwise (``update_hist_of`` in the metrics):
  the paper's figure comparing how widely AdamW's and Adam-L2's per-coordinate
  updates spread (Zhuang et al., 2022, Sec. 6). Exact zeros are left out.

Labels are ``optimizer lr wd`` from the config unless ``--labels`` is given.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from experiments.files import write_figure


def load_run(d: str | pathlib.Path) -> tuple[dict, list[dict]]:
  d = pathlib.Path(d)
  cfg_path, met_path = d / "config.json", d / "metrics.jsonl"
  if not cfg_path.exists() or not met_path.exists():
    raise FileNotFoundError(
        f"{d}: expected config.json and metrics.jsonl written by "
        "`python -m experiments.train --out DIR`.")
  cfg = json.loads(cfg_path.read_text())
  rows = [json.loads(l) for l in met_path.read_text().splitlines() if l.strip()]
  return cfg, rows


def default_label(cfg: dict) -> str:
  return (f"{cfg['optimizer']} lr={cfg['lr']:g} wd={cfg['weight_decay']:g}"
          + (" (paper)" if cfg.get("convention") == "paper" else ""))


def _save(fig, path: pathlib.Path) -> None:
  write_figure(path, fig)


def plot_curves(runs, labels, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  for (cfg, rows), label in zip(runs, labels):
    ep = [r["epoch"] for r in rows]
    axes[0].plot(ep, [r["train_loss"] for r in rows], label=label)
    axes[1].plot(ep, [r["test_acc"] for r in rows], label=label)
    axes[2].plot(ep, [r.get("update_iqr_octaves", np.nan) for r in rows], label=label)
  for ax, title in zip(axes, ("training loss", "test accuracy",
                              "update spread: IQR of log2|u| (octaves)")):
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
  axes[0].set_yscale("log")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def plot_update_hist(runs, labels, path: pathlib.Path, epoch: int | None) -> int:
  """Returns the number of runs that had a histogram to draw."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  drawn = 0
  for (cfg, rows), label in zip(runs, labels):
    pick = [r for r in rows if "update_log2_hist" in r and (epoch is None or r["epoch"] == epoch)]
    if not pick:
      continue
    r = pick[-1]
    counts = np.asarray(r["update_log2_hist"], float)
    lo, hi = r["update_log2_edges"]
    edges = np.linspace(lo, hi, len(counts) + 1)
    width = edges[1] - edges[0]
    density = counts / max(counts.sum(), 1) / width
    ax.stairs(density, edges, label=f"{label} (epoch {r['epoch']})")
    drawn += 1
  kinds = {r.get("update_hist_of", "step") for _, rows in runs for r in rows[-1:]}
  ax.set_xlabel({"adam_direction": "log2 |Adam direction m_hat/(sqrt(v_hat)+eps)|",
                 "step": "log2 |x_{t+1} - x_t|"}.get(kinds.pop(), "log2 |update|")
                if len(kinds) == 1 else "log2 |update| (mixed kinds)")
  ax.set_ylabel("density (per octave)")
  ax.set_title("per-coordinate update magnitudes", fontsize=10)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return drawn


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.tools.plot", description=__doc__.split("\n")[0])
  p.add_argument("dirs", nargs="+", help="run directories (experiments.train --out)")
  p.add_argument("--out", default="figure", help="output prefix (default: figure)")
  p.add_argument("--labels", help="comma-separated labels, one per DIR")
  p.add_argument("--epoch", type=int, help="epoch of the update histogram (default: last)")
  args = p.parse_args(argv)
  try:
    runs = [load_run(d) for d in args.dirs]
  except FileNotFoundError as e:
    p.error(str(e))
  labels = args.labels.split(",") if args.labels else [default_label(c) for c, _ in runs]
  if len(labels) != len(runs):
    p.error(f"--labels has {len(labels)} entries for {len(runs)} directories.")
  prefix = pathlib.Path(args.out)
  prefix.parent.mkdir(parents=True, exist_ok=True)
  curves = prefix.with_name(prefix.name + "_curves.png")
  hist = prefix.with_name(prefix.name + "_update_hist.png")
  plot_curves(runs, labels, curves)
  n = plot_update_hist(runs, labels, hist, args.epoch)
  print(f"wrote {curves} and {hist} ({n} histogram(s))")
  return 0


if __name__ == "__main__":
  sys.exit(main())
