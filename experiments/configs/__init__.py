"""The configuration of a run: :class:`Config` (:mod:`~experiments.configs.default`,
every field with its default and help), the paper's recipes
(:mod:`~experiments.configs.recipes`), and :func:`resolve`, which turns a
command line into a ``Config``: a recipe's values (or the defaults), then the
explicit flags. ``python -m experiments.configs`` lists the recipes.
"""

from __future__ import annotations

import os
from typing import Any

from experiments.configs import recipes
from experiments.configs.default import BUDGETS, FIELDS, Config, ConfigError, _choice, validate


def load_config_file(path: str) -> Config:
  """The ``Config`` returned by ``get_config()`` of the Python file `path`
  (Flax's convention; copy ``experiments/configs/resnet20_sample.py``)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("_experiments_config_file", path)
  if spec is None or not os.path.isfile(path):
    raise ConfigError(f"--config {path}: no such Python file; pass the path of a .py file "
                      "defining get_config() (e.g. experiments/configs/resnet20_sample.py).")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = getattr(module, "get_config", lambda: None)()
  if not isinstance(cfg, Config):
    raise ConfigError(f"--config {path}: get_config() must be defined and return an "
                      f"experiments.configs.Config, got {type(cfg).__name__}.")
  return cfg


def resolve(flags: dict[str, Any], base: Config | None = None) -> Config:
  """The config of a run: the recipe's values (if ``flags["recipe"]``) or
  `base` (a ``--config`` file's) or the defaults, then the explicit flags; validated."""
  flags = {k: v for k, v in flags.items() if v is not None or k in ("progress",)}
  unknown = sorted(set(flags) - FIELDS)
  if unknown:
    raise ConfigError(f"unknown config field(s) {', '.join(unknown)}.")
  if base is not None and flags.get("recipe"):
    raise ConfigError("--config and --recipe both give the starting values; pass one of them.")
  base = base or Config()
  if flags.get("recipe"):
    budget = flags.get("budget") or "paper"
    _choice("budget", budget, BUDGETS)
    try:
      base = recipes.get_recipe(flags["recipe"]).config(budget)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  elif flags.get("budget"):
    raise ConfigError("--budget applies to a --recipe; pass --recipe NAME too.")
  cfg = base.replace(**flags)
  if cfg.init_seed is None:
    cfg = cfg.replace(init_seed=cfg.seed)
  if cfg.out is None:
    cfg = cfg.replace(out=os.path.join(
        "runs", f"{cfg.model}-{'bn' if cfg.use_bn else 'nobn'}-{cfg.optimizer}-s{cfg.seed}"))
  validate(cfg)
  return cfg


__all__ = ["Config", "ConfigError", "load_config_file", "recipes", "resolve", "validate"]
