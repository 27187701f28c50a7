r"""Regularizers R with their value and closed-form proximal operator.

For a step size :math:`s > 0` the proximal operator of :math:`s R` is

.. math::
  \mathrm{prox}_{sR}(z) = \arg\min_y \; s R(y) + \tfrac12 \|y - z\|_2^2 .

Every regularizer here is separable over pytree leaves, so a
:class:`Regularizer` holds per-leaf functions: ``value(x)`` (a scalar, so that
users can log the full objective ``f + R``), ``prox(z, s)`` (same shape and
dtype as ``z``) and ``prox_update(x, u, s) = prox(x + u, s) - x`` computed
without cancellation. Its coefficients (``lam``, ``l1``, ``l2``) are pytree
leaves: a float, an array that broadcasts to the leaves it is applied to
(per-entry strengths), a schedule ``count -> value`` (read by
:func:`proxopt.proximal` at each step) or a value injected by
``optax.inject_hyperparams``. A coefficient may also be a *pytree like the
parameters* (or a prefix of it) of such values, one per leaf, as jaxopt's
proximal operators take: ``l1({"w": 1e-4, "b": 0.0})``; :func:`proxopt.proximal`,
:func:`regularizer_value` and :func:`apply_prox` split it over the leaves (a
structure mismatch is refused at ``init`` with the path named), and its
values stay pytree leaves of the regularizer. Box bounds may be per-leaf
trees too.

Zero coefficient vs mask: a leaf whose coefficient is 0 gets the base update
bit for bit, exactly as a leaf a ``mask`` leaves out (the prox at 0 is the
identity); use a mask to *select* leaves by kind (``x.ndim > 1``) and a
per-leaf coefficient to give selected leaves *different strengths*. A mask
also skips the shape check of a leaf it leaves out.

Reference: N. Parikh and S. Boyd, "Proximal Algorithms", 2014 (Sec. 6) for
the formulas; Zhuang et al., "Understanding AdamW through Proximal Methods and
Scale-Freeness", TMLR 2022, for the use of ``l2_squared`` in AdamProx.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proxopt import _checks

Array = jax.Array
Coefficient = float | Array | Callable[[Array], Array]


def _coefficient_repr(value: Any) -> str:
  if callable(value):
    return "<schedule>"
  if isinstance(value, jax.core.Tracer):
    return "<traced>"
  if _checks.is_concrete_number(value):
    return repr(float(value))
  if _checks.is_coefficient_tree(value):
    return "<per-leaf>"
  return f"<array {np.shape(value)}>"


@jax.tree_util.register_pytree_node_class
class Regularizer:
  """A separable regularizer: per-leaf value, proximal operator and update.

  The coefficients are the pytree children (``jax.tree.leaves(l1(0.1)) ==
  [0.1]``), so a regularizer can be passed through ``jax.jit`` and its
  coefficients can be schedules or injected hyper-parameters; the functions
  are static.

  Args:
    name: a short human-readable name, e.g. ``"l1"``.
    value: ``value(x, **coefficients) -> scalar``, R restricted to one leaf.
    prox: ``prox(z, s, **coefficients) -> y``, the proximal operator of
      ``s * R`` on one leaf; ``s`` is a scalar of ``z``'s dtype.
    projection: True if ``prox`` is the projection onto a set (``box``,
      ``nonnegative``); :func:`proxopt.proximal` then makes sure
      ``params + update`` lands inside that set despite float rounding.
    coefficients: named coefficients passed to ``value``/``prox`` as keyword
      arguments (the pytree leaves). Each must be ``>= 0`` and broadcast to
      every leaf it is applied to (checked at ``init``).
    prox_update: optional ``prox_update(x, u, s, **coefficients)`` returning
      ``prox(x + u, s) - x`` without the cancellation of that subtraction
      (the built-ins have closed forms). Without it the difference is taken
      in at least float32.
    coefficient_shape: optional ``(name, leaf_shape) -> shape`` the
      coefficient ``name`` must broadcast to (default: the leaf's shape).
    static_shapes: shapes of static (non-leaf) array arguments, such as a
      box's bounds, that must broadcast to each leaf (checked at ``init``).

  Example (a custom regularizer: R(x) = lam * sum(x), prox z - s lam):
    >>> import jax.numpy as jnp, proxopt
    >>> linear = proxopt.Regularizer(
    ...     "linear", lambda x, lam: lam * jnp.sum(x),
    ...     lambda z, s, lam: z - s * lam, coefficients={"lam": 0.5})
    >>> linear.prox(jnp.array([1.0]), 2.0)
    Array([0.], dtype=float32)
  """

  def __init__(
      self,
      name: str,
      value: Callable[..., Array],
      prox: Callable[..., Array],
      projection: bool = False,
      *,
      coefficients: Mapping[str, Any] | None = None,
      prox_update: Callable[..., Array] | None = None,
      coefficient_shape: Callable[[str, tuple[int, ...]], tuple[int, ...]] | None = None,
      static_shapes: Mapping[str, tuple[int, ...]] | None = None,
      split: Callable[[Any, str], list["Regularizer"]] | None = None,
  ):
    self.kind = name
    self.value_fn = value
    self.prox_fn = prox
    self.projection = bool(projection)
    self.coefficients = dict(coefficients or {})
    self.prox_update_fn = prox_update
    self.coefficient_shape = coefficient_shape
    self.static_shapes = dict(static_shapes or {})
    self.split = split

  # -- pytree -----------------------------------------------------------------

  def tree_flatten(self):
    keys = tuple(self.coefficients)
    aux = (
        self.kind, self.value_fn, self.prox_fn, self.projection, keys,
        self.prox_update_fn, self.coefficient_shape,
        tuple(sorted(self.static_shapes.items())), self.split,
    )
    return tuple(self.coefficients[k] for k in keys), aux

  @classmethod
  def tree_unflatten(cls, aux, children):
    (kind, value, prox, projection, keys, prox_update, coefficient_shape,
     static_shapes, split) = aux
    return cls(
        kind, value, prox, projection, coefficients=dict(zip(keys, children)),
        prox_update=prox_update, coefficient_shape=coefficient_shape,
        static_shapes=dict(static_shapes), split=split,
    )

  def _with_coefficients(self, coefficients: Mapping[str, Any]) -> "Regularizer":
    return Regularizer(
        self.kind, self.value_fn, self.prox_fn, self.projection,
        coefficients=coefficients, prox_update=self.prox_update_fn,
        coefficient_shape=self.coefficient_shape,
        static_shapes=self.static_shapes, split=self.split,
    )

  @property
  def name(self) -> str:
    """``kind(coefficients)``, e.g. ``"l1(0.001)"``."""
    if not self.coefficients:
      return self.kind
    args = ", ".join(_coefficient_repr(v) for v in self.coefficients.values())
    return f"{self.kind}({args})"

  def __repr__(self) -> str:
    return f"proxopt.Regularizer({self.name})"

  # -- per-leaf operations ----------------------------------------------------

  def at(self, count: Any) -> "Regularizer":
    """This regularizer with every schedule coefficient evaluated at ``count``."""
    leaves = jax.tree.leaves(self.coefficients)
    if not any(callable(v) for v in leaves):
      return self
    # Optax schedules mix Python floats with the int32 count, which strict
    # dtype promotion rejects; values are cast to each leaf's dtype later.
    with jax.numpy_dtype_promotion("standard"):
      values = jax.tree.map(
          lambda v: v(count) if callable(v) else v, self.coefficients
      )
    return self._with_coefficients(values)

  def leafwise(self, params: Any, owner: str) -> list["Regularizer"]:
    """One regularizer per leaf of ``params``, per-leaf coefficients resolved.

    A coefficient given as a pytree like ``params`` (or a prefix of it) is
    split over the leaves (structure checked, paths named); a number, array
    or schedule is shared by every leaf.
    """
    if self.split is not None:
      return self.split(params, owner)
    n = len(jax.tree.leaves(params))
    if not any(_checks.is_coefficient_tree(v) for v in self.coefficients.values()):
      return [self] * n
    per_name = {
        k: _checks.leaf_values(k, v, params, owner)
        for k, v in self.coefficients.items()
    }
    return [
        self._with_coefficients({k: per_name[k][i] for k in self.coefficients})
        for i in range(n)
    ]

  def _coefficients_for(self, x: Array) -> dict[str, Array]:
    out = {}
    for k, v in self.coefficients.items():
      _checks.check_that(
          self.split is None and not _checks.is_coefficient_tree(v),
          f"proxopt.{self.kind}",
          f"coefficient `{k}` is per-leaf (a pytree like params) and acts on "
          "a whole tree, not on one leaf", f"{k}=<per-leaf>",
          "Apply it with proxopt.regularizer_value, proxopt.apply_prox or "
          "proxopt.proximal, or take `regularizer.leafwise(params, owner)`.",
          error=TypeError,
      )
      _checks.check_that(
          not callable(v), f"proxopt.{self.kind}",
          f"coefficient `{k}` is a schedule, which has no value on a leaf",
          f"{k}=<schedule>",
          "Evaluate it at a step first with `regularizer.at(step)` "
          "(proxopt.proximal does this at every update).",
          error=TypeError,
      )
      out[k] = jnp.asarray(v, dtype=x.dtype)
    return out

  def value(self, x: Array) -> Array:
    """R restricted to one leaf, a scalar in at least float32.

    ``value_fn`` gets the leaf in at least float32: a float16 sum of squares
    overflows (65504) long before the parameters do.
    """
    w = _wide(x)
    return self.value_fn(w, **self._coefficients_for(w))

  def prox(self, z: Array, s: Any) -> Array:
    """``prox_{s R}(z)`` on one leaf."""
    return self.prox_fn(z, jnp.asarray(s, z.dtype), **self._coefficients_for(z))

  def prox_update(self, x: Array, u: Array, s: Any) -> Array:
    """``prox_{s R}(x + u) - x``, the update that lands on the proximal point.

    Where the prox leaves ``x + u`` unchanged the result is ``u`` bit for bit.
    """
    w = _wide(x)
    s_w = jnp.asarray(s, w.dtype)
    if self.prox_update_fn is not None:
      v = self.prox_update_fn(
          w, u.astype(w.dtype), s_w, **self._coefficients_for(w)
      )
      return v.astype(x.dtype)
    if self.projection:
      # A projection's update is a clipped step, with no cancellation to
      # avoid; computing it in the leaf's dtype keeps x + v within one ulp of
      # the set, which proxopt.proximal's nudge then closes.
      z = x + u
      y = self.prox(z, s)
      return jnp.where(y == z, u, y - x)
    # Generic: the difference in at least float32 (a bfloat16 x + u - x
    # cancels to 0 for any step below 2^-8 |x|).
    z = w + u.astype(w.dtype)
    y = self.prox_fn(z, s_w, **self._coefficients_for(w))
    return jnp.where(y == z, u, (y - w).astype(x.dtype))

  def check_leaf(self, x: Any, where: str, owner: str) -> None:
    """Raises ValueError if a coefficient does not broadcast to leaf ``x``."""
    shape = tuple(np.shape(x))
    for k, v in self.coefficients.items():
      if callable(v):
        continue
      target = (
          self.coefficient_shape(k, shape) if self.coefficient_shape else shape
      )
      cshape = tuple(np.shape(v))
      _checks.check_that(
          _checks.broadcasts_to(cshape, target), owner,
          f"coefficient `{k}` of {self.name} has shape {cshape}, which does "
          f"not broadcast to the parameter at path {where}",
          f"a leaf of shape {shape} (needs a shape that broadcasts to "
          f"{tuple(target)})",
          "Use a scalar, an array shaped like that leaf, or a `mask=` that "
          "leaves the other leaves out.",
      )


def _wide(x: Array) -> Array:
  # Reductions and prox differences in float16/bfloat16 lose most digits and
  # overflow float16 beyond 65504: compute in at least float32.
  return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x


def _coefficient(name: str, value: Any, owner: str) -> Any:
  """Validates one coefficient at construction (schedules/tracers pass).

  A pytree of per-leaf values is accepted (each leaf checked); its structure
  is checked against params where they are known.
  """
  _checks.check_coefficient(name, value, owner)
  return value


def _soft_threshold(z: Array, t: Array) -> Array:
  # Thresholded entries are +0, as the update form gives (x + (-x) = +0);
  # sign(z) * 0 would give -0 for negative z.
  return jnp.where(jnp.abs(z) > t, z - t * jnp.sign(z), jnp.zeros_like(z))


def _keep_base_where(t: Array, u: Array, v: Array) -> Array:
  # Where the threshold is 0 the prox is the identity: return the base update
  # bit for bit (so l1(0) reproduces the base optimizer exactly).
  return jnp.where(t > 0, v, u)


def l2_squared(lam: Coefficient) -> Regularizer:
  r"""Squared L2 norm, :math:`R(x) = \frac{\lambda}{2}\|x\|_2^2`.

  .. math::
    \mathrm{prox}_{sR}(z) = \frac{z}{1 + s\lambda}, \qquad
    \mathrm{prox}_{sR}(x + u) - x = \frac{u - s\lambda x}{1 + s\lambda}.

  Over Adam this is the AdamProx step of Zhuang et al. (2022), the exact
  proximal step that AdamW's decoupled decay approximates to first order.

  Args:
    lam: the strength :math:`\lambda \ge 0`: a float, an array broadcasting
      to each leaf (per-entry strengths), a schedule ``count -> lam``, an
      injected value, or a pytree like params of these (per-leaf strengths).

  Returns:
    A :class:`Regularizer`.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.l2_squared(1.0).prox(jnp.array([2.0]), 1.0)
    Array([1.], dtype=float32)

  References:
    Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through Proximal
    Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089).
  """
  lam = _coefficient("lam", lam, "proxopt.l2_squared")
  return Regularizer(
      "l2_squared", _l2_value, _l2_prox, coefficients={"lam": lam},
      prox_update=_l2_prox_update,
  )


# The per-leaf functions live at module level: a regularizer's treedef holds
# them, and equal treedefs (no retracing when only a coefficient changes)
# need the same function objects.
def _l2_value(x, lam):
  w = _wide(x)
  return jnp.sum(0.5 * lam.astype(w.dtype) * jnp.square(w)).astype(x.dtype)


def _l2_prox(z, s, lam):
  return z / (jnp.ones([], z.dtype) + s * lam)


def _l2_prox_update(x, u, s, lam):
  return (u - s * lam * x) / (jnp.ones([], x.dtype) + s * lam)


def l1(lam: Coefficient) -> Regularizer:
  r"""L1 norm, :math:`R(x) = \lambda \|x\|_1`.

  The prox is soft-thresholding, which returns exact zeros:

  .. math::
    \mathrm{prox}_{sR}(z) = \mathrm{sign}(z)\max(|z| - s\lambda, 0).

  Args:
    lam: the strength :math:`\lambda \ge 0` (float, array broadcasting to each
      leaf, schedule, injected value, or a pytree like params of these).

  Returns:
    A :class:`Regularizer`.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.l1(1.0).prox(jnp.array([0.5, -3.0]), 1.0)
    Array([ 0., -2.], dtype=float32)

  References:
    Parikh and Boyd, "Proximal Algorithms", Found. Trends Optim. 2014, Sec. 6.
  """
  lam = _coefficient("lam", lam, "proxopt.l1")
  return Regularizer(
      "l1", _l1_value, _l1_prox, coefficients={"lam": lam},
      prox_update=_l1_prox_update,
  )


def _l1_value(x, lam):
  w = _wide(x)
  return jnp.sum(lam.astype(w.dtype) * jnp.abs(w)).astype(x.dtype)


def _l1_prox(z, s, lam):
  return _soft_threshold(z, s * lam)


def _l1_prox_update(x, u, s, lam):
  t = s * lam
  z = x + u
  v = jnp.where(jnp.abs(z) > t, u - t * jnp.sign(z), -x)
  return _keep_base_where(t, u, v)


def elastic_net(l1: Coefficient, l2: Coefficient) -> Regularizer:
  r"""Elastic net, :math:`R(x) = \lambda_1\|x\|_1 + \frac{\lambda_2}{2}\|x\|_2^2`.

  .. math::
    \mathrm{prox}_{sR}(z) = \frac{\mathrm{sign}(z)\max(|z| - s\lambda_1, 0)}
                                 {1 + s\lambda_2}.

  Args:
    l1: :math:`\lambda_1 \ge 0` (float, array, schedule, injected value, or a
      pytree like params of these).
    l2: :math:`\lambda_2 \ge 0` (as ``l1``).

  Returns:
    A :class:`Regularizer`.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.elastic_net(1.0, 1.0).prox(jnp.array([3.0]), 1.0)
    Array([1.], dtype=float32)

  References:
    Zou and Hastie, "Regularization and variable selection via the elastic
    net", JRSS-B 2005; Parikh and Boyd, "Proximal Algorithms", 2014.
  """
  l1 = _coefficient("l1", l1, "proxopt.elastic_net")
  l2 = _coefficient("l2", l2, "proxopt.elastic_net")
  return Regularizer(
      "elastic_net", _enet_value, _enet_prox, coefficients={"l1": l1, "l2": l2},
      prox_update=_enet_prox_update,
  )


def _enet_value(x, l1, l2):
  w = _wide(x)
  return jnp.sum(
      l1.astype(w.dtype) * jnp.abs(w) + 0.5 * l2.astype(w.dtype) * jnp.square(w)
  ).astype(x.dtype)


def _enet_prox(z, s, l1, l2):
  return _soft_threshold(z, s * l1) / (jnp.ones([], z.dtype) + s * l2)


def _enet_prox_update(x, u, s, l1, l2):
  t1, t2 = s * l1, s * l2
  z = x + u
  v = jnp.where(
      jnp.abs(z) > t1,
      (u - t1 * jnp.sign(z) - t2 * x) / (jnp.ones([], x.dtype) + t2),
      -x,
  )
  return jnp.where((t1 > 0) | (t2 > 0), v, u)


def group_lasso(
    lam: Coefficient, axis: int | Sequence[int] | None = None
) -> Regularizer:
  r"""Group lasso, :math:`R(x) = \lambda \sum_g \|x_g\|_2`.

  Groups are formed per leaf by reducing over ``axis``: ``axis=None`` makes
  the whole leaf one group; for a ``(fan_in, fan_out)`` kernel ``axis=0``
  groups each output unit's column (zeroing a group prunes a unit),
  ``axis=1`` each row. The prox is block soft-thresholding, which zeroes
  whole groups:

  .. math::
    \mathrm{prox}_{sR}(z)_g = z_g \max\!\left(0, 1 - \frac{s\lambda}{\|z_g\|_2}\right).

  Groups are not weighted by their size; scale ``lam`` if you want that.

  Args:
    lam: the strength :math:`\lambda \ge 0`: a float, a schedule, an injected
      value, or an array of per-group strengths that broadcasts to the
      leaf's shape with the reduced axes kept as size 1 (e.g. ``(1, fan_out)``
      for ``axis=0``), or a pytree like params of these.
    axis: the axis or axes reduced within a group (``None``: the whole leaf).

  Returns:
    A :class:`Regularizer`.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> z = jnp.array([[3.0, 0.1], [4.0, 0.1]])
    >>> proxopt.group_lasso(1.0, axis=0).prox(z, 1.0)
    Array([[2.4, 0. ],
           [3.2, 0. ]], dtype=float32)

  References:
    Yuan and Lin, "Model selection and estimation in regression with grouped
    variables", JRSS-B 2006; Parikh and Boyd, "Proximal Algorithms", 2014.
  """
  lam = _coefficient("lam", lam, "proxopt.group_lasso")
  key = axis if axis is None or isinstance(axis, int) else tuple(axis)
  value, prox, prox_update, group_shape = _group_lasso_functions(key)
  return Regularizer(
      "group_lasso", value, prox, coefficients={"lam": lam},
      prox_update=prox_update, coefficient_shape=group_shape,
  )


@functools.lru_cache(maxsize=None)
def _group_lasso_functions(axis):
  """The per-leaf functions of ``group_lasso(., axis)``, one set per axis."""

  def _axes(ndim, shape=None):
    if axis is None:
      return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
      _checks.check_that(
          -ndim <= a < max(ndim, 1), "proxopt.group_lasso",
          f"`axis={axis}` is out of range for a leaf of shape {shape}",
          f"axis {a} for a leaf with {ndim} dimension(s)",
          "Use axis=None (whole leaf) or mask out leaves of lower rank with "
          "`mask=`.",
      )
    return axes

  def group_shape(name, shape):
    del name
    axes = {a % max(len(shape), 1) for a in _axes(len(shape), shape)}
    return tuple(1 if i in axes else d for i, d in enumerate(shape))

  def norms(w):
    return jnp.sqrt(jnp.sum(jnp.square(w), axis=_axes(w.ndim, w.shape), keepdims=True))

  def value(x, lam):
    w = _wide(x)
    return jnp.sum(lam.astype(w.dtype) * norms(w)).astype(x.dtype)

  def prox(z, s, lam):
    w = _wide(z)
    t = s.astype(w.dtype) * lam.astype(w.dtype)
    norm = norms(w)
    # Guard the division: a group at or below the threshold becomes zero.
    safe = jnp.where(norm > t, norm, jnp.ones_like(norm))
    shrink = jnp.where(norm > t, 1 - t / safe, jnp.zeros_like(norm))
    # A zeroed group is +0 (w * 0 would be -0 for negative entries).
    return jnp.where(norm > t, w * shrink, jnp.zeros_like(w)).astype(z.dtype)

  def prox_update(x, u, s, lam):
    t = s * lam
    z = x + u
    norm = norms(z)
    safe = jnp.where(norm > t, norm, jnp.ones_like(norm))
    v = jnp.where(norm > t, u - t * z / safe, -x)
    return _keep_base_where(t, u, v)

  return value, prox, prox_update, group_shape


def box(lower: float | Array, upper: float | Array) -> Regularizer:
  r"""Indicator of the box :math:`[\mathrm{lower}, \mathrm{upper}]`.

  R is 0 inside the box and :math:`+\infty` outside; its prox is the
  projection, for every step size:

  .. math::  \mathrm{prox}_{sR}(z) = \mathrm{clip}(z, \mathrm{lower}, \mathrm{upper}).

  The bounds are static (not pytree leaves): they are rounded inward to each
  leaf's dtype so that clipped values are feasible.

  Args:
    lower: lower bound (a float or an array broadcasting to the leaves; may
      be ``-inf``), or a pytree like params of these (per-leaf bounds,
      checked against params where the box is used).
    upper: upper bound (``>= lower``; may be ``+inf``), or a pytree.

  Returns:
    A :class:`Regularizer` with ``projection=True``.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.box(-1.0, 1.0).prox(jnp.array([-2.0, 0.5, 3.0]), 1.0)
    Array([-1. ,  0.5,  1. ], dtype=float32)

  References:
    Parikh and Boyd, "Proximal Algorithms", Found. Trends Optim. 2014.
  """
  owner = "proxopt.box"
  if _checks.is_coefficient_tree(lower) or _checks.is_coefficient_tree(upper):
    return _per_leaf_box(lower, upper, owner)
  return _box(lower, upper, f"box({lower}, {upper})", owner)


def _per_leaf_box(lower, upper, owner) -> Regularizer:
  """A box with per-leaf bounds: split into one static box per leaf at use."""
  for arg, v in (("lower", lower), ("upper", upper)):
    for path, leaf in jax.tree_util.tree_flatten_with_path(v)[0]:
      _box_bound_check(f"{arg}{jax.tree_util.keystr(path)}", leaf, owner)

  def split(params, use_owner):
    los = _checks.leaf_values("lower", lower, params, use_owner)
    his = _checks.leaf_values("upper", upper, params, use_owner)
    return [
        _box(lo, hi, f"box({lo}, {hi})", use_owner) for lo, hi in zip(los, his)
    ]

  def unsplit(*_):
    raise TypeError(
        f"{owner}: a box with per-leaf bounds acts on a whole tree: use "
        "proxopt.apply_prox, proxopt.regularizer_value or proxopt.proximal."
    )

  return Regularizer("box(<per-leaf>)", unsplit, unsplit, projection=True, split=split)


def _box_bound_check(arg, v, owner):
  _checks.check_hyperparam(arg, v, owner)
  _checks.check_concrete(arg, v, owner, "box bounds are static")


def _box(lower, upper, name, owner) -> Regularizer:
  for arg, v in (("lower", lower), ("upper", upper)):
    _box_bound_check(arg, v, owner)
  lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, np.float64)
  _checks.check_that(
      not (np.any(np.isnan(lo)) or np.any(np.isnan(hi)) or np.any(lo > hi)),
      owner, "need lower <= upper", f"lower={lower!r}, upper={upper!r}",
      "Swap them or widen the box.",
  )

  def bounds(x):
    return _inward_bounds(lo, hi, x.dtype)

  def value(x):
    l, u = bounds(x)
    inside = jnp.all((x >= l) & (x <= u))
    return jnp.where(inside, jnp.zeros([], x.dtype), jnp.full([], jnp.inf, x.dtype))

  def prox(z, s):
    del s  # A projection does not depend on the step size.
    l, u = bounds(z)
    return jnp.clip(z, l, u)

  # The bounds are static, not coefficients, but must broadcast like one.
  return Regularizer(
      name, value, prox, projection=True,
      static_shapes={"lower": lo.shape, "upper": hi.shape},
  )


def _inward_bounds(lo: np.ndarray, hi: np.ndarray, dtype: Any):
  """Casts float64 box bounds to `dtype`, rounding toward the inside.

  With round-to-nearest, ``float32(0.1) > 0.1`` but ``float32(0.3) < 0.3``, so a
  clipped parameter could sit just outside the box the user asked for. Rounding
  each bound inward keeps every representable clipped value feasible (falling
  back to nearest rounding when the box is narrower than one ulp).
  """
  dtype = np.dtype(dtype)
  lo_c, hi_c = lo.astype(dtype), hi.astype(dtype)
  up, down = np.asarray(np.inf, dtype), np.asarray(-np.inf, dtype)
  lo_in = np.where(lo_c.astype(np.float64) < lo, np.nextafter(lo_c, up), lo_c)
  hi_in = np.where(hi_c.astype(np.float64) > hi, np.nextafter(hi_c, down), hi_c)
  ok = lo_in <= hi_in
  return (
      jnp.asarray(np.where(ok, lo_in, lo_c), dtype),
      jnp.asarray(np.where(ok, hi_in, hi_c), dtype),
  )


def nonnegative() -> Regularizer:
  r"""Indicator of the nonnegative orthant; its prox is ``max(z, 0)``.

  .. math::  \mathrm{prox}_{sR}(z) = \max(z, 0).

  Returns:
    A :class:`Regularizer` with ``projection=True``.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.nonnegative().prox(jnp.array([-2.0, 3.0]), 1.0)
    Array([0., 3.], dtype=float32)

  References:
    Parikh and Boyd, "Proximal Algorithms", Found. Trends Optim. 2014.
  """
  return _box(0.0, np.inf, "nonnegative()", "proxopt.nonnegative")


def check_regularizer(regularizer: Any, owner: str) -> None:
  """:func:`proxopt._checks.check_type` for a :class:`Regularizer`."""
  _checks.check_type(
      "regularizer", regularizer, Regularizer, owner, _checks.REGULARIZER_WHAT
  )


def check_leaves(regularizer: Regularizer, params: Any, keep: Any, owner: str) -> None:
  """Checks every coefficient against every leaf it is applied to."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  regs = regularizer.leafwise(params, owner)
  for (path, x), on, reg in zip(leaves, keep, regs):
    if on:
      where = jax.tree_util.keystr(path) or "<root>"
      reg.check_leaf(x, where, owner)
      for arg, shape in reg.static_shapes.items():
        _checks.check_that(
            _checks.broadcasts_to(shape, np.shape(x)), owner,
            f"`{arg}` of {reg.name} has shape {shape}, which does not "
            f"broadcast to the parameter at path {where}",
            f"a leaf of shape {np.shape(x)}",
            f"Use a scalar `{arg}` or one that broadcasts to every leaf, or "
            "a `mask=` that leaves the other leaves out.",
        )


def leaf_mask(params: Any, mask: Any, owner: str) -> list[bool]:
  """One bool per leaf of params: whether the (prefix) mask selects it."""
  leaves = jax.tree.leaves(params)
  if mask is None:
    return [True] * len(leaves)
  mask = _checks.resolve_mask(mask, params)
  _checks.check_mask(mask, params, owner)
  # Broadcast a prefix mask down to the leaves of params.
  full = jax.tree.map(
      lambda m, sub: jax.tree.map(lambda _: m, sub), mask, params
  )
  return [bool(m) for m in jax.tree.leaves(full)]


def regularizer_value(
    regularizer: Regularizer, params: Any, mask: Any = None
) -> Array:
  r"""R(params), summed over the leaves the mask selects.

  .. math::  R(x) = \sum_{\text{leaves } \ell} R_\ell(x_\ell).

  Useful to log the full objective ``f(x) + R(x)`` that a prox chain
  minimizes.

  Args:
    regularizer: a :class:`Regularizer` (schedule coefficients evaluated
      first with ``regularizer.at(step)``).
    params: a pytree of float arrays.
    mask: ``None`` (all leaves), a pytree of bools like params (or a prefix),
      or a callable ``params -> mask``.

  Returns:
    A scalar of the widest leaf dtype, at least float32 (a float16 sum of
    squares overflows at 65504).

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.regularizer_value(proxopt.l1(0.5), {"w": jnp.array([1.0, -3.0])})
    Array(2., dtype=float32)

  References:
    Parikh and Boyd, "Proximal Algorithms", Found. Trends Optim. 2014.
  """
  owner = "proxopt.regularizer_value"
  check_regularizer(regularizer, owner)
  _checks.check_float_params(params, owner)
  keep = leaf_mask(params, mask, owner)
  check_leaves(regularizer, params, keep, owner)
  leaves = jax.tree.leaves(params)
  regs = regularizer.leafwise(params, owner)
  # The widest leaf dtype (f32 for mixed f32/bf16 trees), also under strict.
  with jax.numpy_dtype_promotion("standard"):
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    dtype = jnp.promote_types(dtype, jnp.float32)
  total = jnp.zeros([], dtype=dtype)
  for x, on, reg in zip(leaves, keep, regs):
    if on:
      total = total + reg.value(x).astype(total.dtype)
  return total


def apply_prox(
    regularizer: Regularizer, params: Any, step_size: float | Array,
    mask: Any = None,
) -> Any:
  r"""Applies :math:`\mathrm{prox}_{sR}` leaf by leaf (unselected leaves unchanged).

  Use it once to make parameters feasible before training with a projection
  (``apply_prox(box(-1, 1), params, 0.0)``), or for proximal steps outside an
  optax chain.

  Args:
    regularizer: a :class:`Regularizer`.
    params: a pytree of float arrays.
    step_size: the step :math:`s \ge 0`.
    mask: as in :func:`regularizer_value`.

  Returns:
    A pytree like ``params``.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.apply_prox(proxopt.l1(1.0), {"w": jnp.array([0.5, 2.0])}, 1.0)
    {'w': Array([0., 1.], dtype=float32)}

  References:
    Parikh and Boyd, "Proximal Algorithms", Found. Trends Optim. 2014.
  """
  owner = "proxopt.apply_prox"
  check_regularizer(regularizer, owner)
  _checks.check_hyperparam("step_size", step_size, owner)
  _checks.check_nonnegative("step_size", step_size, owner)
  _checks.check_float_params(params, owner)
  keep = leaf_mask(params, mask, owner)
  check_leaves(regularizer, params, keep, owner)
  regs = regularizer.leafwise(params, owner)
  out = [
      reg.prox(x, jnp.asarray(step_size, x.dtype)) if on else x
      for x, on, reg in zip(jax.tree.leaves(params), keep, regs)
  ]
  return jax.tree.unflatten(jax.tree.structure(params), out)
