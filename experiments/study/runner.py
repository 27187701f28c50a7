r"""Runs and collects the reproduction study: ``python -m experiments.study``.

The study itself (which runs, at which settings) is :mod:`experiments.study.spec`;
the tables and figures are :mod:`experiments.study.report`. Commands::

  python -m experiments.study run --scale cpu --dataset npz:DIR --workers 2 --pin
  python -m experiments.study collect --scale cpu
  python -m experiments.study commands --scale paper
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import subprocess
import sys
import time

from experiments.study import report, spec
from experiments.study.spec import ROOT, Run, _status, study


def launch_train(flags: list[str], log_path: pathlib.Path,
                 core: int | None) -> subprocess.Popen:
  """Starts ``python -m experiments.train FLAGS`` from the checkout, appending its
  output to ``log_path``, bound to CPU ``core`` if given."""
  with open(log_path, "a") as log:
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *flags], stdout=log,
        stderr=subprocess.STDOUT, cwd=ROOT,
        preexec_fn=(lambda c=core: os.sched_setaffinity(0, {c})) if core is not None else None)


def study_parser(prog: str, description: str, protocols: dict, results: pathlib.Path,
                 report: pathlib.Path) -> tuple[argparse.ArgumentParser, dict]:
  """The command line of a study recorded as JSON files (``run``, ``status``,
  ``commands``, ``collect``); returns the parser and its subcommands, to which
  the study adds its own ``run`` options."""
  ap = argparse.ArgumentParser(prog=prog, description=description)
  subs = ap.add_subparsers(dest="cmd", required=True)
  cmds = {}
  for name in ("run", "status", "commands", "collect"):
    s = cmds[name] = subs.add_parser(name)
    s.add_argument("--protocol", choices=sorted(protocols), default="cpu")
    s.add_argument("--dataset", default=None,
                   help="override the protocol's data (cifar10 | npz:DIR), e.g. "
                   "npz:../shared/data/cifar10")
    s.add_argument("--runs-dir", default=None,
                   help="run directories (default runs/<study>-<protocol>)")
    s.add_argument("--results", default=str(results), help="the record (default %(default)s)")
    if name == "collect":
      s.add_argument("--report", default=str(report))
      s.add_argument("--figures", default=str(ROOT / "docs" / "figures"))
    if name == "run":
      s.add_argument("--max-runs", type=int, default=None, help="start at most N runs")
  return ap, cmds


def study_args(args, protocols: dict, study: str):
  """(protocol with ``--dataset`` applied, results folder, runs folder) of a
  :func:`study_parser` command line."""
  p = protocols[args.protocol]
  if args.dataset:
    p = dataclasses.replace(p, dataset=args.dataset)
  runs_dir = pathlib.Path(args.runs_dir or ROOT / "runs" / f"{study}-{args.protocol}")
  return p, pathlib.Path(args.results), runs_dir


def run_all(scale: str, runs_dir: pathlib.Path, workers: int, pin: bool,
            only: str | None = None) -> int:
  """Runs the study with ``workers`` processes; returns the number of failures."""
  runs = [r for r in study(scale) if only is None or r.part == only]
  epochs = spec.SCALES[scale]["epochs"]
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
      core = cores[slot % len(cores)] if cores else None
      proc = launch_train(run.flags(scale, runs_dir),
                          runs_dir / "logs" / f"{run.part}-{run.name}.log", core)
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
  p = argparse.ArgumentParser(prog="python -m experiments.study",
                              description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  for name in ("run", "collect", "commands"):
    s = sub.add_parser(name)
    s.add_argument("--scale", choices=sorted(spec.SCALES), default="cpu")
    s.add_argument("--runs-dir", default=None,
                   help="run directories (default runs/reproduce-<scale>)")
    s.add_argument("--epochs", type=int, default=None,
                   help="override the scale's epochs; more epochs extend finished runs "
                   "in place (constant step size), so a study can grow across sittings")
    s.add_argument("--dataset", default=None,
                   help="the study's data (cifar10 | npz:DIR), overriding the scale's; "
                   "e.g. npz:../shared/data/cifar10 for the cpu scale")
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
    spec.SCALES[args.scale] = dict(spec.SCALES[args.scale], epochs=args.epochs)
  if args.dataset is not None:
    spec.SCALES[args.scale] = dict(spec.SCALES[args.scale], dataset=args.dataset)
  runs_dir = pathlib.Path(args.runs_dir or ROOT / "runs" / f"reproduce-{args.scale}")
  if args.cmd == "commands":
    for r in study(args.scale):
      print(" ".join(["python -m experiments.train", *r.flags(args.scale, runs_dir)]))
    return 0
  if args.cmd == "run":
    if args.workers < 1:
      p.error(f"--workers must be >= 1, got {args.workers}.")
    return 1 if run_all(args.scale, runs_dir, args.workers, args.pin, args.only) else 0
  return report.collect(args.scale, runs_dir, pathlib.Path(args.results),
                                  pathlib.Path(args.figures))


if __name__ == "__main__":
  sys.exit(main())
