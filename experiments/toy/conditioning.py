r"""Conditioning study: what scale-freeness buys on ill-conditioned problems.

Problems (``d`` coordinates, curvatures ``h_i = kappa^{-i/(d-1)}`` so that
``max h = 1``, ``min h = 1/kappa``; ``b`` fixed, non-zero, so the minimizer
``x* = b`` is not the start ``x_0 = 0``):

* ``diag_quadratic``: ``f(x) = sum_i h_i (x_i - b_i)^2 / 2``;
* ``diag_logcosh``:   ``f(x) = sum_i h_i log cosh(x_i - b_i)`` (non-quadratic);
* ``rotated_quadratic``: ``f(x) = (x - b)^T Q diag(h) Q^T (x - b) / 2`` with a
  fixed random rotation ``Q``: the negative control, where the
  ill-conditioning is not per-coordinate and scale-freeness cannot help.

On the two diagonal problems, changing ``kappa`` multiplies gradient
coordinate ``i`` by a fixed factor (``h_i``), so a scale-free optimizer runs
the *same* trajectory for every kappa (Zhuang et al., 2022, Sec. 4).

Study (i), lambda = 0, ``steps_to_tol``: the number of steps after which
``||x_t - x*|| / ||x*|| <= tol`` holds until the end of the budget (``null``
when the budget is not enough), for GD, heavy-ball "SGD" + momentum 0.9 (full
gradients), AdaGrad (eps=0, zero initial accumulator) and Adam (eps=0 and
eps=1e-8). "Tuned" = the best (fewest steps) over a grid of base step sizes
``lr0`` and decays ``lr_t = lr0 * 2^{-t / half_life}`` (half-life in
{none, ...}), chosen separately for every (problem, method, kappa).

Study (ii), lambda > 0, Adam-L2 vs AdamW vs AdamProx (eps=0, the proxopt
aliases, ``weight_decay = lambda`` in the optax convention) with one fixed
schedule for every kappa:

* ``traj_change``: ``max_t ||x_t(kappa) - x_t(1)|| / ||b||`` over the budget:
  how far the trajectory at kappa moves from the trajectory at kappa = 1 (0
  up to rounding for a scale-free method on the diagonal problems);
* ``dist_to_reg_min``: ``||x_T - x*_lambda|| / ||x*_lambda||`` at the end of
  the budget, where ``x*_lambda`` minimizes ``f + lambda/2 ||x||^2`` (the
  problem Adam-L2 solves; AdamW/AdamProx have a different, kappa-independent
  fixed point, so this number measures how different it is, not a failure).

Run ``python -m experiments.toy.conditioning [--out DIR]``: writes
``DIR/conditioning.json`` (``{"problems": {problem: {study: {optimizer:
{str(kappa): number or null}}}}, "metric": {study: text}, "config": ...,
"tuned": ...}``), PNG plots and prints the tables. All runs are float64 and
vectorised (``vmap`` over kappa and the step-size grid, ``lax.scan`` over
steps); default flags take well under two minutes on two CPU cores.
Partial results are checkpointed to ``DIR/conditioning.partial.json`` and
reused when the same configuration is run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import proxopt
from experiments.files import write_figure, write_json

PROBLEMS = ("diag_quadratic", "diag_logcosh", "rotated_quadratic")
STUDY_I = ("gd", "sgd_momentum", "adagrad_eps0", "adam_eps0", "adam_eps1e-8")
STUDY_II = ("adam_l2", "adamw", "adamprox")
METRICS = {
    "steps_to_tol": (
        "lambda=0: number of steps t after which ||x_t - x*||/||x*|| <= tol "
        "holds until the end of the budget (null: not reached within the "
        "budget), for the best (lr0, half_life) of the grid chosen per "
        "(problem, optimizer, kappa); step size lr0 * 2^(-t/half_life)."
    ),
    "traj_change": (
        "lambda>0: max over steps t <= budget of ||x_t(kappa) - x_t(kappa=1)|| "
        "/ ||b||, same hyper-parameters for every kappa, x_0 = 0, eps = 0 "
        "(0 up to float64 rounding means the trajectory does not depend on "
        "kappa)."
    ),
    "dist_to_reg_min": (
        "lambda>0: ||x_T - x*_lambda|| / ||x*_lambda|| after the budget T, "
        "where x*_lambda minimizes f + lambda/2 ||x||^2 (Adam-L2's target; "
        "AdamW/AdamProx converge to a different, kappa-independent point)."
    ),
}


@dataclasses.dataclass(frozen=True)
class Config:
  kappas: tuple[float, ...] = (1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6)
  dim: int = 32
  budget: int = 2000
  tol: float = 1e-3
  lr_grid: tuple[float, ...] = tuple(2.0 ** k for k in range(-9, 3))
  half_lives: tuple[float, ...] = (math.inf, 100.0, 300.0)
  momentum: float = 0.9
  lam: float = 0.1
  lr_ii: float = 0.05
  half_life_ii: float = 200.0
  seed: int = 0
  problems: tuple[str, ...] = PROBLEMS

  def key(self) -> str:
    text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- problems --


def curvatures(kappa: float, dim: int) -> np.ndarray:
  return kappa ** (-np.arange(dim) / max(dim - 1, 1))


def problem_data(cfg: Config) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(cfg.seed)
  b = rng.choice([-1.0, 1.0], cfg.dim) * rng.uniform(0.5, 1.5, cfg.dim)
  q, r = np.linalg.qr(rng.standard_normal((cfg.dim, cfg.dim)))
  q = q * np.sign(np.diag(r))  # a Haar-distributed rotation
  h = np.stack([curvatures(k, cfg.dim) for k in cfg.kappas])
  return {"b": b, "q": q, "h": h}


def grad_fn_for(problem: str, h, b, q) -> Callable[[jax.Array], jax.Array]:
  if problem == "diag_quadratic":
    return lambda x: h * (x - b)
  if problem == "diag_logcosh":
    return lambda x: h * jnp.tanh(x - b)
  if problem == "rotated_quadratic":
    return lambda x: q @ (h * (q.T @ (x - b)))
  raise ValueError(f"unknown problem {problem!r}; choose from {PROBLEMS}")


def regularized_minimizer(problem: str, h, b, q, lam: float) -> np.ndarray:
  """argmin f + lam/2 ||x||^2, in float64 NumPy (closed form or bisection)."""
  if problem == "diag_quadratic":
    return h * b / (h + lam)
  if problem == "rotated_quadratic":
    a = q @ np.diag(h) @ q.T
    return np.linalg.solve(a + lam * np.eye(len(b)), a @ b)
  if problem == "diag_logcosh":
    # h tanh(x - b) + lam x = 0 has one root between 0 and b (increasing lhs).
    lo, hi = np.minimum(0.0, b), np.maximum(0.0, b)
    for _ in range(200):
      mid = 0.5 * (lo + hi)
      pos = h * np.tanh(mid - b) + lam * mid > 0
      hi, lo = np.where(pos, mid, hi), np.where(pos, lo, mid)
    return 0.5 * (lo + hi)
  raise ValueError(f"unknown problem {problem!r}")


# -------------------------------------------------------------- optimizers --


def schedule(lr0, inv_half_life):
  return lambda count: lr0 * 2.0 ** (-count * inv_half_life)


def make_optimizer(name: str, sched, cfg: Config) -> optax.GradientTransformation:
  if name == "gd":
    return optax.sgd(sched)
  if name == "sgd_momentum":
    return optax.sgd(sched, momentum=cfg.momentum)
  if name == "adagrad_eps0":
    return optax.adagrad(sched, initial_accumulator_value=0.0, eps=0.0)
  if name == "adam_eps0":
    return optax.adam(sched, eps=0.0)
  if name == "adam_eps1e-8":
    return optax.adam(sched, eps=1e-8)
  if name == "adam_l2":
    return proxopt.adam_l2(sched, weight_decay=cfg.lam, eps=0.0)
  if name == "adamw":
    return proxopt.adamw(sched, weight_decay=cfg.lam, eps=0.0)
  if name == "adamprox":
    return proxopt.adamprox(sched, weight_decay=cfg.lam, eps=0.0)
  raise ValueError(f"unknown optimizer {name!r}")


# ------------------------------------------------------------------ studies --


def _steps_to_tol_grid(problem, name, cfg, data):
  """(n_kappa, n_lr, n_hl) array of steps-to-tol (budget + 1 = not reached)."""
  b = jnp.asarray(data["b"])
  q = jnp.asarray(data["q"])
  nb = jnp.linalg.norm(b)
  budget = cfg.budget

  def one(h, lr0, inv_hl):
    opt = make_optimizer(name, schedule(lr0, inv_hl), cfg)
    grad = grad_fn_for(problem, h, b, q)

    def step(carry, t):
      x, state, last_bad = carry
      u, state = opt.update(grad(x), state, x)
      x = optax.apply_updates(x, u)
      err = jnp.linalg.norm(x - b) / nb
      # NaN/inf counts as "not within tol".
      last_bad = jnp.where(~(err <= cfg.tol), t, last_bad)
      return (x, state, last_bad), None

    x0 = jnp.zeros_like(b)
    carry = (x0, opt.init(x0), jnp.zeros([], jnp.int32))  # err_0 = 1 > tol
    (_, _, last_bad), _ = jax.lax.scan(
        step, carry, jnp.arange(1, budget + 1, dtype=jnp.int32)
    )
    return last_bad + 1

  lrs = jnp.asarray(cfg.lr_grid)
  inv_hls = jnp.asarray([0.0 if math.isinf(hl) else 1.0 / hl for hl in cfg.half_lives])
  f = jax.vmap(one, in_axes=(None, None, 0))
  f = jax.vmap(f, in_axes=(None, 0, None))
  f = jax.vmap(f, in_axes=(0, None, None))
  return np.asarray(jax.jit(f)(jnp.asarray(data["h"]), lrs, inv_hls))


def study_steps_to_tol(problem, cfg, data):
  values, tuned = {}, {}
  for name in STUDY_I:
    grid = _steps_to_tol_grid(problem, name, cfg, data)
    values[name], tuned[name] = {}, {}
    for i, kappa in enumerate(cfg.kappas):
      flat = grid[i].ravel()
      j = int(np.argmin(flat))  # first (smallest lr0) among ties
      best = int(flat[j])
      lr_i, hl_i = np.unravel_index(j, grid[i].shape)
      values[name][str(kappa)] = best if best <= cfg.budget else None
      tuned[name][str(kappa)] = {
          "lr0": cfg.lr_grid[lr_i],
          "half_life": None if math.isinf(cfg.half_lives[hl_i]) else cfg.half_lives[hl_i],
      } if best <= cfg.budget else None
  return values, tuned


def _trajectories(problem, name, cfg, data):
  """(n_kappa, budget, dim) iterates of one fixed-hyper-parameter run."""
  b = jnp.asarray(data["b"])
  q = jnp.asarray(data["q"])
  inv_hl = 0.0 if math.isinf(cfg.half_life_ii) else 1.0 / cfg.half_life_ii

  def one(h):
    opt = make_optimizer(name, schedule(cfg.lr_ii, inv_hl), cfg)
    grad = grad_fn_for(problem, h, b, q)

    def step(carry, _):
      x, state = carry
      u, state = opt.update(grad(x), state, x)
      x = optax.apply_updates(x, u)
      return (x, state), x

    x0 = jnp.zeros_like(b)
    _, xs = jax.lax.scan(step, (x0, opt.init(x0)), None, length=cfg.budget)
    return xs

  return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(data["h"])))


def study_weight_decay(problem, cfg, data):
  if 1.0 not in cfg.kappas:
    raise ValueError("study (ii) compares with kappa = 1: include 1 in --kappas")
  k1 = cfg.kappas.index(1.0)
  nb = np.linalg.norm(data["b"])
  change, dist = {}, {}
  for name in STUDY_II:
    xs = _trajectories(problem, name, cfg, data)
    change[name], dist[name] = {}, {}
    for i, kappa in enumerate(cfg.kappas):
      gap = np.linalg.norm(xs[i] - xs[k1], axis=-1)
      change[name][str(kappa)] = _num(np.max(gap) / nb)
      x_reg = regularized_minimizer(
          problem, data["h"][i], data["b"], data["q"], cfg.lam
      )
      d = np.linalg.norm(xs[i, -1] - x_reg) / np.linalg.norm(x_reg)
      dist[name][str(kappa)] = _num(d)
  return change, dist


def _num(v) -> float | None:
  v = float(v)
  return v if math.isfinite(v) else None


# ----------------------------------------------------------------- outputs --


def _atomic_write_json(path: str, obj: Any) -> None:
  write_json(path, obj, indent=1, sort_keys=False)


def format_table(title: str, table: dict[str, dict[str, Any]], kappas) -> str:
  cols = [f"{k:g}" for k in kappas]
  width = max(len(n) for n in table) + 2
  lines = [title, " " * width + "".join(f"{c:>11}" for c in cols)]
  for name, row in table.items():
    cells = []
    for k in kappas:
      v = row.get(str(k))
      if v is None:
        cells.append(f"{'-':>11}")
      elif isinstance(v, int):
        cells.append(f"{v:>11d}")
      else:
        cells.append(f"{v:>11.2e}")
    lines.append(f"{name:<{width}}" + "".join(cells))
  return "\n".join(lines)


_MARKERS = ("o", "s", "^", "D", "v")
_DASHES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)))
_TITLES = {
    "steps_to_tol": "lambda = 0: steps to tolerance, best step size per "
    "(method, kappa); x = not within the budget",
    "traj_change": "lambda > 0: distance of the trajectory at kappa from the "
    "one at kappa = 1 (eps = 0; ~1e-16 = float64 rounding, i.e. identical)",
    "dist_to_reg_min": "lambda > 0: final distance to argmin f + lambda/2 "
    "||x||^2 (Adam-L2's target)",
}


def plot(results: dict[str, Any], cfg: Config, fig_dir: str) -> list[str]:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  os.makedirs(fig_dir, exist_ok=True)
  floor = 1e-17  # exact zeros (scale-free runs) are drawn on this line
  written = []
  for study in METRICS:
    problems = [p for p in cfg.problems if study in results["problems"].get(p, {})]
    fig, axes = plt.subplots(
        1, len(problems), figsize=(4.6 * len(problems), 3.8), squeeze=False
    )
    for ax, problem in zip(axes[0], problems):
      table = results["problems"][problem][study]
      for j, (name, row) in enumerate(table.items()):
        ks, vs, missing = [], [], []
        for k in cfg.kappas:
          if study == "traj_change" and k == 1.0:
            continue  # identical run: 0 by construction
          v = row[str(k)]
          if v is None:
            missing.append(k)
          else:
            ks.append(k)
            vs.append(max(v, floor) if study != "steps_to_tol" else v)
        # Distinct markers/dashes so that coinciding lines stay visible.
        (line,) = ax.plot(
            ks, vs, marker=_MARKERS[j % len(_MARKERS)], ms=7 - j, lw=1.4,
            ls=_DASHES[j % len(_DASHES)], label=name, alpha=0.9,
        )
        if missing and study == "steps_to_tol":
          y = cfg.budget * 1.4 * 1.25 ** j  # staggered "not reached" marks
          ax.plot(missing, [y] * len(missing), ls="none", marker="x",
                  color=line.get_color())
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_xlabel("condition number kappa")
      ax.set_title(problem, fontsize=10)
      ax.grid(True, which="major", alpha=0.3)
      if study == "steps_to_tol":
        ax.axhline(cfg.budget, color="gray", lw=0.8, ls=":")
        ax.set_ylabel(f"steps to rel. error {cfg.tol:g} (x: > {cfg.budget})")
      elif study == "traj_change":
        ax.set_ylabel("max_t ||x_t(kappa) - x_t(1)|| / ||b||")
        ax.axhline(floor, color="gray", lw=0.8, ls=":")
      else:
        ax.set_ylabel("||x_T - x*_lambda|| / ||x*_lambda||")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(_TITLES[study], fontsize=10)
    fig.tight_layout()
    path = os.path.join(fig_dir, f"conditioning_{study}.png")
    write_figure(path, fig, dpi=110)
    written.append(path)
  return written


# --------------------------------------------------------------------- run --


def run(
    cfg: Config,
    checkpoint: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Runs both studies on every problem; returns the JSON-ready results."""
  for p in cfg.problems:
    if p not in PROBLEMS:
      raise ValueError(f"unknown problem {p!r}; choose from {PROBLEMS}")
  partial = {}
  if checkpoint and os.path.exists(checkpoint):
    with open(checkpoint) as f:
      saved = json.load(f)
    if saved.get("config_key") == cfg.key():
      partial = saved["problems"]
      log(f"resuming from {checkpoint}: {sorted(partial)} done")
  results = {
      "problems": {}, "metric": dict(METRICS),
      "config": {k: (list(v) if isinstance(v, tuple) else v)
                 for k, v in dataclasses.asdict(cfg).items()},
      "tuned": {},
  }
  results["config"]["half_lives"] = [
      None if math.isinf(h) else h for h in cfg.half_lives
  ]
  with jax.enable_x64(True):
    data = problem_data(cfg)
    for n, problem in enumerate(cfg.problems, 1):
      if problem in partial:
        results["problems"][problem] = partial[problem]["values"]
        results["tuned"][problem] = partial[problem]["tuned"]
        continue
      t0 = time.perf_counter()
      steps, tuned = study_steps_to_tol(problem, cfg, data)
      change, dist = study_weight_decay(problem, cfg, data)
      results["problems"][problem] = {
          "steps_to_tol": steps, "traj_change": change, "dist_to_reg_min": dist,
      }
      results["tuned"][problem] = {"steps_to_tol": tuned}
      partial[problem] = {"values": results["problems"][problem],
                          "tuned": results["tuned"][problem]}
      if checkpoint:
        _atomic_write_json(checkpoint, {"config_key": cfg.key(), "problems": partial})
      log(f"[{n}/{len(cfg.problems)}] {problem}: {time.perf_counter() - t0:.1f}s")
  return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  default_out = os.path.join("docs", "results")
  parser = argparse.ArgumentParser(
      prog="python -m experiments.toy.conditioning",
      description=__doc__.split("\n\n")[0],
  )
  parser.add_argument("--out", default=default_out,
                      help="directory for conditioning.json (default docs/results)")
  parser.add_argument("--figures", default=None,
                      help="directory for the PNGs (default: docs/figures when "
                      "--out is the default, else --out)")
  parser.add_argument("--kappas", type=float, nargs="+", default=list(Config.kappas))
  parser.add_argument("--dim", type=int, default=Config.dim)
  parser.add_argument("--budget", type=int, default=Config.budget,
                      help="steps per run")
  parser.add_argument("--tol", type=float, default=Config.tol)
  parser.add_argument("--lam", type=float, default=Config.lam,
                      help="weight decay of study (ii) (optax convention)")
  parser.add_argument("--problems", nargs="+", default=list(PROBLEMS),
                      choices=PROBLEMS)
  parser.add_argument("--seed", type=int, default=Config.seed)
  parser.add_argument("--no-plots", action="store_true")
  args = parser.parse_args(argv)
  for name in ("dim", "budget"):
    if getattr(args, name) < 2:
      parser.error(f"--{name} must be >= 2")
  if any(k < 1 for k in args.kappas):
    parser.error("--kappas must be >= 1 (condition numbers)")
  cfg = Config(
      kappas=tuple(float(k) for k in args.kappas), dim=args.dim,
      budget=args.budget, tol=args.tol, lam=args.lam, seed=args.seed,
      problems=tuple(args.problems),
  )
  os.makedirs(args.out, exist_ok=True)
  fig_dir = args.figures or (
      os.path.join("docs", "figures") if args.out == default_out else args.out
  )
  t0 = time.perf_counter()
  checkpoint = os.path.join(args.out, "conditioning.partial.json")
  results = run(cfg, checkpoint=checkpoint)
  out_path = os.path.join(args.out, "conditioning.json")
  _atomic_write_json(out_path, results)
  if os.path.exists(checkpoint):
    os.remove(checkpoint)
  for problem, studies in results["problems"].items():
    for study, table in studies.items():
      print()
      print(format_table(f"{problem} / {study}", table, cfg.kappas))
  print(f"\nwrote {out_path}")
  if not args.no_plots:
    for path in plot(results, cfg, fig_dir):
      print(f"wrote {path}")
  print(f"total {time.perf_counter() - t0:.1f}s")
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
