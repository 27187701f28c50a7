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
with ``eps = 0``.

How the verdict is reached depends on the precision of the runs (float64
when ``jax_enable_x64`` is on, else float32; float16/bfloat16 params are
upcast to float32):

- float32 (the default ``exact=None`` picks this *exact* mode): every factor
  is rounded to the nearest power of two (:func:`power_of_two`). Multiplying
  by ``2^k`` is exact in binary floating point and commutes with every
  operation of a scale-free update (``c g``, ``c^2 v``,
  ``sqrt(c^2 v) = c sqrt(v)``, the ratio, the bias corrections, sums and
  products), and both runs execute the *same* compiled program, so a
  scale-free optimizer gives bit-identical iterates: the tolerance is 0 and
  any difference is evidence. A tolerance on float32 rounding noise could
  not tell Adam-L2 with a small ``weight_decay`` (a change of 1e-5 or less)
  from rounding.
- float64 (``exact=None`` under x64): the factors are used as given and the
  default tolerance is 1e-9, far above float64 rounding along a trajectory.

Reaching this exactness needs factors away from the over/underflow range
(``|c g|`` and ``(c g)^2`` normal floats) and a deterministic ``grad_fn``.
Reference: Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through
Proximal Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxopt import _checks

__all__ = [
    "ScaleFreeReport",
    "assert_not_scale_free",
    "assert_scale_free",
    "default_rtol",
    "power_of_two",
    "scale_free_report",
]

# Changes above this are "not scale-free" in the report's wording; between
# rtol and this they are "small but non-zero" (e.g. Adam with eps = 1e-8).
SMALL_CHANGE = 1e-2

_EXACT_NOTE = (
    "Exact invariance needs eps=0 (and eps_root=0) in adaptive optimizers and "
    "non-zero gradients along the trajectory."
)


def default_rtol(dtype: Any, exact: bool | None = None) -> float:
  """Default tolerance on the relative change of :func:`scale_free_report`.

  ``0.0`` in exact mode (the default below float64: power-of-two factors make
  a scale-free optimizer's two runs bit-identical, so any change is
  evidence), ``1e-9`` in float64 (far above float64 rounding along a
  trajectory), ``1e-4`` for float32 runs with ``exact=False`` (a tolerance
  that float32 rounding stays under, but that also passes weakly
  non-scale-free optimizers such as Adam-L2 with ``weight_decay=1e-3``).

  Args:
    dtype: the dtype the runs use (``jnp.float64`` when ``jax_enable_x64`` is
      on, else float32).
    exact: the mode of :func:`scale_free_report`; ``None`` picks exact mode
      for every dtype but float64.

  Returns:
    The tolerance on the maximum relative change, a float.

  Example:
    >>> import jax.numpy as jnp
    >>> from proxopt import testing
    >>> testing.default_rtol(jnp.float64), testing.default_rtol(jnp.float32)
    (1e-09, 0.0)
    >>> testing.default_rtol(jnp.float32, exact=False)
    0.0001

  References:
    Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through Proximal
    Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089).
  """
  if _is_exact(dtype, exact):
    return 0.0
  return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def _is_exact(dtype: Any, exact: bool | None) -> bool:
  return jnp.dtype(dtype) != jnp.float64 if exact is None else bool(exact)


def power_of_two(scales: Any) -> Any:
  r"""Rounds positive factors to the nearest power of two, :math:`2^{\mathrm{round}(\log_2 c)}`.

  The factors :func:`scale_free_report` uses in exact mode (the default in
  float32). Use it to build a ``rescaled_optimizer`` that compensates a
  loss multiplier with the factor that is actually applied.

  Args:
    scales: a positive number or a pytree of positive numbers/arrays.

  Returns:
    The same structure: a float for a scalar, float64 NumPy arrays otherwise.

  Example:
    >>> from proxopt import testing
    >>> testing.power_of_two(10.0), testing.power_of_two(1e-3)
    (8.0, 0.0009765625)

  References:
    IEEE 754: multiplying by a power of two is exact (barring over- and
    underflow), which makes exact mode bit-exact.
  """
  def leaf(path, c):
    _checks.check_positive_finite(
        "scales", c, "proxopt.testing.power_of_two",
        where=jax.tree_util.keystr(path),
        fix="Factors are positive numbers, e.g. 10.0 or 1e-3.",
    )
    out = np.exp2(np.round(np.log2(np.asarray(c, np.float64))))
    return float(out) if _is_scalar(c) else out

  return jax.tree_util.tree_map_with_path(leaf, scales)


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
    exact: whether the factors were rounded to powers of two and the
      verdict rests on bit-identical iterates (see :func:`scale_free_report`).
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

  exact: bool = False

  @property
  def verdict(self) -> str:
    """One of ``"scale-free"``, ``"not scale-free (small change)"``,
    ``"not scale-free"``, ``"non-finite"``.

    Any change above ``rtol`` is "not scale-free"; "(small change)" marks
    changes up to ``1e-2``, as from ``eps > 0`` or a weak L2 penalty.
    """
    if not self.finite:
      return "non-finite"
    if self.max_rel_change <= self.rtol:
      return "scale-free"
    if self.max_rel_change <= SMALL_CHANGE:
      return "not scale-free (small change)"
    return "not scale-free"

  def __str__(self) -> str:
    mode = ", exact: power-of-two factors" if self.exact else ""
    head = (
        f"ScaleFreeReport({self.kind} rescaling, {self.steps} steps, "
        f"{self.dtype}{mode}): max relative change {self.max_rel_change:.3e} "
        f"(step {self.worst_step}), final {self.final_rel_change:.3e}"
    )
    v = self.verdict
    level = "bit-identical runs" if self.exact and self.rtol == 0 else "rounding level"
    if v == "non-finite":
      why = (
          "the reference run produced NaN/inf (with eps=0 a zero gradient "
          "gives 0/0; check grad_fn and the step size)"
      )
    elif v == "scale-free":
      why = f"scale-free: change <= rtol={self.rtol:.0e} ({level})"
    elif v == "not scale-free (small change)":
      why = (
          f"not scale-free, small change (> rtol={self.rtol:.0e}, <= "
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


_SCALES_FIX = (
    "Scale-freeness is about finite positive factors 0 < c_i < inf (an "
    "infinite factor makes the rescaled gradient inf, which would be blamed "
    "on the optimizer); use e.g. 1e-3 or 1e6."
)


def _input_kind(optimizer, params, grad_fn, steps, scales, rtol, owner) -> str:
  """Checks the arguments of the report/assertions; returns the kind of scales."""
  _checks.check_transformation("optimizer", optimizer, owner)
  _checks.check_callable(
      "grad_fn", grad_fn, owner, "a function params -> gradients",
      "E.g. `jax.grad(loss)`.",
  )
  # ValueError for a non-int too, as since the first release.
  _checks.check_int("steps", steps, owner, minimum=1, wrong_type=ValueError)
  _checks.check_float_leaves("params", params, owner)
  if rtol is not None:
    _checks.check_number_in(
        "rtol", rtol, owner, 0.0, np.inf, scalar=True, wrong_type=ValueError,
        fix="Or None for the default, 1e-9 in float64 and 1e-4 in float32.",
    )
  if _is_scalar(scales):
    _checks.check_positive_finite(
        "scales", scales, owner, fix="A scalar is a loss multiplier."
    )
    return "loss multiplier"
  p_struct = jax.tree.structure(params)
  s_struct = jax.tree.structure(scales)
  _checks.check_that(
      p_struct == s_struct, owner,
      "`scales` must be a positive scalar or a pytree like `params`",
      f"scales {s_struct} for params {p_struct}",
      "Build it with e.g. `jax.tree.map(lambda x: jnp.full_like(x, 10.0), params)`.",
  )
  for (path, s), p in zip(
      jax.tree_util.tree_flatten_with_path(scales)[0], jax.tree.leaves(params)
  ):
    where = jax.tree_util.keystr(path)
    # One-directional: the scales leaf must broadcast *to* the parameter
    # (a (3, 6) leaf for a (6,) parameter would change the gradient's shape).
    _checks.check_broadcasts_to(
        "scales", s, p, owner, where=where,
        fix="Use a scalar or an array of the parameter's shape (or one that "
        "broadcasts to it, e.g. shape (1,) or a trailing sub-shape).",
    )
    _checks.check_positive_finite("scales", s, owner, where=where, fix=_SCALES_FIX)
  return "per-coordinate"


def _run_dtype(params):
  # float64 whenever JAX allows it; otherwise at least float32 (a float16
  # second moment overflows at |c g| > 256, which would be blamed on the
  # optimizer).
  if jax.config.jax_enable_x64:
    return jnp.float64
  return jnp.promote_types(jnp.result_type(*jax.tree.leaves(params)), jnp.float32)


# Iterates kept on the host at a time (both runs), in elements.
_CHUNK_ELEMENTS = 1 << 22


def _factor_tree(scales, params, dtype):
  """The factors as a pytree like ``params`` of arrays of ``dtype``."""
  if _is_scalar(scales):
    return jax.tree.map(lambda _: np.asarray(scales, dtype), params)
  return jax.tree.map(lambda c: np.asarray(c, dtype), scales)


def _trajectory_gaps(opt_ref, opt_scaled, params, grad_fn, scales, steps):
  """Runs both trajectories; per-step ``||y_t - x_t||``, ``||x_t - x_0||``.

  Both runs call the *same* jitted function, the reference with factors 1,
  so that (when ``opt_scaled is opt_ref``) they execute one compiled
  program: with power-of-two factors a scale-free optimizer then gives
  bit-identical iterates. (Tracing the two runs into one program, as a joint
  ``lax.scan``, would let XLA fuse and order each copy's reductions
  differently.) The iterates are compared on the host in float64, a chunk
  of steps at a time.
  """
  dtype = jax.tree.leaves(params)[0].dtype
  c_scaled = _factor_tree(scales, params, dtype)
  c_ref = jax.tree.map(np.ones_like, c_scaled)

  def make_run(opt):
    @functools.partial(jax.jit, static_argnums=3)
    def run(x, state, c, n):
      def step(carry, _):
        x, state = carry
        g = jax.tree.map(lambda gi, ci: gi * ci.astype(gi.dtype), grad_fn(x), c)
        u, state = opt.update(g, state, x)
        x = optax.apply_updates(x, u)
        return (x, state), x

      (x, state), xs = jax.lax.scan(step, (x, state), None, length=n)
      return x, state, xs

    return run

  run_ref = make_run(opt_ref)
  run_scaled = run_ref if opt_scaled is opt_ref else make_run(opt_scaled)
  size = sum(int(np.size(l)) for l in jax.tree.leaves(params))
  chunk = int(max(1, min(steps, _CHUNK_ELEMENTS // max(size, 1))))
  x0 = [np.asarray(l, np.float64) for l in jax.tree.leaves(params)]
  x, sx = params, opt_ref.init(params)
  y, sy = params, opt_scaled.init(params)
  gaps, disps, ok_x, ok_y = [], [], [], []
  done = 0
  while done < steps:
    n = min(chunk, steps - done)
    x, sx, xs = run_ref(x, sx, c_ref, n)
    y, sy, ys = run_scaled(y, sy, c_scaled, n)
    gap2, disp2 = np.zeros(n), np.zeros(n)
    fx, fy = np.ones(n, bool), np.ones(n, bool)
    for a, b, a0 in zip(jax.tree.leaves(xs), jax.tree.leaves(ys), x0):
      a = np.asarray(a, np.float64).reshape(n, -1)
      b = np.asarray(b, np.float64).reshape(n, -1)
      with np.errstate(invalid="ignore", over="ignore"):
        gap2 += np.sum(np.square(b - a), axis=1)
        disp2 += np.sum(np.square(a - a0.reshape(1, -1)), axis=1)
      fx &= np.all(np.isfinite(a), axis=1)
      fy &= np.all(np.isfinite(b), axis=1)
    gaps.append(np.sqrt(gap2))
    disps.append(np.sqrt(disp2))
    ok_x.append(fx)
    ok_y.append(fy)
    done += n
  return (np.concatenate(gaps), np.concatenate(disps), np.concatenate(ok_x),
          np.concatenate(ok_y))


def scale_free_report(
    optimizer: optax.GradientTransformation,
    params: Any,
    grad_fn: Callable[[Any], Any],
    *,
    steps: int,
    scales: Any,
    rtol: float | None = None,
    rescaled_optimizer: optax.GradientTransformation | None = None,
    exact: bool | None = None,
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
      default :func:`default_rtol` (0 in exact mode).
    rescaled_optimizer: the optimizer of the rescaled run (default: the same
      ``optimizer``). Pass e.g. ``proxopt.adam_l2(lr, weight_decay=c * wd)`` to check that a
      hyper-parameter change compensates a loss multiplier ``c``; in exact
      mode build it with the factor applied, ``c = testing.power_of_two(c)``.
    exact: ``True`` rounds the factors to powers of two
      (:func:`power_of_two`) and, with the default ``rtol=0``, calls only
      bit-identical runs scale-free; ``False`` uses the factors as given with
      a tolerance on rounding noise. ``None`` (default): exact unless the runs
      are in float64 (``jax_enable_x64``).

  Returns:
    A :class:`ScaleFreeReport`; ``print`` it for a readable verdict.

  Raises:
    ValueError: (before anything runs) if ``scales`` is not finite and
      positive, a ``scales`` leaf does not broadcast to its parameter's shape,
      every factor rounds to 1 in exact mode, or ``rtol`` is negative, NaN or
      infinite; ``steps`` < 1.
    TypeError: if ``optimizer``/``rescaled_optimizer`` is not a
      ``GradientTransformation``, ``grad_fn`` is not callable, or a ``params``
      leaf is not floating point.

  The rule (see the module docstring): in float32 (exact mode) the factors
  are rounded to powers of two, both runs execute one compiled program, and
  the verdict is "scale-free" only for bit-identical iterates; in float64
  the factors are used as given with ``rtol=1e-9``. Both runs are jitted
  ``lax.scan`` loops; see the module docstring for eps and zero gradients.

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
  kind = _input_kind(optimizer, params, grad_fn, steps, scales, rtol, owner)
  _checks.check_transformation(
      "rescaled_optimizer", rescaled_optimizer, owner, allow_none=True
  )
  if rescaled_optimizer is None:
    rescaled_optimizer = optimizer
  _checks.check_bool(
      "exact", exact, owner, "None picks exact mode below float64.",
      allow_none=True,
  )
  dtype = _run_dtype(params)
  exact = _is_exact(dtype, exact)
  if exact:
    # Powers of two commute exactly with every operation of a scale-free
    # update, so the two runs must agree bit for bit (module docstring).
    scales = power_of_two(scales)
    _checks.check_that(
        not all(np.all(c == 1.0) for c in jax.tree.leaves(scales)), owner,
        "every factor of `scales` rounds to 1 (exact mode rounds them to the "
        "nearest power of two), so nothing would be rescaled",
        "factors that round to 1",
        "Use factors far from 1, e.g. 1e-3 and 1e3, or exact=False.",
    )
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
      rtol=float(default_rtol(dtype, exact) if rtol is None else rtol),
      finite=finite,
      exact=exact,
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
    exact: bool | None = None,
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
    exact: as in :func:`scale_free_report` (default: exact, power-of-two
      factors and bit-identical runs, unless the runs are in float64).

  Returns:
    The :class:`ScaleFreeReport`, when the assertion holds.

  Raises:
    AssertionError: when the maximum relative change exceeds ``rtol`` (default
      1e-9 in float64, 0 in float32's exact mode) or the reference run is
      non-finite.

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
      rescaled_optimizer=rescaled_optimizer, exact=exact,
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
    exact: bool | None = None,
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
    exact: as in :func:`scale_free_report` (default: exact, power-of-two
      factors and bit-identical runs, unless the runs are in float64).

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
      rescaled_optimizer=rescaled_optimizer, exact=exact,
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
