r"""The three couplings of weight decay, around Adam and around SGD.

With ``d_t`` the base direction (Adam: ``m_hat / (sqrt(v_hat) + eps)``; SGD:
the momentum buffer) and ``s_t`` the learning rate at step ``t``:

============  ======================================================  ===========================
alias         update                                                  coupling
============  ======================================================  ===========================
``adam_l2``   ``g <- g + wd x``, then Adam: ``x - s_t d_t``             L2 through the normaliser
``adamw``     ``x - s_t (d_t + wd x)``                                decoupled (first order)
``adamprox``  ``(x - s_t d_t) / (1 + s_t wd)``                        proximal (exact)
============  ======================================================  ===========================

and the same for ``sgd_l2`` / ``sgdw`` / ``sgdprox`` around SGD with momentum.
``adamw`` and ``adamprox`` are scale-free (with ``eps = 0``), ``adam_l2`` is
not. Every alias is an ``optax.chain`` of Optax primitives
(``scale_by_adam``, ``trace``, ``add_decayed_weights``,
``scale_by_learning_rate``) and :func:`proxopt.proximal`.

``convention="paper"`` reads ``weight_decay`` as the paper's lambda, which
decays by ``lambda * eta_t`` with ``eta_t = lr_t / alpha`` (``alpha`` defaults
to a constant ``learning_rate``); see :mod:`proxopt.conventions`. Adam-L2's
coefficient is the same in every convention.

``track_direction=True`` (Adam aliases) wraps the ``scale_by_adam`` link with
:func:`proxopt.track_update_scales`, so the state histograms ``log2|d_t|``,
the Adam direction the paper compares between Adam-L2 and AdamW (Sec. 6);
read it with :func:`proxopt.update_scale_summary`. The updates are unchanged.

Reference: Zhuang, Liu, Cutkosky, Orabona, TMLR 2022, arXiv 2202.00089;
Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from proxopt import _checks
from proxopt._conventions import decoupled_weight_decay_coefficient
from proxopt._diagnostics import track_update_scales
from proxopt._proximal import MaskOrFn, ScalarOrSchedule, proximal, with_checked_mask
from proxopt._regularizers import l2_squared


def _validated(
    tx: optax.GradientTransformation, owner: str
) -> optax.GradientTransformationExtraArgs:
  """Adds the float-params check to `init` and strict-promotion safety.

  Optax's Adam bias correction and schedules combine Python floats with the
  int32 step count, which `jax.numpy_dtype_promotion('strict')` rejects. The
  chain runs under standard promotion so that strict user code works; every
  state and update leaf keeps its dtype (tested for f32/f16/bf16).
  """
  tx = optax.with_extra_args_support(tx)

  def init_fn(params):
    _checks.check_float_params(params, owner)
    with jax.numpy_dtype_promotion("standard"):
      return tx.init(params)

  def update_fn(updates, state, params=None, **extra_args):
    # Every alias decays, so every alias needs params: say so up front.
    _checks.require_params(params, owner)
    with jax.numpy_dtype_promotion("standard"):
      return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_common(owner, learning_rate, weight_decay):
  if not callable(learning_rate):
    _checks.check_nonnegative(
        "learning_rate", learning_rate, owner,
        "Optax aliases take a positive learning rate and flip the sign "
        "themselves.",
    )
  if not callable(weight_decay):
    _checks.check_nonnegative(
        "weight_decay", weight_decay, owner,
        "Weight decay shrinks parameters; use 0 for none.",
    )


def _adam(b1, b2, eps, eps_root, mu_dtype, nesterov, track_direction=False):
  adam = optax.scale_by_adam(
      b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
      nesterov=nesterov,
  )
  # The paper's histograms are of the Adam direction d_t, before the step size
  # and the decay; only the alias knows where d_t is in its chain.
  return track_update_scales(adam) if track_direction else adam


def _momentum(momentum, nesterov):
  if isinstance(momentum, (int, float)) and momentum == 0:
    return optax.identity()
  return optax.trace(decay=momentum, nesterov=nesterov)


def adam_l2(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    nesterov: bool = False,
    mask: MaskOrFn = None,
    convention: str = "optax",
    alpha: float | None = None,
    track_direction: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam with an L2 penalty: ``g <- g + wd x``, then Adam, then ``-s_t``.

  Equals ``torch.optim.Adam(weight_decay=wd)``. Not scale-free for ``wd > 0``.
  ``convention`` and ``alpha`` are accepted for a uniform signature; the L2
  coefficient is the same number in every convention.

  Example:
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = proxopt.adam_l2(1e-3, 5e-4)
    >>> params = {"w": jnp.ones(3)}
    >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    >>> params = optax.apply_updates(params, updates)
  """
  owner = "proxopt.adam_l2"
  _check_common(owner, learning_rate, weight_decay)
  decoupled_weight_decay_coefficient(  # validates `convention` only
      weight_decay, 1.0, convention, alpha, owner
  )
  return _validated(
      optax.chain(
          with_checked_mask(optax.add_decayed_weights(weight_decay), mask, owner),
          _adam(b1, b2, eps, eps_root, mu_dtype, nesterov, track_direction),
          optax.scale_by_learning_rate(learning_rate),
      ),
      owner,
  )


def adamw(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    nesterov: bool = False,
    mask: MaskOrFn = None,
    convention: str = "optax",
    alpha: float | None = None,
    track_direction: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW: ``x <- x - s_t (d_t + wd x)``, ``d_t = m_hat / (sqrt(v_hat) + eps)``.

  The same chain as ``optax.adamw`` and the same update as
  ``torch.optim.AdamW``. With ``convention="paper"``, ``weight_decay`` is the
  paper's lambda and the per-step decay is ``lambda * s_t / alpha``.

  Example:
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = proxopt.adamw(5e-4, 1e-4, convention="paper")  # optax wd = 0.2
    >>> params = {"w": jnp.ones(3)}
    >>> updates, state = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    >>> round(float(updates["w"][0]), 9)  # -lr * wd * x = -5e-4 * 0.2
    -0.0001
  """
  owner = "proxopt.adamw"
  _check_common(owner, learning_rate, weight_decay)
  wd = decoupled_weight_decay_coefficient(
      weight_decay, learning_rate, convention, alpha, owner
  )
  return _validated(
      optax.chain(
          _adam(b1, b2, eps, eps_root, mu_dtype, nesterov, track_direction),
          with_checked_mask(optax.add_decayed_weights(wd), mask, owner),
          optax.scale_by_learning_rate(learning_rate),
      ),
      owner,
  )


def adamprox(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    nesterov: bool = False,
    mask: MaskOrFn = None,
    convention: str = "optax",
    alpha: float | None = None,
    track_direction: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamProx: ``x <- (x - s_t d_t) / (1 + s_t wd)``.

  Adam followed by :func:`proxopt.proximal` with ``l2_squared(wd)``: the exact
  proximal step of which AdamW is the first-order approximation (Zhuang et
  al., 2022, Eq. 4). ``weight_decay`` must be a constant (or injected with
  ``optax.inject_hyperparams``); the step size may be any schedule.

  Example:
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = proxopt.adamprox(0.1, 1.0)
    >>> params = {"w": jnp.array([1.1])}
    >>> updates, state = tx.update({"w": jnp.zeros(1)}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"]  # 1.1 / (1 + 0.1 * 1.0)
    Array([1.], dtype=float32)
  """
  owner = "proxopt.adamprox"
  _check_common(owner, learning_rate, weight_decay)
  wd = decoupled_weight_decay_coefficient(
      weight_decay, learning_rate, convention, alpha, owner
  )
  if callable(wd):
    raise TypeError(
        f"{owner}: `weight_decay` must be a number here; to change it over "
        "time use `optax.inject_hyperparams(proxopt.adamprox)(...)`."
    )
  return _validated(
      optax.chain(
          _adam(b1, b2, eps, eps_root, mu_dtype, nesterov, track_direction),
          optax.scale_by_learning_rate(learning_rate),
          proximal(l2_squared(wd), learning_rate, mask=mask),
      ),
      owner,
  )


def sgd_l2(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    *,
    mask: MaskOrFn = None,
    convention: str = "optax",
    alpha: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD with momentum and an L2 penalty: ``g <- g + wd x``, then momentum.

  Equals ``torch.optim.SGD(lr, momentum, weight_decay=wd, nesterov=...)``
  (dampening 0). ``convention`` is accepted for a uniform signature.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> tx = proxopt.sgd_l2(0.1, 1e-4, momentum=0.9)
    >>> params = {"w": jnp.ones(2)}
    >>> updates, state = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
  """
  owner = "proxopt.sgd_l2"
  _check_common(owner, learning_rate, weight_decay)
  decoupled_weight_decay_coefficient(weight_decay, 1.0, convention, alpha, owner)
  return _validated(
      optax.chain(
          with_checked_mask(optax.add_decayed_weights(weight_decay), mask, owner),
          _momentum(momentum, nesterov),
          optax.scale_by_learning_rate(learning_rate),
      ),
      owner,
  )


def sgdw(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    *,
    mask: MaskOrFn = None,
    convention: str = "optax",
    alpha: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SGDW: ``x <- x - s_t (m_t + wd x)``, decay outside the momentum buffer.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> tx = proxopt.sgdw(0.1, 1e-2)
    >>> params = {"w": jnp.ones(2)}
    >>> updates, state = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    >>> round(float(updates["w"][0]), 9)
    -0.001
  """
  owner = "proxopt.sgdw"
  _check_common(owner, learning_rate, weight_decay)
  wd = decoupled_weight_decay_coefficient(
      weight_decay, learning_rate, convention, alpha, owner
  )
  return _validated(
      optax.chain(
          _momentum(momentum, nesterov),
          with_checked_mask(optax.add_decayed_weights(wd), mask, owner),
          optax.scale_by_learning_rate(learning_rate),
      ),
      owner,
  )


def sgdprox(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    *,
    mask: MaskOrFn = None,
    convention: str = "optax",
    alpha: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SGDProx: ``x <- (x - s_t m_t) / (1 + s_t wd)``.

  Example:
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = proxopt.sgdprox(0.5, 1.0, momentum=0.0)
    >>> params = {"w": jnp.array([3.0])}
    >>> updates, _ = tx.update({"w": jnp.zeros(1)}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"]  # 3 / (1 + 0.5)
    Array([2.], dtype=float32)
  """
  owner = "proxopt.sgdprox"
  _check_common(owner, learning_rate, weight_decay)
  wd = decoupled_weight_decay_coefficient(
      weight_decay, learning_rate, convention, alpha, owner
  )
  if callable(wd):
    raise TypeError(
        f"{owner}: `weight_decay` must be a number here; to change it over "
        "time use `optax.inject_hyperparams(proxopt.sgdprox)(...)`."
    )
  return _validated(
      optax.chain(
          _momentum(momentum, nesterov),
          optax.scale_by_learning_rate(learning_rate),
          proximal(l2_squared(wd), learning_rate, mask=mask),
      ),
      owner,
  )
