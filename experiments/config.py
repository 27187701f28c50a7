"""The one configuration of a training run: :class:`Config`, defaults defined once.

A run is fully described by a ``Config``; the command line
(``python -m experiments.train``) only overrides its fields, and a paper recipe
(:mod:`experiments.configs.recipes`) is a ``Config`` too. ``--budget`` picks a
recipe's length (``paper``: the published protocol, ``quick``: a few CPU
minutes); the word *scale* is kept for the study's size
(``python -m experiments.study --scale cpu|paper``) and the loss is multiplied,
not scaled (``loss_multiplier``).
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
IMPLS = ("auto", "plain", "nofusion", "blockwise")
CONVS = ("auto", "xla", "onednn")
BATCH_NORMS = ("auto", "onednn", "flax")
RELUS = ("auto", "onednn", "xla")
PRECISIONS = ("float32", "bfloat16")
BUDGETS = ("quick", "paper")

# Fields that do not change the numbers a run produces: they may differ
# between a run and its resumption.
NON_SEMANTIC = ("out", "overwrite", "progress", "data_dir", "distributed", "log_every",
                "eval_every", "save_predictions")


class ConfigError(ValueError):
  """Bad input; the message names the flag and the fix."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting of a training run, with its default (the only place they are defined)."""
  # data
  dataset: str = "sample"  # cifar10 | cifar100 | npz:DIR | sample
  data_dir: str | None = None
  train_subset: int | None = None
  test_subset: int | None = None
  val_size: int = 0
  augment: bool = True
  # model
  model: str = "resnet20"
  use_bn: bool = True
  zero_init_residual: bool = False
  # optimizer
  optimizer: str = "adamw"
  lr: float = 1e-3
  weight_decay: float = 0.0
  convention: str = "optax"
  momentum: float = 0.9
  schedule: str = "constant"
  step_every: int | None = None
  decay_factor: float = 0.1
  warmup_epochs: float | None = None
  patience: int = 10
  regularizer: str = "none"
  reg_strength: float = 0.0
  skip_nonfinite: bool = False
  max_consecutive_skips: int = 10
  # objective and length
  loss_multiplier: float = 1.0
  epochs: int = 10
  batch_size: int = 128
  eval_batch_size: int = 500
  eval_every: int = 1  # epochs between test-set evaluations (and the last epoch); validation: every epoch
  save_predictions: bool = False  # test_predictions.npz: per-example predicted class of the last test evaluation
  max_steps: int | None = None
  seed: int = 0
  init_seed: int | None = None  # None: seed
  # diagnostics and speed
  update_hist: bool = True
  impl: str = "auto"
  conv: str = "auto"  # auto: oneDNN only if already built, never compiles
  batch_norm: str = "auto"  # train-mode BatchNorm: auto = onednn with oneDNN convs in float32, else flax
  relu: str = "auto"  # ResNet ReLUs/residual adds fused into oneDNN convs or BN (auto: when conv is onednn)
  precision: str = "float32"  # bfloat16: bf16 compute, float32 weights/optimizer/loss
  # bookkeeping
  recipe: str | None = None
  budget: str | None = None
  out: str | None = None  # None: runs/<model>-<bn|nobn>-<optimizer>-s<seed>
  overwrite: bool = False
  progress: bool | None = None  # None: a bar when stderr is a terminal
  log_every: int = 50  # steps between host reads of the metrics
  distributed: bool = False

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


def validate(cfg: Config) -> None:
  """Raises :class:`ConfigError` naming the flag and the fix."""
  from experiments.input_pipeline import DATASET_CHOICES, TFDS_DATASETS
  from experiments.models import MODELS

  _choice("model", cfg.model, MODELS)
  _choice("optimizer", cfg.optimizer, OPTIMIZERS)
  _choice("schedule", cfg.schedule, SCHEDULES)
  _choice("convention", cfg.convention, CONVENTIONS)
  _choice("regularizer", cfg.regularizer, REGULARIZERS)
  _choice("impl", cfg.impl, IMPLS)
  _choice("conv", cfg.conv, CONVS)
  _choice("batch_norm", cfg.batch_norm, BATCH_NORMS)
  _choice("relu", cfg.relu, RELUS)
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
