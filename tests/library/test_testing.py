"""Tests for proxopt.testing: scale-freeness reports and assertions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import proxopt
from proxopt import testing

SETTINGS = settings(max_examples=4, deadline=None, derandomize=True)


def logcosh_problem(dim, seed):
  """f(x) = sum_i h_i log cosh(x_i - b_i) + 0.1 (x_i - b_i)^2: grads != 0 off b."""
  rng = np.random.default_rng(seed)
  h = rng.uniform(0.5, 2.0, dim)
  b = rng.choice([-1.0, 1.0], dim) * rng.uniform(0.5, 2.0, dim)

  def loss(p):
    z = p["w"] - b
    return jnp.sum(h * jnp.log(jnp.cosh(z)) + 0.1 * z**2) + jnp.sum((p["v"] - 1.5) ** 2)

  params = {"w": jnp.zeros(dim), "v": jnp.full((2, 2), -0.5)}
  return params, jax.grad(loss)


@st.composite
def cases(draw):
  dim = draw(st.integers(1, 6))
  seed = draw(st.integers(0, 2**16))
  per_coord = draw(st.booleans())
  # Log-uniform factors in [1e-3, 1e3]; keep one away from 1 so that a
  # non-scale-free optimizer has something to react to.
  exps = st.floats(-3.0, 3.0)
  if per_coord:
    ew = np.array(draw(st.lists(exps, min_size=dim, max_size=dim)))
    ev = np.array(draw(st.lists(exps, min_size=4, max_size=4))).reshape(2, 2)
    ew[0] = draw(st.sampled_from([-3.0, -1.0, 1.0, 3.0]))
    scales = {"w": 10.0**ew, "v": 10.0**ev}
  else:
    scales = 10.0 ** draw(st.sampled_from([-3.0, -1.5, 1.0, 3.0]))
  wd = draw(st.floats(1e-2, 1.0))
  lr = draw(st.floats(1e-3, 1e-1))
  kind = draw(st.sampled_from(["constant", "cosine", "warmup", "exponential"]))
  sched = {
      "constant": lr,
      "cosine": optax.cosine_decay_schedule(lr, 30),
      "warmup": optax.warmup_cosine_decay_schedule(0.0, lr, 5, 30),
      "exponential": optax.exponential_decay(lr, 10, 0.5),
  }[kind]
  return dim, seed, scales, wd, sched


@SETTINGS
@given(cases())
def test_property_scale_free_and_not(case):
  dim, seed, scales, wd, sched = case
  with jax.enable_x64(True):
    params, grad_fn = logcosh_problem(dim, seed)
    kw = dict(steps=25, scales=scales)
    for opt in (
        proxopt.adamw(sched, weight_decay=wd, eps=0.0),
        proxopt.adamprox(sched, weight_decay=wd, eps=0.0),
        optax.adam(sched, eps=0.0),
    ):
      r = testing.assert_scale_free(opt, params, grad_fn, **kw)
      assert r.dtype == "float64" and r.max_rel_change <= 1e-9
      assert r.verdict == "scale-free"
    for opt in (proxopt.adam_l2(sched, weight_decay=wd, eps=0.0), optax.sgd(sched)):
      r = testing.assert_not_scale_free(opt, params, grad_fn, **kw)
      assert r.max_rel_change > 1e-6


@settings(max_examples=3, deadline=None, derandomize=True)
@given(st.integers(1, 5), st.integers(0, 1000))
def test_property_eps_gives_small_nonzero_change(dim, seed):
  with jax.enable_x64(True):
    params, grad_fn = logcosh_problem(dim, seed)
    scales = {"w": jnp.geomspace(1e-3, 1e3, dim), "v": jnp.full((2, 2), 1e-3)}
    r = testing.scale_free_report(
        optax.adam(0.05, eps=1e-8), params, grad_fn, steps=25, scales=scales
    )
    assert 1e-12 < r.max_rel_change <= 1e-2
    assert r.verdict == "not scale-free (small change)"
    assert "not scale-free, small change" in str(r) and "eps>0" in str(r)
    with pytest.raises(AssertionError, match="eps=0"):
      testing.assert_scale_free(
          optax.adam(0.05, eps=1e-8), params, grad_fn, steps=25, scales=scales
      )


def _run(opt, grad_fn, x0, steps, c=1.0):
  """Plain Python reference loop (independent of proxopt.testing)."""
  @jax.jit
  def step(x, state):
    g = jax.tree.map(lambda gi: c * gi, grad_fn(x))
    u, state = opt.update(g, state, x)
    return optax.apply_updates(x, u), state

  x, state, xs = x0, opt.init(x0), []
  for _ in range(steps):
    x, state = step(x, state)
    xs.append(np.asarray(x["w"]))
  return np.stack(xs)


@pytest.mark.parametrize("c", [1e-3, 37.0])
def test_adam_l2_loss_multiplier_equals_scaled_weight_decay(x64, c):
  """Adam-L2 on (c f, c lam) == Adam-L2 on (f, lam) with eps=0.

  So a loss multiplier moves Adam-L2's best lambda (by c), while AdamW's
  trajectory, and hence its best lambda, does not move at all.
  """
  params, grad_fn = logcosh_problem(4, 3)
  lr, lam = 0.05, 0.3
  ref = _run(proxopt.adam_l2(lr, weight_decay=lam, eps=0.0), grad_fn, params, 30)
  scaled = _run(proxopt.adam_l2(lr, weight_decay=c * lam, eps=0.0), grad_fn, params, 30, c=c)
  np.testing.assert_allclose(scaled, ref, rtol=1e-12, atol=1e-13)
  # Sanity: the loss multiplier alone does change Adam-L2's iterates.
  moved = _run(proxopt.adam_l2(lr, weight_decay=lam, eps=0.0), grad_fn, params, 30, c=c)
  assert np.max(np.abs(moved - ref)) > 1e-4


def test_loss_multiplier_through_the_toolkit(x64):
  params, grad_fn = logcosh_problem(4, 3)
  lr, lam, c = 0.05, 0.3, 37.0
  testing.assert_scale_free(
      proxopt.adam_l2(lr, weight_decay=lam, eps=0.0), params, grad_fn, steps=30, scales=c,
      rescaled_optimizer=proxopt.adam_l2(lr, weight_decay=c * lam, eps=0.0),
  )
  testing.assert_not_scale_free(
      proxopt.adam_l2(lr, weight_decay=lam, eps=0.0), params, grad_fn, steps=30, scales=c
  )
  testing.assert_scale_free(
      proxopt.adamw(lr, weight_decay=lam, eps=0.0), params, grad_fn, steps=30, scales=c
  )


def test_report_matches_numpy_reference(x64):
  """SGD on a diagonal quadratic: both trajectories in closed form (NumPy)."""
  h = np.array([1.0, 0.2, 3.0])
  b = np.array([1.0, -2.0, 0.5])
  c = np.array([0.5, 2.0, 0.1])
  lr, steps = 0.1, 12
  grad_fn = lambda x: jnp.asarray(h) * (x - jnp.asarray(b))
  x0 = np.zeros(3)
  x, y, gaps, disps = x0.copy(), x0.copy(), [], []
  for _ in range(steps):
    x = x - lr * h * (x - b)
    y = y - lr * c * h * (y - b)
    gaps.append(np.linalg.norm(y - x))
    disps.append(np.linalg.norm(x - x0))
  expected = np.array(gaps) / max(disps)
  r = testing.scale_free_report(
      optax.sgd(lr), jnp.asarray(x0), grad_fn, steps=steps, scales=jnp.asarray(c)
  )
  np.testing.assert_allclose(r.per_step, expected, rtol=1e-12)
  assert r.max_rel_change == pytest.approx(expected.max(), rel=1e-12)
  assert r.final_rel_change == pytest.approx(expected[-1], rel=1e-12)
  assert r.worst_step == int(np.argmax(expected)) + 1
  assert r.reference_displacement == pytest.approx(max(disps), rel=1e-12)
  assert r.kind == "per-coordinate" and r.steps == steps
  assert "not scale-free" in str(r)


def test_float32_default_is_exact():
  params, grad_fn = logcosh_problem(5, 0)
  params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
  scales = {"w": jnp.geomspace(1e-3, 1e3, 5), "v": jnp.full((2, 2), 30.0)}
  r = testing.assert_scale_free(
      proxopt.adamw(0.05, weight_decay=0.1, eps=0.0), params, grad_fn, steps=40, scales=scales
  )
  assert r.dtype == "float32" and r.exact and r.rtol == 0.0
  assert r.max_rel_change == 0.0  # bit-identical runs
  assert "bit-identical" in str(r)


# ---------------------------------------------------------------------------
# Issue #23: the float32 verdict agrees with the algebra.

_B = np.array([1.0, -2.0, 0.5, 3.0, -0.7, 1.5])


def _numpy_adam(coupling, lr, wd, c, steps, x0):
  """float64 NumPy Adam (eps=0) on f = sum log cosh(x - b), gradients c * g.

  coupling: "l2" (Adam-L2), "decoupled" (AdamW), "prox" (AdamProx), "none".
  Independent of optax and proxopt: the algebra the verdicts must match.
  """
  b1, b2 = 0.9, 0.999
  x, m, v, xs = x0.copy(), np.zeros_like(x0), np.zeros_like(x0), []
  for t in range(1, steps + 1):
    g = c * np.tanh(x - _B)
    if coupling == "l2":
      g = g + wd * x
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    d = (m / (1 - b1**t)) / np.sqrt(v / (1 - b2**t))
    if coupling == "decoupled":
      x = x - lr * (d + wd * x)
    elif coupling == "prox":
      x = (x - lr * d) / (1 + lr * wd)
    else:
      x = x - lr * d
    xs.append(x)
  return np.stack(xs)


def _numpy_change(coupling, lr, wd, c, steps):
  x0 = np.zeros_like(_B)
  ref = _numpy_adam(coupling, lr, wd, 1.0, steps, x0)
  scaled = _numpy_adam(coupling, lr, wd, c, steps, x0)
  gap = np.linalg.norm(scaled - ref, axis=1)
  return np.max(gap) / np.max(np.linalg.norm(ref - x0, axis=1))


_F32_SCALES = {
    "per-coordinate 1e-3..1e3": np.geomspace(1e-3, 1e3, _B.size),
    "loss multiplier 10": 10.0,
}


def _f32_problem():
  grad_fn = jax.grad(lambda w: jnp.sum(jnp.log(jnp.cosh(w - jnp.asarray(_B, jnp.float32)))))
  return jnp.zeros(_B.size, jnp.float32), grad_fn


@pytest.mark.parametrize("scales", list(_F32_SCALES.values()), ids=list(_F32_SCALES))
@pytest.mark.parametrize("lam", [1e-1, 1e-2, 1e-3, 1e-4])
def test_float32_adam_l2_is_reported_not_scale_free(scales, lam):
  """Adam-L2 is not scale-free for any lambda > 0; float32 must say so.

  Before #23 the float32 tolerance (1e-4) reported lambda <= 1e-3 as
  scale-free. The float64 NumPy algebra, at the factors actually applied
  (powers of two), gives a change well above float32 resolution, and the
  float32 report measures that change.
  """
  assert jax.numpy.ones([]).dtype == jnp.float32
  x0, grad_fn = _f32_problem()
  lr, steps = 1e-2, 20
  expected = _numpy_change("l2", lr, lam, testing.power_of_two(scales), steps)
  assert expected > 1e-6  # the algebra: a real change, lambda-proportional
  opt = proxopt.adam_l2(lr, eps=0.0, weight_decay=lam)
  r = testing.assert_not_scale_free(opt, x0, grad_fn, steps=steps, scales=scales)
  assert r.dtype == "float32" and r.exact
  assert r.verdict.startswith("not scale-free")
  assert r.max_rel_change == pytest.approx(expected, rel=0.1)
  with pytest.raises(AssertionError, match="assert_scale_free failed"):
    testing.assert_scale_free(opt, x0, grad_fn, steps=steps, scales=scales)


def test_float32_adam_l2_at_five_steps_fails_assert_scale_free():
  x0, grad_fn = _f32_problem()
  assert _numpy_change("l2", 1e-2, 0.1, 8.0, 5) > 1e-6
  with pytest.raises(AssertionError, match="changed under loss multiplier"):
    testing.assert_scale_free(proxopt.adam_l2(1e-2, eps=0.0, weight_decay=0.1),
                              x0, grad_fn, steps=5, scales=10.0)


@pytest.mark.parametrize("scales", list(_F32_SCALES.values()), ids=list(_F32_SCALES))
@pytest.mark.parametrize("name, coupling, make", [
    ("adamw", "decoupled", lambda: proxopt.adamw(1e-2, eps=0.0, weight_decay=0.1)),
    ("adamprox", "prox", lambda: proxopt.adamprox(1e-2, eps=0.0, weight_decay=0.1)),
    ("adam", "none", lambda: optax.adam(1e-2, eps=0.0)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_float32_scale_free_optimizers_give_bit_identical_runs(scales, name, coupling, make):
  del name
  # The algebra: with eps=0 the rescaled trajectory is the reference one.
  assert _numpy_change(coupling, 1e-2, 0.1, testing.power_of_two(scales), 50) < 1e-12
  x0, grad_fn = _f32_problem()
  r = testing.assert_scale_free(make(), x0, grad_fn, steps=50, scales=scales)
  assert r.verdict == "scale-free" and r.max_rel_change == 0.0 and r.exact


def test_power_of_two_rounds_in_log_space():
  c = np.array([1e-3, 0.7, 1.0, 1.5, 10.0, 1e3])
  np.testing.assert_array_equal(testing.power_of_two(c), 2.0 ** np.round(np.log2(c)))
  assert testing.power_of_two({"a": 3.0})["a"] == 4.0
  with pytest.raises(ValueError, match=r"`scales` must be > 0 and finite, got -1.0"):
    testing.power_of_two(-1.0)


def test_exact_mode_refuses_factors_that_all_round_to_one():
  x0, grad_fn = _f32_problem()
  with pytest.raises(ValueError, match="every factor of `scales` rounds to 1"):
    testing.scale_free_report(optax.adam(0.1, eps=0.0), x0, grad_fn, steps=3, scales=1.2)


def test_exact_false_keeps_the_float32_tolerance():
  x0, grad_fn = _f32_problem()
  r = testing.scale_free_report(optax.adam(0.1, eps=0.0), x0, grad_fn, steps=5,
                                scales=10.0, exact=False)
  assert not r.exact and r.rtol == 1e-4


def test_bfloat16_params_run_in_float32_exactly():
  # A bfloat16 run would overflow nothing here but round every iterate; the
  # check runs in float32 and stays exact.
  x0, grad_fn = _f32_problem()
  r = testing.assert_scale_free(optax.adam(1e-2, eps=0.0), x0.astype(jnp.bfloat16),
                                lambda w: grad_fn(w.astype(jnp.float32)).astype(w.dtype),
                                steps=10, scales=np.geomspace(1e-3, 1e3, _B.size))
  assert r.dtype == "float32"


def test_users_own_transformation(x64):
  """Sign descent with momentum is scale-free; without the sign it is not."""

  def sign_momentum(lr, beta=0.9, use_sign=True):
    def init(params):
      return jax.tree.map(jnp.zeros_like, params)

    def update(g, m, params=None):
      m = jax.tree.map(lambda mi, gi: beta * mi + gi, m, g)
      f = jnp.sign if use_sign else (lambda v: v)
      return jax.tree.map(lambda mi: -lr * f(mi), m), m

    return optax.GradientTransformation(init, update)

  params, grad_fn = logcosh_problem(3, 7)
  scales = {"w": jnp.array([1e-3, 5.0, 1e3]), "v": jnp.full((2, 2), 0.01)}
  testing.assert_scale_free(sign_momentum(0.05), params, grad_fn, steps=20,
                            scales=scales)
  testing.assert_not_scale_free(sign_momentum(0.05, use_sign=False), params,
                                grad_fn, steps=20, scales=scales)


def test_broadcastable_scales_per_leaf(x64):
  params, grad_fn = logcosh_problem(3, 1)
  scales = {"w": 1e3, "v": jnp.array([1e-3, 10.0])}  # scalar / row broadcast
  testing.assert_scale_free(optax.adam(0.1, eps=0.0), params, grad_fn,
                            steps=10, scales=scales)
  testing.assert_not_scale_free(optax.sgd(0.1), params, grad_fn, steps=10,
                                scales=scales)


def test_failure_messages(x64):
  params, grad_fn = logcosh_problem(2, 0)
  with pytest.raises(AssertionError) as e:
    testing.assert_scale_free(proxopt.adam_l2(0.1, weight_decay=0.5, eps=0.0), params,
                              grad_fn, steps=10, scales=100.0)
  msg = str(e.value)
  assert msg.startswith("[proxopt] Assertion assert_scale_free failed")
  assert "loss multiplier" in msg and "rtol=1e-09" in msg and "eps=0" in msg
  with pytest.raises(AssertionError, match="did not change"):
    testing.assert_not_scale_free(optax.adam(0.1, eps=0.0), params, grad_fn,
                                  steps=10, scales=100.0)


def test_zero_gradient_with_eps0_is_reported_non_finite(x64):
  grad_fn = jax.grad(lambda x: jnp.sum((x - 1.0) ** 2))
  x0 = jnp.array([1.0, 0.0])  # first coordinate starts at its minimum: g = 0
  r = testing.scale_free_report(optax.adam(0.1, eps=0.0), x0, grad_fn,
                                steps=5, scales=2.0)
  assert not r.finite and r.verdict == "non-finite" and r.worst_step == 1
  assert "NaN" in str(r)
  with pytest.raises(AssertionError, match="NaN/inf"):
    testing.assert_scale_free(optax.adam(0.1, eps=0.0), x0, grad_fn, steps=5,
                              scales=2.0)


def test_optimizer_that_does_not_move(x64):
  grad_fn = jax.grad(lambda x: jnp.sum(x**2))
  r = testing.assert_scale_free(optax.set_to_zero(), jnp.ones(2), grad_fn,
                                steps=3, scales=5.0)
  assert r.max_rel_change == 0.0 and r.reference_displacement == 0.0


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(scales=-1.0), ValueError, "`scales` must be > 0"),
        (dict(scales=0.0), ValueError, "`scales` must be > 0"),
        (dict(scales={"w": jnp.ones(2)}), ValueError, "pytree like `params`"),
        (dict(scales={"w": jnp.ones(3), "v": jnp.ones((2, 2))}), ValueError,
         "does not broadcast"),
        (dict(scales={"w": jnp.array([1.0, -2.0]), "v": 1.0}), ValueError,
         r"entries <= 0"),
        # A scales leaf that broadcasts *with* but not *to* the parameter
        # (issue #13: used to fail deep inside lax.scan).
        (dict(scales={"w": jnp.ones((3, 2)), "v": 1.0}), ValueError,
         r"at \['w'\] has shape \(3, 2\), which does not broadcast to the "
         r"parameter's shape \(2,\)"),
        (dict(scales={"w": 1.0, "v": jnp.ones((1, 2, 2))}), ValueError,
         r"at \['v'\] has shape \(1, 2, 2\).*shape \(2, 2\)"),
        # Infinite factors (used to run and be blamed on the optimizer).
        (dict(scales=float("inf")), ValueError, "`scales` must be > 0 and finite"),
        (dict(scales={"w": jnp.array([1.0, jnp.inf]), "v": 1.0}), ValueError,
         r"at \['w'\] has infinite entries"),
        (dict(scales={"w": 1.0, "v": np.full((2, 2), np.nan)}), ValueError,
         r"at \['v'\] has entries <= 0 \(or NaN\)"),
        # rtol: negative, NaN, infinite (used to be accepted).
        (dict(rtol=-1e-3), ValueError, "`rtol` must be a finite number >= 0"),
        (dict(rtol=float("nan")), ValueError, "`rtol` must be a finite number"),
        (dict(rtol=float("inf")), ValueError, "`rtol` must be a finite number"),
        (dict(rtol=np.float32(-1.0)), ValueError, "`rtol`"),
        (dict(rtol="1e-3"), ValueError, "`rtol`"),
        (dict(steps=0), ValueError, "`steps` must be an int >= 1"),
        (dict(steps=2.5), ValueError, "`steps` must be an int >= 1"),
        (dict(optimizer=optax.adam), TypeError, "GradientTransformation"),
        (dict(grad_fn=3), TypeError, "`grad_fn` must be a function"),
        (dict(params={"w": jnp.arange(2), "v": jnp.ones((2, 2))}), TypeError,
         "floating point"),
        (dict(rescaled_optimizer="adam"), TypeError, "rescaled_optimizer"),
    ],
)
def test_bad_arguments(kwargs, err, match):
  params, grad_fn = logcosh_problem(2, 0)
  args = dict(optimizer=optax.adam(0.1), params=params, grad_fn=grad_fn,
              steps=3, scales=2.0)
  args.update(kwargs)
  with pytest.raises(err, match=match):
    testing.scale_free_report(
        args.pop("optimizer"), args.pop("params"), args.pop("grad_fn"), **args
    )


@pytest.mark.parametrize("check", [testing.assert_scale_free,
                                   testing.assert_not_scale_free])
def test_bad_scales_and_rtol_raise_before_running(check):
  """Issue #13: the assertions check their arguments before any tracing."""
  calls = []

  def grad_fn(p):
    calls.append(1)
    return jax.tree.map(jnp.ones_like, p)

  params = {"w": jnp.zeros(6)}
  with pytest.raises(ValueError, match=r"shape \(3, 6\), which does not "
                     r"broadcast to the parameter's shape \(6,\)"):
    check(optax.adam(0.1), params, grad_fn, steps=2,
          scales={"w": jnp.ones((3, 6))})
  with pytest.raises(ValueError, match="infinite entries"):
    check(optax.adam(0.1), params, grad_fn, steps=2,
          scales={"w": jnp.full(6, jnp.inf)})
  with pytest.raises(ValueError, match="`rtol`"):
    check(optax.adam(0.1), params, grad_fn, steps=2, scales=2.0, rtol=-1.0)
  assert not calls


def test_valid_edge_arguments_still_accepted(x64):
  """rtol=0 (exact) and scales of shape (1,) / trailing sub-shape are fine."""
  params, grad_fn = logcosh_problem(3, 2)
  r = testing.scale_free_report(
      optax.adam(0.1, eps=0.0), params, grad_fn, steps=5, rtol=0.0,
      scales={"w": jnp.array([7.0]), "v": jnp.array([1e-2, 1e2])})
  assert r.rtol == 0.0 and r.max_rel_change < 1e-12
