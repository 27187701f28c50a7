r"""Scale-freeness checks for any Optax optimizer, for users' test suites.

An optimizer is *scale-free* (Zhuang et al., 2022, Sec. 4) if its iterates do
not change when every gradient coordinate ``i`` is multiplied by a fixed
``c_i > 0``, i.e. when it is run on ``f(x)`` with gradients ``c ⊙ ∇f(x)``
instead of ``∇f(x)``. A scalar ``c`` is a loss multiplier (``c f``).

:func:`scale_free_report` runs two trajectories from the same start,

.. math::
  x_{t+1} = x_t + u_t(\nabla f(x_t)), \qquad
  y_{t+1} = y_t + u'_t(c \odot \nabla f(y_t)),

(each run evaluates ``grad_fn`` at its *own* iterate) and measures

.. math::
  \text{rel. change} = \max_t \|y_t - x_t\|_2 \,/\, \max_t \|x_t - x_0\|_2,

the largest distance between the runs relative to how far the reference run
moved. :func:`assert_scale_free` / :func:`assert_not_scale_free` turn it into
a pass/fail check.

Exact invariance needs ``eps = 0`` (and ``eps_root = 0``) in adaptive
optimizers and non-zero gradients: with ``eps > 0`` the change is small but
non-zero (roughly ``eps / |c_i g_i|``), and a zero gradient makes ``0 / 0``
with ``eps = 0``. Both runs use float64 when ``jax_enable_x64`` is on (float
params are upcast); in float32, rounding differences grow along the
trajectory, so tolerances must be looser (the default ``rtol`` is 1e-9 in
float64 and 1e-4 in float32).

Reference: Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through
Proximal Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "ScaleFreeReport",
    "assert_not_scale_free",
    "assert_scale_free",
    "default_rtol",
    "scale_free_report",
]

# Changes above this are "not scale-free" in the report's wording; between
# rtol and this they are "small but non-zero" (e.g. Adam with eps = 1e-8).
SMALL_CHANGE = 1e-2

_EXACT_NOTE = (
    "Exact invariance needs eps=0 (and eps_root=0) in adaptive optimizers and "
    "non-zero gradients along the trajectory."
)


def default_rtol(dtype: Any) -> float:
  """Default tolerance on the relative change: 1e-9 (float64), 1e-4 otherwise.

  In float64 the two runs of :func:`scale_free_report` differ only by
  rounding, far below 1e-9; in float32 rounding differences grow along the
  trajectory, so the tolerance is looser.

  Args:
    dtype: the dtype the runs use (``jnp.float64`` when ``jax_enable_x64`` is
      on, else the parameters' dtype).

  Returns:
    The tolerance on the maximum relative change, a float.

  Example:
    >>> import jax.numpy as jnp
    >>> from proxopt import testing
    >>> testing.default_rtol(jnp.float64), testing.default_rtol(jnp.float32)
    (1e-09, 0.0001)

  References:
    Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through Proximal
    Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089).
  """
  return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-4


@dataclasses.dataclass(frozen=True)
class ScaleFreeReport:
  """How much a trajectory changes when gradients are rescaled.

  Attributes:
    max_rel_change: ``max_t ||y_t - x_t|| / max_t ||x_t - x_0||`` (0 when
      neither run moved; ``inf`` when only the rescaled one moved or when it
      diverged to NaN/inf; ``nan`` when the reference run did).
    final_rel_change: the same ratio at the last step.
    per_step: ``||y_t - x_t|| / max_s ||x_s - x_0||`` for ``t = 1..steps``.
    reference_displacement: ``max_t ||x_t - x_0||``, the normaliser.
    worst_step: the step (1-based) where the change is largest.
    kind: ``"per-coordinate"`` (pytree of scales) or ``"loss multiplier"``
      (scalar scale).
    steps: number of optimizer steps run.
    dtype: the dtype of the runs, e.g. ``"float64"``.
    rtol: the tolerance used to word the verdict.
    finite: whether the reference run stayed finite (a non-finite rescaled
      run next to a finite reference is an infinite change).
  """

  max_rel_change: float
  final_rel_change: float
  per_step: np.ndarray
  reference_displacement: float
  worst_step: int
  kind: str
  steps: int
  dtype: str
  rtol: float
  finite: bool

  @property
  def verdict(self) -> str:
    """One of ``"scale-free"``, ``"small but non-zero change"``,
    ``"not scale-free"``, ``"non-finite"``."""
    if not self.finite:
      return "non-finite"
    if self.max_rel_change <= self.rtol:
      return "scale-free"
    if self.max_rel_change <= SMALL_CHANGE:
      return "small but non-zero change"
    return "not scale-free"

  def __str__(self) -> str:
    head = (
        f"ScaleFreeReport({self.kind} rescaling, {self.steps} steps, "
        f"{self.dtype}): max relative change {self.max_rel_change:.3e} "
        f"(step {self.worst_step}), final {self.final_rel_change:.3e}"
    )
    v = self.verdict
    if v == "non-finite":
      why = (
          "the reference run produced NaN/inf (with eps=0 a zero gradient "
          "gives 0/0; check grad_fn and the step size)"
      )
    elif v == "scale-free":
      why = f"scale-free: change <= rtol={self.rtol:.0e} (rounding level)"
    elif v == "small but non-zero change":
      why = (
          f"small but non-zero change (> rtol={self.rtol:.0e}, <= "
          f"{SMALL_CHANGE:.0e}): nearly but not exactly scale-free, as with "
          "eps>0 in Adam-type methods (change about eps/|c*g|) or a weak term "
          "that does not rescale (e.g. a small L2 penalty)"
      )
    else:
      why = (
          f"not scale-free: the rescaled run moves away from the reference "
          f"(change > {SMALL_CHANGE:.0e})"
      )
    return f"{head}. Verdict: {why}"


def _is_scalar(x: Any) -> bool:
  if isinstance(x, bool):
    return False
  if isinstance(x, (int, float, np.number)):
    return True
  return isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) == 0


def _check_inputs(optimizer, params, grad_fn, steps, scales, owner):
  if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
    raise TypeError(
        f"{owner}: `optimizer` must be an optax.GradientTransformation (with "
        f"init and update), got {type(optimizer).__name__}."
    )
  if not callable(grad_fn):
    raise TypeError(
        f"{owner}: `grad_fn` must be a function params -> gradients, e.g. "
        "`jax.grad(loss)`."
    )
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"{owner}: `steps` must be an int >= 1, got {steps!r}.")
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError(f"{owner}: `params` has no array leaves.")
  for leaf in leaves:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
          f"{owner}: `params` leaves must be floating point, got a leaf of "
          f"dtype {jnp.result_type(leaf)}. Cast with `x.astype(jnp.float32)`."
      )
  if _is_scalar(scales):
    if not (float(scales) > 0 and np.isfinite(float(scales))):
      raise ValueError(
          f"{owner}: `scales` must be > 0 and finite (a loss multiplier), got "
          f"{scales!r}."
      )
    return "loss multiplier"
  p_struct = jax.tree.structure(params)
  s_struct = jax.tree.structure(scales)
  if p_struct != s_struct:
    raise ValueError(
        f"{owner}: `scales` must be a positive scalar or a pytree like "
        f"`params`; params are {p_struct} but scales are {s_struct}. Build it "
        "with e.g. `jax.tree.map(lambda x: jnp.full_like(x, 10.0), params)`."
    )
  for (path, s), p in zip(
      jax.tree_util.tree_flatten_with_path(scales)[0], leaves
  ):
    s_np = np.asarray(s)
    where = jax.tree_util.keystr(path)
    # One-directional: the scales leaf must broadcast *to* the parameter
    # (a (3, 6) leaf for a (6,) parameter would change the gradient's shape).
    try:
      fits = np.broadcast_shapes(s_np.shape, np.shape(p)) == np.shape(p)
    except ValueError:
      fits = False
    if not fits:
      raise ValueError(
          f"{owner}: `scales` leaf at {where} has shape {s_np.shape}, which "
          f"does not broadcast to the parameter's shape {np.shape(p)}. Use a "
          "scalar or an array of the parameter's shape (or one that "
          "broadcasts to it, e.g. shape (1,) or a trailing sub-shape)."
      )
    if not np.issubdtype(s_np.dtype, np.number) or np.issubdtype(
        s_np.dtype, np.complexfloating
    ):
      raise TypeError(
          f"{owner}: `scales` leaf at {where} must hold real numbers, got "
          f"dtype {s_np.dtype}."
      )
    if not np.all(s_np > 0):
      raise ValueError(
          f"{owner}: `scales` leaf at {where} has entries <= 0 (or NaN); "
          "scale-freeness is about positive factors c_i > 0."
      )
    if not np.all(np.isfinite(s_np)):
      raise ValueError(
          f"{owner}: `scales` leaf at {where} has infinite entries; "
          "scale-freeness is about finite factors 0 < c_i < inf (an infinite "
          "factor makes the rescaled gradient inf, which would be blamed on "
          "the optimizer). Use large finite factors, e.g. 1e6."
      )
  return "per-coordinate"


def _check_rtol(rtol, owner):
  if rtol is None:
    return
  ok = (
      not isinstance(rtol, bool)
      and _is_scalar(rtol)
      and np.isfinite(float(rtol))
      and float(rtol) >= 0
  )
  if not ok:
    raise ValueError(
        f"{owner}: `rtol` must be a finite number >= 0 (or None for the "
        f"default, 1e-9 in float64 and 1e-4 in float32), got {rtol!r}."
    )


def _run_dtype(params):
  # float64 whenever JAX allows it: rounding then stays far below any change
  # worth reporting.
  if jax.config.jax_enable_x64:
    return jnp.float64
  return jnp.result_type(*jax.tree.leaves(params))


def _trajectory_gaps(opt_ref, opt_scaled, params, grad_fn, scales, steps):
  """Runs both trajectories under one jitted lax.scan.

  Returns per-step ``||y_t - x_t||``, ``||x_t - x_0||`` and the finiteness
  of each run.
  """
  scalar = _is_scalar(scales)

  def rescale(g):
    if scalar:
      return jax.tree.map(lambda gi: gi * jnp.asarray(scales, gi.dtype), g)
    return jax.tree.map(lambda gi, c: gi * jnp.asarray(c, gi.dtype), g, scales)

  def all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in jax.tree.leaves(tree)]))

  @jax.jit
  def run(x0):
    def step(carry, _):
      x, sx, y, sy = carry
      ux, sx = opt_ref.update(grad_fn(x), sx, x)
      uy, sy = opt_scaled.update(rescale(grad_fn(y)), sy, y)
      x = optax.apply_updates(x, ux)
      y = optax.apply_updates(y, uy)
      gap = optax.tree_utils.tree_norm(optax.tree_utils.tree_sub(y, x))
      disp = optax.tree_utils.tree_norm(optax.tree_utils.tree_sub(x, x0))
      return (x, sx, y, sy), (gap, disp, all_finite(x), all_finite(y))

    carry = (x0, opt_ref.init(x0), x0, opt_scaled.init(x0))
    _, out = jax.lax.scan(step, carry, None, length=steps)
    return out

  return jax.device_get(run(params))


def scale_free_report(
    optimizer: optax.GradientTransformation,
    params: Any,
    grad_fn: Callable[[Any], Any],
    *,
    steps: int,
    scales: Any,
    rtol: float | None = None,
    rescaled_optimizer: optax.GradientTransformation | None = None,
) -> ScaleFreeReport:
  r"""Measures how much ``optimizer``'s trajectory changes under rescaling.

  Args:
    optimizer: any ``optax.GradientTransformation`` (including your own); its
      ``update`` is called as ``update(grads, state, params)``.
    params: the starting point (a pytree of float arrays).
    grad_fn: ``params -> grads`` (traceable by ``jax.jit``), e.g.
      ``jax.grad(loss)``. Gradients should be non-zero along the trajectory.
    steps: number of optimizer steps.
    scales: a finite positive scalar ``c`` (loss multiplier: gradients
      ``c g``) or a pytree like ``params`` of finite positive factors, each
      leaf broadcastable *to* its parameter's shape (per-coordinate
      rescaling: gradients ``c ⊙ g`` of the parameter's shape).
    rtol: tolerance used to word the verdict, a finite number >= 0;
      default :func:`default_rtol`.
    rescaled_optimizer: the optimizer of the rescaled run (default: the same
      ``optimizer``). Pass e.g. ``proxopt.adam_l2(lr, weight_decay=c * wd)`` to check that a
      hyper-parameter change compensates a loss multiplier ``c``.

  Returns:
    A :class:`ScaleFreeReport`; ``print`` it for a readable verdict.

  Raises:
    ValueError: (before anything runs) if ``scales`` is not finite and
      positive, a ``scales`` leaf does not broadcast to its parameter's shape,
      or ``rtol`` is negative, NaN or infinite; ``steps`` < 1.
    TypeError: if ``optimizer``/``rescaled_optimizer`` is not a
      ``GradientTransformation``, ``grad_fn`` is not callable, or a ``params``
      leaf is not floating point.

  Both runs are traced once and run in a single jitted ``lax.scan``. Use
  float64 (``jax.config.update("jax_enable_x64", True)``) for tight checks;
  see the module docstring for eps and zero gradients.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from proxopt import testing
    >>> grad_fn = jax.grad(lambda p: jnp.sum((p["w"] - 1.0) ** 2))
    >>> params = {"w": jnp.array([0.0, 3.0])}
    >>> scales = {"w": jnp.array([100.0, 0.01])}
    >>> r = testing.scale_free_report(optax.adam(0.1, eps=0.0), params,
    ...                               grad_fn, steps=20, scales=scales)
    >>> r.verdict
    'scale-free'
    >>> testing.scale_free_report(optax.sgd(0.1), params, grad_fn, steps=20,
    ...                           scales=scales).verdict
    'not scale-free'

  References:
    Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through Proximal
    Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089).
  """
  owner = "proxopt.testing.scale_free_report"
  kind = _check_inputs(optimizer, params, grad_fn, steps, scales, owner)
  _check_rtol(rtol, owner)
  if rescaled_optimizer is None:
    rescaled_optimizer = optimizer
  elif not (hasattr(rescaled_optimizer, "init") and hasattr(rescaled_optimizer, "update")):
    raise TypeError(
        f"{owner}: `rescaled_optimizer` must be an optax.GradientTransformation "
        "or None."
    )
  dtype = _run_dtype(params)
  x0 = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
  gap, disp, ok_ref, ok_scaled = _trajectory_gaps(
      optimizer, rescaled_optimizer, x0, grad_fn, scales, int(steps)
  )
  ok_ref, ok_scaled = np.asarray(ok_ref), np.asarray(ok_scaled)
  finite = bool(np.all(ok_ref))
  # Normalise by the finite part of the reference run.
  disp = np.where(ok_ref, np.asarray(disp, np.float64), 0.0)
  gap = np.asarray(gap, np.float64)
  ref = float(np.max(disp))
  with np.errstate(divide="ignore", invalid="ignore"):
    if ref > 0:
      per_step = gap / ref
    else:  # the reference run never moved: any gap is an infinite change
      per_step = np.where(gap > 0, np.inf, 0.0)
  # A rescaled run that blows up while the reference stays finite is as far
  # from scale-free as it gets: an infinite change.
  per_step = np.where(ok_scaled, per_step, np.inf)
  if finite:
    worst, max_change = int(np.argmax(per_step)), float(np.max(per_step))
  else:  # the reference itself blew up: nothing to conclude
    per_step = np.where(ok_ref, per_step, np.nan)
    worst, max_change = int(np.argmin(ok_ref)), float("nan")
  return ScaleFreeReport(
      max_rel_change=max_change,
      final_rel_change=float(per_step[-1]),
      per_step=per_step,
      reference_displacement=ref,
      worst_step=worst + 1,
      kind=kind,
      steps=int(steps),
      dtype=jnp.dtype(dtype).name,
      rtol=float(default_rtol(dtype) if rtol is None else rtol),
      finite=finite,
  )


def _fail(name: str, report: ScaleFreeReport, detail: str) -> None:
  raise AssertionError(
      f"[proxopt] Assertion {name} failed: {detail} {report}. {_EXACT_NOTE}"
  )


def assert_scale_free(
    optimizer: optax.GradientTransformation,
    params: Any,
    grad_fn: Callable[[Any], Any],
    *,
    steps: int,
    scales: Any,
    rtol: float | None = None,
    rescaled_optimizer: optax.GradientTransformation | None = None,
) -> ScaleFreeReport:
  r"""Asserts that rescaling gradients by ``scales`` leaves the iterates alone.

  The pass/fail form of :func:`scale_free_report`, for test suites:

  .. math::  \max_t \|y_t - x_t\|_2 / \max_t \|x_t - x_0\|_2 \le \mathrm{rtol}.

  Args:
    optimizer: any ``optax.GradientTransformation``.
    params: the starting point (a pytree of float arrays).
    grad_fn: ``params -> grads``, traceable by ``jax.jit``.
    steps: number of optimizer steps (an int >= 1).
    scales: a finite positive scalar (loss multiplier) or a pytree like
      ``params`` of finite positive factors (per-coordinate rescaling).
    rtol: tolerance on the maximum relative change (default
      :func:`default_rtol`).
    rescaled_optimizer: the optimizer of the rescaled run (default: the same
      ``optimizer``).

  Returns:
    The :class:`ScaleFreeReport`, when the assertion holds.

  Raises:
    AssertionError: when the maximum relative change exceeds ``rtol`` (default
      1e-9 in float64, 1e-4 in float32) or the reference run is non-finite.

  Example:
    >>> import jax, jax.numpy as jnp, proxopt
    >>> from proxopt import testing
    >>> grad_fn = jax.grad(lambda p: jnp.sum(jnp.cosh(p - 1.0)))
    >>> _ = testing.assert_scale_free(proxopt.adamw(0.1, weight_decay=0.5, eps=0.0),
    ...     jnp.zeros(3), grad_fn, steps=10, scales=jnp.array([1e-3, 1.0, 1e3]))

  References:
    Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through Proximal
    Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089).
  """
  report = scale_free_report(
      optimizer, params, grad_fn, steps=steps, scales=scales, rtol=rtol,
      rescaled_optimizer=rescaled_optimizer,
  )
  if not report.finite:
    _fail("assert_scale_free", report, "the reference run produced NaN/inf.")
  if not report.max_rel_change <= report.rtol:
    _fail(
        "assert_scale_free", report,
        f"the trajectory changed under {report.kind} rescaling by "
        f"{report.max_rel_change:.3e} > rtol={report.rtol:.0e}.",
    )
  return report


def assert_not_scale_free(
    optimizer: optax.GradientTransformation,
    params: Any,
    grad_fn: Callable[[Any], Any],
    *,
    steps: int,
    scales: Any,
    rtol: float | None = None,
    rescaled_optimizer: optax.GradientTransformation | None = None,
) -> ScaleFreeReport:
  """Asserts that rescaling gradients changes the iterates by more than ``rtol``.

  The negation of :func:`assert_scale_free` (a rescaled run that diverges
  counts as a change). Note that ``eps > 0`` makes an optimizer fail to be
  exactly scale-free, so e.g. ``optax.adam`` (eps=1e-8) passes this check in
  float64.

  Args:
    optimizer: any ``optax.GradientTransformation``.
    params: the starting point (a pytree of float arrays).
    grad_fn: ``params -> grads``, traceable by ``jax.jit``.
    steps: number of optimizer steps (an int >= 1).
    scales: a finite positive scalar (loss multiplier) or a pytree like
      ``params`` of finite positive factors (per-coordinate rescaling).
    rtol: the change must exceed this (default :func:`default_rtol`).
    rescaled_optimizer: the optimizer of the rescaled run (default: the same
      ``optimizer``).

  Returns:
    The :class:`ScaleFreeReport`, when the assertion holds.

  Raises:
    AssertionError: when the change is ``<= rtol`` or the reference run is
      non-finite (then nothing can be concluded).

  Example:
    >>> import jax, jax.numpy as jnp, proxopt
    >>> from proxopt import testing
    >>> grad_fn = jax.grad(lambda p: jnp.sum(jnp.cosh(p - 1.0)))
    >>> _ = testing.assert_not_scale_free(proxopt.adam_l2(0.1, weight_decay=0.5, eps=0.0),
    ...     jnp.zeros(3), grad_fn, steps=10, scales=jnp.array([1e-3, 1.0, 1e3]))

  References:
    Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through Proximal
    Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089).
  """
  report = scale_free_report(
      optimizer, params, grad_fn, steps=steps, scales=scales, rtol=rtol,
      rescaled_optimizer=rescaled_optimizer,
  )
  if not report.finite:
    _fail("assert_not_scale_free", report, "the reference run produced NaN/inf.")
  if report.max_rel_change <= report.rtol:
    _fail(
        "assert_not_scale_free", report,
        f"the trajectory did not change under {report.kind} rescaling "
        f"(change {report.max_rel_change:.3e} <= rtol={report.rtol:.0e}).",
    )
  return report
