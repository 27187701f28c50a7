"""One battery of properties over every public optimizer and prox chain.

Modelled on optax's ``optax/_src/alias_test.py``: a single list, ``CASES``,
holds every proxopt optimizer (the six aliases, ``classic`` for each of
``CLASSIC_OPTIMIZERS``, and chains of a base optimizer with ``proximal`` for
each regularizer and with ``decoupled_weight_decay``), and every property is
parametrized over it:

- convergence to the *known* minimum on a parabola (regularization on) and
  on the Rosenbrock function (regularization off or inactive there);
- jit equals eager (float64, tight tolerance);
- changing injected hyper-parameters does not recompile the jitted step
  (counted by a trace counter and ``_cache_size``) and does change the
  result;
- ``inject_hyperparams(factory)(**hp)`` equals ``factory(**hp)``;
- state tree structure, shapes and dtypes unchanged by ``update``, updates
  and params keep their dtype, for bfloat16, float16, float32, float64;
- unknown extra keyword arguments to ``update`` are accepted and ignored;
- ``optax.MultiSteps`` (k micro-steps = one step on the mean gradient).

Every call is by keyword (``learning_rate=``, ``weight_decay=``,
``momentum=``) so that the battery does not depend on argument order. Each
case's factory takes its hyper-parameters as keyword arguments, so the same
factory is what ``optax.inject_hyperparams`` wraps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxopt

# ---------------------------------------------------------------------------
# Problems and their known minima.

T = np.array([1.0, -1.0, 1.0])  # parabola f(x) = ||x - T||^2 (Hessian 2 I)
X0_PARABOLA = np.array([-1.0, 10.0, 1.0])  # optax's starting point
X0_ROSENBROCK = np.array([0.0, 0.0])  # minimum at (1, 1)

# Tolerances, stated once: max |x - x*| after the given number of steps.
PARABOLA_ATOL = 1e-2
ROSENBROCK_ATOL = 3e-2  # optax's alias_test tolerance
PARABOLA_STEPS = 20000
ROSENBROCK_STEPS = 20000


def parabola(x):
  return jnp.sum((x - jnp.asarray(T, x.dtype)) ** 2)


def rosenbrock(x):
  return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def _soft(z, t):
  return np.sign(z) * np.maximum(np.abs(z) - t, 0.0)


# argmin_x ||x - T||^2 + R(x), in closed form, for the regularizers used.
# A plain (sub)gradient method's fixed point x = prox_{sR}(x - s grad f(x))
# is exactly this minimizer, whatever the step size.
def l2_min(lam):  # R = lam/2 ||x||^2 (also L2 in the gradient, and decay)
  return lambda t: 2 * t / (2 + lam)


def l1_min(lam):  # R = lam ||x||_1
  return lambda t: _soft(t, lam / 2)


def enet_min(l1, l2):  # R = l1 ||x||_1 + l2/2 ||x||^2
  return lambda t: _soft(2 * t, l1) / (2 + l2)


def group_min(lam):  # R = lam ||x||_2, the whole vector one group
  return lambda t: t * max(0.0, 1 - lam / (2 * np.linalg.norm(t)))


def box_min(lo, hi):  # indicator of [lo, hi]: projection (f is separable)
  return lambda t: np.clip(t, lo, hi)


# Adaptive methods (Adam, RMSProp) with a *decoupled* term (AdamW/AdamProx
# decay, a prox after Adam): the fixed point is where the normalised
# direction m / (sqrt(v) + eps) balances the decoupled term, i.e.
# |grad f| ~ eps * lam |x|: the minimizer of f itself up to ~eps (the
# scale-free fixed point of Zhuang et al., 2022), or its projection for a
# constraint (f separable, diagonal preconditioner).
unregularized_min = lambda t: t

BOX = (-0.5, 2.0)  # contains Rosenbrock's (1, 1); clips T[1] = -1 and 10


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity
class Case:
  """One optimizer: ``factory(**hp)`` builds it (hp injectable by keyword)."""

  name: str
  factory: Callable[..., optax.GradientTransformation]
  hp: dict[str, float]  # for the parabola and every other property
  minimum: Callable[[np.ndarray], np.ndarray]  # of the parabola, given T
  rosenbrock_hp: dict[str, float]  # regularization off / inactive at (1, 1)
  project: Any = None  # a constraint the start must satisfy (box, >= 0)
  static: tuple[str, ...] = ()  # hyper-parameters inject_hyperparams keeps

  def __repr__(self):
    return self.name

  def make(self, **overrides):
    return self.factory(**{**self.hp, **overrides})

  def injected(self, **overrides):
    return optax.inject_hyperparams(self.factory, static_args=self.static)(
        **{**self.hp, **overrides})


def _sgd(learning_rate):
  return optax.sgd(learning_rate=learning_rate, momentum=BETA)


def _adam(learning_rate):
  return optax.adam(learning_rate=learning_rate)


# Chain factories: explicit keyword parameters (inject_hyperparams reads the
# signature), the base's learning rate is the prox's / decay's step size.
def sgd_l1(learning_rate, lam):
  return optax.chain(_sgd(learning_rate),
                     proxopt.proximal(proxopt.l1(lam), learning_rate))


def sgd_l2_squared(learning_rate, lam):
  return optax.chain(_sgd(learning_rate),
                     proxopt.proximal(proxopt.l2_squared(lam), learning_rate))


def sgd_elastic_net(learning_rate, l1, l2):
  return optax.chain(
      _sgd(learning_rate),
      proxopt.proximal(proxopt.elastic_net(l1, l2), learning_rate))


def sgd_group_lasso(learning_rate, lam):
  return optax.chain(_sgd(learning_rate),
                     proxopt.proximal(proxopt.group_lasso(lam), learning_rate))


def sgd_box(learning_rate):
  return optax.chain(_sgd(learning_rate),
                     proxopt.proximal(proxopt.box(*BOX), learning_rate))


def sgd_nonnegative(learning_rate):
  return optax.chain(_sgd(learning_rate),
                     proxopt.proximal(proxopt.nonnegative(), learning_rate))


def sgd_decoupled(learning_rate, wd):
  return optax.chain(_sgd(learning_rate),
                     proxopt.decoupled_weight_decay(wd, learning_rate))


def adam_l1(learning_rate, lam):
  return optax.chain(_adam(learning_rate),
                     proxopt.proximal(proxopt.l1(lam), learning_rate))


def adam_box(learning_rate):
  return optax.chain(_adam(learning_rate),
                     proxopt.proximal(proxopt.box(*BOX), learning_rate))


def adam_decoupled(learning_rate, wd):
  return optax.chain(_adam(learning_rate),
                     proxopt.decoupled_weight_decay(wd, learning_rate))


def _classic(name, l1=False, **static):
  """classic(name, ...) with weight_decay (static) or an l1 strength `lam`."""
  if l1:
    def factory(learning_rate, lam):
      return proxopt.classic(name, learning_rate, regularizer=proxopt.l1(lam),
                             **static)
  else:
    def factory(learning_rate, weight_decay=0.0):
      return proxopt.classic(name, learning_rate, weight_decay=weight_decay,
                             **static)
  return factory


# Strengths. Adaptive methods with a decoupled term get WD_ADAPTIVE * |x| < 1
# at the minimum (otherwise the normalised direction, at most 1 in size,
# cannot balance the decay and the fixed point moves to |x| = 1 / wd).
WD_ADAPTIVE = 0.5
WD = 2.0  # for the SGD family: large enough to move the minimum visibly
BETA = 0.9  # heavy-ball momentum of every SGD-type base
# With momentum beta in the base and the decay / prox applied *after* it,
# the trace at a fixed point is grad / (1 - beta) while the decoupled term is
# not amplified: x* = argmin f + (1 - beta) R. (L2 inside the gradient,
# sgd_l2, is amplified with it: x* = argmin f + R.)
EFF = 1 - BETA
SGD_ROSEN = dict(learning_rate=1e-3)


def _alias(name, **static):
  def factory(learning_rate, weight_decay):
    return getattr(proxopt, name)(learning_rate=learning_rate,
                                  weight_decay=weight_decay, **static)

  return factory


CASES = [
    # The aliases (keyword calls: old and new signatures alike).
    Case("adam_l2", _alias("adam_l2"),
         dict(learning_rate=0.05, weight_decay=WD), l2_min(WD),
         dict(learning_rate=0.05, weight_decay=0.0)),
    Case("adamw", _alias("adamw"),
         dict(learning_rate=0.05, weight_decay=WD_ADAPTIVE), unregularized_min,
         dict(learning_rate=0.05, weight_decay=0.0)),
    Case("adamprox", _alias("adamprox"),
         dict(learning_rate=0.05, weight_decay=WD_ADAPTIVE), unregularized_min,
         dict(learning_rate=0.05, weight_decay=0.0)),
    Case("sgd_l2", _alias("sgd_l2", momentum=BETA),
         dict(learning_rate=0.05, weight_decay=WD), l2_min(WD),
         dict(SGD_ROSEN, weight_decay=0.0)),
    Case("sgdw", _alias("sgdw", momentum=BETA),
         dict(learning_rate=0.05, weight_decay=WD), l2_min(EFF * WD),
         dict(SGD_ROSEN, weight_decay=0.0)),
    Case("sgdprox", _alias("sgdprox", momentum=BETA),
         dict(learning_rate=0.05, weight_decay=WD), l2_min(EFF * WD),
         dict(SGD_ROSEN, weight_decay=0.0)),
    # classic(...) for every CLASSIC_OPTIMIZERS entry (checked below); its
    # weight_decay is static (the decay is added only if it is > 0).
    Case("classic_sgd_wd", _classic("sgd"),
         dict(learning_rate=0.1, weight_decay=WD), l2_min(WD),
         dict(learning_rate=1.5e-3, weight_decay=0.0), static=("weight_decay",)),
    Case("classic_momentum_wd", _classic("momentum"),
         dict(learning_rate=0.05, weight_decay=WD), l2_min(EFF * WD),
         dict(SGD_ROSEN, weight_decay=0.0), static=("weight_decay",)),
    Case("classic_nesterov_wd", _classic("nesterov"),
         dict(learning_rate=0.05, weight_decay=WD), l2_min(EFF * WD),
         dict(SGD_ROSEN, weight_decay=0.0), static=("weight_decay",)),
    Case("classic_momentum_l1", _classic("momentum", l1=True),
         dict(learning_rate=0.05, lam=WD), l1_min(EFF * WD),
         dict(SGD_ROSEN, lam=0.0)),
    Case("classic_adagrad_nonneg",
         _classic("adagrad", regularizer=proxopt.nonnegative()),
         dict(learning_rate=0.5), box_min(0.0, np.inf),
         dict(learning_rate=0.5), project=proxopt.nonnegative(),
         static=("weight_decay",)),
    Case("classic_rmsprop_wd", _classic("rmsprop"),
         dict(learning_rate=0.01, weight_decay=WD_ADAPTIVE), unregularized_min,
         dict(learning_rate=1e-3, weight_decay=0.0), static=("weight_decay",)),
    Case("classic_adam_wd", _classic("adam"),
         dict(learning_rate=0.05, weight_decay=WD_ADAPTIVE), unregularized_min,
         dict(learning_rate=0.05, weight_decay=0.0), static=("weight_decay",)),
    # proximal(regularizer) and decoupled_weight_decay after a base optimizer.
    Case("sgd+prox(l1)", sgd_l1,
         dict(learning_rate=0.05, lam=WD), l1_min(EFF * WD),
         dict(SGD_ROSEN, lam=0.0)),
    Case("sgd+prox(l2_squared)", sgd_l2_squared,
         dict(learning_rate=0.05, lam=WD), l2_min(EFF * WD),
         dict(SGD_ROSEN, lam=0.0)),
    Case("sgd+prox(elastic_net)", sgd_elastic_net,
         dict(learning_rate=0.05, l1=WD, l2=WD), enet_min(EFF * WD, EFF * WD),
         dict(SGD_ROSEN, l1=0.0, l2=0.0)),
    Case("sgd+prox(group_lasso)", sgd_group_lasso,
         dict(learning_rate=0.05, lam=2 * WD), group_min(EFF * 2 * WD),
         dict(SGD_ROSEN, lam=0.0)),
    Case("sgd+prox(box)", sgd_box,
         dict(learning_rate=0.05), box_min(*BOX), SGD_ROSEN,
         project=proxopt.box(*BOX)),
    Case("sgd+prox(nonnegative)", sgd_nonnegative,
         dict(learning_rate=0.05), box_min(0.0, np.inf), SGD_ROSEN,
         project=proxopt.nonnegative()),
    Case("sgd+decoupled_weight_decay", sgd_decoupled,
         dict(learning_rate=0.05, wd=WD), l2_min(EFF * WD),
         dict(SGD_ROSEN, wd=0.0)),
    Case("adam+prox(l1)", adam_l1,
         dict(learning_rate=0.05, lam=WD_ADAPTIVE), unregularized_min,
         dict(learning_rate=0.05, lam=0.0)),
    Case("adam+prox(box)", adam_box,
         dict(learning_rate=0.05), box_min(*BOX), dict(learning_rate=0.05),
         project=proxopt.box(*BOX)),
    Case("adam+decoupled_weight_decay", adam_decoupled,
         dict(learning_rate=0.05, wd=WD_ADAPTIVE), unregularized_min,
         dict(learning_rate=0.05, wd=0.0)),
]
IDS = [c.name for c in CASES]


def test_the_list_covers_every_public_optimizer():
  names = set(IDS)
  for alias in ("adam_l2", "adamw", "adamprox", "sgd_l2", "sgdw", "sgdprox"):
    assert alias in names
  for base in proxopt.CLASSIC_OPTIMIZERS:
    assert any(n.startswith(f"classic_{base}") for n in names), base
  for reg in ("l1", "l2_squared", "elastic_net", "group_lasso", "box",
              "nonnegative"):
    assert f"sgd+prox({reg})" in names, reg
  assert "sgd+decoupled_weight_decay" in names


# ---------------------------------------------------------------------------
# Helpers (one compiled function per case and property).


def _start(case, x0, dtype=jnp.float32):
  x = jnp.asarray(x0, dtype)
  if case.project is not None:  # start feasible, as `proximal` assumes
    x = proxopt.apply_prox(case.project, x, 0.0)
  return x


def _run(tx, objective, x0, steps):
  @jax.jit
  def run(x):
    def step(carry, _):
      x, s = carry
      u, s = tx.update(jax.grad(objective)(x), s, x)
      return (optax.apply_updates(x, u), s), None

    (x, _), _ = jax.lax.scan(step, (x, tx.init(x)), None, length=steps)
    return x

  return np.asarray(run(x0), np.float64)


# ---------------------------------------------------------------------------
# Convergence.


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parabola_converges_to_the_known_minimum(case):
  x0 = _start(case, X0_PARABOLA)
  x = _run(case.make(), parabola, x0, PARABOLA_STEPS)
  want = case.minimum(T)
  np.testing.assert_allclose(x, want, rtol=0, atol=PARABOLA_ATOL)
  # The run had to move; where the case's minimum is not T, the regularizer
  # had to move it by more than the tolerance.
  assert np.max(np.abs(np.asarray(x0) - want)) > 10 * PARABOLA_ATOL
  if case.minimum is not unregularized_min:
    assert np.max(np.abs(want - T)) > 3 * PARABOLA_ATOL


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rosenbrock_converges_to_its_minimum(case):
  x0 = _start(case, X0_ROSENBROCK)
  x = _run(case.make(**case.rosenbrock_hp), rosenbrock, x0, ROSENBROCK_STEPS)
  np.testing.assert_allclose(x, [1.0, 1.0], rtol=0, atol=ROSENBROCK_ATOL)


# ---------------------------------------------------------------------------
# jit == eager, injected hyper-parameters, inject_hyperparams == plain.


def _grads(x, k):
  """A fixed, non-trivial gradient sequence (no objective needed)."""
  return jnp.sin(3.0 * x + k) + 0.1 * (k + 1) * jnp.asarray(T[: x.shape[0]], x.dtype)


def _steps(tx, x, n, update=None, **extra):
  """n updates; returns the params after each step and the final state."""
  update = update or tx.update
  s = tx.init(x)
  xs = []
  for k in range(n):
    u, s = update(_grads(x, k), s, x, **extra)
    x = optax.apply_updates(x, u)
    xs.append(x)
  return xs, s


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jit_equals_eager(case, x64):
  tx = case.make()
  x0 = _start(case, X0_PARABOLA, jnp.float64)
  eager, s_eager = _steps(tx, x0, 4)
  jitted, s_jit = _steps(tx, x0, 4, update=jax.jit(tx.update))
  np.testing.assert_allclose(np.stack(jitted), np.stack(eager), rtol=1e-13,
                             atol=1e-15)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13,
                                                       atol=1e-15),
               s_jit, s_eager)
  assert np.max(np.abs(np.asarray(eager[-1]) - np.asarray(x0))) > 1e-3


@functools.lru_cache(maxsize=None)
def _injected_step(case):
  """The jitted step of the injected optimizer, with a trace counter."""
  tx = case.injected()
  traces = []

  @jax.jit
  def step(x, s, g):
    traces.append(1)  # runs only when jax traces (compiles) the function
    u, s = tx.update(g, s, x)
    return optax.apply_updates(x, u), s

  return tx, step, traces


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_changing_injected_hyperparams_does_not_recompile(case):
  tx, step, traces = _injected_step(case)
  x = _start(case, X0_PARABOLA)
  s = tx.init(x)
  g = _grads(x, 0)
  x1, s1 = step(x, s, g)
  x1, s1 = step(x1, s1, g)
  assert len(traces) == 1 and step._cache_size() == 1
  injected = {k: v for k, v in s1.hyperparams.items()}
  assert set(injected) == set(case.hp) - set(case.static)
  for name, value in injected.items():
    changed = s1._replace(hyperparams={**injected, name: value * 0.5 + 0.01})
    x2, s2 = step(x1, changed, g)
    assert len(traces) == 1 and step._cache_size() == 1, name
    # Same dtype and shape: the changed value is carried, not re-typed ...
    assert s2.hyperparams[name].dtype == value.dtype
    # ... and it is read: the step differs from the unchanged one (every
    # injected strength acts at this point, far from the minimum).
    same, _ = step(x1, s1, g)
    assert len(traces) == 1
    assert not np.allclose(np.asarray(x2), np.asarray(same), rtol=0,
                           atol=1e-6), name
  # The counter does see a retrace (a different hyper-parameter dtype).
  retyped = {k: v.astype(jnp.float16) for k, v in injected.items()}
  step(x1, s1._replace(hyperparams=retyped), g)
  assert len(traces) == 2 and step._cache_size() == 2


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_inject_hyperparams_equals_the_plain_optimizer(case):
  tx_inj, step, _ = _injected_step(case)
  tx = case.make()
  x = xi = _start(case, X0_PARABOLA)
  s, si = tx.init(x), tx_inj.init(x)
  plain = jax.jit(tx.update)
  for k in range(3):
    g = _grads(x, k)
    u, s = plain(g, s, x)
    x = optax.apply_updates(x, u)
    xi, si = step(xi, si, g)
  np.testing.assert_allclose(xi, x, rtol=1e-6, atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7),
               si.inner_state, s)


# ---------------------------------------------------------------------------
# State stability and dtypes.

DTYPES = ["bfloat16", "float16", "float32", "float64"]


def _signature(tree):
  return (jax.tree.structure(tree),
          [(np.shape(l), jnp.result_type(l)) for l in jax.tree.leaves(tree)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_and_dtypes_are_stable_under_update(case, dtype):
  with jax.enable_x64(dtype == "float64"):
    dtype = jnp.dtype(dtype)
    tx = case.make()
    # No exactly zero gradient: in float16 Adam's eps=1e-8 underflows to 0,
    # and 0 / 0 is NaN for optax.adam itself.
    x = {"w": _start(case, X0_PARABOLA + 0.25, dtype),
         "b": _start(case, X0_ROSENBROCK[:1] + 0.5, dtype)}
    grads = jax.grad(lambda p: parabola(p["w"]) + jnp.sum(p["b"] ** 2))

    @jax.jit
    def two_steps(x, s):
      u1, s1 = tx.update(grads(x), s, x)
      x1 = optax.apply_updates(x, u1)
      u2, s2 = tx.update(grads(x1), s1, x1)
      return u1, s1, u2, s2, optax.apply_updates(x1, u2)

    s0 = jax.jit(tx.init)(x)
    u1, s1, u2, s2, x2 = two_steps(x, s0)
    assert _signature(s1) == _signature(s0) == _signature(s2)
    for u in (u1, u2):
      assert _signature(u) == _signature(x)
    assert _signature(x2) == _signature(x)
    # The state is usable as a jit carry without retracing.
    jax.lax.scan(lambda s, _: (tx.update(grads(x), s, x)[1], None), s0, None,
                 length=2)
    assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(x2))


# ---------------------------------------------------------------------------
# Extra arguments and MultiSteps.


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_update_accepts_and_ignores_extra_args(case):
  tx = case.make()
  x = _start(case, X0_PARABOLA)
  step = jax.jit(lambda g, s, x, **kw: tx.update(g, s, x, **kw))
  want, _ = _steps(tx, x, 2, update=step)
  got, _ = _steps(tx, x, 2, update=step,
                  unexpected_extra_arg_your_optimizer_does_not_expect=1)
  np.testing.assert_array_equal(np.stack(got), np.stack(want))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_multisteps_is_one_step_on_the_mean_gradient(case):
  k = 3
  tx = case.make()
  multi = optax.MultiSteps(tx, every_k_schedule=k)
  x = _start(case, X0_PARABOLA)
  gs = [_grads(x, i) for i in range(2 * k)]

  @jax.jit
  def run(x):
    s = multi.init(x)
    xs = []
    for g in gs:
      u, s = multi.update(g, s, x)
      x = optax.apply_updates(x, u)
      xs.append(x)
    return jnp.stack(xs)

  @jax.jit
  def reference(x):
    s = tx.init(x)
    xs = []
    for i in range(2):
      g = sum(gs[i * k:(i + 1) * k]) / k
      u, s = tx.update(g, s, x)
      x = optax.apply_updates(x, u)
      xs.append(x)
    return jnp.stack(xs)

  got, want = np.asarray(run(x)), np.asarray(reference(x))
  # Params only move every k-th micro-step, then as one step on the mean.
  np.testing.assert_array_equal(got[: k - 1], np.broadcast_to(x, (k - 1, 3)))
  np.testing.assert_allclose(got[[k - 1, 2 * k - 1]], want, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(got[k:2 * k - 1],
                                np.broadcast_to(got[k - 1], (k - 1, 3)))
  assert not np.allclose(want[0], x)
