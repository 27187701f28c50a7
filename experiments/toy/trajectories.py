r"""Optimizer paths on 2-D test functions: the classic step-size lessons.

Three functions, each with the same budget of steps for every optimizer:

* ``quadratic``: ``f(x, y) = (x^2 + kappa y^2) / 2`` with ``kappa = 50``, an
  axis-aligned ravine. Plain SGD is stable only for ``lr < 2 / kappa``:
  just above it the steep coordinate oscillates with growing amplitude
  (diverges); far below it the shallow coordinate crawls. Momentum and
  Nesterov carry speed along the ravine floor; AdaGrad, RMSProp and Adam
  divide by a per-coordinate gradient scale, which equalizes the two
  coordinates.
* ``rosenbrock``: ``f = (1 - x)^2 + 100 (y - x^2)^2``, a curved valley with
  its minimum at ``(1, 1)``.
* ``saddle``: ``f = x^2 / 2 + y^4 / 4 - y^2 / 2``, a saddle at the origin
  between two minima ``(0, +-1)`` (``f = -1/4``). Started almost on the
  saddle's stable line, gradient methods linger near the saddle for a long
  time; adaptive methods blow the tiny ``y`` gradient up and escape at once.

Optimizers: SGD at three step sizes (too large, good, too small), SGD with
momentum and with Nesterov momentum, AdaGrad, RMSProp, Adam (all
``proxopt.classic``, i.e. Optax), ``proxopt.adamw`` and ``proxopt.adamprox``
(small decay: they settle slightly off the minimum of ``f``), and momentum
with ``proxopt.step_decay`` (one schedule drives the whole step).

Run ``python -m experiments.toy.trajectories [--out DIR] [--steps N]``: writes
``DIR/trajectories.png`` (paths over contours, and ``f - f*`` per step) and
``DIR/trajectories.json`` (final loss of each path, ``null`` and
``"diverged": true`` when it blew up), and prints the table. Default
``--out docs/figures``; the run is float64 and takes a few seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import proxopt
from experiments.files import write_figure, write_json

KAPPA = 50.0
DIVERGED = 1e6  # |f - f*| above this (or non-finite) counts as diverged


def quadratic(p):
  return 0.5 * (p[0] ** 2 + KAPPA * p[1] ** 2)


def rosenbrock(p):
  return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def saddle(p):
  return 0.5 * p[0] ** 2 + 0.25 * p[1] ** 4 - 0.5 * p[1] ** 2


@dataclasses.dataclass(frozen=True)
class Problem:
  name: str
  fn: Callable[[jax.Array], jax.Array]
  start: tuple[float, float]
  f_min: float
  xlim: tuple[float, float]
  ylim: tuple[float, float]
  # Step sizes: SGD too large / good / too small, then the other methods.
  lr: dict[str, float]


PROBLEMS = {
    "quadratic": Problem(
        "quadratic", quadratic, (-4.5, 1.5), 0.0, (-5.0, 5.0), (-2.2, 2.2),
        lr=dict(sgd_large=0.041, sgd_good=0.035, sgd_small=0.002,
                momentum=0.01, adagrad=1.0, rmsprop=0.03, adam=0.3)),
    "rosenbrock": Problem(
        "rosenbrock", rosenbrock, (-1.2, 1.0), 0.0, (-2.0, 2.0), (-1.0, 3.0),
        lr=dict(sgd_large=0.01, sgd_good=0.0036, sgd_small=0.0003,
                momentum=0.0015, adagrad=1.5, rmsprop=0.015, adam=0.3)),
    "saddle": Problem(
        "saddle", saddle, (2.0, 1e-4), -0.25, (-2.5, 2.5), (-1.6, 1.6),
        lr=dict(sgd_large=2.2, sgd_good=0.2, sgd_small=0.02,
                momentum=0.05, adagrad=0.5, rmsprop=0.05, adam=0.1)),
}

WEIGHT_DECAY = 0.1  # optax convention: per-step decay factor lr_t * wd


# Row names of the table (and JSON keys), in drawing order.
METHODS = {
    "sgd_large": "SGD, too large",
    "sgd_good": "SGD, good",
    "sgd_small": "SGD, too small",
    "momentum": "Momentum 0.9",
    "nesterov": "Nesterov 0.9",
    "adagrad": "AdaGrad",
    "rmsprop": "RMSProp",
    "adam": "Adam",
    "adamw": f"AdamW wd={WEIGHT_DECAY:g}",
    "adamprox": f"AdamProx wd={WEIGHT_DECAY:g}",
    "momentum_step_decay": "Momentum + step decay",
}
TOP_ROW = ("sgd_large", "sgd_good", "sgd_small", "momentum_step_decay")


def optimizers(
    problem: Problem, steps: int
) -> dict[str, tuple[str, optax.GradientTransformation]]:
  """``{method: (legend label, optimizer)}`` for `problem` (keys of METHODS)."""
  lr = problem.lr
  # Starts at twice the momentum step size and halves every quarter budget.
  decay = proxopt.step_decay(2 * lr["momentum"], 0.5, every_epochs=max(1, steps // 4))
  txs = {
      "sgd_large": proxopt.classic("sgd", lr["sgd_large"]),
      "sgd_good": proxopt.classic("sgd", lr["sgd_good"]),
      "sgd_small": proxopt.classic("sgd", lr["sgd_small"]),
      "momentum": proxopt.classic("momentum", lr["momentum"]),
      "nesterov": proxopt.classic("nesterov", lr["momentum"]),
      "adagrad": proxopt.classic("adagrad", lr["adagrad"]),
      "rmsprop": proxopt.classic("rmsprop", lr["rmsprop"]),
      "adam": proxopt.classic("adam", lr["adam"]),
      "adamw": proxopt.adamw(lr["adam"], weight_decay=WEIGHT_DECAY),
      "adamprox": proxopt.adamprox(lr["adam"], weight_decay=WEIGHT_DECAY),
      "momentum_step_decay": proxopt.classic("momentum", decay),
  }
  step = {
      "sgd_large": lr["sgd_large"], "sgd_good": lr["sgd_good"],
      "sgd_small": lr["sgd_small"], "momentum": lr["momentum"],
      "nesterov": lr["momentum"], "adagrad": lr["adagrad"],
      "rmsprop": lr["rmsprop"], "adam": lr["adam"], "adamw": lr["adam"],
      "adamprox": lr["adam"], "momentum_step_decay": 2 * lr["momentum"],
  }
  return {k: (f"{METHODS[k]} (lr={step[k]:g})", txs[k]) for k in METHODS}


def run_path(fn, tx: optax.GradientTransformation, start, steps: int) -> np.ndarray:
  """The iterates ``x_0, ..., x_steps`` of `tx` on `fn` (float64, shape (steps+1, 2))."""
  with jax.enable_x64(True):
    x0 = jnp.asarray(start, jnp.float64)
    grad = jax.grad(fn)

    def body(carry, _):
      x, state = carry
      updates, state = tx.update(grad(x), state, x)
      x = optax.apply_updates(x, updates)
      return (x, state), x

    @jax.jit
    def scan(x0):
      _, xs = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
      return xs

    xs = np.asarray(scan(x0))
  return np.concatenate([np.asarray(start, np.float64)[None], xs])


def losses(problem: Problem, path: np.ndarray) -> np.ndarray:
  """``f(x_t) - f*`` along a path (NumPy float64; inf once it blew up)."""
  with np.errstate(all="ignore"), jax.enable_x64(True):
    vals = np.asarray(jax.vmap(problem.fn)(jnp.asarray(path))) - problem.f_min
  bad = ~np.isfinite(vals) | (np.abs(vals) > DIVERGED)
  # Once diverged, stay diverged (the path may wrap through finite values).
  bad = np.logical_or.accumulate(bad)
  return np.where(bad, np.inf, vals)


DEFAULT_STEPS = 300


def run(steps: int = DEFAULT_STEPS, problems: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs every optimizer on every problem; returns paths, losses and a summary."""
  results = {}
  for name in problems or PROBLEMS:
    problem = PROBLEMS[name]
    per_opt = {}
    for key, (label, tx) in optimizers(problem, steps).items():
      path = run_path(problem.fn, tx, problem.start, steps)
      loss = losses(problem, path)
      final = float(loss[-1])
      per_opt[key] = {
          "label": label,
          "path": path,
          "loss": loss,
          "final_loss": final if math.isfinite(final) else None,
          "diverged": not math.isfinite(final),
      }
    results[name] = per_opt
  return results


def summary(results: dict[str, Any], steps: int) -> dict[str, Any]:
  return {
      "steps": steps,
      "metric": "f(x_T) - f* after the budget (null when diverged)",
      "problems": {
          name: {
              "start": list(PROBLEMS[name].start),
              "f_min": PROBLEMS[name].f_min,
              "final_loss": {k: v["final_loss"] for k, v in per.items()},
              "diverged": {k: v["diverged"] for k, v in per.items()},
              "label": {k: v["label"] for k, v in per.items()},
          }
          for name, per in results.items()
      },
  }


def format_table(results: dict[str, Any]) -> str:
  names = list(results)
  width = max(len(l) for l in METHODS.values()) + 2
  lines = ["f(x_T) - f*".ljust(width) + "".join(n.rjust(14) for n in names)]
  for key, label in METHODS.items():
    cells = []
    for n in names:
      r = results[n][key]
      cells.append("diverged".rjust(14) if r["diverged"] else f"{r['final_loss']:14.3e}")
    lines.append(label.ljust(width) + "".join(cells))
  return "\n".join(lines)


def _clip_to_box(path: np.ndarray, prob: Problem) -> np.ndarray:
  """A diverged path up to (and including) its first point outside the axes."""
  inside = (
      np.all(np.isfinite(path), axis=1)
      & (path[:, 0] >= prob.xlim[0]) & (path[:, 0] <= prob.xlim[1])
      & (path[:, 1] >= prob.ylim[0]) & (path[:, 1] <= prob.ylim[1])
  )
  if inside.all():
    return path
  first_out = int(np.argmin(inside))
  out = path[: first_out + 1]
  return out[np.all(np.isfinite(out), axis=1)]


def plot(results: dict[str, Any], path: str) -> None:
  """Paths over contours (2 rows) and f - f* per step (1 row); atomic write."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names = list(results)
  colors = dict(zip(METHODS, list(plt.get_cmap("tab10").colors) + ["k"]))
  fig, axes = plt.subplots(3, len(names), figsize=(5.2 * len(names), 14.5),
                           squeeze=False)
  for j, name in enumerate(names):
    prob = PROBLEMS[name]
    xs = np.linspace(*prob.xlim, 300)
    ys = np.linspace(*prob.ylim, 300)
    grid_x, grid_y = np.meshgrid(xs, ys)
    with jax.enable_x64(True):
      zz = np.asarray(jax.vmap(jax.vmap(prob.fn))(
          jnp.stack([grid_x, grid_y], axis=-1))) - prob.f_min
    levels = np.geomspace(max(zz.min(), 1e-3), zz.max(), 18)
    for row in (0, 1):
      ax = axes[row, j]
      ax.contour(grid_x, grid_y, np.maximum(zz, 1e-3), levels=levels,
                 colors="0.75", linewidths=0.6)
      ax.set_xlim(prob.xlim)
      ax.set_ylim(prob.ylim)
      ax.plot(*prob.start, "ko", ms=5)
      ax.set_title(f"{name}: " + ("SGD step sizes, schedule" if row == 0
                                  else "momentum, adaptive, decay"), fontsize=10)
    for key, r in results[name].items():
      label = r["label"]
      row = 0 if key in TOP_ROW else 1
      p = _clip_to_box(r["path"], prob) if r["diverged"] else r["path"]
      axes[row, j].plot(p[:, 0], p[:, 1], "-", color=colors[key], lw=1.3,
                        marker=".", ms=2.5, label=label)
      curve = np.where(np.isfinite(r["loss"]), r["loss"], np.nan)
      axes[2, j].semilogy(np.maximum(curve, 1e-16), color=colors[key], lw=1.3,
                          label=METHODS[key])
    axes[2, j].set_xlabel("step")
    axes[2, j].set_ylabel("f(x_t) - f*")
    axes[2, j].set_title(f"{name}: loss per step", fontsize=10)
    finite = [r["loss"][np.isfinite(r["loss"]) & (r["loss"] > 0)]
              for r in results[name].values()]
    lowest = min((f.min() for f in finite if f.size), default=1e-16)
    axes[2, j].set_ylim(max(1e-16, 0.3 * lowest), None)
    axes[2, j].grid(True, which="major", alpha=0.3)
    for row in (0, 1):
      axes[row, j].legend(fontsize=7, loc="best", framealpha=0.85)
  handles, names_ = axes[2, 0].get_legend_handles_labels()
  fig.legend(handles, names_, loc="lower center", ncol=6, fontsize=9,
             frameon=False)
  steps = len(next(iter(results[names[0]].values()))["loss"]) - 1
  fig.suptitle(f"Optimizer paths, {steps} steps each (dot = start; a diverging "
               "path is drawn until it leaves the box)", fontsize=13)
  fig.tight_layout(rect=(0, 0.045, 1, 0.98))
  write_figure(path, fig, dpi=80, pil_kwargs={"optimize": True})


def _write_json(obj: Any, path: str) -> None:
  write_json(path, obj, indent=1, sort_keys=False)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(
      prog="python -m experiments.toy.trajectories",
      description=__doc__.split("\n\n")[0],
  )
  parser.add_argument("--out", default=os.path.join("docs", "figures"),
                      help="directory for trajectories.png/.json (default docs/figures)")
  parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                      help=f"steps per path (default {DEFAULT_STEPS})")
  parser.add_argument("--problems", nargs="+", default=list(PROBLEMS),
                      choices=list(PROBLEMS))
  parser.add_argument("--no-plot", action="store_true")
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f"--steps must be >= 1, got {args.steps}")
  os.makedirs(args.out, exist_ok=True)
  results = run(args.steps, args.problems)
  out = summary(results, args.steps)
  _write_json(out, os.path.join(args.out, "trajectories.json"))
  if not args.no_plot:
    plot(results, os.path.join(args.out, "trajectories.png"))
  print(format_table(results))
  print(f"wrote {os.path.join(args.out, 'trajectories.json')}"
        + ("" if args.no_plot else f" and {os.path.join(args.out, 'trajectories.png')}"))
  return out


if __name__ == "__main__":
  main(sys.argv[1:])
