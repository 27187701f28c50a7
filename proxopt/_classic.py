r"""Classic Optax optimizers with decoupled weight decay and a prox.

:func:`classic` builds ``sgd``, ``momentum``, ``nesterov``, ``adagrad``,
``rmsprop`` or ``adam`` from Optax, optionally followed by
:func:`proxopt.decoupled_weight_decay` and/or :func:`proxopt.proximal`, all
reading one step size (a float, a schedule, or a
:func:`proxopt.reduce_on_plateau`).

Reference: Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through
Proximal Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089).
"""

from __future__ import annotations

from typing import Any, Mapping

import optax

from proxopt import _checks
from proxopt._proximal import (
    MaskOrFn,
    ScalarOrSchedule,
    decoupled_weight_decay,
    proximal,
)
from proxopt._regularizers import Regularizer
from proxopt._schedules import ReduceOnPlateau

CLASSIC_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")


def _classic_base(name: str, learning_rate, momentum: float, kwargs):
  if name == "sgd":
    return optax.sgd(learning_rate, **kwargs)
  if name == "momentum":
    return optax.sgd(learning_rate, momentum=momentum, **kwargs)
  if name == "nesterov":
    return optax.sgd(learning_rate, momentum=momentum, nesterov=True, **kwargs)
  return getattr(optax, name)(learning_rate, **kwargs)


def classic(
    name: str,
    learning_rate: ScalarOrSchedule | ReduceOnPlateau,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    regularizer: Regularizer | None = None,
    mask: MaskOrFn = None,
    optax_kwargs: Mapping[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""A classic Optax optimizer, optionally with decoupled decay and a prox.

  Builds ``optax.chain(base, decoupled_weight_decay(weight_decay, s),
  proximal(regularizer, s))`` where ``base`` is, by ``name``:

  ============  =====================================================
  ``sgd``       ``optax.sgd(s)``
  ``momentum``  ``optax.sgd(s, momentum=momentum)`` (heavy ball)
  ``nesterov``  ``optax.sgd(s, momentum=momentum, nesterov=True)``
  ``adagrad``   ``optax.adagrad(s, **optax_kwargs)``
  ``rmsprop``   ``optax.rmsprop(s, **optax_kwargs)``
  ``adam``      ``optax.adam(s, **optax_kwargs)``
  ============  =====================================================

  The decay (``x <- x - s_t * weight_decay * x``, the optax/PyTorch
  convention) is added only if ``weight_decay > 0``, the prox only if
  ``regularizer`` is given; both read the same step size as the base.
  ``learning_rate`` may be a float, an Optax schedule, or a
  :func:`reduce_on_plateau` (then the chain is wrapped in
  ``optax.inject_hyperparams`` so that one ``s_t`` drives all three; feed the
  metric with ``plateau.observe(opt_state, metric)``). Like every optimizer
  here, ``classic`` can itself be wrapped,
  ``optax.inject_hyperparams(proxopt.classic, static_args=("name",))(name="adam",
  learning_rate=0.1, weight_decay=0.1)``, to change ``learning_rate``,
  ``weight_decay`` or ``momentum`` at runtime.

  With :math:`u_t` the base update at step size :math:`s_t`, :math:`\mathrm{wd}`
  = ``weight_decay`` and :math:`R` the regularizer, one step is

  .. math::
     x_t = \operatorname{prox}_{s_t R}\bigl(x_{t-1} + u_t - s_t\,\mathrm{wd}\,x_{t-1}\bigr).

  Args:
    name: the base optimizer, one of :data:`CLASSIC_OPTIMIZERS` (``"sgd"``,
      ``"momentum"``, ``"nesterov"``, ``"adagrad"``, ``"rmsprop"``,
      ``"adam"``).
    learning_rate: the step size :math:`s_t`: a float, an Optax schedule or a
      :func:`reduce_on_plateau`.
    momentum: the momentum of ``"momentum"`` and ``"nesterov"`` (ignored by
      the others).
    weight_decay: the decoupled decay coefficient (Optax/PyTorch
      convention), :math:`\ge 0`; 0 adds no decay.
    regularizer: a :class:`Regularizer` whose prox follows the step, or
      ``None``.
    mask: a pytree of bools or a callable ``params -> pytree of bools``
      selecting the leaves the decay and the prox apply to (``None``: all).
    optax_kwargs: a dict passed to the Optax constructor of ``adagrad``,
      ``rmsprop`` or ``adam`` (e.g. ``{"eps": 0.0}``). A dict rather than
      ``**kwargs`` so that ``optax.inject_hyperparams(proxopt.classic,
      static_args=("name",))`` works: it binds every parameter by name and
      would pass ``optax_kwargs={}`` to the Optax constructor.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs
    ``params``.

  Raises:
    ValueError: on an unknown ``name`` or invalid hyper-parameters.

  Example (proximal Nesterov with L1 under step decay):
    >>> import jax.numpy as jnp, optax, proxopt
    >>> sched = proxopt.step_decay(0.1, 0.5, every_epochs=30, steps_per_epoch=100)
    >>> tx = proxopt.classic("nesterov", sched, regularizer=proxopt.l1(1.0))
    >>> params = {"w": jnp.array([0.05, 2.0])}
    >>> updates, state = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"]
    Array([0. , 1.9], dtype=float32)

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022.
  """
  owner = "proxopt.classic"
  _checks.check_one_of("name", name, CLASSIC_OPTIMIZERS, owner)
  if optax_kwargs is None:
    optax_kwargs = {}
  _checks.check_type(
      "optax_kwargs", optax_kwargs, Mapping, owner,
      f"a dict of keyword arguments for optax.{name}",
      "E.g. optax_kwargs={'eps': 0.0}.",
  )
  _checks.check_that(
      not (name in ("sgd", "momentum", "nesterov") and optax_kwargs), owner,
      f"{name!r} takes only `momentum`",
      f"extra arguments {sorted(optax_kwargs)}",
      "Drop optax_kwargs, or pick an optimizer that takes them, e.g. 'adam'.",
      error=TypeError,
  )
  _checks.check_momentum(momentum, owner)  # traced (injected) values pass
  _checks.check_hyperparam("weight_decay", weight_decay, owner)
  _checks.check_nonnegative("weight_decay", weight_decay, owner)
  # A Python 0 adds no decay link; an array (as inject_hyperparams passes,
  # concrete at init and traced in update) or a schedule always does, so the
  # state has one structure whatever value is injected.
  with_decay = not (
      isinstance(weight_decay, (int, float)) and float(weight_decay) == 0.0
  )
  _checks.check_type(
      "regularizer", regularizer, Regularizer, owner,
      _checks.REGULARIZER_WHAT, allow_none=True,
  )

  def build(learning_rate):
    parts = [_classic_base(name, learning_rate, momentum, optax_kwargs)]
    if with_decay:
      parts.append(decoupled_weight_decay(weight_decay, learning_rate, mask=mask))
    if regularizer is not None:
      parts.append(proximal(regularizer, learning_rate, mask=mask))
    return optax.with_extra_args_support(optax.chain(*parts))

  if isinstance(learning_rate, optax.schedules.StatefulSchedule):
    return optax.inject_hyperparams(build)(learning_rate=learning_rate)
  if not callable(learning_rate):
    _checks.check_nonnegative("learning_rate", learning_rate, owner)
  return build(learning_rate)
