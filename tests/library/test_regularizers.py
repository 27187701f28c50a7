"""Regularizers: each prox against a numerically solved argmin, values vs NumPy.

The references solve argmin_y s*R(y) + 0.5*||y - z||^2 with scipy (bounded
Brent per coordinate for the separable ones, Powell per group for group
lasso), so they share no formula with proxopt.
"""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import proxopt

scipy_optimize = pytest.importorskip("scipy.optimize")

SETTINGS = settings(max_examples=20, deadline=None)


# NumPy definitions of R, per coordinate / per group (float64).
def r_l2(lam):
  return lambda y: 0.5 * lam * np.sum(y * y)


def r_l1(lam):
  return lambda y: lam * np.sum(np.abs(y))


def r_enet(l1, l2):
  return lambda y: l1 * np.sum(np.abs(y)) + 0.5 * l2 * np.sum(y * y)


def r_group(lam):
  return lambda y: lam * np.sqrt(np.sum(y * y))


def solve_scalar(r, z, s, lo=None, hi=None):
  """argmin over one coordinate of s*r(y) + 0.5*(y - z)^2 by bounded Brent."""
  a = -abs(z) - 1.0 if lo is None else lo
  b = abs(z) + 1.0 if hi is None else hi
  if a == b:
    return a
  res = scipy_optimize.minimize_scalar(
      lambda y: s * r(np.array([y])) + 0.5 * (y - z) ** 2,
      bounds=(a, b), method="bounded", options={"xatol": 1e-12, "maxiter": 2000},
  )
  return res.x


def objective(r, y, z, s):
  return s * r(y) + 0.5 * np.sum((y - z) ** 2)


def check_separable(reg, r, z, s, lo=None, hi=None):
  """prox(z) vs the per-coordinate numerical argmin (float64)."""
  with jax.enable_x64(True):
    y = np.asarray(reg.prox(jnp.asarray(z, jnp.float64), jnp.asarray(s, jnp.float64)))
  assert y.dtype == np.float64 and y.shape == z.shape
  ref = np.vectorize(lambda zi: solve_scalar(r, zi, s, lo, hi))(z)
  np.testing.assert_allclose(y, ref, atol=1e-7)
  # The closed form is at least as good as the solver (up to rounding).
  for yi, ri, zi in zip(y.ravel(), ref.ravel(), z.ravel()):
    f_prox = objective(r, np.array([yi]), zi, s) if lo is None else 0.5 * (yi - zi) ** 2
    f_ref = objective(r, np.array([ri]), zi, s) if lo is None else 0.5 * (ri - zi) ** 2
    assert f_prox <= f_ref + 1e-12


arrays = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
    elements=st.floats(-5, 5, allow_nan=False, allow_subnormal=False),
)
steps = st.floats(1e-3, 3.0)
lams = st.floats(0.0, 2.0)


@SETTINGS
@given(z=arrays, s=steps, lam=lams)
def test_l2_squared_prox_is_argmin(z, s, lam):
  check_separable(proxopt.l2_squared(lam), r_l2(lam), z, s)


@SETTINGS
@given(z=arrays, s=steps, lam=lams)
def test_l1_prox_is_argmin(z, s, lam):
  check_separable(proxopt.l1(lam), r_l1(lam), z, s)


@SETTINGS
@given(z=arrays, s=steps, l1=lams, l2=lams)
def test_elastic_net_prox_is_argmin(z, s, l1, l2):
  check_separable(proxopt.elastic_net(l1, l2), r_enet(l1, l2), z, s)


@SETTINGS
@given(z=arrays, s=steps, lo=st.floats(-3, 3), width=st.floats(0, 3))
def test_box_prox_is_argmin(z, s, lo, width):
  hi = lo + width
  check_separable(proxopt.box(lo, hi), lambda y: 0.0, z, s, lo, hi)


@SETTINGS
@given(z=arrays, s=steps)
def test_nonnegative_prox_is_argmin(z, s):
  check_separable(proxopt.nonnegative(), lambda y: 0.0, z, s, 0.0, max(np.max(z), 0.0) + 1.0)


def groups_of(z, axis):
  """(n_groups, group_size) view of z for reduction axes `axis`."""
  axes = tuple(range(z.ndim)) if axis is None else (
      (axis,) if isinstance(axis, int) else tuple(axis))
  axes = tuple(a % z.ndim for a in axes)
  keep = tuple(a for a in range(z.ndim) if a not in axes)
  moved = np.transpose(z, keep + axes)
  size = int(np.prod([z.shape[a] for a in axes]))
  return moved.reshape(-1, size)


@SETTINGS
@given(
    z=hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2)),
                 elements=st.floats(-3, 3, allow_nan=False, allow_subnormal=False)),
    axis=st.sampled_from([None, 0, 1, -1, (0, 2)]),
    s=steps, lam=st.floats(0.0, 1.5),
)
def test_group_lasso_prox_is_argmin(z, axis, s, lam):
  reg = proxopt.group_lasso(lam, axis=axis)
  with jax.enable_x64(True):
    y = np.asarray(reg.prox(jnp.asarray(z), jnp.asarray(s)))
  r = r_group(lam)
  for zg, yg in zip(groups_of(z, axis), groups_of(y, axis)):
    best = None
    for x0 in (zg, np.zeros_like(zg), 0.5 * zg):  # a few starts: R is non-smooth at 0
      res = scipy_optimize.minimize(
          lambda v: objective(r, v, zg, s), x0, method="Powell",
          options={"xtol": 1e-10, "ftol": 1e-14, "maxiter": 20000},
      )
      if best is None or res.fun < best.fun:
        best = res
    np.testing.assert_allclose(yg, best.x, atol=1e-5)
    assert objective(r, yg, zg, s) <= best.fun + 1e-12


# ------------------------------------------------------ exact zeros / groups
def test_l1_gives_exact_zeros():
  z = jnp.array([0.3, -0.3, 0.29, 0.31, -2.0, 0.0], jnp.float32)
  y = np.asarray(proxopt.l1(1.0).prox(z, jnp.float32(0.3)))
  assert np.all(y[[0, 1, 2, 5]] == 0.0)
  assert np.all(y[[3, 4]] != 0.0)
  np.testing.assert_allclose(y[[3, 4]], [0.01, -1.7], rtol=1e-5)


def test_group_lasso_zeroes_whole_groups():
  rng = np.random.default_rng(0)
  # columns with norms well below / above s*lam = 1.
  z = rng.normal(size=(5, 6))
  z[:, :3] *= 0.2 / np.linalg.norm(z[:, :3], axis=0)
  z[:, 3:] *= 3.0 / np.linalg.norm(z[:, 3:], axis=0)
  y = np.asarray(proxopt.group_lasso(0.5, axis=0).prox(jnp.asarray(z, jnp.float32), jnp.float32(2.0)))
  assert np.all(y[:, :3] == 0.0)
  assert np.all(y[:, 3:] != 0.0)
  np.testing.assert_allclose(np.linalg.norm(y[:, 3:], axis=0), 2.0, rtol=1e-5)
  # rows instead of columns: different groups, different zeros
  z2 = z.T
  y2 = np.asarray(proxopt.group_lasso(0.5, axis=1).prox(jnp.asarray(z2, jnp.float32), jnp.float32(2.0)))
  np.testing.assert_array_equal(y2, y.T)


@pytest.mark.parametrize("dtype,tol", [(jnp.float16, 4e-3), (jnp.bfloat16, 3e-2)], ids=["f16", "bf16"])
def test_half_precision_reductions_accumulate_wide(dtype, tol):
  # 120000 squares of N(0,1) sum past float16's max (65504): a float16 norm
  # would be inf and the group would not shrink at all.
  z = np.random.default_rng(0).normal(size=(400, 300))
  n = np.linalg.norm(z)
  with jax.numpy_dtype_promotion("strict"):
    y = proxopt.group_lasso(50.0).prox(jnp.asarray(z, dtype), jnp.asarray(1.0, dtype))
    v = proxopt.group_lasso(50.0).value(jnp.asarray(z, dtype))
    v2 = proxopt.l2_squared(1e-3).value(jnp.asarray(z, dtype))
  # The value is returned in float32 (#23: a float16 value overflows).
  assert y.dtype == dtype and v.dtype == jnp.float32 and v2.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y, np.float64), z * (1 - 50 / n), atol=tol * np.max(np.abs(z)))
  np.testing.assert_allclose(float(v), 50 * n, rtol=tol)
  np.testing.assert_allclose(float(v2), 0.5e-3 * n * n, rtol=tol)


def test_group_lasso_axis_out_of_range():
  with pytest.raises(ValueError, match=r"`axis=2` is out of range.*shape \(3,\).*axis=None"):
    proxopt.group_lasso(0.1, axis=2).prox(jnp.ones(3), jnp.float32(1.0))


# ------------------------------------------------------------------ values
def test_regularizer_value_matches_numpy():
  rng = np.random.default_rng(1)
  params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3), "s": {"k": rng.normal(size=(2, 2, 2))}}
  jparams = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  leaves = [params["b"], params["s"]["k"], params["w"]]
  allx = np.concatenate([a.ravel() for a in leaves])
  cases = [
      (proxopt.l2_squared(0.3), 0.5 * 0.3 * np.sum(allx**2)),
      (proxopt.l1(0.3), 0.3 * np.sum(np.abs(allx))),
      (proxopt.elastic_net(0.2, 0.7), 0.2 * np.sum(np.abs(allx)) + 0.35 * np.sum(allx**2)),
      (proxopt.group_lasso(0.4, axis=None), 0.4 * sum(np.linalg.norm(a) for a in leaves)),
      (proxopt.group_lasso(0.4, axis=0),
       0.4 * sum(np.sum(np.sqrt(np.sum(a**2, axis=0))) for a in leaves)),
      (proxopt.box(-10.0, 10.0), 0.0),
      (proxopt.box(-1.0, 1.0), np.inf),
  ]
  for reg, ref in cases:
    got = float(proxopt.regularizer_value(reg, jparams))
    if np.isinf(ref):
      assert np.isinf(got), reg.name
    else:
      np.testing.assert_allclose(got, ref, rtol=1e-5, err_msg=reg.name)
  # nonnegative: 0 on |x|, inf with a negative entry
  assert float(proxopt.regularizer_value(proxopt.nonnegative(), jax.tree.map(jnp.abs, jparams))) == 0.0
  assert np.isinf(float(proxopt.regularizer_value(proxopt.nonnegative(), jparams)))
  # masked-out leaves contribute nothing (pytree mask and callable mask)
  mask = {"w": True, "b": False, "s": {"k": False}}
  ref = 0.3 * np.sum(np.abs(params["w"]))
  for m in (mask, lambda p: jax.tree.map(lambda x: x.ndim == 2, p)):
    got = float(proxopt.regularizer_value(proxopt.l1(0.3), jparams, mask=m))
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_regularizer_value_mixed_dtypes_under_strict():
  params = {"a": jnp.array([1.0, -2.0], jnp.float32), "b": jnp.array([-4.0], jnp.bfloat16)}
  with jax.numpy_dtype_promotion("strict"):
    v = proxopt.regularizer_value(proxopt.l1(0.5), params)
  assert v.dtype == jnp.float32 and float(v) == 3.5
  assert float(proxopt.regularizer_value(proxopt.l1(0.5), {})) == 0.0


def test_tree_prox_with_mask():
  params = {"w": jnp.array([0.5, -2.0]), "b": jnp.array([0.5, -2.0])}
  out = proxopt.apply_prox(proxopt.l1(1.0), params, 1.0, mask={"w": True, "b": False})
  np.testing.assert_array_equal(np.asarray(out["w"]), [0.0, -1.0])
  np.testing.assert_array_equal(np.asarray(out["b"]), [0.5, -2.0])


def test_box_bounds_round_inward():
  # float32(0.1) > 0.1 but float32(0.3) < 0.3: projected values must still
  # satisfy the bounds the user wrote, compared in float64.
  for lo, hi in [(0.1, 0.3), (-0.3, -0.1), (1 / 3, 2 / 3)]:
    for dtype in (jnp.float32, jnp.float16, jnp.bfloat16):
      y = proxopt.box(lo, hi).prox(jnp.array([-5.0, 5.0], dtype), 1.0)
      assert y.dtype == dtype
      y64 = np.asarray(y.astype(jnp.float32), np.float64)
      assert y64[0] >= lo and y64[1] <= hi, (lo, hi, dtype, y64)
      assert y64[0] < y64[1]


# -------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "make,arg",
    [
        (lambda: proxopt.l2_squared(-1.0), "lam"),
        (lambda: proxopt.l1(-1.0), "lam"),
        (lambda: proxopt.group_lasso(-1.0), "lam"),
        (lambda: proxopt.elastic_net(-1.0, 0.1), "l1"),
        (lambda: proxopt.elastic_net(0.1, -1.0), "l2"),
        (lambda: proxopt.l1(float("nan")), "lam"),
    ],
)
def test_negative_lambda_rejected(make, arg):
  with pytest.raises(ValueError, match=rf"`{arg}` must be >= 0"):
    make()


def test_box_lower_above_upper_rejected():
  with pytest.raises(ValueError, match=r"need lower <= upper.*lower=2\.0, upper=1\.0.*Swap them"):
    proxopt.box(2.0, 1.0)
  with pytest.raises(ValueError, match=r"need lower <= upper"):
    proxopt.box(np.array([0.0, 3.0]), np.array([1.0, 2.0]))


def test_prox_negative_step_size_rejected():
  with pytest.raises(ValueError, match=r"`step_size` must be >= 0, got -0\.5"):
    proxopt.apply_prox(proxopt.l1(1.0), {"w": jnp.ones(2)}, -0.5)
