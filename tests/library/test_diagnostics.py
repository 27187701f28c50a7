"""Tests for proxopt's update-scale diagnostics: log2|update| histograms in optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxopt
import proxopt as dg


def _np_hist(u, edges):
  a = np.abs(np.asarray(u)).ravel()
  finite = np.isfinite(a)
  nz = a[finite & (a != 0)]
  with np.errstate(divide="ignore"):
    lg = np.log2(nz)
  counts, _ = np.histogram(lg, bins=edges)
  return {
      "counts": counts,
      "underflow": int(np.sum(lg < edges[0])),
      "overflow": int(np.sum(lg > edges[-1])),
      "zeros": int(np.sum(a == 0)),
      "nonfinite": int(np.sum(~finite)),
  }


def _random_updates(rng):
  big = rng.standard_normal((40, 30)) * 10.0 ** rng.uniform(-12, 4, (40, 30))
  # Exact edge values (powers of two, quarter octaves), the top edge (closed
  # last bin), outside both ends, zeros and non-finite values.
  special = np.array([
      0.5, 0.25, 2.0**-32, 2.0**8, 2.0**8.25, 2.0**-33, 2.0**9, 0.0, -0.0,
      np.inf, -np.inf, np.nan, 1.0, 2.0**0.25, -(2.0**-7.75), 1e-30,
  ])
  return {
      "dense": {"kernel": jnp.asarray(big, jnp.float32),
                "bias": jnp.asarray(special, jnp.float32)},
      "scalar": jnp.asarray(-3e-3, jnp.float32),
  }


def test_counts_equal_numpy_histogram_over_steps():
  rng = np.random.default_rng(0)
  tx = dg.track_update_scales(optax.identity())
  steps = [_random_updates(rng) for _ in range(3)]
  state = tx.init(steps[0])
  update = jax.jit(tx.update)
  for u in steps:
    _, state = update(u, state)
  hist = dg.update_scale_histogram(state)
  edges = hist["edges"]
  np.testing.assert_array_equal(edges, np.linspace(-32, 8, 161).astype(np.float32))
  assert hist["steps"] == 3
  paths = {"['dense']['kernel']": lambda t: t["dense"]["kernel"],
           "['dense']['bias']": lambda t: t["dense"]["bias"],
           "['scalar']": lambda t: t["scalar"]}
  assert set(hist["leaves"]) == set(paths)
  for key, get in paths.items():
    ref = [_np_hist(get(u), edges) for u in steps]
    got = hist["leaves"][key]
    np.testing.assert_array_equal(got["counts"], sum(r["counts"] for r in ref))
    for name in ("underflow", "overflow", "zeros", "nonfinite"):
      assert got[name] == sum(r[name] for r in ref), (key, name)
  bias = hist["leaves"]["['dense']['bias']"]
  assert (bias["zeros"], bias["nonfinite"]) == (3 * 2, 3 * 3)


@pytest.mark.parametrize(
    "bins, low, high", [(7, -3.0, 2.5), (64, -20.0, 0.0), (24, -4.0, 2.0), (5, -10.0, 10.0)]
)
def test_custom_bins_float64_updates(x64, bins, low, high):
  rng = np.random.default_rng(1)
  u = jnp.asarray(rng.standard_normal(500) * 10.0 ** rng.uniform(-8, 2, 500))
  u = u.at[:3].set(jnp.array([1e-300, 0.0, 2.0**high]))  # f32-underflow, 0, top
  tx = dg.track_update_scales(optax.identity(), bins=bins, low=low, high=high)
  _, state = tx.update(u, tx.init(u))
  h = dg.update_scale_histogram(state)["leaves"]["<root>"]
  # log2 is taken in float32 (documented); zeros are detected in float64, so
  # 1e-300 is an underflow, not a zero.
  edges = np.linspace(low, high, bins + 1).astype(np.float32)
  ref = _np_hist(np.asarray(u[3:], np.float32), edges)
  ref["counts"][-1] += 1  # 2**high: the closed last bin
  np.testing.assert_array_equal(h["counts"], ref["counts"])
  assert h["underflow"] == ref["underflow"] + 1
  assert h["overflow"] == ref["overflow"] and h["zeros"] == 1


def _adamw_chain(lr, wd, track):
  adam = optax.scale_by_adam()
  return optax.chain(
      dg.track_update_scales(adam) if track else adam,
      optax.add_decayed_weights(wd),
      optax.scale_by_learning_rate(lr),
  )


def _adam_l2_chain(lr, wd, track):
  adam = optax.scale_by_adam()
  return optax.chain(
      optax.add_decayed_weights(wd),
      dg.track_update_scales(adam) if track else adam,
      optax.scale_by_learning_rate(lr),
  )


@pytest.mark.parametrize(
    "make_plain, make_tracked",
    [
        (lambda: _adamw_chain(1e-2, 0.1, False), lambda: _adamw_chain(1e-2, 0.1, True)),
        (lambda: _adam_l2_chain(1e-2, 0.1, False), lambda: _adam_l2_chain(1e-2, 0.1, True)),
        (lambda: proxopt.adamprox(1e-2, weight_decay=0.1),
         lambda: dg.track_update_scales(proxopt.adamprox(1e-2, weight_decay=0.1))),
    ],
)
def test_wrapping_does_not_change_updates(make_plain, make_tracked):
  rng = np.random.default_rng(2)
  params = {"a": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(3), jnp.float32)}
  plain, tracked = make_plain(), make_tracked()
  sp, st = plain.init(params), tracked.init(params)
  p1 = p2 = params
  up_plain, up_tracked = jax.jit(plain.update), jax.jit(tracked.update)
  for _ in range(5):
    g = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params)
    u1, sp = up_plain(g, sp, p1)
    u2, st = up_tracked(g, st, p2)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  assert dg.update_scale_summary(st).pooled.total == 5 * 18


def test_explicit_chains_equal_the_aliases():
  """The chains shown in the module docstring are proxopt.adamw / adam_l2."""
  rng = np.random.default_rng(3)
  params = jnp.asarray(rng.standard_normal(6), jnp.float32)
  for alias, chain in ((proxopt.adamw(1e-2, weight_decay=0.1), _adamw_chain(1e-2, 0.1, True)),
                       (proxopt.adam_l2(1e-2, weight_decay=0.1), _adam_l2_chain(1e-2, 0.1, True))):
    sa, sc = alias.init(params), chain.init(params)
    for _ in range(3):
      g = jnp.asarray(rng.standard_normal(6), jnp.float32)
      ua, sa = alias.update(g, sa, params)
      uc, sc = chain.update(g, sc, params)
      np.testing.assert_array_equal(np.asarray(ua), np.asarray(uc))


def test_tracks_adam_direction_inside_chain():
  """Histogram of the wrapped part = NumPy histogram of m_hat/(sqrt(v_hat)+eps)."""
  rng = np.random.default_rng(4)
  params = jnp.zeros(200, jnp.float32)
  tx = _adamw_chain(1e-3, 0.5, True)
  state = tx.init(params)
  adam, adam_state = optax.scale_by_adam(), optax.scale_by_adam().init(params)
  total = np.zeros(160, np.int64)
  for _ in range(4):
    g = jnp.asarray(rng.standard_normal(200) * 10.0 ** rng.uniform(-6, 2, 200), jnp.float32)
    d, adam_state = adam.update(g, adam_state)
    total += _np_hist(d, np.linspace(-32, 8, 161).astype(np.float32))["counts"]
    _, state = tx.update(g, state, params)
  np.testing.assert_array_equal(dg.update_scale_histogram(state)["leaves"]["<root>"]["counts"], total)


def test_nnx_optimizer_and_reset():
  nnx = pytest.importorskip("flax.nnx")

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(4, 8, rngs=rngs)
      self.l2 = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
      return self.l2(jax.nn.relu(self.l1(x)))

  model = MLP(nnx.Rngs(0))
  tx = optax.chain(dg.track_update_scales(optax.scale_by_adam()),
                   optax.add_decayed_weights(1e-2), optax.scale_by_learning_rate(1e-2))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(0), (16, 4))

  @nnx.jit
  def train_step(model, opt, x):
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    opt.update(model, grads)

  for _ in range(3):
    train_step(model, opt, x)
  n_params = 4 * 8 + 8 + 8 * 1 + 1
  s = dg.update_scale_summary(opt.opt_state)
  assert s.steps == 3 and s.pooled.total == 3 * n_params
  assert len(s.per_leaf) == 4
  assert sum(v.total for v in s.per_leaf.values()) == s.pooled.total
  kernel = [k for k in s.per_leaf if "l1" in k and "kernel" in k]
  assert len(kernel) == 1 and s.per_leaf[kernel[0]].total == 3 * 32
  opt.opt_state = dg.reset_update_scales(opt.opt_state)
  assert dg.update_scale_summary(opt.opt_state).pooled.total == 0
  train_step(model, opt, x)
  assert dg.update_scale_summary(opt.opt_state).pooled.total == n_params


def test_reset_keeps_inner_state_and_works_under_jit():
  tx = optax.chain(dg.track_update_scales(optax.scale_by_adam()), optax.scale(-0.1))
  params = {"w": jnp.ones(5)}
  state = tx.init(params)
  state = jax.jit(tx.update)({"w": jnp.arange(5.0)}, state, params)[1]
  reset = jax.jit(dg.reset_update_scales)(state)
  tracker = reset[0]
  assert isinstance(tracker, dg.UpdateScaleState)
  assert int(tracker.steps) == 0 and int(jnp.sum(tracker.counts["w"])) == 0
  assert int(tracker.zeros["w"]) == 0
  np.testing.assert_array_equal(tracker.inner_state.mu["w"], state[0].inner_state.mu["w"])
  assert dg.update_scale_summary(state).pooled.zero_fraction == pytest.approx(0.2)


def test_every_k_steps_under_jit():
  rng = np.random.default_rng(7)
  tx = dg.track_update_scales(optax.identity(), every=3)
  us = [jnp.asarray(rng.standard_normal(50) * 10.0 ** rng.uniform(-5, 2, 50), jnp.float32)
        for _ in range(7)]
  state = tx.init(us[0])
  update = jax.jit(tx.update)
  for u in us:
    out, state = update(u, state)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(u))
  edges = np.linspace(-32, 8, 161).astype(np.float32)
  expected = sum(_np_hist(us[t], edges)["counts"] for t in (0, 3, 6))
  h = dg.update_scale_histogram(state)
  assert h["steps"] == 3 and int(state.calls) == 7
  np.testing.assert_array_equal(h["leaves"]["<root>"]["counts"], expected)
  reset = dg.reset_update_scales(state)
  assert int(reset.steps) == 0 and int(reset.calls) == 7  # cadence kept


def test_counts_saturate_instead_of_wrapping():
  tx = dg.track_update_scales(optax.identity(), bins=4, low=-2.0, high=2.0)
  u = jnp.ones(10)
  state = tx.init(u)
  big = np.iinfo(np.int32).max - 3
  state = state._replace(counts=jnp.array([0, 0, big, 0], jnp.int32))
  _, state = tx.update(u, state)
  assert int(state.counts[2]) == np.iinfo(np.int32).max  # log2(1) = 0: bin 2


def _np_quantile_from_counts(q, counts, edges):
  """Independent reference: np.interp on the CDF at the edges (no empty bins)."""
  F = np.concatenate([[0], np.cumsum(counts)]).astype(float)
  return float(np.interp(q * F[-1], F, edges))


def test_summary_equals_numpy_from_counts():
  rng = np.random.default_rng(5)
  edges = np.linspace(-10, 10, 41)
  counts = rng.integers(1, 50, 40)  # every bin non-empty: F strictly increasing
  s = dg.summarize_histogram(counts, edges, zeros=7, quantiles=(0.1, 0.9))
  n = counts.sum()
  med = _np_quantile_from_counts(0.5, counts, edges)
  lo = _np_quantile_from_counts(0.1, counts, edges)
  hi = _np_quantile_from_counts(0.9, counts, edges)
  F = np.concatenate([[0], np.cumsum(counts)]).astype(float)
  within = (np.interp(med + 1, edges, F) - np.interp(med - 1, edges, F)) / n
  assert s.median_log2 == pytest.approx(med, abs=1e-12)
  assert s.q_low_log2 == pytest.approx(lo, abs=1e-12)
  assert s.q_high_log2 == pytest.approx(hi, abs=1e-12)
  assert s.iqr_octaves == pytest.approx(hi - lo, abs=1e-12)
  assert s.within_one_octave == pytest.approx(within, abs=1e-12)
  assert s.total == n + 7 and s.zero_fraction == pytest.approx(7 / (n + 7))
  assert s.out_of_range == 0.0


def test_summary_close_to_exact_sample_statistics():
  """With empty bins and out-of-range values: within one bin of the truth."""
  rng = np.random.default_rng(6)
  u = {"a": jnp.asarray(10.0 ** rng.normal(-3, 1.5, 4000), jnp.float32),
       "b": jnp.asarray(np.concatenate([2.0 ** rng.uniform(-1, 1, 1000), np.zeros(50)]), jnp.float32)}
  tx = dg.track_update_scales(optax.identity(), bins=320)  # 1/8 octave
  _, state = tx.update(u, tx.init(u))
  s = dg.update_scale_summary(state)
  width = 40 / 320
  for key, x in (("['a']", u["a"]), ("['b']", u["b"])):
    lg = np.log2(np.abs(np.asarray(x)[np.asarray(x) != 0]))
    med = np.median(lg)
    got = s.per_leaf[key]
    assert got.median_log2 == pytest.approx(med, abs=width)
    q25, q75 = np.quantile(lg, [0.25, 0.75])
    assert got.iqr_octaves == pytest.approx(q75 - q25, abs=2 * width)
    assert got.within_one_octave == pytest.approx(np.mean(np.abs(lg - med) <= 1), abs=0.02)
  assert s.per_leaf["['b']"].zero_fraction == pytest.approx(50 / 1050)
  hist = dg.update_scale_histogram(state)
  pooled_counts = sum(v["counts"] for v in hist["leaves"].values())
  np.testing.assert_array_equal(hist["edges"], np.linspace(-32, 8, 321).astype(np.float32))
  extra = {k: sum(v[k] for v in hist["leaves"].values())
           for k in ("underflow", "overflow", "zeros", "nonfinite")}
  assert extra["zeros"] == 50
  assert s.pooled == dg.summarize_histogram(pooled_counts, hist["edges"], **extra)
  d = s.to_dict()
  assert set(d) == {"steps", "quantiles", "pooled", "per_leaf"}
  assert d["pooled"]["total"] == 5050


def test_errors():
  with pytest.raises(ValueError, match="`bins` must be an int >= 1"):
    dg.track_update_scales(optax.identity(), bins=0)
  with pytest.raises(ValueError, match="`every` must be an int >= 1"):
    dg.track_update_scales(optax.identity(), every=0)
  with pytest.raises(ValueError, match="`low` < `high`"):
    dg.track_update_scales(optax.identity(), low=3.0, high=-3.0)
  with pytest.raises(ValueError, match="no UpdateScaleState"):
    dg.update_scale_summary(optax.adam(0.1).init(jnp.ones(2)))
  with pytest.raises(ValueError, match="len\\(edges\\) == len\\(counts\\) \\+ 1"):
    dg.summarize_histogram(np.ones(3), np.arange(3.0))
  with pytest.raises(ValueError, match="quantiles"):
    dg.summarize_histogram(np.ones(3), np.arange(4.0), quantiles=(0.9, 0.1))


def test_empty_histogram_summary_is_nan_not_error():
  s = dg.summarize_histogram(np.zeros(4, int), np.arange(5.0), zeros=3)
  assert s.total == 3 and s.zero_fraction == 1.0 and np.isnan(s.median_log2)


@pytest.mark.parametrize("name", ["adam_l2", "adamw", "adamprox"])
def test_alias_track_direction_histograms_the_adam_direction(name):
  """track_direction=True: same updates bitwise; counts = NumPy histogram of
  d_t = m_hat/(sqrt(v_hat)+eps) of the gradient Adam sees (g + wd x for L2)."""
  rng = np.random.default_rng(5)
  lr, wd = 1e-2, 0.3
  params = {"w": jnp.asarray(rng.standard_normal((7, 5)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(5), jnp.float32)}
  plain = getattr(proxopt, name)(lr, weight_decay=wd)
  tracked = getattr(proxopt, name)(lr, weight_decay=wd, track_direction=True)
  sp, st = plain.init(params), tracked.init(params)
  adam = optax.scale_by_adam()
  sa = adam.init(params)
  edges = np.linspace(-32, 8, 161).astype(np.float32)
  want = {k: np.zeros(160, np.int64) for k in params}
  p1 = p2 = params
  for _ in range(4):
    g = jax.tree.map(lambda x: jnp.asarray(
        rng.standard_normal(x.shape) * 10.0 ** rng.uniform(-5, 1, x.shape), x.dtype), params)
    seen = jax.tree.map(lambda gi, xi: gi + wd * xi, g, p2) if name == "adam_l2" else g
    d, sa = adam.update(seen, sa)
    for k in params:
      want[k] += _np_hist(d[k], edges)["counts"]
    u1, sp = plain.update(g, sp, p1)
    u2, st = tracked.update(g, st, p2)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  leaves = dg.update_scale_histogram(st)["leaves"]
  assert len(leaves) == 2
  for k in params:
    got = [v["counts"] for path, v in leaves.items() if k in path]
    np.testing.assert_array_equal(got[0], want[k])
