r"""Weight-decay conventions: the paper's lambda vs optax/PyTorch weight_decay.

Three conventions for one decoupled decay (AdamW, SGDW, AdamProx):

======================  ==========================================  =============================
who                     per-step decay factor on x                  hyper-parameter
======================  ==========================================  =============================
optax ``adamw``         ``lr_t * weight_decay``                     ``weight_decay``
PyTorch ``AdamW``       ``lr_t * weight_decay``                     ``weight_decay``
Zhuang et al. (2022)    ``lambda * eta_t``, ``eta_t = lr_t / alpha`` ``lambda`` (and base step alpha)
======================  ==========================================  =============================

so ``lambda_paper = alpha * weight_decay_optax``. Adam-L2 / SGD-L2 add
``lambda * x`` to the gradient in all three, with the same number.

Worked example (the paper's best no-BN ResNet-110 AdamW setting on CIFAR-10):
alpha = 5e-4, lambda = 1e-4, so ``weight_decay = 1e-4 / 5e-4 = 0.2``::

    >>> import proxopt
    >>> proxopt.paper_to_optax(alpha=5e-4, lam=1e-4)
    0.2
    >>> hp = proxopt.paper_hyperparams(alpha=5e-4, lam=1e-4)
    >>> round(hp["weight_decay"], 12), hp["learning_rate"]
    (0.2, 0.0005)
    >>> tx = proxopt.adamw(**hp)   # same as proxopt.adamw(5e-4, weight_decay=1e-4, convention="paper")
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from proxopt import _checks

Convention = Literal["optax", "paper"]
CONVENTIONS = ("optax", "paper")


def paper_to_optax(alpha: float, lam: float) -> float:
  r"""The Optax/PyTorch ``weight_decay`` equal to the paper's ``lambda``.

  The paper decays by :math:`\lambda \eta_t` with :math:`\eta_t = s_t /
  \alpha`; Optax and PyTorch by :math:`s_t \cdot \mathrm{wd}`. They agree when

  .. math::

    \mathrm{wd} = \lambda / \alpha.

  Args:
    alpha: the paper's base step size :math:`\alpha > 0`.
    lam: the paper's decay coefficient :math:`\lambda \ge 0`.

  Returns:
    ``lam / alpha``, the ``weight_decay`` to pass to :func:`proxopt.adamw`,
    :func:`proxopt.adamprox`, ``optax.adamw`` or ``torch.optim.AdamW``.

  Raises:
    ValueError: if ``alpha <= 0`` or ``lam < 0``.

  Example:
    The paper's best no-BN ResNet-110 AdamW setting on CIFAR-10:

    >>> import proxopt
    >>> proxopt.paper_to_optax(alpha=5e-4, lam=1e-4)
    0.2

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022.
  """
  _checks.check_alpha(alpha, "proxopt.paper_to_optax")
  _checks.check_nonnegative("lam", lam, "proxopt.paper_to_optax")
  return lam / alpha


def optax_to_paper(alpha: float, weight_decay: float) -> float:
  r"""The paper's ``lambda`` equal to an Optax/PyTorch ``weight_decay``.

  The inverse of :func:`paper_to_optax`:

  .. math::

    \lambda = \alpha \cdot \mathrm{wd}.

  Args:
    alpha: the base step size :math:`\alpha > 0` (the peak learning rate).
    weight_decay: the Optax/PyTorch coefficient :math:`\mathrm{wd} \ge 0`.

  Returns:
    ``alpha * weight_decay``, the paper's :math:`\lambda`.

  Raises:
    ValueError: if ``alpha <= 0`` or ``weight_decay < 0``.

  Example:
    >>> import proxopt
    >>> round(proxopt.optax_to_paper(alpha=1e-3, weight_decay=0.1), 12)
    0.0001

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022.
  """
  _checks.check_alpha(alpha, "proxopt.optax_to_paper")
  _checks.check_nonnegative("weight_decay", weight_decay, "proxopt.optax_to_paper")
  return alpha * weight_decay


def paper_hyperparams(
    alpha: float, lam: float, multiplier: Callable[[Any], Any] | None = None
) -> dict[str, Any]:
  r"""Keyword arguments for a decoupled alias from the paper's parameters.

  The paper writes the step size as :math:`\alpha \eta_t` and the decay as
  :math:`\lambda \eta_t`; this returns the Optax-convention arguments

  .. math::

    s_t = \alpha \eta_t, \qquad \mathrm{wd} = \lambda / \alpha,

  so that :math:`s_t \cdot \mathrm{wd} = \lambda \eta_t`.

  Args:
    alpha: the paper's base step size :math:`\alpha > 0`.
    lam: the paper's decay coefficient :math:`\lambda \ge 0` (per-step decay
      ``lam * eta_t``).
    multiplier: the paper's schedule :math:`\eta_t` as a function of the step
      count (``None``: constant 1).

  Returns:
    ``{"learning_rate": alpha or (t -> alpha * eta_t), "weight_decay": lam /
    alpha}``, to pass as ``proxopt.adamw(**hp)`` (or ``adamprox``, ``sgdw``,
    ``sgdprox``).

  Raises:
    ValueError: if ``alpha <= 0`` or ``lam < 0``.

  Example:
    >>> import optax, proxopt
    >>> hp = proxopt.paper_hyperparams(
    ...     alpha=5e-4, lam=1e-4, multiplier=optax.cosine_decay_schedule(1.0, 100))
    >>> round(hp["weight_decay"], 12), round(float(hp["learning_rate"](0)), 9)
    (0.2, 0.0005)
    >>> tx = proxopt.adamw(**hp)

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022.
  """
  wd = paper_to_optax(alpha, lam)
  if multiplier is None:
    return {"learning_rate": alpha, "weight_decay": wd}
  return {"learning_rate": lambda t: alpha * multiplier(t), "weight_decay": wd}


def decoupled_weight_decay_coefficient(
    weight_decay: Any,
    learning_rate: Any,
    convention: str,
    alpha: Any,
    owner: str,
) -> Any:
  """The optax coefficient for a decoupled decay given in either convention."""
  _checks.check_one_of(
      "convention", convention, CONVENTIONS, owner,
      "'optax' decays by lr_t*weight_decay, 'paper' by lambda*lr_t/alpha.",
  )
  if convention == "optax":
    # A silently ignored alpha usually means a forgotten convention="paper".
    _checks.check_that(
        alpha is None, owner,
        f"`alpha={alpha!r}` is only used with convention='paper'",
        "convention='optax'",
        "Pass convention='paper' (weight_decay is then the paper's lambda) "
        "or drop alpha.",
    )
    return weight_decay
  if alpha is None:
    constant = isinstance(learning_rate, (int, float)) and not isinstance(
        learning_rate, bool
    )
    _checks.check_that(
        constant, owner,
        "convention='paper' with a scheduled or injected learning_rate needs "
        "`alpha=` (the paper's base step, so that eta_t = lr_t / alpha)",
        f"alpha=None and a learning_rate of type {type(learning_rate).__name__}",
        "Pass alpha=<base learning rate>.",
    )
    alpha = learning_rate
  _checks.check_alpha(alpha, owner)
  if callable(weight_decay):
    return lambda t: weight_decay(t) / alpha
  return weight_decay / alpha
