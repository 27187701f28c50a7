"""Regularizer coefficients: arrays, schedules, injection, and decay in low precision.

References are closed-form float64 NumPy; every case here returned a wrong
value or raised before proxopt 0.2 (array coefficients summed to a vector,
schedules were refused, bfloat16 decay cancelled to -0).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxopt

X = {"x": jnp.array([1.0, -2.0, 3.0])}


@pytest.mark.parametrize(
    "reg,expected",
    [
        (proxopt.l1(jnp.array([1.0, 0.0, 0.0])), 1.0),
        (proxopt.l2_squared(jnp.array([1.0, 0.0, 2.0])), 0.5 * 1 + 0.5 * 2 * 9),
        (proxopt.elastic_net(jnp.array([0.0, 1.0, 0.0]), jnp.array([2.0, 0.0, 0.0])), 2.0 + 1.0),
        (proxopt.l1(np.array([0.5, 0.5, 0.5])), 3.0),
    ],
)
def test_array_coefficient_value_is_weighted_sum(reg, expected):
  v = proxopt.regularizer_value(reg, X)
  assert v.shape == () and float(v) == pytest.approx(expected)


def test_group_lasso_per_group_coefficients():
  w = {"k": jnp.array([[3.0, 0.0], [4.0, 1.0]])}  # column norms 5 and 1
  reg = proxopt.group_lasso(jnp.array([[2.0, 10.0]]), axis=0)
  assert float(proxopt.regularizer_value(reg, w)) == pytest.approx(2 * 5 + 10 * 1)
  y = proxopt.apply_prox(reg, w, 0.5)["k"]
  # column 0 shrinks by 1 - 0.5*2/5 = 0.8; column 1 (norm 1 < 5) becomes zero
  np.testing.assert_allclose(np.asarray(y), [[2.4, 0.0], [3.2, 0.0]], rtol=1e-6)


def test_array_coefficient_prox_matches_numpy_per_entry(x64):
  lam = np.array([0.0, 1.0, 4.0])
  z = np.array([1.0, -2.0, 3.0])
  y = proxopt.apply_prox(proxopt.l1(jnp.asarray(lam)), {"x": jnp.asarray(z)}, 0.5)["x"]
  np.testing.assert_allclose(np.asarray(y), np.sign(z) * np.maximum(np.abs(z) - 0.5 * lam, 0))


@pytest.mark.parametrize("make", [proxopt.l1, proxopt.l2_squared,
                                  lambda c: proxopt.elastic_net(c, c)])
def test_coefficient_that_does_not_broadcast_names_the_leaf(make):
  reg = make(jnp.array([1.0, 0.0]))
  params = {"ok": jnp.ones(2), "layer": {"w": jnp.ones(3)}}
  with pytest.raises(ValueError, match=r"does not broadcast to the parameter at path \['layer'\]\['w'\]"):
    proxopt.regularizer_value(reg, params)
  with pytest.raises(ValueError, match=r"\['layer'\]\['w'\]"):
    proxopt.apply_prox(reg, params, 0.1)
  tx = optax.chain(optax.sgd(0.1), proxopt.proximal(reg, 0.1))
  with pytest.raises(ValueError, match=r"proxopt.proximal.*\['layer'\]\['w'\]"):
    tx.init(params)
  # ... unless the mask leaves that leaf out
  tx = optax.chain(optax.sgd(0.1), proxopt.proximal(reg, 0.1, mask={"ok": True, "layer": False}))
  tx.init(params)


def test_a_coefficient_larger_than_the_leaf_is_refused():
  with pytest.raises(ValueError, match=r"coefficient `lam`.*shape \(3, 2\)"):
    proxopt.regularizer_value(proxopt.l1(jnp.ones((3, 2))), {"w": jnp.ones(2)})


@pytest.mark.parametrize("bad", [np.array([1.0, -1.0]), jnp.array([0.0, jnp.nan]), -0.5, float("nan")])
@pytest.mark.parametrize("make", [proxopt.l1, proxopt.l2_squared, proxopt.group_lasso,
                                  lambda c: proxopt.elastic_net(0.1, c)])
def test_negative_or_nan_coefficients_refused_at_construction(make, bad):
  with pytest.raises(ValueError, match=r"must be >= 0"):
    make(bad)


def test_non_numeric_coefficient_refused():
  with pytest.raises(TypeError, match=r"`lam` must be a number.*got '0.1'"):
    proxopt.l1("0.1")


def test_coefficients_are_pytree_leaves():
  assert jax.tree.leaves(proxopt.l1(0.1)) == [0.1]
  assert jax.tree.leaves(proxopt.elastic_net(0.1, 0.2)) == [0.1, 0.2]
  assert jax.tree.leaves(proxopt.box(-1.0, 1.0)) == []  # bounds are static
  # A regularizer is a valid jit argument; changing the coefficient value does
  # not retrace, changing the kind does.
  traces = []

  @jax.jit
  def prox(reg, z):
    traces.append(1)
    return reg.prox(z, 1.0)

  z = jnp.array([0.5, -3.0])
  np.testing.assert_allclose(np.asarray(prox(proxopt.l1(jnp.float32(1.0)), z)), [0.0, -2.0])
  np.testing.assert_allclose(np.asarray(prox(proxopt.l1(jnp.float32(0.25)), z)), [0.25, -2.75])
  assert len(traces) == 1


def test_regularizer_coefficient_schedule_in_proximal(x64):
  lam = optax.linear_schedule(0.0, 1.0, 4)  # 0, .25, .5, .75, 1, 1, ...
  s = 0.1
  tx = optax.chain(optax.sgd(s), proxopt.proximal(proxopt.l1(lam), s))
  x = np.array([1.0, -0.5, 0.02])
  params = {"w": jnp.asarray(x)}
  state = tx.init(params)
  ref = x.copy()
  rng = np.random.default_rng(0)
  for t in range(6):
    g = rng.normal(size=3)
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    z = ref - s * g
    t_lam = s * min(t / 4, 1.0)
    ref = np.sign(z) * np.maximum(np.abs(z) - t_lam, 0)
    np.testing.assert_allclose(np.asarray(params["w"]), ref, rtol=1e-12, atol=1e-15)


def test_a_schedule_coefficient_needs_a_step_for_its_value():
  reg = proxopt.l1(optax.linear_schedule(0.0, 1.0, 4))
  with pytest.raises(TypeError, match=r"coefficient `lam` is a schedule.*regularizer.at\(step\)"):
    proxopt.regularizer_value(reg, X)
  assert float(proxopt.regularizer_value(reg.at(2), X)) == pytest.approx(0.5 * 6)


def test_injected_regularizer_coefficient_changes_without_recompiling():
  def chain(lam, learning_rate):
    return optax.chain(optax.sgd(learning_rate),
                       proxopt.proximal(proxopt.l1(lam), learning_rate))

  tx = optax.inject_hyperparams(chain)(lam=0.0, learning_rate=0.1)
  params = {"w": jnp.array([1.0, -0.05])}
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    updates, state = tx.update({"w": jnp.zeros(2)}, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  p0, state = step(params, state)
  np.testing.assert_array_equal(np.asarray(p0["w"]), np.float32([1.0, -0.05]))
  state.hyperparams["lam"] = jnp.asarray(1.0, jnp.float32)
  p1, state = step(params, state)
  np.testing.assert_allclose(np.asarray(p1["w"]), [0.9, 0.0], rtol=1e-6)
  assert len(traces) == 1


@pytest.mark.parametrize("alias", [proxopt.adamprox, proxopt.sgdprox], ids=lambda f: f.__name__)
def test_prox_aliases_follow_a_weight_decay_schedule(alias, x64):
  lr = optax.cosine_decay_schedule(0.05, 8, alpha=0.2)
  wd = optax.linear_schedule(0.0, 2.0, 5)
  tx = alias(lr, weight_decay=wd)
  base = optax.adam(lr) if alias is proxopt.adamprox else optax.sgd(lr)
  rng = np.random.default_rng(1)
  x = rng.normal(size=4)
  params, ref = {"w": jnp.asarray(x)}, x.copy()
  state, base_state = tx.init(params), base.init({"w": jnp.asarray(x)})
  for t in range(8):
    g = {"w": jnp.asarray(rng.normal(size=4))}
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    # Reference: the base step at the reference point, then x / (1 + s_t wd_t).
    u, base_state = base.update(g, base_state, {"w": jnp.asarray(ref)})
    count = jnp.asarray(t, jnp.int32)  # as the optimizer evaluates them
    ref = (ref + np.asarray(u["w"])) / (1 + float(lr(count)) * float(wd(count)))
    np.testing.assert_allclose(np.asarray(params["w"]), ref, rtol=1e-12)


def test_paper_convention_weight_decay_schedule_is_divided_by_alpha(x64):
  lam = optax.linear_schedule(0.0, 1e-3, 5)
  a = proxopt.adamprox(0.01, weight_decay=lam, convention="paper")
  b = proxopt.adamprox(0.01, weight_decay=lambda t: lam(t) / 0.01)
  params = {"w": jnp.array([1.0, -2.0])}
  sa, sb = a.init(params), b.init(params)
  for _ in range(6):
    g = {"w": jnp.array([0.3, 0.1])}
    ua, sa = a.update(g, sa, params)
    ub, sb = b.update(g, sb, params)
    np.testing.assert_allclose(np.asarray(ua["w"]), np.asarray(ub["w"]), rtol=1e-14)


# ------------------------------------------------ decay in low precision


def _closed_form_update(kind, x, u, s, lam):
  """prox_{sR}(x + u) - x in float64."""
  z = x + u
  if kind == "l2_squared":
    y = z / (1 + s * lam)
  elif kind == "l1":
    y = np.sign(z) * np.maximum(np.abs(z) - s * lam, 0)
  elif kind == "elastic_net":
    y = np.sign(z) * np.maximum(np.abs(z) - s * lam, 0) / (1 + s * lam)
  else:  # group_lasso, whole leaf
    n = np.linalg.norm(z)
    y = z * max(0.0, 1 - s * lam / n)
  return y - x


REGS = {
    "l2_squared": proxopt.l2_squared,
    "l1": proxopt.l1,
    "elastic_net": lambda lam: proxopt.elastic_net(lam, lam),
    "group_lasso": proxopt.group_lasso,
}


@pytest.mark.parametrize("dtype,rtol", [(jnp.bfloat16, 2**-7), (jnp.float16, 2**-10), (jnp.float32, 2**-22)])
@pytest.mark.parametrize("kind", sorted(REGS))
def test_prox_update_in_low_precision_matches_float64(kind, dtype, rtol):
  rng = np.random.default_rng(2)
  x = rng.uniform(0.5, 4.0, size=64) * rng.choice([-1, 1], size=64)
  u = rng.normal(size=64) * 1e-4  # small steps: where x + u - x cancels
  x_lo = np.asarray(jnp.asarray(x, dtype)).astype(np.float64)
  u_lo = np.asarray(jnp.asarray(u, dtype)).astype(np.float64)
  s, lam = 1e-3, 0.1
  ref = _closed_form_update(kind, x_lo, u_lo, s, lam)
  got = REGS[kind](lam).prox_update(jnp.asarray(x_lo, dtype), jnp.asarray(u_lo, dtype), s)
  assert got.dtype == dtype
  # Relative to the inputs' size: l1's u - s*lam cancels by itself when
  # |u| ~ s*lam, whatever the precision.
  atol = 4 * rtol * np.maximum(np.abs(u_lo), s * lam)
  assert np.all(np.abs(np.asarray(got).astype(np.float64) - ref) <= 4 * rtol * np.abs(ref) + atol)
  assert np.all(np.asarray(got) != 0)  # no cancellation to zero


def test_adamprox_decays_bfloat16_leaves_like_adamw():
  # Zero gradient: AdamProx's update is -s wd x / (1 + s wd), AdamW's -s wd x.
  # (Before 0.2 it was exactly -0: (x + u) / (1 + s wd) - x cancels in bf16.)
  dtype = jnp.bfloat16
  params = {"w": jnp.array([1.0, -3.0, 0.5], dtype)}
  zeros = {"w": jnp.zeros(3, dtype)}
  tx = proxopt.adamprox(1e-3, weight_decay=0.1)
  u, _ = tx.update(zeros, tx.init(params), params)
  x = np.asarray(params["w"]).astype(np.float64)
  ref = -1e-4 * x / (1 + 1e-4)
  assert u["w"].dtype == dtype
  np.testing.assert_allclose(np.asarray(u["w"]).astype(np.float64), ref, rtol=2**-7)
  w, _ = optax.adamw(1e-3, weight_decay=0.1).update(zeros, optax.adamw(1e-3, weight_decay=0.1).init(params), params)
  np.testing.assert_allclose(np.asarray(u["w"]).astype(np.float64),
                             np.asarray(w["w"]).astype(np.float64), rtol=2**-6)


def test_zero_coefficient_returns_the_base_update_bit_for_bit():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=100), jnp.float32)
  u = jnp.asarray(rng.normal(size=100) * 1e-3, jnp.float32)
  for reg in (proxopt.l2_squared(0.0), proxopt.l1(0.0), proxopt.elastic_net(0.0, 0.0),
              proxopt.group_lasso(0.0)):
    np.testing.assert_array_equal(np.asarray(reg.prox_update(x, u, 0.1)), np.asarray(u))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_sgdprox_decays_low_precision_leaves(dtype):
  params = {"w": jnp.array([1.0, -3.0, 0.5], dtype)}
  tx = proxopt.sgdprox(1e-3, momentum=0.9, weight_decay=0.1)
  u, _ = tx.update({"w": jnp.zeros(3, dtype)}, tx.init(params), params)
  x = np.asarray(params["w"]).astype(np.float64)
  np.testing.assert_allclose(np.asarray(u["w"]).astype(np.float64), -1e-4 * x / (1 + 1e-4),
                             rtol=2**-7)
