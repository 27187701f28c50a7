r"""Regularizers R with their value and closed-form proximal operator.

For a step size :math:`s > 0` the proximal operator of :math:`s R` is

.. math::
  \mathrm{prox}_{sR}(z) = \arg\min_y \; s R(y) + \tfrac12 \|y - z\|_2^2 .

Every regularizer here is separable over pytree leaves, so a `Regularizer`
holds two per-leaf functions: ``value(x)`` (a scalar, so that users can log the
full objective ``f + R``) and ``prox(z, s)`` (same shape and dtype as ``z``).
Tree-level helpers are :func:`regularizer_value` and :func:`apply_prox`.

Reference: N. Parikh and S. Boyd, "Proximal Algorithms", 2014 (Sec. 6) for
the formulas; Zhuang et al., "Understanding AdamW through Proximal Methods and
Scale-Freeness", TMLR 2022, for the use of ``l2_squared`` in AdamProx.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proxopt import _checks

Array = jax.Array


class Regularizer(NamedTuple):
  """A separable regularizer: per-leaf value and per-leaf proximal operator.

  Attributes:
    name: a short human-readable name, e.g. ``"l1(0.001)"``.
    value: ``value(x) -> scalar``, R restricted to one leaf.
    prox: ``prox(z, s) -> y``, the proximal operator of ``s * R`` on one leaf;
      ``s`` is a scalar (already cast to ``z.dtype``).
    projection: True if ``prox`` is the elementwise projection onto a set
      (``box``, ``nonnegative``); :func:`proxopt.proximal` then makes sure
      ``params + update`` lands inside that set despite float rounding.
  """

  name: str
  value: Callable[[Array], Array]
  prox: Callable[[Array, Array], Array]
  projection: bool = False


def _as(x: Any, like: Array) -> Array:
  # Cast coefficients to the leaf's dtype so bf16/f16 leaves stay in their
  # dtype and `jax.numpy_dtype_promotion('strict')` is respected.
  return jnp.asarray(x, dtype=like.dtype)


def _wide(x: Array) -> Array:
  # Reductions (sums of squares, norms) in float16/bfloat16 lose most digits
  # and overflow float16 beyond 65504: accumulate in at least float32.
  return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x


def _soft_threshold(z: Array, t: Array) -> Array:
  return jnp.sign(z) * jnp.maximum(jnp.abs(z) - t, jnp.zeros_like(z))


def l2_squared(lam: float | Array) -> Regularizer:
  r"""Squared L2 norm :math:`R(x) = \frac{\lambda}{2}\|x\|_2^2`.

  :math:`\mathrm{prox}_{sR}(z) = z / (1 + s\lambda)`. Over Adam, this is the
  AdamProx step of Zhuang et al. (2022).

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.l2_squared(1.0).prox(jnp.array([2.0]), jnp.array(1.0))
    Array([1.], dtype=float32)
  """
  _checks.check_nonnegative("lam", lam, "proxopt.l2_squared")

  def value(x):
    w = _wide(x)
    return (0.5 * _as(lam, w) * jnp.sum(jnp.square(w))).astype(x.dtype)

  def prox(z, s):
    return z / (jnp.ones([], z.dtype) + s * _as(lam, z))

  return Regularizer(f"l2_squared({lam})", value, prox)


def l1(lam: float | Array) -> Regularizer:
  r"""L1 norm :math:`R(x) = \lambda \|x\|_1`.

  The prox is soft-thresholding, :math:`\mathrm{sign}(z)\max(|z| - s\lambda,
  0)`, which returns exact zeros.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.l1(1.0).prox(jnp.array([0.5, -3.0]), jnp.array(1.0))
    Array([ 0., -2.], dtype=float32)
  """
  _checks.check_nonnegative("lam", lam, "proxopt.l1")

  def value(x):
    w = _wide(x)
    return (_as(lam, w) * jnp.sum(jnp.abs(w))).astype(x.dtype)

  def prox(z, s):
    return _soft_threshold(z, s * _as(lam, z))

  return Regularizer(f"l1({lam})", value, prox)


def elastic_net(l1: float | Array, l2: float | Array) -> Regularizer:
  r"""Elastic net :math:`R(x) = \lambda_1\|x\|_1 + \frac{\lambda_2}{2}\|x\|^2`.

  :math:`\mathrm{prox}_{sR}(z) = \mathrm{soft}(z, s\lambda_1) / (1 +
  s\lambda_2)`.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.elastic_net(1.0, 1.0).prox(jnp.array([3.0]), jnp.array(1.0))
    Array([1.], dtype=float32)
  """
  _checks.check_nonnegative("l1", l1, "proxopt.elastic_net")
  _checks.check_nonnegative("l2", l2, "proxopt.elastic_net")
  lam1, lam2 = l1, l2

  def value(x):
    w = _wide(x)
    return (
        _as(lam1, w) * jnp.sum(jnp.abs(w))
        + 0.5 * _as(lam2, w) * jnp.sum(jnp.square(w))
    ).astype(x.dtype)

  def prox(z, s):
    return _soft_threshold(z, s * _as(lam1, z)) / (
        jnp.ones([], z.dtype) + s * _as(lam2, z)
    )

  return Regularizer(f"elastic_net({l1}, {l2})", value, prox)


def group_lasso(
    lam: float | Array, axis: int | Sequence[int] | None = None
) -> Regularizer:
  r"""Group lasso :math:`R(x) = \lambda \sum_g \|x_g\|_2`.

  Groups are formed per leaf by reducing over ``axis``: ``axis=None`` makes the
  whole leaf one group; for a ``(fan_in, fan_out)`` kernel ``axis=0`` groups
  each output unit's column (zeroing a group prunes a unit), ``axis=1`` each
  row. The prox is block soft-thresholding,
  :math:`z_g \max(0, 1 - s\lambda/\|z_g\|_2)`, which zeroes whole groups.
  Groups are not weighted by their size; scale ``lam`` if you want that.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> z = jnp.array([[3.0, 0.1], [4.0, 0.1]])
    >>> proxopt.group_lasso(1.0, axis=0).prox(z, jnp.array(1.0))
    Array([[2.4, 0. ],
           [3.2, 0. ]], dtype=float32)
  """
  _checks.check_nonnegative("lam", lam, "proxopt.group_lasso")

  def _axes(x):
    if axis is None:
      return tuple(range(x.ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
      if not -x.ndim <= a < max(x.ndim, 1):
        raise ValueError(
            f"proxopt.group_lasso: `axis={axis}` is out of range for a leaf "
            f"of shape {x.shape}. Use axis=None (whole leaf) or mask out "
            "leaves of lower rank with `mask=`."
        )
    return axes

  def value(x):
    w = _wide(x)
    norms = jnp.sqrt(jnp.sum(jnp.square(w), axis=_axes(x)))
    return (_as(lam, w) * jnp.sum(norms)).astype(x.dtype)

  def prox(z, s):
    w = _wide(z)
    norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=_axes(z), keepdims=True))
    t = jnp.asarray(s, w.dtype) * _as(lam, w)
    # Guard the division: a zero group stays zero.
    safe = jnp.where(norm > t, norm, jnp.ones_like(norm))
    shrink = jnp.where(norm > t, 1 - t / safe, jnp.zeros_like(norm))
    return (w * shrink).astype(z.dtype)

  return Regularizer(f"group_lasso({lam}, axis={axis})", value, prox)


def box(lower: float | Array, upper: float | Array) -> Regularizer:
  r"""Indicator of the box :math:`[\mathrm{lower}, \mathrm{upper}]`.

  R is 0 inside the box and :math:`+\infty` outside; its prox is the
  projection ``clip(z, lower, upper)`` for every step size. ``lower`` may be
  ``-inf`` and ``upper`` ``+inf``.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.box(-1.0, 1.0).prox(jnp.array([-2.0, 0.5, 3.0]), 1.0)
    Array([-1. ,  0.5,  1. ], dtype=float32)
  """
  lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, np.float64)
  if np.any(np.isnan(lo)) or np.any(np.isnan(hi)) or np.any(lo > hi):
    raise ValueError(
        f"proxopt.box: need lower <= upper, got lower={lower!r}, "
        f"upper={upper!r}. Swap them or widen the box."
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

  return Regularizer(f"box({lower}, {upper})", value, prox, projection=True)


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
  """Indicator of the nonnegative orthant; its prox is ``max(z, 0)``.

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.nonnegative().prox(jnp.array([-2.0, 3.0]), 1.0)
    Array([0., 3.], dtype=float32)
  """
  reg = box(0.0, np.inf)
  return reg._replace(name="nonnegative()")


def _masked_tree(params: Any, mask: Any) -> list[tuple[Array, bool]]:
  leaves = jax.tree.leaves(params)
  if mask is None:
    return [(x, True) for x in leaves]
  mask = _checks.resolve_mask(mask, params)
  _checks.check_mask(mask, params, "proxopt")
  # Broadcast a prefix mask down to the leaves of params.
  full = jax.tree.map(
      lambda m, sub: jax.tree.map(lambda _: m, sub), mask, params
  )
  return list(zip(leaves, jax.tree.leaves(full)))


def regularizer_value(
    regularizer: Regularizer, params: Any, mask: Any = None
) -> Array:
  """R(params) summed over leaves (masked-out leaves contribute nothing).

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.regularizer_value(proxopt.l1(0.5), {"w": jnp.array([1.0, -3.0])})
    Array(2., dtype=float32)
  """
  leaves = jax.tree.leaves(params)
  # The widest leaf dtype (f32 for mixed f32/bf16 trees), also under strict.
  with jax.numpy_dtype_promotion("standard"):
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
  total = jnp.zeros([], dtype=dtype)
  for x, keep in _masked_tree(params, mask):
    if keep:
      total = total + regularizer.value(x).astype(total.dtype)
  return total


def apply_prox(
    regularizer: Regularizer, params: Any, step_size: float | Array,
    mask: Any = None,
) -> Any:
  """Applies prox_{step_size * R} leaf by leaf (masked-out leaves unchanged).

  Example:
    >>> import jax.numpy as jnp, proxopt
    >>> proxopt.apply_prox(proxopt.l1(1.0), {"w": jnp.array([0.5, 2.0])}, 1.0)
    {'w': Array([0., 1.], dtype=float32)}
  """
  _checks.check_nonnegative("step_size", step_size, "proxopt.apply_prox")
  leaves = _masked_tree(params, mask)
  out = [
      regularizer.prox(x, jnp.asarray(step_size, x.dtype)) if keep else x
      for x, keep in leaves
  ]
  return jax.tree.unflatten(jax.tree.structure(params), out)
