"""`proxopt.proximal` / `decoupled_weight_decay` over arbitrary Optax chains.

Covers masks (pytree and callable), feasibility of box/nonnegative after
every step in low precision, decoupled decay vs optax.adamw and NumPy, and
the argument checks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxopt


def make_tree(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return {
      "dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), dtype),
                "bias": jnp.asarray(rng.normal(size=3), dtype)},
      "scale": jnp.asarray(rng.normal(size=3), dtype),
  }


def grads_seq(steps, seed=1, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  like = make_tree()
  return [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), dtype), like)
          for _ in range(steps)]


def run(tx, params, grads):
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


# ------------------------------------------------------------------ 8. masks
KERNEL_ONLY = {"dense": {"kernel": True, "bias": False}, "scale": False}


def kernel_only_fn(params):
  return jax.tree.map(lambda x: x.ndim == 2, params)


ALIAS_BASES = [
    (proxopt.adam_l2, lambda lr: optax.adam(lr)),
    (proxopt.adamw, lambda lr: optax.adam(lr)),
    (proxopt.adamprox, lambda lr: optax.adam(lr)),
    (proxopt.sgd_l2, lambda lr: optax.sgd(lr)),
    (proxopt.sgdw, lambda lr: optax.sgd(lr)),
    (proxopt.sgdprox, lambda lr: optax.sgd(lr)),
]


@pytest.mark.parametrize("alias,base", ALIAS_BASES, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("mask", [KERNEL_ONLY, kernel_only_fn], ids=["tree", "callable"])
def test_alias_mask_leaves_unmasked_to_base_update(alias, base, mask):
  lr = optax.cosine_decay_schedule(0.05, 20)
  grads = grads_seq(20)
  masked = run(alias(lr, weight_decay=0.5, mask=mask), make_tree(), grads)
  plain = run(base(lr), make_tree(), grads)
  full = run(alias(lr, weight_decay=0.5), make_tree(), grads)
  # Masked-out leaves: exactly the unregularized optimizer.
  for path in (("dense", "bias"), ("scale",)):
    get = lambda t: t[path[0]][path[1]] if len(path) == 2 else t[path[0]]
    np.testing.assert_array_equal(np.asarray(get(masked)), np.asarray(get(plain)))
  # Masked-in leaf: the regularized optimizer, which differs from the plain one.
  np.testing.assert_array_equal(
      np.asarray(masked["dense"]["kernel"]), np.asarray(full["dense"]["kernel"]))
  assert not np.allclose(np.asarray(masked["dense"]["kernel"]), np.asarray(plain["dense"]["kernel"]))


@pytest.mark.parametrize("mask", [KERNEL_ONLY, kernel_only_fn, {"dense": True, "scale": False}],
                         ids=["tree", "callable", "prefix"])
def test_proximal_mask(mask):
  lr = 0.1
  grads = grads_seq(10)
  base = optax.sgd(lr, momentum=0.5)
  reg = proxopt.l1(20.0)  # threshold s*lam = 2 exceeds every base step
  out = run(optax.chain(base, proxopt.proximal(reg, lr, mask=mask)), make_tree(), grads)
  plain = run(base, make_tree(), grads)
  np.testing.assert_array_equal(np.asarray(out["scale"]), np.asarray(plain["scale"]))
  # L1 with a large lambda drives the kernel to exact zeros; the plain run does not.
  assert np.all(np.asarray(out["dense"]["kernel"]) == 0.0)
  assert np.all(np.asarray(plain["dense"]["kernel"]) != 0.0)
  if mask is not KERNEL_ONLY and mask is not kernel_only_fn:  # prefix: bias regularized too
    assert np.all(np.asarray(out["dense"]["bias"]) == 0.0)
  else:
    np.testing.assert_array_equal(np.asarray(out["dense"]["bias"]), np.asarray(plain["dense"]["bias"]))


@pytest.mark.parametrize(
    "make",
    [
        lambda m: proxopt.adamw(0.1, weight_decay=0.1, mask=m),
        lambda m: proxopt.adam_l2(0.1, weight_decay=0.1, mask=m),
        lambda m: proxopt.sgdprox(0.1, weight_decay=0.1, mask=m),
        lambda m: optax.chain(optax.sgd(0.1), proxopt.proximal(proxopt.l1(0.1), 0.1, mask=m)),
        lambda m: optax.chain(optax.sgd(0.1), proxopt.decoupled_weight_decay(0.1, 0.1, mask=m)),
    ],
)
def test_mask_tree_mismatch_names_first_path(make):
  params = make_tree()
  missing = {"dense": {"kernel": True}, "scale": False}
  with pytest.raises(ValueError, match=r"params have a leaf at path \['dense'\]\['bias'\] that the mask does not cover"):
    make(missing).init(params)
  extra = {"dense": {"kernel": True, "bias": False, "gamma": True}, "scale": False}
  with pytest.raises(ValueError, match=r"the mask has an entry at path \['dense'\]\['gamma'\] that params do not have"):
    make(extra).init(params)
  with pytest.raises(ValueError, match=r"Build the mask from params.*a callable mask always matches"):
    make(extra).init(params)
  # A callable returning a bad tree is caught the same way.
  with pytest.raises(ValueError, match=r"\['dense'\]\['gamma'\]"):
    make(lambda p: extra).init(params)


def test_mask_with_non_bool_leaf_rejected():
  with pytest.raises(TypeError, match=r"mask leaf at path \['scale'\].*must be booleans"):
    proxopt.adamw(0.1, weight_decay=0.1, mask={"dense": True, "scale": 1.5}).init(make_tree())


# -------------------------------------------------- 5. feasibility every step
def naive_violations(x, u, lo, hi, dtype):
  """How often x + (clip(x + u) - x) leaves the box: the hazard being tested."""
  y = jnp.clip(x + u, jnp.asarray(lo, dtype), jnp.asarray(hi, dtype))
  z = x + (y - x)
  return int(jnp.sum((z < jnp.asarray(lo, dtype)) | (z > jnp.asarray(hi, dtype))))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("lo,hi", [(-0.3, 0.7), (0.1, 3.0), (0.0, np.inf)])
def test_box_feasible_after_every_step(dtype, lo, hi):
  rng = np.random.default_rng(7)
  n, steps, lr = 4096, 60, 0.5
  reg = proxopt.nonnegative() if (lo, hi) == (0.0, np.inf) else proxopt.box(lo, hi)
  tx = optax.chain(optax.adam(lr), proxopt.proximal(reg, lr))
  params = {"x": jnp.asarray(rng.uniform(lo, min(hi, 3.0), size=n), dtype)}
  params = proxopt.apply_prox(reg, params, 1.0)  # start feasible in `dtype`
  walls = np.asarray(reg.prox(jnp.asarray([-1e4, 1e4], dtype), 1.0).astype(jnp.float32), np.float64)
  state = tx.init(params)
  update = jax.jit(tx.update)
  on_wall = 0
  for t in range(steps):
    # Gradients of wildly different sizes push many coordinates into the walls.
    g = rng.normal(size=n) * 10.0 ** rng.uniform(-3, 2, size=n)
    updates, state = update({"x": jnp.asarray(g, dtype)}, state, params)
    params = optax.apply_updates(params, updates)
    assert params["x"].dtype == dtype and updates["x"].dtype == dtype
    x = np.asarray(params["x"].astype(jnp.float32), np.float64)
    bad = np.flatnonzero((x < lo) | (x > hi))
    assert bad.size == 0, f"step {t}: {bad.size} infeasible, e.g. {x[bad[:3]]}"
    on_wall += int(np.sum((x == walls[0]) | (x == walls[1])))
  assert on_wall > n  # the walls were hit often, so the check had work to do


def test_naive_projection_update_can_leave_the_box():
  """Documents why proximal() corrects projections: the naive y - x fails."""
  rng = np.random.default_rng(0)
  lo, hi = -0.3, 0.7
  x = jnp.asarray(rng.uniform(lo, hi, size=100_000), jnp.float32)
  u = jnp.asarray(rng.normal(size=100_000), jnp.float32)
  assert naive_violations(x, u, lo, hi, jnp.float32) > 0
  reg = proxopt.box(lo, hi)
  tx = proxopt.proximal(reg, 1.0)
  params = {"x": x}
  upd, _ = tx.update({"x": u}, tx.init(params), params)
  new = np.asarray(optax.apply_updates(params, upd)["x"], np.float64)
  assert np.all((new >= lo) & (new <= hi))
  # and it is still the projection, up to one ulp
  ref = np.clip(np.asarray(x, np.float64) + np.asarray(u, np.float64), lo, hi)
  np.testing.assert_allclose(new, ref, atol=2e-7)


def test_prox_noop_keeps_base_update_bitwise():
  # Inside the box the update must be the base update itself, not (x+u)-x.
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.uniform(-1, 1, size=1000) * 1e3, jnp.float32)
  u = jnp.asarray(rng.normal(size=1000) * 1e-3, jnp.float32)
  tx = proxopt.proximal(proxopt.box(-1e4, 1e4), 0.1)
  upd, _ = tx.update({"x": u}, tx.init({"x": x}), {"x": x})
  np.testing.assert_array_equal(np.asarray(upd["x"]), np.asarray(u))
  assert not np.array_equal(np.asarray((x + u) - x), np.asarray(u))  # the hazard exists


# ----------------------------------------------- proximal step-size alignment
def test_proximal_schedule_uses_same_step_as_base(x64):
  # prox over SGD with a schedule: x <- prox_{s_t R}(x - s_t g), checked in NumPy.
  sched = optax.cosine_decay_schedule(0.3, 10, alpha=0.1)
  reg = proxopt.elastic_net(0.4, 0.8)
  tx = optax.chain(optax.sgd(sched), proxopt.proximal(reg, sched))
  rng = np.random.default_rng(2)
  x = rng.normal(size=9)
  params = {"x": jnp.asarray(x)}
  state = tx.init(params)
  for t in range(12):
    g = rng.normal(size=9)
    s = 0.3 * (0.9 * 0.5 * (1 + np.cos(np.pi * min(t, 10) / 10)) + 0.1)
    z = x - s * g
    x = np.sign(z) * np.maximum(np.abs(z) - s * 0.4, 0) / (1 + s * 0.8)
    updates, state = tx.update({"x": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(params["x"]), x, rtol=1e-13, atol=1e-15)


# ------------------------------------------------------ decoupled weight decay
def test_decoupled_weight_decay_over_adam_is_adamw():
  sched = optax.cosine_decay_schedule(0.05, 20)
  grads = grads_seq(20)
  ours = run(optax.chain(optax.adam(sched), proxopt.decoupled_weight_decay(0.3, sched)), make_tree(), grads)
  ref = run(optax.adamw(sched, weight_decay=0.3), make_tree(), grads)
  plain = run(optax.adam(sched), make_tree(), grads)
  for a, b, c in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), jax.tree.leaves(plain)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_decoupled_weight_decay_schedule_over_adagrad(x64):
  lr, wd0 = 0.1, 0.5
  wd_sched = optax.cosine_decay_schedule(wd0, 8)
  tx = optax.chain(optax.adagrad(lr, initial_accumulator_value=0.1, eps=1e-7),
                   proxopt.decoupled_weight_decay(wd_sched, lr))
  rng = np.random.default_rng(4)
  x = rng.normal(size=5)
  acc = np.full(5, 0.1)
  params = {"x": jnp.asarray(x)}
  state = tx.init(params)
  for t in range(10):
    g = rng.normal(size=5)
    acc = acc + g * g
    wd = wd0 * 0.5 * (1 + np.cos(np.pi * min(t, 8) / 8))
    x = x - lr * g / np.sqrt(acc + 1e-7) - lr * wd * x
    updates, state = tx.update({"x": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(params["x"]), x, rtol=1e-12)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "make",
    [
        lambda: proxopt.proximal(proxopt.l1(0.1), 0.1),
        lambda: proxopt.decoupled_weight_decay(0.1, 0.1),
    ],
    ids=["proximal", "decoupled"],
)
def test_transforms_need_params_and_float_params(make):
  tx = make()
  params = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match=r"needs the current parameters.*tx\.update\(updates, state, params\)"):
    tx.update({"w": jnp.ones(3)}, tx.init(params))
  with pytest.raises(TypeError, match=r"path \['layer'\]\['n'\] has dtype int32.*Cast it to a float"):
    tx.init({"w": jnp.ones(3), "layer": {"n": jnp.zeros(2, jnp.int32)}})


def test_negative_step_size_and_weight_decay_rejected():
  with pytest.raises(ValueError, match=r"`step_size` must be >= 0, got -0\.1.*learning rate"):
    proxopt.proximal(proxopt.l1(0.1), -0.1)
  with pytest.raises(ValueError, match=r"`step_size` must be >= 0"):
    proxopt.decoupled_weight_decay(0.1, -0.1)
  with pytest.raises(ValueError, match=r"`weight_decay` must be >= 0, got -0\.1"):
    proxopt.decoupled_weight_decay(-0.1, 0.1)
