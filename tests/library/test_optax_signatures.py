"""A call written for the optax counterpart means the same thing in proxopt.

proxopt's Adam aliases take ``optax.adamw``'s parameters in its order, the SGD
aliases ``optax.sgd``'s followed by ``weight_decay`` and ``mask``. Checked
two ways: the signatures themselves, and trajectories of calls with the same
positional arguments, bit for bit.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxopt

ADAM_ALIASES = [proxopt.adam_l2, proxopt.adamw, proxopt.adamprox]
SGD_ALIASES = [proxopt.sgd_l2, proxopt.sgdw, proxopt.sgdprox]


def _positional(fn):
  return [
      p for p in inspect.signature(fn).parameters.values()
      if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
  ]


@pytest.mark.parametrize("alias", ADAM_ALIASES, ids=lambda f: f.__name__)
def test_adam_aliases_have_optax_adamw_positional_signature(alias):
  ours = [(p.name, p.default) for p in _positional(alias)]
  theirs = [(p.name, p.default) for p in _positional(optax.adamw)]
  assert ours == theirs
  kwonly = inspect.signature(alias).parameters["nesterov"]
  assert kwonly.kind is inspect.Parameter.KEYWORD_ONLY and kwonly.default is False


@pytest.mark.parametrize("alias", SGD_ALIASES, ids=lambda f: f.__name__)
def test_sgd_aliases_start_with_optax_sgd_signature(alias):
  ours = [(p.name, p.default) for p in _positional(alias)]
  theirs = [(p.name, p.default) for p in _positional(optax.sgd)]
  assert ours[: len(theirs)] == theirs
  assert [name for name, _ in ours[len(theirs):]] == ["weight_decay", "mask"]
  assert dict(ours)["momentum"] is None  # optax.sgd's default, not 0.9


def _trajectory(tx, steps=6, dtype=jnp.float32):
  rng = np.random.default_rng(0)
  params = {
      "kernel": jnp.asarray(rng.normal(size=(3, 4)), dtype),
      "bias": jnp.asarray(rng.normal(size=(4,)), dtype),
  }
  state = tx.init(params)
  out = []
  for _ in range(steps):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), dtype), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out


def _assert_same(a, b):
  for pa, pb in zip(a, b):
    for la, lb in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
      np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))


def _kernel_only(p):
  return {"kernel": True, "bias": False}


def test_adamw_positional_call_means_what_optax_means():
  # The example: (1e-3, 0.9, 0.99) is b1 = 0.9, b2 = 0.99 in both.
  _assert_same(_trajectory(proxopt.adamw(1e-3, 0.9, 0.99)),
               _trajectory(optax.adamw(1e-3, 0.9, 0.99)))
  args = (1e-2, 0.8, 0.95, 1e-6, 1e-9, None, 0.05, _kernel_only)
  _assert_same(_trajectory(proxopt.adamw(*args)), _trajectory(optax.adamw(*args)))
  _assert_same(_trajectory(proxopt.adamw(*args[:-1], nesterov=True)),
               _trajectory(optax.adamw(*args[:-1], nesterov=True)))
  # and the positional weight decay really is the weight decay
  assert not np.allclose(
      np.asarray(_trajectory(proxopt.adamw(*args[:6], 0.0))[-1]["kernel"]),
      np.asarray(_trajectory(proxopt.adamw(*args[:7]))[-1]["kernel"]))


def test_adamprox_and_adam_l2_positional_calls():
  args = (1e-2, 0.8, 0.95, 1e-6, 0.0, None)
  # With no decay both are optax.adam with the same arguments.
  for alias in (proxopt.adamprox, proxopt.adam_l2):
    _assert_same(_trajectory(alias(*args, 0.0)), _trajectory(optax.adam(*args)))
  # Adam-L2 is L2 through Adam: the decayed weights enter before scale_by_adam.
  ref = optax.chain(optax.add_decayed_weights(0.05, _kernel_only),
                    optax.adam(*args))
  _assert_same(_trajectory(proxopt.adam_l2(*args, 0.05, _kernel_only)), _trajectory(ref))


@pytest.mark.parametrize("alias", SGD_ALIASES, ids=lambda f: f.__name__)
def test_sgd_positional_call_means_what_optax_sgd_means(alias):
  _assert_same(_trajectory(alias(0.1, 0.9, True, None, 0.0)),
               _trajectory(optax.sgd(0.1, 0.9, True, None)))
  _assert_same(_trajectory(alias(0.1, weight_decay=0.0)), _trajectory(optax.sgd(0.1)))
  # No momentum by default: the state holds no momentum buffer, as optax.sgd.
  params = {"w": jnp.ones(3)}
  assert (jax.tree.structure(alias(0.1, weight_decay=0.0).init(params)).num_leaves
          < jax.tree.structure(alias(0.1, 0.0, weight_decay=0.0).init(params)).num_leaves)


@pytest.mark.parametrize("alias", SGD_ALIASES, ids=lambda f: f.__name__)
def test_sgd_state_structure_same_for_python_zero_and_injected_momentum(alias):
  params = {"w": jnp.ones(3)}
  plain = alias(0.1, momentum=0.0, weight_decay=0.1)
  injected = optax.inject_hyperparams(alias)(learning_rate=0.1, momentum=0.0,
                                             weight_decay=0.1)
  state_plain, state_inj = plain.init(params), injected.init(params)
  assert jax.tree.structure(state_plain) == jax.tree.structure(state_inj.inner_state)
  # and the injected momentum can be changed without changing the structure
  state_inj.hyperparams["momentum"] = jnp.asarray(0.9)
  g = {"w": jnp.full(3, 0.5)}
  _, s1 = injected.update(g, state_inj, params)
  assert jax.tree.structure(s1) == jax.tree.structure(state_inj)


def test_momentum_validated():
  with pytest.raises(ValueError, match=r"`momentum` must be in \[0, 1\), got 1.5.*None for no momentum"):
    proxopt.sgdw(0.1, momentum=1.5)
  with pytest.raises(TypeError, match=r"`momentum` must be a real number"):
    proxopt.sgdprox(0.1, momentum="0.9")
