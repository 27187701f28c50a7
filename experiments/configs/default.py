"""The one configuration of a training run: :class:`Config`, every field defined once.

A run is fully described by a ``Config``: its fields, defaults and help are
defined here and nowhere else (``python -m experiments.train`` generates one
flag per field). A paper recipe (:mod:`experiments.configs.recipes`) is a
``Config`` too; ``--budget`` picks its length (``paper``: the published
protocol, ``quick``: a few CPU minutes). The loss is multiplied, not scaled
(``loss_multiplier``).

Example (your own config, as a function a script can import):
  >>> from experiments.configs import Config
  >>> def get_config():
  ...   return Config(model="resnet56", use_bn=False, optimizer="adamprox", lr=5e-4,
  ...                 weight_decay=5e-5, convention="paper", epochs=300, dataset="cifar10")
  >>> get_config().replace(epochs=3).epochs
  3
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

OPTIMIZERS = ("adam_l2", "adamw", "adamprox", "sgd_l2", "sgdw", "sgdprox",
              "sgd", "momentum", "adagrad", "rmsprop", "adam")
ALIASES = OPTIMIZERS[:6]
L2_COUPLED = ("adam_l2", "sgd_l2")  # weight_decay is the L2 coefficient as is
SCHEDULES = ("constant", "cosine", "cosine_epoch", "step", "plateau", "warmup_cosine")
REGULARIZERS = ("none", "l1", "group_lasso")
CONVENTIONS = ("optax", "paper")
STEPS = ("auto", "plain", "kernels")
PRECISIONS = ("float32", "bfloat16")
BUDGETS = ("quick", "paper")

# Fields that do not change the numbers a run produces: they may differ
# between a run and its resumption.
NON_SEMANTIC = ("out", "overwrite", "progress", "data_dir", "distributed", "log_every",
                "eval_every", "save_predictions")


class ConfigError(ValueError):
  """Bad input; the message names the flag and the fix."""


def _field(default, help: str, flag: str | None = None, choices: tuple | None = None):
  """A field with its command-line help (and flag name, if not the field's, and
  the choices the parser enforces)."""
  meta = {"help": help} | ({"flag": flag} if flag else {}) | (
      {"choices": choices} if choices else {})
  return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting of a training run, with its default and its help: the only place
  they are defined (``python -m experiments.train`` builds its flags from them)."""
  # data
  dataset: str = _field("sample", "cifar10 | cifar100 | npz:DIR | sample")
  data_dir: str | None = _field(None, "tensorflow-datasets data_dir")
  train_subset: int | None = _field(None, "train on N images only")
  test_subset: int | None = _field(None, "evaluate on a fixed random N test images")
  val_size: int = _field(0, "hold out N training images as a validation split")
  augment: bool = _field(True, "random crop + flip")
  # model
  model: str = _field("resnet20", "resnet20 | resnet32 | ... | resnet218 | densenet_bc100 "
                      "(experiments.models.MODELS)")
  use_bn: bool = _field(True, "BatchNorm layers (--no-bn removes them)", flag="bn")
  zero_init_residual: bool = _field(
      False, "ResNets: zero the last conv of every residual branch (trains deep no-BN nets in "
      "short runs; not the paper's init)")
  # optimizer
  optimizer: str = _field("adamw", " | ".join(OPTIMIZERS))
  lr: float = _field(1e-3, "base learning rate alpha")
  weight_decay: float = _field(
      0.0, "decay coefficient in --convention units; for adam_l2/sgd_l2 the L2 coefficient; "
      "for the classic optimizers a decoupled decay")
  convention: str = _field("optax", "optax: per-step decay lr_t*wd; paper: lambda*lr_t/alpha")
  momentum: float = _field(0.9, "momentum of sgd_l2/sgdw/sgdprox/momentum")
  schedule: str = _field("constant", " | ".join(SCHEDULES))
  step_every: int | None = _field(None, "schedule=step: epochs between decays (default epochs//3)")
  decay_factor: float = _field(0.1, "schedule=step/plateau: multiplier per decay")
  warmup_epochs: float | None = _field(
      None, "schedule=warmup_cosine: warm-up length (default 5%% of the run)")
  patience: int = _field(10, "schedule=plateau: epochs without improvement")
  regularizer: str = _field("none", "extra proximal term on conv/dense kernels: none | l1 | "
                            "group_lasso (per output filter/unit)")
  reg_strength: float = _field(0.0, "the regularizer's lambda")
  skip_nonfinite: bool = _field(
      False, "skip steps with a NaN/Inf gradient (optax.apply_if_finite) and count them")
  max_consecutive_skips: int = _field(
      10, "with --skip-nonfinite, stop after this many skipped steps in a row")
  # objective and length
  loss_multiplier: float = _field(1.0, "multiply the loss (the paper's test: 10, 100)")
  epochs: int = _field(10, "epochs to train")
  batch_size: int = _field(128, "global batch size")
  eval_batch_size: int = _field(500, "evaluation batch size")
  eval_every: int = _field(
      1, "epochs between test-set evaluations; the last epoch is always evaluated and the "
      "validation split every epoch")
  save_predictions: bool = _field(
      False, "write test_predictions.npz (per-example predicted class and label) at every "
      "test evaluation: the paired comparison of two runs needs them")
  max_steps: int | None = _field(None, "stop after N steps in total")
  seed: int = _field(0, "data order and augmentation seed")
  init_seed: int | None = _field(None, "model initialisation seed (default: --seed)")
  # diagnostics and precision
  update_hist: bool = _field(True, "histogram the update magnitudes")
  precision: str = _field(
      "float32", choices=PRECISIONS, help="compute dtype: float32, or bfloat16 mixed precision as on TPU/GPU (bfloat16 "
      "convolutions and activations; float32 weights, gradients, optimizer state, BatchNorm "
      "statistics and loss)")
  # The one seam to the CPU speed layer (experiments.kernels): the step's
  # options are the kernels' own vocabulary, parsed and checked there.
  step: str = _field(
      "auto", "train step: plain (experiments.training.train_step: XLA's kernels, any backend) | "
      "kernels[:OPTION=VALUE,...] (the CPU speed layer experiments.kernels, e.g. "
      "kernels:conv=xla,impl=blockwise; python -m experiments.kernels options lists them) | auto "
      "(kernels on a CPU backend when importable, else plain)")
  # bookkeeping
  recipe: str | None = _field(None, "a paper recipe (python -m experiments.configs lists "
                              "them); explicit flags override its values")
  budget: str | None = _field(None, choices=BUDGETS, help="a recipe's length: paper (the published protocol, "
                              "default) or quick (CPU minutes)")
  out: str | None = _field(None, "output directory (default runs/<model>-<bn|nobn>-<optimizer>"
                           "-s<seed>)")
  overwrite: bool = _field(False, "replace an --out holding another config")
  progress: bool | None = _field(None, "progress bar (default: when stderr is a terminal)")
  log_every: int = _field(50, "steps between host reads of the metrics")
  distributed: bool = _field(
      False, "multi-host: call jax.distributed.initialize() first (run the same command on "
      "every host)")

  def replace(self, **changes) -> "Config":
    unknown = sorted(set(changes) - FIELDS)
    if unknown:
      raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(sorted(FIELDS))}.")
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Config":
    """A config from a saved ``config.json`` (fields added later take defaults)."""
    return cls(**{k: v for k, v in d.items() if k in FIELDS})

  def semantic(self) -> dict[str, Any]:
    """The fields that determine the run's numbers."""
    return {k: v for k, v in self.to_dict().items() if k not in NON_SEMANTIC}


FIELDS = frozenset(f.name for f in dataclasses.fields(Config))


def _choice(name: str, value: Any, choices) -> None:
  if value not in choices:
    raise ConfigError(
        f"unknown {name} {value!r}; valid choices: {', '.join(map(str, choices))}.")


def step_choice(step: str) -> tuple[str, dict[str, str]]:
  """``(kind, options)`` of a ``step`` value: ``"auto"``, ``"plain"`` or
  ``"kernels"`` with its ``OPTION=VALUE`` pairs (their names and values are
  the kernels' own: :func:`experiments.training.loop.check_step` checks them).

  Example:
    >>> step_choice("kernels:conv=xla,impl=blockwise")
    ('kernels', {'conv': 'xla', 'impl': 'blockwise'})
  """
  kind, sep, rest = step.partition(":")
  if kind not in STEPS or (sep and kind != "kernels"):
    raise ConfigError(f"unknown --step {step!r}; valid: auto, plain, kernels, or "
                      "kernels:OPTION=VALUE,... (e.g. kernels:conv=xla).")
  options: dict[str, str] = {}
  for item in rest.split(",") if sep else ():
    k, eq, v = (t.strip() for t in item.partition("="))
    if not (eq and k and v) or k in options:
      raise ConfigError(
          f"--step {step!r}: give each option once as OPTION=VALUE, separated by commas "
          f"(e.g. kernels:conv=xla,impl=blockwise); got {item!r}.")
    options[k] = v
  return kind, options


def validate(cfg: Config) -> None:
  """Raises :class:`ConfigError` naming the flag and the fix."""
  from experiments.input_pipeline import DATASET_CHOICES, TFDS_DATASETS
  from experiments.models import MODELS

  _choice("model", cfg.model, MODELS)
  _choice("optimizer", cfg.optimizer, OPTIMIZERS)
  _choice("schedule", cfg.schedule, SCHEDULES)
  _choice("convention", cfg.convention, CONVENTIONS)
  _choice("regularizer", cfg.regularizer, REGULARIZERS)
  step_choice(cfg.step)  # the kernels' own options are checked by training.loop.check_step
  _choice("precision", cfg.precision, PRECISIONS)
  ds = cfg.dataset
  if not (ds in TFDS_DATASETS or ds == "sample" or (ds.startswith("npz:") and len(ds) > 4)):
    raise ConfigError(f"unknown dataset {ds!r}; valid choices: {', '.join(DATASET_CHOICES)}.")
  for k in ("epochs", "batch_size", "eval_batch_size", "eval_every", "log_every"):
    v = getattr(cfg, k)
    if not isinstance(v, int) or v < 1:
      raise ConfigError(f"--{k.replace('_', '-')} must be a positive int, got {v!r}.")
  for k in ("train_subset", "test_subset", "max_steps", "step_every"):
    v = getattr(cfg, k)
    if v is not None and v < 1:
      raise ConfigError(f"--{k.replace('_', '-')} must be >= 1, got {v!r}.")
  if cfg.val_size < 0:
    raise ConfigError(f"--val-size must be >= 0, got {cfg.val_size!r}.")
  if not cfg.lr > 0:
    raise ConfigError(f"--lr must be > 0, got {cfg.lr!r}.")
  for k in ("weight_decay", "reg_strength"):
    if not getattr(cfg, k) >= 0:
      raise ConfigError(f"--{k.replace('_', '-')} must be >= 0, got {getattr(cfg, k)!r}.")
  if not (cfg.loss_multiplier > 0 and math.isfinite(cfg.loss_multiplier)):
    raise ConfigError(
        f"--loss-multiplier must be a positive number, got {cfg.loss_multiplier!r}.")
  if cfg.regularizer != "none" and not cfg.reg_strength > 0:
    raise ConfigError(f"--regularizer {cfg.regularizer} needs --reg-strength > 0.")
  if not 0 <= cfg.momentum < 1:
    raise ConfigError(f"--momentum must be in [0, 1), got {cfg.momentum!r}.")
