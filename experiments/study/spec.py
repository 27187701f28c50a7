r"""The reproduction study of Zhuang et al. (TMLR 2022): its definition (``python -m experiments.study``).

One config (:data:`SCALES`) defines every run of the study; each run is an
ordinary ``python -m experiments.train`` run (resumable, atomic outputs) in
``RUNS/<part>/<name>-s<seed>``. Parts:

- ``depth``: ResNets without BatchNorm (``cpu``: 20/44/56; ``paper``: also
  110/218), Adam-L2 vs AdamW vs AdamProx at the paper's best (alpha, lambda)
  for each depth (``experiments.configs.recipes``);
- ``bn``: the BN control: one model (``cpu``: ResNet-20, ``paper``: 110)
  *with* BatchNorm, Adam-L2 vs AdamW at that model's no-BN settings (the
  paper's best BN settings have lambda = 0, for which the three optimizers
  are the same algorithm);
- ``mult``: the loss multiplied by 10 and 100, Adam-L2 and AdamW at the fixed
  x1 settings (the x1 runs are the ``depth`` runs of that model).

Commands::

  python -m experiments.study run --scale cpu --workers 2 --pin   # the study
  python -m experiments.study collect --scale cpu                 # results + figures
  python -m experiments.study commands --scale paper              # one train command per run
  python -m experiments.study run --scale cpu --epochs 30 ...     # extend the same runs

``run`` launches ``--workers`` training processes at a time (``--pin`` binds
worker k to CPU core k: on a 2-core machine two single-core runs did more
work than one run on both cores), in priority order (seed 0 of every part
first), skipping finished runs and resuming interrupted ones. ``collect``
writes ``docs/results/reproduction.json`` (every run's config, curves and
final metrics, and the mean +- sd tables) and the figures under
``docs/figures/``; ``docs/reproduction.md`` is the report built on them.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from experiments.configs.recipes import get_recipe

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the checkout
OPTIMIZERS = ("adam_l2", "adamw", "adamprox")

# Each scale: data, length, seeds, depths, and the model of the BN control and
# of the loss-multiplier test. "cpu" is what 2 CPU cores finish in about two
# hours; "paper" is the published protocol (full data, 300 epochs, the
# paper's depths, its x10/x100 test on ResNet-110).
# The cpu study's data: any CIFAR-10 source (``--dataset``); no path of this
# machine is written here.
_CPU = dict(dataset="cifar10",
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
    f = ["--recipe", self.recipe, "--budget", "paper", "--dataset", sc["dataset"],
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
