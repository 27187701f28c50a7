"""Named configurations and how a command line becomes a :class:`Config`.

The paper's recipes (:mod:`~experiments.configs.recipes`) are each a
:class:`experiments.config.Config`; :func:`resolve` starts from one (or from
the defaults) and applies explicit flags. ``python -m experiments.configs``
lists the recipes.
"""

from __future__ import annotations

import os
from typing import Any

from experiments.config import BUDGETS, FIELDS, Config, ConfigError, _choice, validate
from experiments.configs import recipes


def resolve(flags: dict[str, Any]) -> Config:
  """The config of a run: the recipe's values (if ``flags["recipe"]``), then
  the explicit flags, then the defaults; validated."""
  flags = {k: v for k, v in flags.items() if v is not None or k in ("progress",)}
  unknown = sorted(set(flags) - FIELDS)
  if unknown:
    raise ConfigError(f"unknown config field(s) {', '.join(unknown)}.")
  base = Config()
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
