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


# ---------------------------------------------------------------------------
# Issue #23: per-leaf coefficients (a pytree like params), as jaxopt's prox.

_P = {"b": np.array([0.3, -0.05, -2.0]), "w": np.array([[1.5, -0.02], [0.4, -3.0]])}


def _params():
  return {k: jnp.asarray(v, jnp.float32) for k, v in _P.items()}


def _soft(z, t):
  return np.sign(z) * np.maximum(np.abs(z) - t, 0.0)


_PER_LEAF = [
    ("l1", lambda c: proxopt.l1(c), lambda z, s, c: _soft(z, s * c),
     lambda x, c: c * np.sum(np.abs(x))),
    ("l2_squared", lambda c: proxopt.l2_squared(c), lambda z, s, c: z / (1 + s * c),
     lambda x, c: 0.5 * c * np.sum(x * x)),
    ("elastic_net", lambda c: proxopt.elastic_net(c, 0.5),
     lambda z, s, c: _soft(z, s * c) / (1 + s * 0.5),
     lambda x, c: c * np.sum(np.abs(x)) + 0.25 * np.sum(x * x)),
    ("group_lasso", lambda c: proxopt.group_lasso(c),
     lambda z, s, c: z * max(0.0, 1 - s * c / np.linalg.norm(z)),
     lambda x, c: c * np.linalg.norm(x)),
]


@pytest.mark.parametrize("name, make, prox, value", _PER_LEAF, ids=[c[0] for c in _PER_LEAF])
def test_per_leaf_coefficients_match_numpy(name, make, prox, value):
  del name
  coef, s = {"b": 0.0, "w": 0.7}, 0.5
  reg, params = make(coef), _params()
  # apply_prox and regularizer_value, leaf by leaf against NumPy.
  out = proxopt.apply_prox(reg, params, s)
  for k in _P:
    np.testing.assert_allclose(np.asarray(out[k]), prox(_P[k], s, coef[k]), rtol=1e-6, atol=1e-7)
  expected = sum(value(_P[k], coef[k]) for k in _P)
  np.testing.assert_allclose(float(proxopt.regularizer_value(reg, params)), expected, rtol=1e-6)
  # proximal(...) after SGD: x+ = prox_{sR}(x - s g), per leaf.
  grads = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), params)
  tx = optax.chain(optax.sgd(s), proxopt.proximal(reg, s))
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  new = optax.apply_updates(params, u)
  for k in _P:
    np.testing.assert_allclose(np.asarray(new[k]), prox(_P[k] - s * 0.1, s, coef[k]),
                               rtol=1e-6, atol=1e-6)


def test_per_leaf_box_bounds():
  lower = {"b": -0.1, "w": -np.inf}
  upper = {"b": 0.1, "w": np.array([1.0, 2.0])}
  reg, params = proxopt.box(lower, upper), _params()
  out = proxopt.apply_prox(reg, params, 1.0)
  b = np.asarray(out["b"], np.float64)  # bounds are rounded inward to float32
  np.testing.assert_allclose(b, np.clip(_P["b"], -0.1, 0.1), rtol=1e-7)
  assert np.all((b >= -0.1) & (b <= 0.1))
  np.testing.assert_array_equal(np.asarray(out["w"]), np.minimum(_P["w"], [1.0, 2.0]).astype(np.float32))
  assert float(proxopt.regularizer_value(reg, out)) == 0.0
  assert float(proxopt.regularizer_value(reg, params)) == np.inf
  tx = optax.chain(optax.sgd(1.0), proxopt.proximal(reg, 1.0))
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, u)
  nb = np.asarray(new["b"], np.float64)  # lands inside the box (docs of proximal)
  assert np.all((nb >= -0.1) & (nb <= 0.1))
  np.testing.assert_allclose(nb, np.clip(_P["b"], -0.1, 0.1), atol=1e-6)


def test_per_leaf_decoupled_weight_decay():
  wd, s, params = {"b": 0.0, "w": 0.5}, 0.1, _params()
  tx = proxopt.decoupled_weight_decay(wd, s)
  zeros = jax.tree.map(jnp.zeros_like, params)
  u, _ = tx.update(zeros, tx.init(params), params)
  for k in _P:
    np.testing.assert_allclose(np.asarray(u[k]), -s * wd[k] * _P[k], rtol=1e-6)


def test_per_leaf_coefficients_are_pytree_leaves_and_schedules_work():
  sched = optax.linear_schedule(1.0, 0.0, 4)
  reg = proxopt.l1({"b": 0.0, "w": sched})
  assert len(jax.tree.leaves(reg)) == 2  # the coefficients are the leaves
  doubled = jax.tree.map(lambda c: 2 * c, proxopt.l1({"b": 0.1, "w": 0.2}))
  assert [float(c) for c in jax.tree.leaves(doubled)] == pytest.approx([0.2, 0.4])
  # Traced through jit (as inject_hyperparams' values are).
  out = jax.jit(lambda r, p: proxopt.apply_prox(r, p, 1.0))(proxopt.l1({"b": 0.0, "w": 1.0}), _params())
  np.testing.assert_allclose(np.asarray(out["w"]), _soft(_P["w"], 1.0), atol=1e-7)
  # A schedule leaf is read at each step: lam_w = 1, 0.75, ...
  params = _params()
  tx = optax.chain(optax.sgd(0.1), proxopt.proximal(reg, 0.1))
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  x = dict(_P)
  for t in range(3):
    u, state = tx.update(zeros, state, params)
    params = optax.apply_updates(params, u)
    x = {"b": x["b"], "w": _soft(x["w"], 0.1 * (1.0 - t / 4))}
    np.testing.assert_allclose(np.asarray(params["w"]), x["w"], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(params["b"]), _P["b"].astype(np.float32))


@pytest.mark.parametrize("use", [
    lambda reg, p: proxopt.apply_prox(reg, p, 0.1),
    lambda reg, p: proxopt.regularizer_value(reg, p),
    lambda reg, p: proxopt.proximal(reg, 0.1).init(p),
])
def test_per_leaf_structure_mismatch_names_the_path(use):
  params = _params()
  with pytest.raises(ValueError, match=r"`lam` does not match params.*path \['b'\]"):
    use(proxopt.l1({"w": 0.1}), params)
  with pytest.raises(ValueError, match=r"`lam` does not match params.*path \['v'\]"):
    use(proxopt.l1({"b": 0.1, "w": 0.1, "v": 0.1}), params)
  with pytest.raises(ValueError, match=r"`weight_decay` does not match params.*path \['b'\]"):
    proxopt.decoupled_weight_decay({"w": 0.1}, 0.1).init(params)


def test_per_leaf_coefficient_leaves_validated_with_their_path():
  with pytest.raises(ValueError, match=r"`lam\['w'\]` must be >= 0"):
    proxopt.l1({"b": 0.1, "w": -1.0})
  with pytest.raises(TypeError, match=r"`lam\['w'\]` must be a number"):
    proxopt.l1({"b": 0.1, "w": "0.1"})


def test_zero_coefficient_equals_masked_out_leaf():
  """Documented relation: a 0 coefficient leaves a leaf exactly as a mask does."""
  params = _params()
  grads = jax.tree.map(lambda x: 0.3 * jnp.ones_like(x), params)
  by_zero = optax.chain(optax.adam(0.1), proxopt.proximal(proxopt.l1({"b": 0.0, "w": 0.5}), 0.1))
  by_mask = optax.chain(optax.adam(0.1), proxopt.proximal(proxopt.l1(0.5), 0.1,
                                                          mask={"b": False, "w": True}))
  u0, _ = by_zero.update(grads, by_zero.init(params), params)
  u1, _ = by_mask.update(grads, by_mask.init(params), params)
  for k in _P:
    np.testing.assert_array_equal(np.asarray(u0[k]), np.asarray(u1[k]))
