r"""The depth study (issue #16): AdamW vs Adam-L2 vs AdamProx without BatchNorm as depth grows.

``python -m experiments.study.depth run --dataset npz:DIR --workers 2 --pin``
(``status``: what is recorded and selected; ``collect``: tables and figures,
:mod:`experiments.study.depth_report`; ``commands``: the training commands)

The paper (Zhuang et al., TMLR 2022, Fig. 2-3) trains ResNet-20...218 without
BatchNorm for 300 epochs of full CIFAR-10 and picks each optimizer's best
(alpha, lambda) from a grid *on the test set*. Two CPU cores afford about
1/50 of one such run per ResNet-56 hour, so this study keeps the comparison
and shrinks the protocol, every change stated (:class:`Protocol`):

- data: 10,000 CIFAR-10 training images, a disjoint 2,000-image
  **validation** split drawn from the rest of the training set, and a fixed
  random 2,000-image test subset (the paper: 50,000 / no validation / 10,000);
- length: 30 epochs of 78 steps at batch 128 (2,340 steps; the paper 117,300),
  with the per-epoch cosine schedule of the paper's code (the paper's tables:
  constant step size), so that runs end near a minimum of their loss;
- lambda: the paper's decay multiplies ``lambda * eta_t`` over 117,300 steps
  (``lambda = 5e-5``: a total log-shrinkage of 5.9); at 2,340 cosine steps the
  same total needs ``lambda ~ 5e-3``. AdamW's and AdamProx's grid is
  therefore {5e-4, 5e-3} (the paper-equivalent and 10x less); Adam-L2's
  lambda is an L2 coefficient, not a per-step decay, so its grid is the
  paper's best, 5e-4, and 10x more;
- selection: a 2 x 2 (alpha, lambda) grid per optimizer on ResNet-20 (seed 0),
  chosen by final **validation** accuracy; the chosen settings are then run on
  ResNet-20 and ResNet-56 with 2 seeds (the ResNet-20 seed-0 run is the grid
  run). A grid per depth would cost 12 ResNet-56 runs (about 6 core-hours);
  the paper's own best settings for ResNet-20 and 56 differ by at most 2x in
  alpha and not in lambda, which is the defence of transferring them;
- initialisation: the last convolution of each residual branch starts at
  zero (``--zero-init-residual``): with the paper's Kaiming initialisation a
  no-BN ResNet-56 reached 12.6% test accuracy after 8 epochs of this protocol
  (41.8% with zero init), i.e. it would not train in this budget at all;
- the BN control: ResNet-20 *with* BatchNorm at the same selected settings,
  2 seeds (the paper's best BN settings have lambda = 0, where the three
  optimizers coincide).

Seeds share the initialisation across optimizers (``--init-seed`` = seed),
so differences between optimizers are paired.

Every finished run is exported to ``docs/results/depth_study/<name>.json``
(config, per-epoch curves, final metrics, final update histogram): that folder
is the study's record, committed as runs finish, and ``run`` skips the runs
already in it, so the study spans sittings on fresh machines (``runs/`` holds
checkpoints of unfinished runs and is not kept).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

from experiments.files import write_json
from experiments.study.runner import launch_train, study_args, study_parser
from experiments.study.spec import ROOT, read_summary
from experiments.training.run_dir import read_metrics

OPTIMIZERS = ("adam_l2", "adamw", "adamprox")
RESULTS = ROOT / "docs" / "results" / "depth_study"


@dataclasses.dataclass(frozen=True)
class Protocol:
  dataset: str = "cifar10"
  train_subset: int = 10_000
  val_size: int = 2_000
  test_subset: int = 2_000
  epochs: int = 30
  schedule: str = "cosine_epoch"
  zero_init_residual: bool = True
  grid_model: str = "resnet20"
  models: tuple[str, ...] = ("resnet20", "resnet56")
  bn_model: str = "resnet20"
  seeds: tuple[int, ...] = (0, 1)
  alphas: tuple[float, ...] = (5e-4, 1e-3)
  # paper convention: Adam-L2's L2 coefficient; AdamW/AdamProx decay lambda*eta_t.
  lambdas: tuple[tuple[str, tuple[float, ...]], ...] = (
      ("adam_l2", (5e-4, 5e-3)), ("adamw", (5e-4, 5e-3)), ("adamprox", (5e-4, 5e-3)))

  def lambda_grid(self, opt: str) -> tuple[float, ...]:
    return dict(self.lambdas)[opt]


PROTOCOLS = {
    "cpu": Protocol(),
    # For tests: the embedded sample, a few steps.
    "smoke": Protocol(dataset="sample", train_subset=512, val_size=256, test_subset=200,
                      epochs=2, models=("resnet20",), seeds=(0, 1)),
}


@dataclasses.dataclass(frozen=True)
class DepthRun:
  stage: str  # grid | final | bn
  model: str
  optimizer: str
  lr: float
  lam: float
  seed: int
  use_bn: bool = False

  @property
  def name(self) -> str:
    return (f"{self.model}-{'bn' if self.use_bn else 'nobn'}-{self.optimizer}"
            f"-a{self.lr:g}-l{self.lam:g}-s{self.seed}")

  def flags(self, p: Protocol, runs_dir: pathlib.Path) -> list[str]:
    """The ``python -m experiments.train`` command line of this run."""
    f = ["--model", self.model, "--bn" if self.use_bn else "--no-bn",
         "--optimizer", self.optimizer, "--lr", f"{self.lr:g}",
         "--weight-decay", f"{self.lam:g}", "--convention", "paper",
         "--schedule", p.schedule, "--epochs", str(p.epochs),
         "--dataset", p.dataset, "--train-subset", str(p.train_subset),
         "--val-size", str(p.val_size), "--test-subset", str(p.test_subset),
         "--seed", str(self.seed), "--init-seed", str(self.seed),
         "--out", str(runs_dir / self.name), "--no-progress"]
    if p.zero_init_residual:
      f.append("--zero-init-residual")
    return f


def grid_runs(p: Protocol) -> list[DepthRun]:
  return [DepthRun("grid", p.grid_model, o, a, lam, p.seeds[0])
          for o in OPTIMIZERS for a in p.alphas for lam in p.lambda_grid(o)]


def load_result(name: str, results: pathlib.Path = RESULTS) -> dict | None:
  try:
    return json.loads((results / f"{name}.json").read_text())
  except FileNotFoundError:
    return None


def select(p: Protocol, results: pathlib.Path = RESULTS) -> dict[str, tuple[float, float]]:
  """Per optimizer whose grid is complete: the (alpha, lambda) with the best
  final validation accuracy (ties: lower validation loss, then the earlier
  grid point). Diverged runs rank last."""
  chosen = {}
  for opt in OPTIMIZERS:
    runs = [r for r in grid_runs(p) if r.optimizer == opt]
    recs = [load_result(r.name, results) for r in runs]
    if any(rec is None for rec in recs):
      continue
    def key(i):
      f = recs[i]["final"]
      ok = recs[i]["status"] == "complete"
      return (not ok, -(f.get("val_acc") or 0.0), f.get("val_loss") or float("inf"), i)
    best = min(range(len(runs)), key=key)
    chosen[opt] = (runs[best].lr, runs[best].lam)
  return chosen


def planned(p: Protocol, results: pathlib.Path = RESULTS) -> list[DepthRun]:
  """Every run that can be defined now, in priority order: per optimizer with a
  complete grid, its selected settings on the deeper models (seed 0) first, as
  they take longest and carry the depth comparison; then the rest of the grid;
  then the BN control (seed 0); then seed 1 of the finals and the BN control."""
  grid = grid_runs(p)
  chosen = select(p, results)

  def finals(seed):
    out = []
    for model in p.models[::-1]:
      for opt in OPTIMIZERS:
        if opt in chosen:
          run = DepthRun("final", model, opt, *chosen[opt], seed)
          if dataclasses.replace(run, stage="grid") not in grid:
            out.append(run)
    return out

  def bn(seed):
    return [DepthRun("bn", p.bn_model, opt, *chosen[opt], seed, use_bn=True)
            for opt in OPTIMIZERS if opt in chosen]

  runs = finals(p.seeds[0]) + grid + bn(p.seeds[0])
  for seed in p.seeds[1:]:
    runs += finals(seed) + bn(seed)
  return runs


def portable_config(cfg: dict) -> dict:
  """A run's resolved config without paths of the machine that ran it: the
  output directory becomes the run's name, an absolute ``npz:`` dataset or
  ``data_dir`` its folder's name (records are committed and read elsewhere)."""
  out = dict(cfg)
  if out.get("out"):
    out["out"] = pathlib.PurePath(out["out"]).name
  ds = out.get("dataset") or ""
  if ds.startswith("npz:") and pathlib.PurePath(ds[4:]).is_absolute():
    out["dataset"] = "npz:" + pathlib.PurePath(ds[4:]).name
  if out.get("data_dir") and pathlib.PurePath(out["data_dir"]).is_absolute():
    out["data_dir"] = pathlib.PurePath(out["data_dir"]).name
  return out


CURVE_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
              "test_acc", "lr", "update_iqr_octaves", "update_within_one_octave",
              "update_median_log2", "epoch_seconds")


def export(run: DepthRun, p: Protocol, runs_dir: pathlib.Path,
           results: pathlib.Path = RESULTS) -> pathlib.Path | None:
  """Writes the finished run's record to ``results/<name>.json`` (None if unfinished)."""
  d = runs_dir / run.name
  summary = read_summary(d)
  if summary is None or summary.get("status") not in ("complete", "diverged"):
    return None
  cfg = portable_config(json.loads((d / "resolved_config.json").read_text()))
  rows = read_metrics(d, p.epochs)
  last = rows[-1] if rows else {}
  return write_json(results / f"{run.name}.json", {
      "run": dataclasses.asdict(run), "protocol": dataclasses.asdict(p),
      "config": cfg, "status": summary.get("status"),
      "final": {k: summary.get(k) for k in ("epochs", "train_loss", "train_acc", "val_loss",
                                            "val_acc", "test_loss", "test_acc",
                                            "best_test_acc", "median_step_seconds",
                                            "wall_seconds")},
      "curves": {k: [r.get(k) for r in rows] for k in CURVE_KEYS},
      "final_update_hist": {k: last.get(k) for k in (
          "update_hist_of", "update_log2_hist", "update_log2_edges", "update_zero_fraction")},
      "error": summary.get("error"),
  }, indent=1)


def run_study(p: Protocol, runs_dir: pathlib.Path, workers: int, pin: bool,
              results: pathlib.Path = RESULTS, max_runs: int | None = None,
              on_export=None) -> int:
  """Runs what is planned and not yet recorded, ``workers`` processes at a
  time, re-planning as grids complete; returns the number of failed runs."""
  (runs_dir / "logs").mkdir(parents=True, exist_ok=True)
  cores = sorted(os.sched_getaffinity(0)) if pin else None
  active: dict[int, tuple[subprocess.Popen, DepthRun, float]] = {}
  failed: set[str] = set()
  started = 0
  t0 = time.time()

  def todo():
    busy = {r.name for _, r, _ in active.values()}
    return [r for r in planned(p, results) if load_result(r.name, results) is None
            and r.name not in busy and r.name not in failed]

  while True:
    queue = todo()
    while queue and len(active) < workers and (max_runs is None or started < max_runs):
      slot = min(set(range(workers)) - set(active))
      run = queue.pop(0)
      core = cores[slot % len(cores)] if cores else None
      proc = launch_train(run.flags(p, runs_dir), runs_dir / "logs" / f"{run.name}.log", core)
      active[slot] = (proc, run, time.time())
      started += 1
      print(f"start {run.stage} {run.name}" + (f" on core {core}" if core is not None else ""),
            flush=True)
    if not active:
      break
    time.sleep(2)
    for slot, (proc, run, start) in list(active.items()):
      if proc.poll() is None:
        continue
      del active[slot]
      path = export(run, p, runs_dir, results)
      if path is None:
        failed.add(run.name)
      elif on_export is not None:
        on_export(path)
      print(f"{'exported ' + str(path) if path else 'FAILED ' + run.name} "
            f"(rc {proc.returncode}, {(time.time() - start) / 60:.1f} min; "
            f"{(time.time() - t0) / 60:.1f} min elapsed)", flush=True)
  return len(failed)


def status(p: Protocol, results: pathlib.Path = RESULTS) -> str:
  runs = planned(p, results)
  done = [r for r in runs if load_result(r.name, results) is not None]
  lines = [f"{len(done)}/{len(runs)} planned runs recorded in {results} "
           f"(more are planned once each optimizer's grid is complete)",
           f"selected (alpha, lambda) on validation: {select(p, results)}"]
  for r in runs:
    rec = load_result(r.name, results)
    f = (rec or {}).get("final") or {}
    lines.append(f"  {r.stage:5s} {r.name}: " + (
        "-" if rec is None else f"{rec['status']} val_acc {f.get('val_acc')} "
        f"test_acc {f.get('test_acc')}"))
  return "\n".join(lines)


def main(argv=None) -> int:
  ap, cmds = study_parser("python -m experiments.study.depth", __doc__.split("\n")[0],
                          PROTOCOLS, RESULTS, ROOT / "docs" / "results" / "depth_study.md")
  cmds["run"].add_argument("--workers", type=int, default=2)
  cmds["run"].add_argument("--pin", action="store_true", help="bind worker k to CPU core k")
  args = ap.parse_args(argv)
  p, results, runs_dir = study_args(args, PROTOCOLS, "depth")
  if args.cmd == "status":
    print(status(p, results))
    return 0
  if args.cmd == "collect":
    from experiments.study import depth_report
    return depth_report.collect(results, pathlib.Path(args.report), pathlib.Path(args.figures))
  if args.cmd == "commands":
    for r in planned(p, results):
      print(" ".join(["python -m experiments.train", *r.flags(p, runs_dir)]))
    return 0
  if args.workers < 1:
    ap.error(f"--workers must be >= 1, got {args.workers}.")
  return 1 if run_study(p, runs_dir, args.workers, args.pin, results, args.max_runs) else 0


if __name__ == "__main__":
  sys.exit(main())
