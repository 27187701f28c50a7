"""The optimizer of a run: proxopt's aliases or a classic optax optimizer, its
step-size schedule, an optional proximal regulariser, and the update-scale
diagnostics (:func:`proxopt.track_update_scales`)."""

from __future__ import annotations

import jax
import optax

import proxopt
from experiments.configs.default import ALIASES, L2_COUPLED, Config


def optax_weight_decay(cfg: Config) -> float:
  """The coefficient the optimizer receives, in the optax/PyTorch convention."""
  wd = cfg.weight_decay
  if cfg.convention == "paper" and cfg.optimizer not in L2_COUPLED:
    return proxopt.paper_to_optax(alpha=cfg.lr, lam=wd)
  return wd


def build_schedule(cfg: Config, steps_per_epoch: int):
  """(learning_rate for the optimizer, plateau or None)."""
  lr, epochs, name = cfg.lr, cfg.epochs, cfg.schedule
  total = epochs * steps_per_epoch
  if name == "constant":
    return lr, None
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, total), None
  if name == "cosine_epoch":
    return proxopt.cosine_per_epoch(lr, epochs, steps_per_epoch), None
  if name == "step":
    every = cfg.step_every or max(1, epochs // 3)
    return proxopt.step_decay(lr, cfg.decay_factor, every, steps_per_epoch), None
  if name == "warmup_cosine":
    we = cfg.warmup_epochs
    warm = int(round((we if we is not None else 0.05 * epochs) * steps_per_epoch))
    return proxopt.warmup_cosine(lr, min(warm, total - 1), total), None
  plateau = proxopt.reduce_on_plateau(
      lr, factor=cfg.decay_factor, patience=cfg.patience)
  return plateau, plateau


def _kernel_mask(ndim: int):
  return lambda params: jax.tree.map(lambda x: x.ndim == ndim, params)


def histogram_of(optimizer: str) -> str:
  """What the update histogram of ``optimizer`` holds."""
  return "adam_direction" if optimizer in ALIASES and optimizer.startswith("adam") else "step"


def build_optimizer(cfg: Config, steps_per_epoch: int):
  """(tx, plateau or None) for ``cfg``; the tx may be wrapped for diagnostics."""
  learning_rate, plateau = build_schedule(cfg, steps_per_epoch)
  wd = optax_weight_decay(cfg)
  name = cfg.optimizer

  # The Adam aliases histogram their Adam direction (the paper's figure);
  # every other optimizer is wrapped whole and histograms x_{t+1} - x_t.
  adam_alias = histogram_of(name) == "adam_direction"

  def build(learning_rate):
    if name in ALIASES:
      kw = ({"track_direction": cfg.update_hist} if adam_alias
            else {"momentum": cfg.momentum})
      base = getattr(proxopt, name)(learning_rate, weight_decay=wd, **kw)
    else:
      base = proxopt.classic(name, learning_rate, momentum=cfg.momentum,
                             weight_decay=wd)
    parts = [base]
    strength = cfg.reg_strength
    if cfg.regularizer == "l1":
      parts.append(proxopt.proximal(proxopt.l1(strength), learning_rate,
                                    mask=lambda p: jax.tree.map(
                                        lambda x: x.ndim > 1, p)))
    elif cfg.regularizer == "group_lasso":
      # One group per output filter (conv, HWIO) or output unit (dense).
      parts.append(proxopt.proximal(proxopt.group_lasso(strength, axis=(0, 1, 2)),
                                    learning_rate, mask=_kernel_mask(4)))
      parts.append(proxopt.proximal(proxopt.group_lasso(strength, axis=0),
                                    learning_rate, mask=_kernel_mask(2)))
    return optax.with_extra_args_support(optax.chain(*parts))

  if plateau is not None:
    # One injected step size drives the base step, the decay and every prox.
    tx = optax.inject_hyperparams(build)(learning_rate=plateau)
  else:
    tx = build(learning_rate)
  if cfg.update_hist and not adam_alias:
    tx = proxopt.track_update_scales(tx)
  if cfg.skip_nonfinite:
    # Outermost, so a skipped step leaves the histograms untouched as well.
    tx = optax.apply_if_finite(tx, max_consecutive_errors=cfg.max_consecutive_skips + 1)
  return tx, plateau, learning_rate


def current_lr(learning_rate, plateau, opt_state, step: int) -> float:
  if plateau is not None:
    return float(plateau.step_size(opt_state))
  if callable(learning_rate):
    return float(learning_rate(step))
  return float(learning_rate)
