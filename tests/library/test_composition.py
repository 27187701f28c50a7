"""What composes exactly with proxopt's prox chains, and what does not.

The "what composes exactly" table of the docs is asserted here, both ways:
the exact compositions equal a hand-built reference, and the two documented
traps really do what the docs say.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxopt


def _params():
  return {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([0.3, -0.7])}


def _kernels_only(params):
  return jax.tree.map(lambda x: x.ndim > 1, params)


def _grads(seed, nan=False):
  rng = np.random.default_rng(seed)
  g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), _params())
  if nan:
    g["bias"] = g["bias"].at[0].set(jnp.nan)
  return g


def test_apply_if_finite_around_the_whole_chain_skips_the_prox_too():
  tx = optax.apply_if_finite(proxopt.adamprox(0.1, weight_decay=0.5), max_consecutive_errors=5)
  params = _params()
  state = tx.init(params)
  updates, state = tx.update(_grads(0, nan=True), state, params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(np.asarray(u), 0.0)  # no decay on a skipped step
  assert int(state.notfinite_count) == 1


def test_apply_if_finite_around_the_base_only_still_decays_documented_trap():
  # Documented: the skipped base step gives u = 0, and the prox after it
  # still shrinks the weights. Wrap the whole chain instead.
  tx = optax.chain(optax.apply_if_finite(optax.adam(0.1), 5),
                   proxopt.proximal(proxopt.l2_squared(0.5), 0.1))
  params = _params()
  updates, _ = tx.update(_grads(0, nan=True), tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["kernel"]),
                             -0.05 * np.asarray(params["kernel"]) / 1.05, rtol=1e-6)


def test_multisteps_accumulates_then_takes_one_exact_prox_step():
  k = 3
  tx = optax.MultiSteps(proxopt.adamprox(0.1, weight_decay=0.5), every_k_schedule=k)
  ref = proxopt.adamprox(0.1, weight_decay=0.5)
  params, ref_params = _params(), _params()
  state, ref_state = tx.init(params), ref.init(ref_params)
  grads = [_grads(i) for i in range(2 * k)]
  for i, g in enumerate(grads):
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    if (i + 1) % k == 0:
      mean = jax.tree.map(lambda *gs: sum(gs) / k, *grads[i + 1 - k: i + 1])
      u, ref_state = ref.update(mean, ref_state, ref_params)
      ref_params = optax.apply_updates(ref_params, u)
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_multi_transform_prox_on_kernels_plain_sgd_elsewhere():
  labels = lambda p: jax.tree.map(lambda x: "prox" if x.ndim > 1 else "sgd", p)
  tx = optax.multi_transform(
      {"prox": proxopt.sgdprox(0.1, weight_decay=1.0), "sgd": optax.sgd(0.1)}, labels)
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(np.asarray(new["kernel"]), np.asarray(params["kernel"]) / 1.1, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(new["bias"]), np.asarray(params["bias"]))


def test_schedule_free_over_a_projection_is_not_proximal_documented_trap():
  # schedule_free hands its base optimizer the interpolated point y as
  # params, so a prox inside the base computes prox(y + u) - y and adds it to
  # its own sequence z: z leaves the set the prox should keep it in.
  # Documented as not composing.
  box = proxopt.box(-0.5, 0.5)
  base = optax.chain(optax.sgd(1.0), proxopt.proximal(box, 1.0))
  tx = optax.contrib.schedule_free(base, learning_rate=1.0, b1=0.9)
  params = {"w": jnp.zeros(4)}
  state = tx.init(params)
  worst_z = 0.0
  for i in range(6):
    g = {"w": jnp.array([-1.0, 1.0, -2.0, 2.0]) * (1 if i % 3 else -1)}
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    worst_z = max(worst_z, float(jnp.max(jnp.abs(state.z["w"]))))
  assert worst_z > 0.9


def test_plateau_as_learning_rate_drives_step_decay_and_prox_with_a_mask():
  plateau = proxopt.reduce_on_plateau(0.1, factor=0.5, patience=0)
  tx = proxopt.adamprox(plateau, weight_decay=1.0, mask=_kernels_only)
  params = _params()
  state = tx.init(params)
  for metric in (1.0, 1.0):  # one improvement, then one bad evaluation
    state = plateau.observe(state, metric)
  assert float(plateau.step_size(state)) == pytest.approx(0.05)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, state = tx.update(zeros, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(np.asarray(new["kernel"]), np.asarray(params["kernel"]) / 1.05, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(new["bias"]), np.asarray(params["bias"]))


def test_plateau_with_the_paper_convention_takes_alpha_from_its_base(x64):
  plateau = proxopt.reduce_on_plateau(0.01, factor=0.5, patience=0)
  paper = proxopt.adamw(plateau, weight_decay=1e-3, convention="paper")
  optax_conv = proxopt.adamw(plateau, weight_decay=1e-3 / 0.01)
  params = _params()
  sp, so = paper.init(params), optax_conv.init(params)
  for i in range(4):
    g = _grads(i)
    up, sp = paper.update(g, sp, params)
    uo, so = optax_conv.update(g, so, params)
    for a, b in zip(jax.tree.leaves(up), jax.tree.leaves(uo)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
  with pytest.raises(ValueError, match=r"needs `alpha=`"):
    proxopt.adamw(proxopt.reduce_on_plateau(optax.cosine_decay_schedule(0.1, 10)),
                  weight_decay=1e-3, convention="paper")


def test_classic_with_injected_weight_decay_and_momentum():
  def make(learning_rate, weight_decay, momentum):
    return proxopt.classic("momentum", learning_rate, momentum=momentum,
                           weight_decay=weight_decay)

  tx = optax.inject_hyperparams(make)(learning_rate=0.1, weight_decay=0.0, momentum=0.9)
  params = {"w": jnp.array([2.0])}
  state = tx.init(params)
  step = jax.jit(tx.update)
  u0, _ = step({"w": jnp.zeros(1)}, state, params)
  np.testing.assert_array_equal(np.asarray(u0["w"]), 0.0)
  state.hyperparams["weight_decay"] = jnp.asarray(0.5, jnp.float32)
  u1, _ = step({"w": jnp.zeros(1)}, state, params)
  np.testing.assert_allclose(np.asarray(u1["w"]), [-0.1 * 0.5 * 2.0], rtol=1e-6)
