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
to a constant ``learning_rate``); see :func:`proxopt.paper_to_optax`. Adam-L2's
coefficient is the same in every convention.

Signatures are optax's: the Adam aliases take ``optax.adamw``'s parameters
in ``optax.adamw``'s order (so ``adamw(1e-3, 0.9, 0.99)`` means b1=0.9,
b2=0.99 in both libraries), the SGD aliases ``optax.sgd``'s followed by
``weight_decay`` and ``mask``. Every alias also accepts a
:func:`proxopt.reduce_on_plateau` as ``learning_rate`` (it is then wrapped in
``optax.inject_hyperparams`` with the mask kept static).

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
import numpy as np
import optax

from proxopt import _checks
from proxopt._conventions import decoupled_weight_decay_coefficient
from proxopt._diagnostics import track_update_scales
from proxopt._proximal import MaskOrFn, ScalarOrSchedule, proximal, with_checked_mask
from proxopt._regularizers import l2_squared

LearningRate = ScalarOrSchedule | optax.schedules.StatefulSchedule


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
    _checks.check_params_given(params, owner)
    with jax.numpy_dtype_promotion("standard"):
      return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _build(owner, make, learning_rate, weight_decay, mask, convention, alpha):
  """Checks the shared arguments, then ``make(learning_rate, wd)``.

  ``wd`` is the optax coefficient (converted from the paper's lambda if
  ``convention="paper"``). A stateful schedule (``reduce_on_plateau``) as
  learning rate wraps the chain in ``optax.inject_hyperparams`` so that the
  base step, the decay and the prox read the same ``s_t``; only the step size
  is injected, so the mask stays a static argument.
  """
  _checks.check_hyperparam("learning_rate", learning_rate, owner)
  _checks.check_hyperparam("weight_decay", weight_decay, owner)
  _checks.check_nonnegative(
      "learning_rate", learning_rate, owner,
      "Optax aliases take a positive learning rate and flip the sign "
      "themselves.",
  )
  _checks.check_nonnegative(
      "weight_decay", weight_decay, owner,
      "Weight decay shrinks parameters; use 0 for none.",
  )
  _checks.check_mask_argument(mask, owner)
  stateful = isinstance(learning_rate, optax.schedules.StatefulSchedule)
  if stateful and convention == "paper" and alpha is None:
    base = getattr(learning_rate, "base", None)
    if _checks.is_concrete_number(base):
      alpha = float(base)  # a plateau over a constant: alpha is that constant
  lr_for_convention = learning_rate if not stateful else None
  wd = decoupled_weight_decay_coefficient(
      weight_decay, lr_for_convention, convention, alpha, owner
  )
  if stateful:
    return _validated(
        optax.inject_hyperparams(lambda learning_rate: make(learning_rate, wd))(
            learning_rate=learning_rate
        ),
        owner,
    )
  return _validated(make(learning_rate, wd), owner)


def _decayed_weights(weight_decay, mask, owner):
  """``optax.add_decayed_weights`` (masked), with an array ``weight_decay``
  checked against every leaf it decays at ``init``.

  optax fails inside ``update`` with a raw broadcasting error; this names the
  argument and the parameter's path, as adamprox's prox does.
  """
  tx = optax.add_decayed_weights(weight_decay)

  def init_fn(params):
    if _checks.is_concrete_array(weight_decay) and np.ndim(weight_decay) > 0:
      # Under optax.masked, `params` holds only the decayed leaves.
      _checks.check_broadcasts_to_leaves("weight_decay", weight_decay, params, owner)
    return tx.init(params)

  return with_checked_mask(
      optax.GradientTransformation(init_fn, tx.update), mask, owner
  )


def _adam(b1, b2, eps, eps_root, mu_dtype, nesterov, track_direction):
  adam = optax.scale_by_adam(
      b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
      nesterov=nesterov,
  )
  # The paper's histograms are of the Adam direction d_t, before the step size
  # and the decay; only the alias knows where d_t is in its chain.
  return track_update_scales(adam) if track_direction else adam


def _momentum(momentum, nesterov, accumulator_dtype, owner):
  # As optax.sgd: None means no momentum buffer; any number (0.0 included,
  # or an injected array) keeps one, so the state structure does not depend
  # on how the value was given.
  if momentum is None:
    return optax.identity()
  return optax.trace(
      decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype
  )


def adam_l2(
    learning_rate: LearningRate,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = False,
    convention: str = "optax",
    alpha: float | None = None,
    track_direction: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam with an L2 penalty: the penalty's gradient goes through Adam's normaliser.

  .. math::
    g_t \leftarrow g_t + \mathrm{wd}\, x_{t-1}, \qquad
    x_t = x_{t-1} - s_t \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon},

  with :math:`\hat m_t, \hat v_t` Adam's bias-corrected moments of the
  penalised gradient. Equals ``torch.optim.Adam(weight_decay=wd)``. Built as
  ``chain(add_decayed_weights(wd), scale_by_adam, scale_by_learning_rate)``.
  Not scale-free for ``wd > 0``: rescaling the gradients changes the balance
  between the loss and the penalty inside the normalisation (Zhuang et al.,
  2022), which :func:`adamw` and :func:`adamprox` avoid.

  Args:
    learning_rate: the step size ``s_t``: a float, an Optax schedule
      ``count -> s_t``, or a :func:`proxopt.reduce_on_plateau` (then the
      chain is wrapped in ``optax.inject_hyperparams`` for you).
    b1: exponential decay rate of the first moment, in ``[0, 1)`` (as
      ``optax.adam``).
    b2: exponential decay rate of the second moment, in ``[0, 1)``.
    eps: added to ``sqrt(v_hat)`` in the denominator, ``>= 0``.
    eps_root: added to ``v_hat`` inside the square root, ``>= 0``.
    mu_dtype: dtype of the first-moment accumulator (``None``: params').
    weight_decay: the L2 coefficient ``wd >= 0`` added to the gradient: a
      float or a schedule.
    mask: which leaves get the L2 penalty: a pytree of bools like params (or
      a prefix of it), or a callable ``params -> mask``. With
      ``optax.inject_hyperparams`` pass ``static_args=("mask",)``, or a
      plateau schedule directly as ``learning_rate``.
    nesterov: use Nesterov momentum in Adam (NAdam), as ``optax.adam``.
    convention: ``"optax"`` or ``"paper"``, accepted for a signature uniform
      with :func:`adamw`; the L2 coefficient is the same number in both
      conventions, so both give the same optimizer.
    alpha: the paper's base step size (``convention="paper"`` only; unused
      by the L2 coupling).
    track_direction: histogram ``log2|d_t|`` of the Adam direction in the
      state (:func:`proxopt.update_scale_summary`); updates are unchanged.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Raises:
    ValueError, TypeError: at construction, on a negative, infinite or
      non-numeric ``learning_rate``/``weight_decay``, ``b1``/``b2`` outside
      ``[0, 1)``, a negative ``eps``/``eps_root``, a non-bool ``nesterov``,
      an unknown ``convention`` or ``alpha`` without ``convention="paper"``.

  Example (the normaliser turns the penalty alone into a full step):
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = proxopt.adam_l2(1e-3, weight_decay=5e-4)
    >>> params = {"w": jnp.ones(3)}
    >>> updates, state = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    >>> round(float(updates["w"][0]), 6)  # -s * wd / (wd + eps), not -s * wd
    -0.001

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR
    2022; Loshchilov and Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019; Kingma and Ba, `Adam: A
    Method for Stochastic Optimization <https://arxiv.org/abs/1412.6980>`_,
    ICLR 2015.
  """
  owner = "proxopt.adam_l2"
  _checks.check_adam_hyperparams(b1, b2, eps, eps_root, nesterov, owner)
  decoupled_weight_decay_coefficient(  # validates `convention` and `alpha`
      weight_decay, 1.0, convention, alpha, owner
  )

  def make(lr, _):
    return optax.chain(
        _decayed_weights(weight_decay, mask, owner),
        _adam(b1, b2, eps, eps_root, mu_dtype, nesterov, track_direction),
        optax.scale_by_learning_rate(lr),
    )

  return _build(owner, make, learning_rate, weight_decay, mask, "optax", None)


def adamw(
    learning_rate: LearningRate,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = False,
    convention: str = "optax",
    alpha: float | None = None,
    track_direction: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW: Adam with decoupled weight decay (scale-free with ``eps = 0``).

  .. math::
    d_t = \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}, \qquad
    x_t = x_{t-1} - s_t \left(d_t + \mathrm{wd}\, x_{t-1}\right).

  The same chain as ``optax.adamw`` (``scale_by_adam``,
  ``add_decayed_weights``, ``scale_by_learning_rate``; same arguments, same
  positions) and the same update as ``torch.optim.AdamW``. With
  ``convention="paper"``, ``weight_decay`` is the paper's ``lambda`` and the
  per-step decay is ``lambda * s_t / alpha``. AdamW is the first-order
  approximation of :func:`adamprox`.

  Args:
    learning_rate: the step size ``s_t``: a float, an Optax schedule
      ``count -> s_t``, or a :func:`proxopt.reduce_on_plateau` (then the
      chain is wrapped in ``optax.inject_hyperparams`` for you).
    b1: exponential decay rate of the first moment, in ``[0, 1)`` (as
      ``optax.adam``).
    b2: exponential decay rate of the second moment, in ``[0, 1)``.
    eps: added to ``sqrt(v_hat)`` in the denominator, ``>= 0``; ``0`` makes
      the direction exactly scale-free.
    eps_root: added to ``v_hat`` inside the square root, ``>= 0``.
    mu_dtype: dtype of the first-moment accumulator (``None``: params').
    weight_decay: the decay coefficient ``wd >= 0`` (optax/PyTorch
      convention, ``lambda_paper / alpha``): a float, an array that
      broadcasts to every decayed leaf, or a schedule.
    mask: which leaves are decayed: a pytree of bools like params (or a
      prefix of it), or a callable ``params -> mask``. With
      ``optax.inject_hyperparams`` pass ``static_args=("mask",)``, or a
      plateau schedule directly as ``learning_rate``.
    nesterov: use Nesterov momentum in Adam (NAdam), as ``optax.adam``.
    convention: ``"optax"`` (``weight_decay`` decays by ``lr_t * wd``, as
      ``optax.adamw``/``torch.optim.AdamW``) or ``"paper"`` (``weight_decay``
      is the paper's ``lambda``, decaying by ``lambda * lr_t / alpha``).
    alpha: the paper's base step size (``convention="paper"`` only); defaults
      to a constant ``learning_rate`` or a plateau's constant base.
    track_direction: histogram ``log2|d_t|`` of the Adam direction in the
      state (:func:`proxopt.update_scale_summary`); updates are unchanged.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Raises:
    ValueError, TypeError: at construction, on a negative, infinite or
      non-numeric ``learning_rate``/``weight_decay``, ``b1``/``b2`` outside
      ``[0, 1)``, a negative ``eps``/``eps_root``, a non-bool ``nesterov``,
      an unknown ``convention`` or ``alpha`` without ``convention="paper"``;
      at ``init``, on an array ``weight_decay`` that does not broadcast to a
      decayed leaf (the path is named).

  Example (the paper's lambda = 1e-4 at alpha = 5e-4 is optax's 0.2):
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = proxopt.adamw(5e-4, weight_decay=1e-4, convention="paper")
    >>> params = {"w": jnp.ones(3)}   # optax weight_decay = 1e-4 / 5e-4 = 0.2
    >>> updates, state = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    >>> round(float(updates["w"][0]), 9)  # -lr * wd * x = -5e-4 * 0.2
    -0.0001

  References:
    Loshchilov and Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019; Zhuang, Liu, Cutkosky,
    Orabona, `Understanding AdamW through Proximal Methods and
    Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022; Kingma
    and Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.
  """
  owner = "proxopt.adamw"
  _checks.check_adam_hyperparams(b1, b2, eps, eps_root, nesterov, owner)

  def make(lr, wd):
    return optax.chain(
        _adam(b1, b2, eps, eps_root, mu_dtype, nesterov, track_direction),
        _decayed_weights(wd, mask, owner),
        optax.scale_by_learning_rate(lr),
    )

  return _build(owner, make, learning_rate, weight_decay, mask, convention, alpha)


def adamprox(
    learning_rate: LearningRate,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = False,
    convention: str = "optax",
    alpha: float | None = None,
    track_direction: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamProx: Adam followed by the exact proximal step of the L2 penalty.

  .. math::
    x_t = \frac{x_{t-1} - s_t\, \hat m_t / (\sqrt{\hat v_t} + \epsilon)}
               {1 + s_t\, \mathrm{wd}_t}
        = \mathrm{prox}_{s_t \frac{\mathrm{wd}_t}{2}\|\cdot\|^2}
          \left(x_{t-1} - s_t d_t\right).

  Zhuang et al. (2022), Eq. 4: AdamW is its first-order approximation, and
  like AdamW it is scale-free with ``eps = 0``. Built as
  ``chain(scale_by_adam, scale_by_learning_rate, proximal(l2_squared(wd)))``;
  both the step size and ``weight_decay`` may be schedules (the prox is exact
  at each step's ``s_t * wd_t``). With ``convention="paper"`` the divisor is
  ``1 + lambda * eta_t``.

  Args:
    learning_rate: the step size ``s_t``: a float, an Optax schedule
      ``count -> s_t``, or a :func:`proxopt.reduce_on_plateau` (then the
      chain is wrapped in ``optax.inject_hyperparams`` for you, and the prox
      reads the reduced ``s_t``).
    b1: exponential decay rate of the first moment, in ``[0, 1)`` (as
      ``optax.adam``).
    b2: exponential decay rate of the second moment, in ``[0, 1)``.
    eps: added to ``sqrt(v_hat)`` in the denominator, ``>= 0``; ``0`` makes
      the direction exactly scale-free.
    eps_root: added to ``v_hat`` inside the square root, ``>= 0``.
    mu_dtype: dtype of the first-moment accumulator (``None``: params').
    weight_decay: the decay coefficient ``wd >= 0`` (optax/PyTorch
      convention, ``lambda_paper / alpha``): a float, an array that
      broadcasts to every leaf it acts on, or a schedule.
    mask: which leaves get the prox: a pytree of bools like params (or a
      prefix of it), or a callable ``params -> mask``. With
      ``optax.inject_hyperparams`` pass ``static_args=("mask",)``, or a
      plateau schedule directly as ``learning_rate``.
    nesterov: use Nesterov momentum in Adam (NAdam), as ``optax.adam``.
    convention: ``"optax"`` (``weight_decay`` is ``wd`` above, as for
      ``optax.adamw``/``torch.optim.AdamW``) or ``"paper"`` (``weight_decay``
      is the paper's ``lambda``, and ``wd = lambda / alpha``).
    alpha: the paper's base step size (``convention="paper"`` only); defaults
      to a constant ``learning_rate`` or a plateau's constant base.
    track_direction: histogram ``log2|d_t|`` of the Adam direction in the
      state (:func:`proxopt.update_scale_summary`); updates are unchanged.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Raises:
    ValueError, TypeError: at construction, on a negative, infinite or
      non-numeric ``learning_rate``/``weight_decay``, ``b1``/``b2`` outside
      ``[0, 1)``, a negative ``eps``/``eps_root``, a non-bool ``nesterov``,
      an unknown ``convention`` or ``alpha`` without ``convention="paper"``;
      at ``init``, on an array ``weight_decay`` that does not broadcast to a
      leaf (the path is named).

  Example (with a zero gradient the step is the prox alone, a division):
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = proxopt.adamprox(0.1, weight_decay=1.0)
    >>> params = {"w": jnp.array([1.1])}
    >>> updates, state = tx.update({"w": jnp.zeros(1)}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"]  # 1.1 / (1 + 0.1 * 1.0)
    Array([1.], dtype=float32)

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR
    2022 (AdamProx, Eq. 4); Parikh and Boyd, "Proximal Algorithms", Found.
    Trends Optim. 2014; Kingma and Ba, `Adam: A Method for Stochastic
    Optimization <https://arxiv.org/abs/1412.6980>`_, ICLR 2015.
  """
  owner = "proxopt.adamprox"
  _checks.check_adam_hyperparams(b1, b2, eps, eps_root, nesterov, owner)

  def make(lr, wd):
    return optax.chain(
        _adam(b1, b2, eps, eps_root, mu_dtype, nesterov, track_direction),
        optax.scale_by_learning_rate(lr),
        proximal(l2_squared(wd), lr, mask=mask),
    )

  return _build(owner, make, learning_rate, weight_decay, mask, convention, alpha)


def sgd_l2(
    learning_rate: LearningRate,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    convention: str = "optax",
    alpha: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD (with optional momentum) and an L2 penalty added to the gradient.

  .. math::
    g_t \leftarrow g_t + \mathrm{wd}\, x_{t-1}, \quad
    m_t = g_t + \beta m_{t-1}, \quad x_t = x_{t-1} - s_t m_t.

  Equals ``torch.optim.SGD(lr, momentum, weight_decay=wd, nesterov=...)``
  (dampening 0). Built as ``chain(add_decayed_weights(wd), trace(beta),
  scale_by_learning_rate)``. With plain SGD (no momentum) L2 and decoupled
  decay coincide; with momentum the penalty's gradient is accumulated in the
  buffer, unlike :func:`sgdw`.

  Args:
    learning_rate: the step size ``s_t``: a float, an Optax schedule
      ``count -> s_t``, or a :func:`proxopt.reduce_on_plateau` (then the
      chain is wrapped in ``optax.inject_hyperparams`` for you).
    momentum: heavy-ball momentum ``beta`` in ``[0, 1)`` (``None``: no
      momentum buffer), as ``optax.sgd``: ``m_t = g_t + beta m_{t-1}``.
    nesterov: use Nesterov momentum (a bool). It is ``optax.sgd``'s third
      positional argument, so ``sgd_l2(lr, 0.9, 5e-4)`` is refused: pass
      ``weight_decay=`` by keyword.
    accumulator_dtype: dtype of the momentum buffer (``None``: params').
    weight_decay: the L2 coefficient ``wd >= 0`` added to the gradient: a
      float or a schedule.
    mask: which leaves get the L2 penalty: a pytree of bools like params (or
      a prefix of it), or a callable ``params -> mask``. With
      ``optax.inject_hyperparams`` pass ``static_args=("mask",)``.
    convention: ``"optax"`` or ``"paper"``, accepted for a signature uniform
      with :func:`sgdw`; the L2 coefficient is the same number in both
      conventions, so both give the same optimizer.
    alpha: the paper's base step size (``convention="paper"`` only; unused
      by the L2 coupling).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Raises:
    ValueError, TypeError: at construction, on a negative, infinite or
      non-numeric ``learning_rate``/``weight_decay``, a ``momentum`` outside
      ``[0, 1)``, a non-bool ``nesterov``, an unknown ``convention`` or
      ``alpha`` without ``convention="paper"``.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> tx = proxopt.sgd_l2(0.1, momentum=0.9, weight_decay=1e-4)
    >>> params = {"w": jnp.ones(2)}
    >>> updates, state = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> round(float(updates["w"][0]), 6)  # -0.1 * (1 + 1e-4)
    -0.10001

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR
    2022, for the L2 vs decoupled comparison; Loshchilov and Hutter,
    `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  owner = "proxopt.sgd_l2"
  _checks.check_sgd_hyperparams(momentum, nesterov, owner)
  decoupled_weight_decay_coefficient(weight_decay, 1.0, convention, alpha, owner)

  def make(lr, _):
    return optax.chain(
        _decayed_weights(weight_decay, mask, owner),
        _momentum(momentum, nesterov, accumulator_dtype, owner),
        optax.scale_by_learning_rate(lr),
    )

  return _build(owner, make, learning_rate, weight_decay, mask, "optax", None)


def sgdw(
    learning_rate: LearningRate,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    convention: str = "optax",
    alpha: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SGDW: SGD with momentum and weight decay outside the momentum buffer.

  .. math::
    m_t = g_t + \beta m_{t-1}, \qquad
    x_t = x_{t-1} - s_t \left(m_t + \mathrm{wd}\, x_{t-1}\right).

  Built as ``chain(trace(beta), add_decayed_weights(wd),
  scale_by_learning_rate)``: the decay is not accumulated in the momentum
  buffer (Loshchilov and Hutter's SGDW). With ``convention="paper"``,
  ``weight_decay`` is the paper's ``lambda`` and the per-step decay is
  ``lambda * s_t / alpha``; SGDW is the first-order approximation of
  :func:`sgdprox`.

  Args:
    learning_rate: the step size ``s_t``: a float, an Optax schedule
      ``count -> s_t``, or a :func:`proxopt.reduce_on_plateau` (then the
      chain is wrapped in ``optax.inject_hyperparams`` for you).
    momentum: heavy-ball momentum ``beta`` in ``[0, 1)`` (``None``: no
      momentum buffer), as ``optax.sgd``: ``m_t = g_t + beta m_{t-1}``.
    nesterov: use Nesterov momentum (a bool). It is ``optax.sgd``'s third
      positional argument, so ``sgdw(lr, 0.9, 5e-4)`` is refused: pass
      ``weight_decay=`` by keyword.
    accumulator_dtype: dtype of the momentum buffer (``None``: params').
    weight_decay: the decay coefficient ``wd >= 0`` (optax/PyTorch
      convention, ``lambda_paper / alpha``): a float, an array that
      broadcasts to every decayed leaf, or a schedule.
    mask: which leaves are decayed: a pytree of bools like params (or a
      prefix of it), or a callable ``params -> mask``. With
      ``optax.inject_hyperparams`` pass ``static_args=("mask",)``.
    convention: ``"optax"`` (``weight_decay`` decays by ``lr_t * wd``, as
      ``torch.optim.SGD`` does for plain SGD) or ``"paper"``
      (``weight_decay`` is the paper's ``lambda``, decaying by
      ``lambda * lr_t / alpha``).
    alpha: the paper's base step size (``convention="paper"`` only); defaults
      to a constant ``learning_rate`` or a plateau's constant base.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Raises:
    ValueError, TypeError: at construction, on a negative, infinite or
      non-numeric ``learning_rate``/``weight_decay``, a ``momentum`` outside
      ``[0, 1)``, a non-bool ``nesterov``, an unknown ``convention`` or
      ``alpha`` without ``convention="paper"``.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> tx = proxopt.sgdw(0.1, momentum=0.9, weight_decay=1e-2)
    >>> params = {"w": jnp.ones(2)}
    >>> updates, state = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    >>> round(float(updates["w"][0]), 9)  # -lr * wd * x = -0.1 * 1e-2
    -0.001

  References:
    Loshchilov and Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019; Zhuang, Liu, Cutkosky,
    Orabona, `Understanding AdamW through Proximal Methods and
    Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022.
  """
  owner = "proxopt.sgdw"
  _checks.check_sgd_hyperparams(momentum, nesterov, owner)

  def make(lr, wd):
    return optax.chain(
        _momentum(momentum, nesterov, accumulator_dtype, owner),
        _decayed_weights(wd, mask, owner),
        optax.scale_by_learning_rate(lr),
    )

  return _build(owner, make, learning_rate, weight_decay, mask, convention, alpha)


def sgdprox(
    learning_rate: LearningRate,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    convention: str = "optax",
    alpha: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SGDProx: SGD with momentum followed by the exact prox of the L2 penalty.

  .. math::
    m_t = g_t + \beta m_{t-1}, \qquad
    x_t = \frac{x_{t-1} - s_t m_t}{1 + s_t\, \mathrm{wd}_t}
        = \mathrm{prox}_{s_t \frac{\mathrm{wd}_t}{2}\|\cdot\|^2}
          \left(x_{t-1} - s_t m_t\right).

  Built as ``chain(trace(beta), scale_by_learning_rate,
  proximal(l2_squared(wd)))``; both the step size and ``weight_decay`` may
  be schedules (the prox is exact at each step's ``s_t * wd_t``). With
  ``convention="paper"`` the divisor is ``1 + lambda * eta_t``. :func:`sgdw`
  is its first-order approximation.

  Args:
    learning_rate: the step size ``s_t``: a float, an Optax schedule
      ``count -> s_t``, or a :func:`proxopt.reduce_on_plateau` (then the
      chain is wrapped in ``optax.inject_hyperparams`` for you, and the prox
      reads the reduced ``s_t``).
    momentum: heavy-ball momentum ``beta`` in ``[0, 1)`` (``None``: no
      momentum buffer), as ``optax.sgd``: ``m_t = g_t + beta m_{t-1}``.
    nesterov: use Nesterov momentum (a bool). It is ``optax.sgd``'s third
      positional argument, so ``sgdprox(lr, 0.9, 5e-4)`` is refused: pass
      ``weight_decay=`` by keyword.
    accumulator_dtype: dtype of the momentum buffer (``None``: params').
    weight_decay: the decay coefficient ``wd >= 0`` (optax/PyTorch
      convention, ``lambda_paper / alpha``): a float, an array that
      broadcasts to every leaf it acts on, or a schedule.
    mask: which leaves get the prox: a pytree of bools like params (or a
      prefix of it), or a callable ``params -> mask``. With
      ``optax.inject_hyperparams`` pass ``static_args=("mask",)``.
    convention: ``"optax"`` (``weight_decay`` is ``wd`` above) or
      ``"paper"`` (``weight_decay`` is the paper's ``lambda``, and
      ``wd = lambda / alpha``).
    alpha: the paper's base step size (``convention="paper"`` only); defaults
      to a constant ``learning_rate`` or a plateau's constant base.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Raises:
    ValueError, TypeError: at construction, on a negative, infinite or
      non-numeric ``learning_rate``/``weight_decay``, a ``momentum`` outside
      ``[0, 1)``, a non-bool ``nesterov``, an unknown ``convention`` or
      ``alpha`` without ``convention="paper"``; at ``init``, on an array
      ``weight_decay`` that does not broadcast to a leaf (the path is named).

  Example (with a zero gradient the step is the prox alone, a division):
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = proxopt.sgdprox(0.5, weight_decay=1.0)
    >>> params = {"w": jnp.array([3.0])}
    >>> updates, _ = tx.update({"w": jnp.zeros(1)}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"]  # 3 / (1 + 0.5)
    Array([2.], dtype=float32)

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR
    2022; Parikh and Boyd, "Proximal Algorithms", Found. Trends Optim. 2014.
  """
  owner = "proxopt.sgdprox"
  _checks.check_sgd_hyperparams(momentum, nesterov, owner)

  def make(lr, wd):
    return optax.chain(
        _momentum(momentum, nesterov, accumulator_dtype, owner),
        optax.scale_by_learning_rate(lr),
        proximal(l2_squared(wd), lr, mask=mask),
    )

  return _build(owner, make, learning_rate, weight_decay, mask, convention, alpha)
