"""The six aliases against float64 NumPy references, torch.optim, and optax.

Every reference below is written from the update formulas (Zhuang et al.,
TMLR 2022, Algorithms 1-2; Loshchilov & Hutter 2019), not by calling proxopt.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxopt

STEPS = 30
SHAPES = {"w": (4, 3), "b": (3,)}


# ---------------------------------------------------------------- references
def np_cosine(t, init, decay_steps, alpha, exponent=1.0):
  """optax.cosine_decay_schedule, written out in NumPy."""
  frac = min(t, decay_steps) / decay_steps
  return init * ((1 - alpha) * (0.5 * (1 + np.cos(np.pi * frac))) ** exponent + alpha)


def grad_fn(x, target):
  """Gradient of the non-quadratic f(x) = sum log(1 + (x - target)^2) + x^4/4."""
  r = x - target
  return 2 * r / (1 + r * r) + x**3


def np_adam_family(kind, x0, target, lrs, wd, b1, b2, eps):
  x = x0.copy()
  m = np.zeros_like(x)
  v = np.zeros_like(x)
  traj = []
  for t, lr in enumerate(lrs, start=1):
    g = grad_fn(x, target)
    if kind == "adam_l2":
      g = g + wd * x
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    d = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    if kind == "adam_l2":
      x = x - lr * d
    elif kind == "adamw":
      x = x - lr * (d + wd * x)
    elif kind == "adamprox":
      x = (x - lr * d) / (1 + lr * wd)
    traj.append(x.copy())
  return np.stack(traj)


def np_sgd_family(kind, x0, target, lrs, wd, momentum, nesterov):
  x = x0.copy()
  buf = np.zeros_like(x)
  traj = []
  for lr in lrs:
    g = grad_fn(x, target)
    if kind == "sgd_l2":
      g = g + wd * x
    buf = momentum * buf + g
    d = g + momentum * buf if nesterov else buf
    if kind == "sgd_l2":
      x = x - lr * d
    elif kind == "sgdw":
      x = x - lr * (d + wd * x)
    elif kind == "sgdprox":
      x = (x - lr * d) / (1 + lr * wd)
    traj.append(x.copy())
  return np.stack(traj)


def run_proxopt(tx, x0, target, dtype, steps=STEPS, jit=True):
  """Trajectory of a single-leaf problem; gradients computed in NumPy."""
  params = {"x": jnp.asarray(x0, dtype)}
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  traj = []
  for _ in range(steps):
    x = np.asarray(params["x"], np.float64)
    g = {"x": jnp.asarray(grad_fn(x, target), dtype)}
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    traj.append(np.asarray(params["x"], np.float64))
  return np.stack(traj)


def rel_err(a, b):
  return float(np.max(np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)))


def problem(seed=0, n=7):
  rng = np.random.default_rng(seed)
  return rng.normal(size=n), rng.normal(size=n)


ADAMS = {"adam_l2": proxopt.adam_l2, "adamw": proxopt.adamw, "adamprox": proxopt.adamprox}
SGDS = {"sgd_l2": proxopt.sgd_l2, "sgdw": proxopt.sgdw, "sgdprox": proxopt.sgdprox}


# ------------------------------------------------- 1. NumPy reference, x64/f32
@pytest.mark.parametrize("kind", sorted(ADAMS))
@pytest.mark.parametrize("precision", ["x64", "f32"])
def test_adam_aliases_match_numpy_reference(kind, precision, request):
  lr0, wd, b1, b2, eps = 0.05, 0.3, 0.9, 0.99, 1e-8
  sched = optax.cosine_decay_schedule(lr0, decay_steps=STEPS, alpha=0.1)
  lrs = [np_cosine(t, lr0, STEPS, 0.1) for t in range(STEPS)]
  x0, target = problem()
  ref = np_adam_family(kind, x0, target, lrs, wd, b1, b2, eps)
  assert np.std(lrs) > 0.01  # the schedule really varies
  if precision == "x64":
    request.getfixturevalue("x64")
    out = run_proxopt(ADAMS[kind](sched, weight_decay=wd, b1=b1, b2=b2, eps=eps), x0, target, jnp.float64)
    assert rel_err(out, ref) <= 1e-12
  else:
    out = run_proxopt(ADAMS[kind](sched, weight_decay=wd, b1=b1, b2=b2, eps=eps), x0, target, jnp.float32)
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("kind", sorted(SGDS))
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("precision", ["x64", "f32"])
def test_sgd_aliases_match_numpy_reference(kind, momentum, nesterov, precision, request):
  # (optax.linear_schedule evaluates in float32 even with x64 on, so a
  # 1e-12 check needs a schedule that follows the enabled precision.)
  lr0, wd = 0.05, 0.5
  sched = optax.cosine_decay_schedule(lr0, 20, alpha=0.2, exponent=2.0)
  lrs = [np_cosine(t, lr0, 20, 0.2, 2.0) for t in range(STEPS)]
  x0, target = problem(1)
  ref = np_sgd_family(kind, x0, target, lrs, wd, momentum, nesterov)
  tx = SGDS[kind](sched, weight_decay=wd, momentum=momentum, nesterov=nesterov)
  if precision == "x64":
    request.getfixturevalue("x64")
    assert rel_err(run_proxopt(tx, x0, target, jnp.float64), ref) <= 1e-12
  else:
    assert rel_err(run_proxopt(tx, x0, target, jnp.float32), ref) <= 1e-5


# --------------------------------------------------------- 2. torch and optax
def torch_trajectory(torch, make_opt, x0, target, lrs, dtype):
  x = torch.tensor(x0, dtype=dtype, requires_grad=False)
  x = torch.nn.Parameter(x)
  opt = make_opt([x])
  traj = []
  for lr in lrs:
    for group in opt.param_groups:
      group["lr"] = lr
    x.grad = torch.tensor(grad_fn(x.detach().double().numpy(), target), dtype=dtype)
    opt.step()
    traj.append(x.detach().double().numpy().copy())
  return np.stack(traj)


TORCH_CASES = [
    ("adam_l2", lambda t, wd: lambda p: t.optim.Adam(p, lr=1.0, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)),
    ("adamw", lambda t, wd: lambda p: t.optim.AdamW(p, lr=1.0, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)),
    ("sgd_l2", lambda t, wd: lambda p: t.optim.SGD(p, lr=1.0, momentum=0.9, weight_decay=wd)),
    ("sgd_l2_nesterov", lambda t, wd: lambda p: t.optim.SGD(p, lr=1.0, momentum=0.9, nesterov=True, weight_decay=wd)),
]


def proxopt_for(name, sched, wd):
  if name.startswith("adam"):
    return ADAMS[name](sched, weight_decay=wd, b1=0.9, b2=0.99, eps=1e-8)
  return proxopt.sgd_l2(sched, weight_decay=wd, momentum=0.9, nesterov=name.endswith("nesterov"))


@pytest.mark.torch
@pytest.mark.parametrize("name,make", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
@pytest.mark.parametrize("precision", ["x64", "f32"])
def test_matches_torch_optim(torch, name, make, precision, request):
  lr0, wd = 0.05, 0.3
  sched = optax.cosine_decay_schedule(lr0, decay_steps=STEPS, alpha=0.1)
  lrs = [np_cosine(t, lr0, STEPS, 0.1) for t in range(STEPS)]
  x0, target = problem(2)
  if precision == "x64":
    request.getfixturevalue("x64")
    ref = torch_trajectory(torch, make(torch, wd), x0, target, lrs, torch.float64)
    out = run_proxopt(proxopt_for(name, sched, wd), x0, target, jnp.float64)
    assert rel_err(out, ref) <= 1e-12
  else:
    ref = torch_trajectory(torch, make(torch, wd), x0, target, lrs, torch.float32)
    out = run_proxopt(proxopt_for(name, sched, wd), x0, target, jnp.float32)
    assert rel_err(out, ref) <= 1e-5


def tree_trajectory(tx, steps=STEPS, seed=3):
  rng = np.random.default_rng(seed)
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
  grads = [
      {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
      for _ in range(steps)
  ]
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out


def assert_bitwise(a, b):
  for pa, pb in zip(a, b):
    for la, lb in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
      np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))


@pytest.mark.parametrize("kind", sorted(ADAMS))
def test_zero_weight_decay_is_optax_adam_bitwise(kind):
  sched = optax.cosine_decay_schedule(1e-2, STEPS)
  ref = tree_trajectory(optax.adam(sched))
  assert_bitwise(tree_trajectory(ADAMS[kind](sched, weight_decay=0.0)), ref)


def test_adamw_is_optax_adamw_bitwise():
  sched = optax.cosine_decay_schedule(1e-2, STEPS)
  ref = tree_trajectory(optax.adamw(sched, weight_decay=0.1))
  assert_bitwise(tree_trajectory(proxopt.adamw(sched, weight_decay=0.1)), ref)
  # and the decay really acted: differs from wd = 0
  other = tree_trajectory(optax.adam(sched))
  assert not np.array_equal(np.asarray(ref[-1]["w"]), np.asarray(other[-1]["w"]))


# -------------------------------------------------- 3. one-step AdamW/AdamProx
def test_one_step_identity_adamw_minus_adamprox(x64):
  s, lam, b1, b2, eps = 0.03, 2.0, 0.9, 0.999, 1e-8
  rng = np.random.default_rng(4)
  x = {"x": jnp.asarray(rng.normal(size=6))}
  tx_w = proxopt.adamw(s, weight_decay=lam, b1=b1, b2=b2, eps=eps)
  tx_p = proxopt.adamprox(s, weight_decay=lam, b1=b1, b2=b2, eps=eps)
  state_w = tx_w.init(x)
  for _ in range(5):  # build a non-trivial Adam state
    u, state_w = tx_w.update({"x": jnp.asarray(rng.normal(size=6))}, state_w, x)
    x = optax.apply_updates(x, u)
  # Same Adam moments and count in the AdamProx chain.
  state_p = tx_p.init(x)
  state_p = (state_w[0],) + tuple(state_p[1:])
  g = {"x": jnp.asarray(rng.normal(size=6))}
  u_w, new_w = tx_w.update(g, state_w, x)
  u_p, new_p = tx_p.update(g, state_p, x)
  x_w = np.asarray(optax.apply_updates(x, u_w)["x"])
  x_p = np.asarray(optax.apply_updates(x, u_p)["x"])
  # d from the (shared) updated state, in NumPy.
  adam = new_w[0]
  t = int(adam.count)
  assert t == 6 and int(new_p[0].count) == 6
  m_hat = np.asarray(adam.mu["x"]) / (1 - b1**t)
  v_hat = np.asarray(adam.nu["x"]) / (1 - b2**t)
  d = m_hat / (np.sqrt(v_hat) + eps)
  x0 = np.asarray(x["x"])
  expected = -((s * lam) ** 2) * x0 / (1 + s * lam) - s**2 * lam * d / (1 + s * lam)
  assert np.max(np.abs(expected)) > 1e-4  # the identity is not vacuous
  np.testing.assert_allclose(x_w - x_p, expected, rtol=1e-10, atol=1e-15)


# -------------------------------------------------------- 4. scale-freeness
def scaled_trajectory(tx, x0, target, c, steps=50):
  params = {"x": jnp.asarray(x0)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for _ in range(steps):
    g = c * grad_fn(np.asarray(params["x"]), target)
    updates, state = update({"x": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    out.append(np.asarray(params["x"]))
  return np.stack(out)


def test_scale_freeness_eps0(x64):
  rng = np.random.default_rng(5)
  n = 12
  x0, target = rng.normal(size=n), rng.normal(size=n)
  c = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), size=n))
  sched = optax.cosine_decay_schedule(0.02, 50, alpha=0.1)
  diffs = {}
  for kind, make in ADAMS.items():
    tx = make(sched, weight_decay=0.5, eps=0.0)
    base = scaled_trajectory(tx, x0, target, np.ones(n))
    scaled = scaled_trajectory(tx, x0, target, c)
    assert np.all(np.isfinite(base)) and np.all(np.isfinite(scaled))
    diffs[kind] = rel_err(scaled, base)
  assert diffs["adamw"] <= 1e-9, diffs
  assert diffs["adamprox"] <= 1e-9, diffs
  assert diffs["adam_l2"] >= 1e-3, diffs


# ------------------------------------------------------------ 7. bad input
ALL = {**ADAMS, **SGDS}


@pytest.mark.parametrize("kind", sorted(ALL))
def test_negative_weight_decay_rejected(kind):
  with pytest.raises(ValueError, match=r"`weight_decay` must be >= 0, got -0\.1.*use 0 for none"):
    ALL[kind](0.1, weight_decay=-0.1)


@pytest.mark.parametrize("kind", sorted(ALL))
def test_negative_learning_rate_rejected(kind):
  with pytest.raises(ValueError, match=r"`learning_rate` must be >= 0.*positive learning rate"):
    ALL[kind](-0.1, weight_decay=0.1)


@pytest.mark.parametrize("kind", sorted(ALL))
def test_unknown_convention_rejected(kind):
  with pytest.raises(ValueError, match=r"unknown convention='pytorch'.*choose one of"):
    ALL[kind](0.1, weight_decay=0.1, convention="pytorch")


@pytest.mark.parametrize("kind", sorted(ALL))
def test_integer_params_rejected_with_path(kind):
  tx = ALL[kind](0.1, weight_decay=0.1)
  params = {"ok": jnp.ones(2), "layer": {"step": jnp.zeros(2, jnp.int32)}}
  with pytest.raises(TypeError, match=r"\['layer'\]\['step'\].*int32.*Cast it to a float"):
    tx.init(params)


@pytest.mark.parametrize("kind", sorted(ALL))
def test_update_without_params_rejected(kind):
  tx = ALL[kind](0.1, weight_decay=0.1)
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match=rf"proxopt\.{kind} needs the current parameters.*tx\.update\(updates, state, params\)"):
    tx.update({"w": jnp.ones(2)}, tx.init(params))
