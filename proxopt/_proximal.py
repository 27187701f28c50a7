r"""Proximal steps and decoupled weight decay over any Optax optimizer.

Place :func:`proximal` at the end of a chain whose output ``u`` is the step the
base optimizer would take (already multiplied by the step size). It returns

.. math::  u' = \mathrm{prox}_{s_t R}(x + u) - x,

so that ``optax.apply_updates`` lands on the proximal point. :func:`decoupled_weight_decay`
is its first-order expansion for ``R = l2_squared(wd)``: ``u' = u - s_t wd x``
(AdamW-style decay after any base optimizer).

``s_t`` must be the step size the base optimizer used at step ``t``: pass the
same float or schedule as the base's ``learning_rate``, or wrap the whole
chain in ``optax.inject_hyperparams`` so both read one value. A multiplier
applied after this transform would make the prox inexact, since
``c * (prox_s(z) - x) != prox_{c s}(x + c u) - x``.

Reference: Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through
Proximal Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxopt import _checks
from proxopt import _regularizers
from proxopt._regularizers import Regularizer

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]
MaskOrFn = Any | Callable[[Any], Any] | None


class StepCountState(NamedTuple):
  """State of a transform that reads a step-size schedule at ``count``."""

  count: jax.Array  # int32 scalar: number of updates taken so far


def _step_size(step_size: ScalarOrSchedule, count: jax.Array):
  if not callable(step_size):
    return step_size
  # Optax schedules mix Python floats with the int32 count, which
  # `jax.numpy_dtype_promotion('strict')` rejects; the value is cast to each
  # leaf's dtype before use, so standard promotion here changes no result.
  with jax.numpy_dtype_promotion("standard"):
    return step_size(count)


def _nudge_into_set(
    regularizer: Regularizer, x: jax.Array, v: jax.Array, s: jax.Array
) -> jax.Array:
  """Moves `v` by ulps until ``x + v`` is a fixed point of the projection.

  For a projection ``y = P(x + u)``, the update ``y - x`` is rounded, and
  ``x + (y - x)`` can land one ulp outside the set (about 2% of clipped
  coordinates in float32). Stepping `v` one ulp toward the set fixes it; in
  10^7 random float32/float16/bfloat16 trials with feasible ``x`` one step
  always sufficed, the second is a margin.
  """
  up, down = jnp.full_like(v, jnp.inf), jnp.full_like(v, -jnp.inf)
  for _ in range(2):
    w = x + v
    p = regularizer.prox(w, s)
    v = jnp.where(
        w < p, jnp.nextafter(v, up), jnp.where(w > p, jnp.nextafter(v, down), v)
    )
  return v


def with_checked_mask(
    tx: optax.GradientTransformation, mask: MaskOrFn, owner: str
) -> optax.GradientTransformation:
  """`optax.masked`, plus checks that the mask is a tree that fits params."""
  _checks.check_mask_argument(mask, owner)
  if mask is None:
    return tx
  inner = optax.masked(tx, mask)

  def init_fn(params):
    _checks.check_mask(_checks.resolve_mask(mask, params), params, owner)
    return inner.init(params)

  return optax.GradientTransformationExtraArgs(init_fn, inner.update)


def _leafwise(
    make_update: Callable[[jax.Array, Any], Callable[..., Any]],
    mask: MaskOrFn,
    owner: str,
    check_params: Callable[[Any], None] | None = None,
) -> optax.GradientTransformation:
  """The plumbing `proximal` and `decoupled_weight_decay` share.

  A step counter (for schedules), float-params and params-present checks,
  and ``fns = make_update(count, params)``, one function ``(u, x) -> u'``
  per leaf of ``params`` (per-leaf coefficients differ between leaves),
  applied leaf by leaf. Under ``optax.masked`` the unselected leaves are
  absent from both ``updates`` and ``params``.
  """

  def init_fn(params):
    _checks.check_float_params(params, owner)
    if check_params is not None:
      check_params(params)  # sees only the leaves the mask selects
    return StepCountState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    _checks.check_params_given(params, owner)
    fns = make_update(state.count, params)
    u_leaves, treedef = jax.tree.flatten(updates)
    x_leaves = treedef.flatten_up_to(params)
    new = [f(u, x) for f, u, x in zip(fns, u_leaves, x_leaves)]
    return treedef.unflatten(new), StepCountState(optax.safe_increment(state.count))

  tx = optax.GradientTransformation(init_fn, update_fn)
  return with_checked_mask(tx, mask, owner)


def proximal(
    regularizer: Regularizer,
    step_size: ScalarOrSchedule,
    *,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""Turns a base update ``u`` into the proximal update ``prox_{s_t R}(x + u) - x``.

  Placed last in a chain whose output ``u`` is the step the base optimizer
  would take (already multiplied by the step size ``s_t``), it makes
  ``optax.apply_updates`` land on

  .. math::
    x_{t+1} = \mathrm{prox}_{s_t R}(x_t + u_t)
            = \arg\min_y \; s_t R(y) + \tfrac12 \|y - (x_t + u_t)\|_2^2 .

  ``s_t`` must be the step size the base optimizer used at step ``t``: pass
  the same float or schedule as the base's ``learning_rate``, or wrap the
  whole chain in ``optax.inject_hyperparams`` so that both read one value. A
  multiplier applied after this transform makes the prox inexact, since
  ``c (prox_s(z) - x) != prox_{c s}(x + c u) - x``.

  Args:
    regularizer: a :class:`proxopt.Regularizer`, e.g. ``proxopt.l1(1e-4)``.
      Its coefficients may be schedules; they are read at the same step count
      as ``step_size``.
    step_size: the step size ``s_t`` the base optimizer used: a float, an
      Optax schedule ``count -> s_t`` (evaluated at the same count as the
      base's ``scale_by_learning_rate``), or a value injected through
      ``optax.inject_hyperparams`` around the whole chain.
    mask: a pytree of bools like params (or a prefix of it), or a callable
      ``params -> mask``. ``False`` leaves keep the base update.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``;
    its state is a :class:`StepCountState`.

  Rounding: the update is computed in closed form (``(u - s lam x) / (1 + s
  lam)`` for ``l2_squared``, no ``prox(x + u) - x`` cancellation), in at
  least float32 for float16/bfloat16 leaves, and is ``u`` bit for bit where
  the prox leaves ``x + u`` unchanged (so ``l2_squared(0)`` reproduces the
  base optimizer exactly). For projections (``box``, ``nonnegative``) the
  update is moved by an ulp when needed so that ``optax.apply_updates``
  lands inside the set; this assumes the parameters start feasible (project
  them once with ``proxopt.apply_prox(regularizer, params, 0.0)``).

  Example (L1-prox over SGD with momentum, i.e. proximal SGD):
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = optax.chain(optax.sgd(0.1, momentum=0.9),
    ...                  proxopt.proximal(proxopt.l1(1.0), 0.1))
    >>> params = {"w": jnp.array([0.05, 2.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.zeros(2)}, state, params)
    >>> optax.apply_updates(params, updates)["w"]
    Array([0. , 1.9], dtype=float32)

  References:
    Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through Proximal
    Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089); Parikh and
    Boyd, "Proximal Algorithms", 2014.
  """
  _regularizers.check_regularizer(regularizer, "proxopt.proximal")
  owner = f"proxopt.proximal({regularizer.name})"
  _checks.check_hyperparam("step_size", step_size, owner)
  _checks.check_nonnegative(
      "step_size", step_size, owner, "Pass the (positive) learning rate."
  )

  def check_params(params):
    keep = [True] * len(jax.tree.leaves(params))
    _regularizers.check_leaves(regularizer, params, keep, owner)

  def make_update(count, params):
    s = _step_size(step_size, count)

    def leaf(reg):
      def update(u, x):
        v = reg.prox_update(x, u, s)
        if reg.projection:
          v = _nudge_into_set(reg, x, v, jnp.asarray(s, x.dtype))
        return v
      return update

    return [leaf(r) for r in regularizer.at(count).leafwise(params, owner)]

  return _leafwise(make_update, mask, owner, check_params)


def decoupled_weight_decay(
    weight_decay: ScalarOrSchedule,
    step_size: ScalarOrSchedule,
    *,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""AdamW-style decay after any base optimizer: ``u -> u - s_t * wd_t * x``.

  .. math::  u'_t = u_t - s_t\, \mathrm{wd}_t\, x_t .

  The first-order expansion of ``proximal(l2_squared(wd), step_size)``; over
  ``optax.adam`` it gives exactly ``optax.adamw`` / ``torch.optim.AdamW``. Use
  it to add decoupled decay to AdaGrad, RMSProp, SGD, or your own optimizer.

  Args:
    weight_decay: the optax/PyTorch coefficient (``lambda_paper / alpha``):
      a float, an array, a schedule ``count -> wd``, or a pytree like params
      of these (per-leaf coefficients; 0 on a leaf = masked out).
    step_size: the base optimizer's learning rate (float or schedule).
    mask: as in :func:`proximal`.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = optax.chain(optax.adagrad(0.1),
    ...                  proxopt.decoupled_weight_decay(0.5, 0.1))
    >>> params = {"w": jnp.array([1.0])}
    >>> updates, _ = tx.update({"w": jnp.zeros(1)}, tx.init(params), params)
    >>> updates["w"]
    Array([-0.05], dtype=float32)

  References:
    Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
  """
  owner = "proxopt.decoupled_weight_decay"
  _checks.check_coefficient("weight_decay", weight_decay, owner)
  _checks.check_hyperparam("step_size", step_size, owner)
  _checks.check_nonnegative("step_size", step_size, owner)

  def check_params(params):
    # Structure (per-leaf values) and shapes (arrays), with paths named.
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    values = _checks.leaf_values("weight_decay", weight_decay, params, owner)
    for (path, x), wd in zip(leaves, values):
      if _checks.is_concrete_array(wd) and np.ndim(wd) > 0:
        _checks.check_broadcasts_to_leaves("weight_decay", wd, x, owner, path)

  def make_update(count, params):
    s = _step_size(step_size, count)

    def leaf(wd):
      wd = _step_size(wd, count)
      return lambda u, x: u - jnp.asarray(s, x.dtype) * jnp.asarray(wd, x.dtype) * x

    return [leaf(wd) for wd in
            _checks.leaf_values("weight_decay", weight_decay, params, owner)]

  return _leafwise(make_update, mask, owner, check_params)
