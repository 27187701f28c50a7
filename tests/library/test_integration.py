"""proxopt inside the JAX ecosystem: jit, inject_hyperparams, flax.nnx,
low-precision dtypes under strict promotion, and sharding over 8 devices."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxopt

ALIASES = [proxopt.adam_l2, proxopt.adamw, proxopt.adamprox,
           proxopt.sgd_l2, proxopt.sgdw, proxopt.sgdprox]
REGULARIZERS = [
    proxopt.l2_squared(0.3), proxopt.l1(0.05), proxopt.elastic_net(0.05, 0.3),
    proxopt.group_lasso(0.1, axis=0), proxopt.box(-0.75, 0.5), proxopt.nonnegative(),
]


def params_like(dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(4, 3)), dtype), "b": jnp.asarray(rng.normal(size=3), dtype)}


def grads_for(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)


# ------------------------------------------------------------- jit / no jit
def _trajectory(tx, update, steps=8, dtype=jnp.float32):
  params = params_like(dtype)
  state = tx.init(params)
  for t in range(steps):
    updates, state = update(grads_for(params, t), state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "nojit"])
@pytest.mark.parametrize("tx", [a(optax.cosine_decay_schedule(0.05, 10), 0.2) for a in ALIASES]
                         + [optax.chain(optax.adam(0.05), proxopt.proximal(r, 0.05)) for r in REGULARIZERS],
                         ids=[a.__name__ for a in ALIASES] + [r.name for r in REGULARIZERS])
def test_jit_and_no_jit_agree_with_float64_run(tx, jit):
  """Each variant (jit / eager) in float32 tracks the same chain run in x64."""
  out = _trajectory(tx, jax.jit(tx.update) if jit else tx.update)
  with jax.enable_x64(True):
    ref = _trajectory(tx, tx.update, dtype=jnp.float64)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # and the trajectory moved
  assert not np.allclose(np.asarray(out["w"]), np.asarray(params_like()["w"]))


# -------------------------------------------------------- inject_hyperparams
def adam_direction(state_adam, b1=0.9, b2=0.999, eps=1e-8):
  t = int(state_adam.count)
  m = np.asarray(state_adam.mu["x"], np.float64) / (1 - b1**t)
  v = np.asarray(state_adam.nu["x"], np.float64) / (1 - b2**t)
  return m / (np.sqrt(v) + eps)


def set_hyperparam(state, name, value):
  # Same dtype (and no weak type) as inject_hyperparams' own: same jit signature.
  old = state.hyperparams[name]
  state.hyperparams[name] = jnp.asarray(value, dtype=old.dtype)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "nojit"])
def test_inject_hyperparams_adamprox_changes_take_effect_without_recompiling(jit, x64):
  tx = optax.inject_hyperparams(proxopt.adamprox)(learning_rate=0.1, weight_decay=0.5)
  traces = []

  def update(g, state, params):
    traces.append(1)  # runs once per trace under jit, once per call without
    return tx.update(g, state, params)

  step = jax.jit(update) if jit else update
  rng = np.random.default_rng(0)
  params = {"x": jnp.asarray(rng.normal(size=5))}
  state = tx.init(params)
  schedule = [(0.1, 0.5), (0.1, 0.5), (0.02, 0.5), (0.02, 3.0), (0.3, 0.0)]
  for lr, wd in schedule:
    set_hyperparam(state, "learning_rate", lr)
    set_hyperparam(state, "weight_decay", wd)
    x = np.asarray(params["x"])
    updates, state = step({"x": jnp.asarray(rng.normal(size=5))}, state, params)
    params = optax.apply_updates(params, updates)
    d = adam_direction(state.inner_state[0])
    np.testing.assert_allclose(np.asarray(params["x"]), (x - lr * d) / (1 + lr * wd), rtol=1e-12)
  if jit:
    assert len(traces) == 1
    assert step._cache_size() == 1
  else:
    assert len(traces) == len(schedule)


def test_inject_hyperparams_sgdw_weight_decay_change(x64):
  tx = optax.inject_hyperparams(proxopt.sgdw)(learning_rate=0.1, weight_decay=0.0, momentum=0.0)
  params = {"x": jnp.ones(3)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  u0, state = step({"x": jnp.zeros(3)}, state, params)
  set_hyperparam(state, "weight_decay", 0.7)
  u1, state = step({"x": jnp.zeros(3)}, state, params)
  np.testing.assert_array_equal(np.asarray(u0["x"]), 0.0)
  np.testing.assert_allclose(np.asarray(u1["x"]), -0.1 * 0.7, rtol=1e-14)
  assert step._cache_size() == 1


def test_inject_hyperparams_paper_convention_needs_alpha(x64):
  with pytest.raises(ValueError, match=r"needs `alpha=`.*Pass alpha=<base learning rate>"):
    optax.inject_hyperparams(proxopt.adamprox)(
        learning_rate=1e-3, weight_decay=1e-4, convention="paper").init({"x": jnp.ones(2)})
  alpha, lam = 1e-2, 5e-3
  paper = optax.inject_hyperparams(proxopt.adamprox)(
      learning_rate=alpha, weight_decay=lam, convention="paper", alpha=alpha)
  ref = optax.inject_hyperparams(proxopt.adamprox)(learning_rate=alpha, weight_decay=lam / alpha)
  outs = []
  for tx in (paper, ref):
    params = {"x": jnp.linspace(-1.0, 1.0, 4)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(6):
      # halve the step size mid-run: eta_t = 0.5, per-step decay lam * eta_t
      set_hyperparam(state, "learning_rate", alpha if t < 3 else alpha / 2)
      updates, state = step({"x": jnp.sin(params["x"] + t)}, state, params)
      params = optax.apply_updates(params, updates)
    outs.append(np.asarray(params["x"]))
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-13)
  assert not np.allclose(outs[0], np.linspace(-1.0, 1.0, 4))


# ------------------------------------------------------------------ flax.nnx
@pytest.mark.parametrize("alias", [proxopt.adamprox, proxopt.adamw, proxopt.sgdprox],
                         ids=lambda f: f.__name__)
def test_flax_nnx_optimizer_equals_plain_optax(alias):
  nnx = pytest.importorskip("flax.nnx")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(1).normal(size=(8, 2)), jnp.float32)
  lr = optax.cosine_decay_schedule(0.05, 10)
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  tx = alias(lr, 0.5, mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def nnx_step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)

  def loss(p):
    return jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2)

  @jax.jit
  def plain_step(p, state):
    updates, state = tx.update(jax.grad(loss)(p), state, p)
    return optax.apply_updates(p, updates), state

  state = tx.init(params)
  for _ in range(6):
    nnx_step(model, optimizer)
    params, state = plain_step(params, state)
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for k in ("kernel", "bias"):
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(params[k]), rtol=1e-6, atol=1e-7)
  assert not np.allclose(np.asarray(got["kernel"]),
                         np.asarray(nnx.Linear(3, 2, rngs=nnx.Rngs(0)).kernel[...]))


# ------------------------------------------------- dtypes, strict promotion
def _state_float_dtypes(state):
  return {x.dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("alias", ALIASES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("lr", [0.01, optax.cosine_decay_schedule(0.01, 10)], ids=["const", "sched"])
def test_alias_keeps_low_precision_dtype_under_strict(dtype, alias, lr):
  params = params_like(dtype)
  with jax.numpy_dtype_promotion("strict"):
    tx = alias(lr, 0.1)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(3):
      updates, state = step(grads_for(params, t), state, params)
      params = optax.apply_updates(params, updates)
  for leaf in jax.tree.leaves((params, updates)):
    assert leaf.dtype == dtype
  # mu/nu (Adam) and the momentum trace are kept in the param dtype by optax
  assert _state_float_dtypes(state) <= {np.dtype(dtype)}
  assert all(np.all(np.isfinite(np.asarray(p, np.float32))) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("reg", REGULARIZERS, ids=lambda r: r.name)
def test_proximal_keeps_low_precision_dtype_under_strict(dtype, reg):
  params = params_like(dtype)
  with jax.numpy_dtype_promotion("strict"):
    # optax.sgd is strict-safe with a constant rate; the prox reads a schedule.
    tx = optax.chain(optax.sgd(0.1, momentum=0.9),
                     proxopt.proximal(reg, optax.cosine_decay_schedule(0.1, 10)))
    state = tx.init(params)
    for t in range(3):
      updates, state = jax.jit(tx.update)(grads_for(params, t), state, params)
      params = optax.apply_updates(params, updates)
    value = proxopt.regularizer_value(reg, params)
    direct = proxopt.apply_prox(reg, params, 0.1)
  for leaf in jax.tree.leaves((params, updates, direct)):
    assert leaf.dtype == dtype
  # the penalty's value is a sum over every parameter: at least float32, so a
  # float16 model's penalty does not overflow (issue #23)
  assert value.dtype == jnp.float32
  assert _state_float_dtypes(state) <= {np.dtype(dtype)}


# ------------------------------------------------------------------ sharding
@pytest.mark.slow  # 8 forced devices in a subprocess (~9 s idle)
def test_sharded_over_8_devices_matches_unsharded():
  worker = os.path.join(os.path.dirname(__file__), "_sharding_worker.py")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))] + env.get("PYTHONPATH", "").split(os.pathsep))
  proc = subprocess.run([sys.executable, worker], capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(report) >= {"adam_l2", "adamw", "adamprox", "sgd_l2", "sgdw", "sgdprox",
                         "group_lasso_axis0", "l1", "box"}
  for name, r in report.items():
    assert r["max_abs_diff"] <= 1e-6, (name, r)
    assert r["sharding_kept"], (name, r)
    assert r["devices"] == [8, 8, 8], (name, r)  # every leaf still lives on the mesh
    assert r["moved"] > 1e-2, (name, r)  # the optimizer actually did something
