r"""The reproduction study of Zhuang et al. (TMLR 2022): ``python -m experiments.reproduce``.

One config (:data:`SCALES`) defines every run of the study; each run is an
ordinary ``experiments.train`` run (resumable, atomic outputs) in
``RUNS/<part>/<name>-s<seed>``. Parts:

- ``depth``: ResNets without BatchNorm (``cpu``: 20/44/56; ``paper``: also
  110/218), Adam-L2 vs AdamW vs AdamProx at the paper's best (alpha, lambda)
  for each depth (``experiments.recipes``);
- ``bn``: the BN control: one model (``cpu``: ResNet-20, ``paper``: 110)
  *with* BatchNorm, Adam-L2 vs AdamW at that model's no-BN settings (the
  paper's best BN settings have lambda = 0, for which the three optimizers
  are the same algorithm);
- ``mult``: the loss multiplied by 10 and 100, Adam-L2 and AdamW at the fixed
  x1 settings (the x1 runs are the ``depth`` runs of that model).

Commands::

  python -m experiments.reproduce run --scale cpu --workers 2 --pin   # the study
  python -m experiments.reproduce collect --scale cpu                 # results + figures
  python -m experiments.reproduce commands --scale paper              # one train command per run
  python -m experiments.reproduce run --scale cpu --epochs 30 ...     # extend the same runs

``run`` launches ``--workers`` training processes at a time (``--pin`` binds
worker k to CPU core k: on a 2-core machine two single-core runs do 1.3x the
work of one run on both cores), in priority order (seed 0 of every part
first), skipping finished runs and resuming interrupted ones. ``collect``
writes ``docs/results/reproduction.json`` (every run's config, curves and
final metrics, and the mean +- sd tables) and the figures under
``docs/figures/``; ``docs/reproduction.md`` is the report built on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

from experiments.recipes import get_recipe

ROOT = pathlib.Path(__file__).resolve().parent.parent
OPTIMIZERS = ("adam_l2", "adamw", "adamprox")

# Each scale: data, length, seeds, depths, and the model of the BN control and
# of the loss-multiplier test. "cpu" is what 2 CPU cores finish in about two
# hours; "paper" is the published protocol (full data, 300 epochs, the
# paper's depths, its x10/x100 test on ResNet-110).
_CPU = dict(dataset="npz:" + str(ROOT.parent / "shared" / "data" / "cifar10"),
            train_subset=5120, test_subset=2000, epochs=5, seeds=(0, 1, 2),
            depths=("resnet20", "resnet44", "resnet56"), bn_model="resnet20",
            mult_model="resnet20")
SCALES = {
    "cpu": _CPU,
    "paper": dict(dataset="cifar10", train_subset=None, test_subset=None, epochs=300,
                  seeds=(0, 1, 2),
                  depths=("resnet20", "resnet44", "resnet56", "resnet110", "resnet218"),
                  bn_model="resnet110", mult_model="resnet110"),
    # For tests: the embedded sample, a few steps.
    "smoke": dict(_CPU, dataset="sample", train_subset=256, test_subset=200, epochs=2,
                  seeds=(0, 1)),
}
MULTIPLIERS = (10, 100)


@dataclasses.dataclass(frozen=True)
class Run:
  part: str  # depth | bn | mult
  recipe: str  # the recipe whose (alpha, lambda) the run uses
  seed: int
  use_bn: bool = False
  loss_multiplier: float = 1.0

  @property
  def name(self) -> str:
    r = get_recipe(self.recipe)
    tag = f"{r.model}-{'bn' if self.use_bn else 'nobn'}"
    if self.loss_multiplier != 1:
      tag += f"-x{self.loss_multiplier:g}"
    return f"{tag}-{r.optimizer}-s{self.seed}"

  def flags(self, scale: str, runs_dir: pathlib.Path) -> list[str]:
    """The ``experiments.train`` command line of this run."""
    sc = SCALES[scale]
    r = get_recipe(self.recipe)
    f = ["--recipe", self.recipe, "--scale", "paper", "--dataset", sc["dataset"],
         "--epochs", str(sc["epochs"]), "--seed", str(self.seed),
         "--bn" if self.use_bn else "--no-bn",
         "--out", str(runs_dir / self.part / self.name), "--no-progress"]
    if self.loss_multiplier != r.loss_multiplier:
      f += ["--loss-multiplier", f"{self.loss_multiplier:g}"]
    if sc["train_subset"]:
      f += ["--train-subset", str(sc["train_subset"])]
    if sc["test_subset"]:
      f += ["--test-subset", str(sc["test_subset"])]
    return f


def study(scale: str) -> list[Run]:
  """Every run, in priority order: all parts for seed 0, then seed 1, ..."""
  sc, runs = SCALES[scale], []
  for seed in sc["seeds"]:
    for model in sc["depths"]:
      runs += [Run("depth", f"{model}-nobn-{o}", seed) for o in OPTIMIZERS]
    runs += [Run("bn", f"{sc['bn_model']}-nobn-{o}", seed, use_bn=True)
             for o in ("adam_l2", "adamw")]
    runs += [Run("mult", f"{sc['mult_model']}-nobn-{o}", seed, loss_multiplier=m)
             for m in MULTIPLIERS for o in ("adam_l2", "adamw")]
  return runs


def read_summary(d: pathlib.Path) -> dict | None:
  """The run's ``summary.json``, or None while it has none."""
  try:
    return json.loads((d / "summary.json").read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def run_status(summary: dict | None, epochs: int | None = None) -> str | None:
  """The run's status; "complete" only if it has ``epochs`` epochs (a longer
  scale extends finished runs in place, see experiments.train)."""
  if summary is None:
    return None
  if summary.get("status") == "complete" and epochs and summary.get("epochs", 0) < epochs:
    return "shorter"
  return summary.get("status")


def _status(d: pathlib.Path, epochs: int | None = None) -> str | None:
  return run_status(read_summary(d), epochs)


def run_all(scale: str, runs_dir: pathlib.Path, workers: int, pin: bool,
            only: str | None = None) -> int:
  """Runs the study with ``workers`` processes; returns the number of failures."""
  runs = [r for r in study(scale) if only is None or r.part == only]
  epochs = SCALES[scale]["epochs"]
  todo = [r for r in runs
          if _status(runs_dir / r.part / r.name, epochs) not in ("complete", "diverged")]
  print(f"{len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to go "
        f"({workers} worker(s){', pinned' if pin else ''}); logs in {runs_dir}/logs/",
        flush=True)
  (runs_dir / "logs").mkdir(parents=True, exist_ok=True)
  cores = sorted(os.sched_getaffinity(0)) if pin else None
  active: dict[int, tuple[subprocess.Popen, Run, float]] = {}
  failures, done = 0, len(runs) - len(todo)
  t0 = time.time()
  while todo or active:
    while todo and len(active) < workers:
      slot = min(set(range(workers)) - set(active))
      run = todo.pop(0)
      cmd = [sys.executable, "-m", "experiments.train", *run.flags(scale, runs_dir)]
      log = open(runs_dir / "logs" / f"{run.part}-{run.name}.log", "a")
      core = cores[slot % len(cores)] if cores else None
      proc = subprocess.Popen(
          cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
          preexec_fn=(lambda c=core: os.sched_setaffinity(0, {c})) if core is not None else None)
      log.close()
      active[slot] = (proc, run, time.time())
      print(f"  start {run.part}/{run.name}" + (f" on core {core}" if core is not None else ""),
            flush=True)
    time.sleep(2)
    for slot, (proc, run, start) in list(active.items()):
      if proc.poll() is None:
        continue
      del active[slot]
      done += 1
      status = _status(runs_dir / run.part / run.name)
      if proc.returncode != 0 and status != "diverged":
        failures += 1
      print(f"[{done}/{len(runs)}] {run.part}/{run.name}: {status or 'failed'} "
            f"(rc {proc.returncode}, {time.time() - start:.0f} s; "
            f"{(time.time() - t0) / 60:.1f} min elapsed)", flush=True)
  return failures


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.reproduce",
                              description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  for name in ("run", "collect", "commands"):
    s = sub.add_parser(name)
    s.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    s.add_argument("--runs-dir", default=None,
                   help="run directories (default runs/reproduce-<scale>)")
    s.add_argument("--epochs", type=int, default=None,
                   help="override the scale's epochs; more epochs extend finished runs "
                   "in place (constant step size), so a study can grow across sittings")
    if name == "run":
      s.add_argument("--workers", type=int, default=1)
      s.add_argument("--pin", action="store_true", help="bind worker k to CPU core k")
      s.add_argument("--only", choices=("depth", "bn", "mult"), default=None)
    if name == "collect":
      s.add_argument("--results", default=str(ROOT / "docs" / "results" / "reproduction.json"))
      s.add_argument("--figures", default=str(ROOT / "docs" / "figures"))
  args = p.parse_args(argv)
  if args.epochs is not None:
    if args.epochs < 1:
      p.error(f"--epochs must be >= 1, got {args.epochs}.")
    # Every helper reads the protocol from SCALES: override it for this process.
    SCALES[args.scale] = dict(SCALES[args.scale], epochs=args.epochs)
  runs_dir = pathlib.Path(args.runs_dir or ROOT / "runs" / f"reproduce-{args.scale}")
  if args.cmd == "commands":
    for r in study(args.scale):
      print(" ".join(["python -m experiments.train", *r.flags(args.scale, runs_dir)]))
    return 0
  if args.cmd == "run":
    if args.workers < 1:
      p.error(f"--workers must be >= 1, got {args.workers}.")
    return 1 if run_all(args.scale, runs_dir, args.workers, args.pin, args.only) else 0
  from experiments import reproduce_report
  return reproduce_report.collect(args.scale, runs_dir, pathlib.Path(args.results),
                                  pathlib.Path(args.figures))


if __name__ == "__main__":
  sys.exit(main())
