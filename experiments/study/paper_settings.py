r"""The paper's claim at its published settings (issue #22): AdamW vs Adam-L2 without BatchNorm, ResNet-20 vs ResNet-56.

``python -m experiments.study.paper_settings run --dataset npz:DIR --until 15:40``
(``status``: what is recorded; ``commands``: the training commands; ``collect``:
tables and figures, :mod:`experiments.study.paper_settings_report`)

The depth study (:mod:`experiments.study.depth`) shrank the protocol until it
fit two CPU cores and changed the network (zero-initialised residual
branches). This study keeps the paper's network and settings and shrinks only
the data and the length, every change stated (:class:`Protocol`):

- network: the CIFAR ResNet without BatchNorm and with the paper's Kaiming
  initialisation (no ``zero_init_residual``);
- settings: each optimizer's published best ``(alpha, lambda)`` for each
  depth (the recipes of :mod:`experiments.configs.recipes`, paper convention),
  constant step size (every command of the official code passes
  ``--scheduler None``), batch 128, random crop + flip;
- data: 10,000 CIFAR-10 training images, a disjoint 2,000-image validation
  split (evaluated every epoch) and the full 10,000-image test set
  (evaluated every 5 epochs and at the end, with its per-example
  predictions kept, so a paired difference has a per-example standard
  error);
- length: 100 epochs of 78 steps (7,800 steps; the paper: 300 epochs of 391);
- pairing: both optimizers of a seed start from the same weights and see the
  same batches and augmentations (``--init-seed`` = ``--seed``).

One run at a time, on every core (a ResNet-56 run is about 40 minutes on
two cores here): each finishes inside one sitting. ``--until HH:MM`` starts a
run only if its estimated length (from the recorded runs) ends before then.
Every finished run is exported to ``docs/results/paper_settings/<name>.json``
(portable: no path of the machine): that folder is the study's record,
committed as runs finish, and ``run`` skips what it holds; ``runs/`` keeps the
epoch checkpoints of a run cut short, which resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

from experiments.files import write_json
from experiments.study.depth import CURVE_KEYS, load_result, portable_config
from experiments.study.runner import launch_train, study_args, study_parser
from experiments.study.spec import ROOT, read_summary
from experiments.training.run_dir import read_metrics

RESULTS = ROOT / "docs" / "results" / "paper_settings"
_now = datetime.datetime.now  # the runner's clock (a test advances a fake one)


@dataclasses.dataclass(frozen=True)
class Protocol:
  dataset: str = "cifar10"
  train_subset: int = 10_000
  val_size: int = 2_000
  test_subset: int | None = None  # the full test set
  epochs: int = 100
  eval_every: int = 5
  models: tuple[str, ...] = ("resnet20", "resnet56")
  optimizers: tuple[str, ...] = ("adam_l2", "adamw")
  seeds: tuple[int, ...] = (0, 1)
  # With the budget left, in this order (issue #22): the ResNet-110 pair of
  # seed 0, then AdamProx on ResNet-56 (AdamW's settings: C12).
  extra: tuple[tuple[str, str, int], ...] = (
      ("resnet110", "adam_l2", 0), ("resnet110", "adamw", 0),
      ("resnet56", "adamprox", 0), ("resnet56", "adamprox", 1))


PROTOCOLS = {
    "cpu": Protocol(),
    # For tests: the embedded sample, a few steps.
    "smoke": Protocol(dataset="sample", train_subset=512, val_size=256, test_subset=None,
                      epochs=2, eval_every=2, models=("resnet20",), seeds=(0, 1), extra=()),
}


@dataclasses.dataclass(frozen=True)
class PaperRun:
  model: str
  optimizer: str
  seed: int

  @property
  def recipe(self) -> str:
    return f"{self.model}-nobn-{self.optimizer}"

  @property
  def name(self) -> str:
    return f"{self.recipe}-s{self.seed}"

  def flags(self, p: Protocol, runs_dir: pathlib.Path) -> list[str]:
    """The ``python -m experiments.train`` command line: the recipe (model,
    optimizer, alpha, lambda, constant step size, batch 128) and the protocol."""
    f = ["--recipe", self.recipe, "--budget", "paper", "--dataset", p.dataset,
         "--epochs", str(p.epochs), "--train-subset", str(p.train_subset),
         "--val-size", str(p.val_size), "--eval-every", str(p.eval_every),
         "--save-predictions", "--seed", str(self.seed), "--init-seed", str(self.seed),
         "--out", str(runs_dir / self.name), "--no-progress"]
    if p.test_subset:
      f += ["--test-subset", str(p.test_subset)]
    return f


def planned(p: Protocol) -> list[PaperRun]:
  """Every run in priority order: per model from the shallowest up, the pair
  of each seed (a finished pair is a comparison), then the extras. On this
  machine a ResNet-20 run takes about 30 minutes and a ResNet-56 run about
  80: one sitting fits the four ResNet-20 runs, or one ResNet-56 pair."""
  runs = [PaperRun(m, o, s) for m in p.models for s in p.seeds for o in p.optimizers]
  return runs + [PaperRun(*e) for e in p.extra]


def _commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def export(run: PaperRun, p: Protocol, runs_dir: pathlib.Path,
           results: pathlib.Path = RESULTS) -> pathlib.Path | None:
  """Writes the finished run's record to ``results/<name>.json`` (None if
  unfinished): config, curves, final metrics, the final update histogram and
  the per-example test predictions (digit strings, one character per image)."""
  d = runs_dir / run.name
  summary = read_summary(d)
  if summary is None or summary.get("status") not in ("complete", "diverged"):
    return None
  rows = read_metrics(d, p.epochs)
  last = rows[-1] if rows else {}
  record = {
      "run": dataclasses.asdict(run), "protocol": dataclasses.asdict(p),
      "config": portable_config(json.loads((d / "resolved_config.json").read_text())),
      "commit": _commit(), "status": summary.get("status"),
      "final": {k: summary.get(k) for k in (
          "epochs", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
          "test_acc", "best_test_acc", "median_step_seconds", "wall_seconds")},
      "curves": {k: [r.get(k) for r in rows] for k in CURVE_KEYS},
      "final_update_hist": {k: last.get(k) for k in (
          "update_hist_of", "update_log2_hist", "update_log2_edges", "update_zero_fraction",
          "update_iqr_octaves")},
      "error": summary.get("error"),
  }
  pred_path = d / "test_predictions.npz"
  if pred_path.exists():
    with np.load(pred_path) as f:
      record["test_predictions"] = {
          "epoch": int(f["epoch"]),
          "predicted": "".join(map(str, f["predictions"].tolist())),
          "label": "".join(map(str, f["labels"].tolist()))}
  return write_json(results / f"{run.name}.json", record, indent=1)


def estimated_seconds(run: PaperRun, results: pathlib.Path) -> float | None:
  """The run's expected wall time: the longest recorded run of its model, or a
  recorded ResNet scaled by depth (the step time is linear in depth); None
  with nothing recorded."""
  recs = [json.loads(f.read_text()) for f in sorted(results.glob("*.json"))]
  walls = [(r["run"]["model"], r["final"]["wall_seconds"]) for r in recs
           if r.get("final", {}).get("wall_seconds")]
  same = [w for m, w in walls if m == run.model]
  if same:
    return max(same)
  depth = lambda m: int(m[len("resnet"):])
  scaled = [w * depth(run.model) / depth(m) for m, w in walls]
  return max(scaled) if scaled else None


def run_study(p: Protocol, runs_dir: pathlib.Path, results: pathlib.Path = RESULTS,
              max_runs: int | None = None, until: datetime.datetime | None = None) -> int:
  """Runs the planned runs not yet recorded, one at a time; returns the number
  of failed runs. Stops before a run that would not end by ``until``."""
  (runs_dir / "logs").mkdir(parents=True, exist_ok=True)
  failed, started = 0, 0
  for run in planned(p):
    if load_result(run.name, results) is not None:
      continue
    if max_runs is not None and started >= max_runs:
      break
    est = estimated_seconds(run, results)
    if until is not None and est is not None and (
        _now() + datetime.timedelta(seconds=1.05 * est) > until):
      print(f"stop: {run.name} needs about {est / 60:.0f} min, more than is left "
            f"before {until:%H:%M}", flush=True)
      break
    t0 = time.time()
    print(f"start {run.name}" + (f" (about {est / 60:.0f} min)" if est else ""), flush=True)
    proc = launch_train(run.flags(p, runs_dir), runs_dir / "logs" / f"{run.name}.log", None)
    proc.wait()
    started += 1
    path = export(run, p, runs_dir, results)
    failed += path is None
    print(f"{'exported ' + str(path) if path else 'FAILED ' + run.name} "
          f"(rc {proc.returncode}, {(time.time() - t0) / 60:.1f} min)", flush=True)
    if path is None:
      break  # look before going on
  return failed


def status(p: Protocol, results: pathlib.Path = RESULTS) -> str:
  runs = planned(p)
  done = [r for r in runs if load_result(r.name, results) is not None]
  lines = [f"{len(done)}/{len(runs)} planned runs recorded in {results}"]
  for r in runs:
    rec = load_result(r.name, results)
    f = (rec or {}).get("final") or {}
    lines.append(f"  {r.name}: " + ("-" if rec is None else
                 f"{rec['status']} train_loss {f.get('train_loss'):.4f} "
                 f"test_acc {f.get('test_acc')} ({(f.get('wall_seconds') or 0) / 60:.0f} min)"))
  return "\n".join(lines)


def _until(text: str) -> datetime.datetime:
  """``HH:MM`` today (tomorrow if already past)."""
  try:
    t = datetime.datetime.strptime(text, "%H:%M").time()
  except ValueError:
    raise argparse.ArgumentTypeError(f"--until takes HH:MM, got {text!r}") from None
  now = _now()
  at = datetime.datetime.combine(now.date(), t)
  return at if at > now else at + datetime.timedelta(days=1)


def main(argv=None) -> int:
  ap, cmds = study_parser("python -m experiments.study.paper_settings",
                          __doc__.split("\n")[0], PROTOCOLS, RESULTS,
                          ROOT / "docs" / "results" / "paper_settings.md")
  cmds["run"].add_argument("--until", type=_until, default=None,
                           help="HH:MM: start no run expected to end after it")
  args = ap.parse_args(argv)
  p, results, runs_dir = study_args(args, PROTOCOLS, "paper-settings")
  if args.cmd == "status":
    print(status(p, results))
    return 0
  if args.cmd == "commands":
    for r in planned(p):
      print(" ".join(["python -m experiments.train", *r.flags(p, runs_dir)]))
    return 0
  if args.cmd == "collect":
    from experiments.study import paper_settings_report
    return paper_settings_report.collect(results, pathlib.Path(args.report),
                                         pathlib.Path(args.figures))
  return 1 if run_study(p, runs_dir, results, args.max_runs, args.until) else 0


if __name__ == "__main__":
  sys.exit(main())
