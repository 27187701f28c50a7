"""Bad input fails early, naming the argument and the fix.

Each case failed late (inside jit or optax.masked) with a message about
something else, or silently did the wrong thing, before proxopt 0.2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxopt

ALIASES = [proxopt.adam_l2, proxopt.adamw, proxopt.adamprox,
           proxopt.sgd_l2, proxopt.sgdw, proxopt.sgdprox]


def _tree():
  return {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
          "norm": {"scale": jnp.ones(3)}}


def _kernels_only(params):
  return jax.tree.map(lambda x: x.ndim > 1, params)


@pytest.mark.parametrize("alias", ALIASES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("lr", ["1e-3", None, [1e-3]])
def test_non_numeric_learning_rate_refused_at_construction(alias, lr):
  with pytest.raises(TypeError, match=r"`learning_rate` must be a number, an array or a schedule.*learning_rate=1e-3"):
    alias(lr, weight_decay=0.1)


@pytest.mark.parametrize("make", [
    lambda lr: proxopt.proximal(proxopt.l1(0.1), lr),
    lambda lr: proxopt.decoupled_weight_decay(0.1, lr),
])
def test_non_numeric_step_size_refused_in_transforms(make):
  with pytest.raises(TypeError, match=r"`step_size` must be a number"):
    make("0.1")
  with pytest.raises(TypeError, match=r"`step_size` must be a number"):
    make(None)


def test_non_numeric_weight_decay_refused():
  with pytest.raises(TypeError, match=r"`weight_decay` must be a number"):
    proxopt.adamw(1e-3, weight_decay="0.1")
  with pytest.raises(TypeError, match=r"`weight_decay` must be a number"):
    proxopt.decoupled_weight_decay(None, 0.1)


@pytest.mark.parametrize("reg", ["l1", 0.1, None, optax.adam(0.1)])
def test_proximal_needs_a_regularizer(reg):
  with pytest.raises(TypeError, match=r"`regularizer` must be a proxopt.Regularizer, e.g. proxopt.l1\(1e-4\)"):
    proxopt.proximal(reg, 0.1)
  with pytest.raises(TypeError, match=r"must be a proxopt.Regularizer"):
    proxopt.apply_prox(reg, {"w": jnp.ones(2)}, 0.1)


@pytest.mark.parametrize("alias", ALIASES, ids=lambda f: f.__name__)
def test_python_float_leaves_refused_with_the_fix(alias):
  tx = alias(0.1, weight_decay=0.1)
  with pytest.raises(TypeError, match=r"path \['b'\] is a Python float.*jax.tree.map\(jnp.asarray, params\)"):
    tx.init({"a": jnp.ones(2), "b": 1.0})


def test_python_float_leaves_refused_by_the_transforms():
  for tx in (proxopt.proximal(proxopt.l1(0.1), 0.1),
             proxopt.decoupled_weight_decay(0.1, 0.1)):
    with pytest.raises(TypeError, match=r"Python float"):
      tx.init({"w": 2.0})


@pytest.mark.parametrize("make", [
    lambda m: proxopt.adamw(0.1, weight_decay=0.1, mask=m),
    lambda m: proxopt.adamprox(0.1, weight_decay=0.1, mask=m),
    lambda m: proxopt.proximal(proxopt.l1(0.1), 0.1, mask=m),
])
def test_per_element_boolean_mask_refused_with_the_alternative(make):
  params = {"w": jnp.ones(3), "b": jnp.ones(2)}
  mask = {"w": jnp.array([True, False, True]), "b": False}
  with pytest.raises(TypeError, match=r"mask leaf at path \['w'\] is a boolean array of shape \(3,\).*array coefficient"):
    make(mask).init(params)


def test_plain_dict_mask_on_frozendict_params_names_the_fix():
  flax_core = pytest.importorskip("flax.core")
  params = flax_core.freeze({"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}})
  mask = {"dense": {"kernel": True, "bias": False}}
  with pytest.raises(TypeError, match=r"not the same container types.*FrozenDict.*flax.core.freeze\(mask\)"):
    proxopt.adamw(0.1, weight_decay=0.1, mask=mask).init(params)
  # The suggested fixes work.
  for ok in (flax_core.freeze(mask), _kernels_only):
    tx = proxopt.adamw(0.1, weight_decay=0.1, mask=ok)
    tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)


@pytest.mark.parametrize("alias", ALIASES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("mask", [True, False, jnp.asarray(False), np.bool_(True)])
def test_single_bool_mask_refused(alias, mask):
  with pytest.raises(TypeError, match=r"`mask` is a single boolean.*static_args=\(\"mask\",\)"):
    alias(0.1, weight_decay=0.1, mask=mask)


@pytest.mark.parametrize("alias", [proxopt.adamw, proxopt.adamprox, proxopt.sgdw,
                                   proxopt.adam_l2], ids=lambda f: f.__name__)
def test_inject_hyperparams_with_callable_mask_fails_loudly(alias):
  # optax.inject_hyperparams evaluates every callable argument as a schedule:
  # mask(step_count) is False here, which used to turn the decay off silently.
  tx = optax.inject_hyperparams(alias)(learning_rate=0.1, weight_decay=0.5,
                                       mask=_kernels_only)
  with pytest.raises(TypeError, match=r"inject_hyperparams calls every function argument as a schedule"):
    tx.init(_tree())


@pytest.mark.parametrize("alias", [proxopt.adamw, proxopt.adamprox], ids=lambda f: f.__name__)
def test_inject_hyperparams_with_static_mask_decays_only_the_masked_leaves(alias):
  params = _tree()
  tx = optax.inject_hyperparams(alias, static_args=("mask",))(
      learning_rate=0.1, weight_decay=0.5, mask=_kernels_only)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert np.all(np.asarray(updates["dense"]["kernel"]) < 0)  # decayed
  np.testing.assert_array_equal(np.asarray(updates["norm"]["scale"]), 0.0)  # not decayed


def test_negative_coefficients_and_step_sizes_refused():
  with pytest.raises(ValueError, match=r"`weight_decay` must be >= 0"):
    proxopt.decoupled_weight_decay(-1.0, 0.1)
  with pytest.raises(ValueError, match=r"`step_size` must be >= 0"):
    proxopt.apply_prox(proxopt.l1(0.1), {"w": jnp.ones(2)}, -1.0)
  with pytest.raises(ValueError, match=r"`weight_decay` must be >= 0 everywhere"):
    proxopt.adamw(0.1, weight_decay=jnp.array([0.1, -0.1]))


def test_box_bounds_must_broadcast_to_the_leaf():
  reg = proxopt.box(jnp.zeros(3), jnp.ones(3))
  with pytest.raises(ValueError, match=r"`lower` of box.*path \['w'\]"):
    optax.chain(optax.sgd(0.1), proxopt.proximal(reg, 0.1)).init({"w": jnp.ones(2)})


# ---------------------------------------------------------------------------
# Issue #23: inputs that still slipped through.

INF = float("inf")


@pytest.mark.parametrize("make, arg", [
    (lambda: proxopt.l2_squared(INF), "lam"),
    (lambda: proxopt.l1(INF), "lam"),
    (lambda: proxopt.elastic_net(0.1, INF), "l2"),
    (lambda: proxopt.group_lasso(np.array([0.1, INF])), "lam"),
    (lambda: proxopt.adamw(0.1, weight_decay=INF), "weight_decay"),
    (lambda: proxopt.adamprox(0.1, weight_decay=INF), "weight_decay"),
    (lambda: proxopt.sgdw(0.1, weight_decay=INF), "weight_decay"),
    (lambda: proxopt.decoupled_weight_decay(INF, 0.1), "weight_decay"),
    (lambda: proxopt.adamw(INF, weight_decay=0.1), "learning_rate"),
    (lambda: proxopt.proximal(proxopt.l1(0.1), INF), "step_size"),
])
def test_infinite_coefficients_refused(make, arg):
  # Accepted before #23 and gave NaN/inf parameters (inf * 0, x / inf).
  with pytest.raises(ValueError, match=rf"`{arg}` must be finite"):
    make()


@pytest.mark.parametrize("alias", [proxopt.sgdw, proxopt.sgdprox, proxopt.sgd_l2],
                         ids=lambda f: f.__name__)
def test_float_in_nesterov_position_refused_with_the_keyword_fix(alias):
  # optax.sgd(learning_rate, momentum, nesterov): 5e-4 there meant Nesterov
  # with the default weight decay.
  name = alias.__name__
  with pytest.raises(TypeError, match=rf"`nesterov` must be True or False.*"
                     rf"{name}\(learning_rate, 0.9, weight_decay=0.0005\)"):
    alias(0.1, 0.9, 5e-4)
  alias(0.1, 0.9, True, weight_decay=5e-4)  # a bool is still fine


@pytest.mark.parametrize("alias", [proxopt.adam_l2, proxopt.adamw, proxopt.adamprox],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs, err, match", [
    (dict(b1=1.5), ValueError, r"`b1` must be in \[0, 1\)"),
    (dict(b1=1.0), ValueError, r"`b1` must be in \[0, 1\)"),
    (dict(b2=-0.1), ValueError, r"`b2` must be in \[0, 1\)"),
    (dict(eps=-1.0), ValueError, r"`eps` must be a finite number >= 0"),
    (dict(eps=INF), ValueError, r"`eps` must be a finite number >= 0"),
    (dict(eps_root=-1e-8), ValueError, r"`eps_root` must be a finite number >= 0"),
    (dict(b1="0.9"), TypeError, r"`b1` must be a real number, got '0.9'"),
    (dict(b2=None), TypeError, r"`b2` must be a real number"),
    (dict(nesterov=0.0), TypeError, r"`nesterov` must be True or False"),
])
def test_adam_hyperparameters_checked_at_construction(alias, kwargs, err, match):
  with pytest.raises(err, match=match):
    alias(0.1, weight_decay=0.1, **kwargs)


@pytest.mark.parametrize("make", [
    lambda m: proxopt.sgdw(0.1, momentum=m),
    lambda m: proxopt.sgdprox(0.1, momentum=m),
    lambda m: proxopt.sgd_l2(0.1, momentum=m),
    lambda m: proxopt.classic("momentum", 0.1, momentum=m),
    lambda m: proxopt.classic("nesterov", 0.1, momentum=m),
])
def test_one_momentum_rule(make):
  for bad in (1.0, 1.5, -0.1):
    with pytest.raises(ValueError, match=r"`momentum` must be in \[0, 1\)"):
      make(bad)
  with pytest.raises(TypeError, match=r"`momentum` must be a real number"):
    make("0.9")
  make(0.0), make(0.99)


@pytest.mark.parametrize("alias", [proxopt.adamw, proxopt.adam_l2, proxopt.sgdw,
                                   proxopt.sgd_l2, proxopt.adamprox],
                         ids=lambda f: f.__name__)
def test_array_weight_decay_that_does_not_broadcast_names_the_path(alias):
  params = {"b": jnp.ones(2), "w": jnp.ones((2, 3))}
  tx = alias(0.1, weight_decay=jnp.full(3, 0.1))
  with pytest.raises(ValueError, match=r"`?(weight_decay|lam)`?.*shape \(3,\).*path \['b'\]"):
    tx.init(params)
  # Masked out, the leaf that does not fit is not decayed and not checked.
  tx = alias(0.1, weight_decay=jnp.full(3, 0.1), mask={"b": False, "w": True})
  tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)


def test_regularizer_value_of_float16_params_does_not_overflow():
  params = {"w": jnp.full(1000, 300.0, jnp.float16)}
  value = proxopt.regularizer_value(proxopt.l2_squared(1.0), params)
  assert value.dtype == jnp.float32
  assert float(value) == pytest.approx(0.5 * 1000 * 300.0**2, rel=1e-6)  # 4.5e7 > 65504
  value = proxopt.regularizer_value(proxopt.l1(1.0), {"w": jnp.full(1000, 300.0, jnp.bfloat16)})
  assert value.dtype == jnp.float32 and float(value) == pytest.approx(3e5, rel=1e-6)


@pytest.mark.parametrize("reg", [proxopt.l1(1.0), proxopt.elastic_net(1.0, 0.5),
                                 proxopt.group_lasso(1.0)], ids=lambda r: r.kind)
def test_apply_prox_and_the_chain_give_the_same_signed_zero(reg):
  x = jnp.array([0.01, -0.01])
  direct = np.asarray(proxopt.apply_prox(reg, [x], 0.1)[0])
  tx = proxopt.proximal(reg, 0.1)
  u, _ = tx.update([jnp.zeros(2)], tx.init([x]), [x])
  chained = np.asarray(optax.apply_updates([x], u)[0])
  np.testing.assert_array_equal(direct, 0.0)
  np.testing.assert_array_equal(np.signbit(direct), np.signbit(chained))
  assert not np.any(np.signbit(direct))  # +0, as x + (-x) in the chain


def test_argument_checks_live_in_checks_module():
  # Issue #23 (code shape): one argument-checking style. Every module calls
  # the `_checks.check_*` helpers (one message format) instead of raising
  # ValueError/TypeError itself or defining its own `_check_*` functions.
  import ast
  import pathlib

  allowed = {("_regularizers.py", "unsplit")}  # a stub that always refuses
  root = pathlib.Path(proxopt.__file__).parent
  found = []

  class Visitor(ast.NodeVisitor):
    def __init__(self, file):
      self.file, self.stack = file, ["<module>"]

    def visit_FunctionDef(self, fn):
      if fn.name.startswith("_check"):
        found.append(f"{self.file}: def {fn.name}")
      self.stack.append(fn.name)
      self.generic_visit(fn)
      self.stack.pop()

    def visit_Raise(self, node):
      name = getattr(getattr(node.exc, "func", None), "id", "")
      if name in ("ValueError", "TypeError") and (self.file, self.stack[-1]) not in allowed:
        found.append(f"{self.file}:{node.lineno} raise {name} in {self.stack[-1]}")

  for path in sorted(root.glob("*.py")):
    if path.name != "_checks.py":
      Visitor(path.name).visit(ast.parse(path.read_text()))
  assert not found, found
