"""Schedules, reduce-on-plateau and classic optimizers .

References: torch.optim.lr_scheduler (ReduceLROnPlateau, StepLR, MultiStepLR,
CosineAnnealingLR), torch.optim.AdamW, a hand-written float64 plateau rule
with the |best| threshold, and float64 NumPy Adam / prox formulas.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxopt
from proxopt import ReduceOnPlateauState

# ---------------------------------------------------------------------------
# Metric streams and references.


def _stream(seed, n, start, steps, flat_prob=0.5):
  """A random walk quantised to 0.01 with many flat stretches."""
  rng = np.random.default_rng(seed)
  out, v = [], start
  for _ in range(n):
    if rng.random() >= flat_prob:
      v += rng.choice(steps)
    out.append(round(v, 2))
  return out


LOSS = _stream(0, 60, 2.0, [-0.05, -0.02, -0.01, 0.01, 0.03])  # positive, "min"
ACC = _stream(1, 60, 0.30, [-0.02, 0.01, 0.02, 0.04])  # positive, "max"
NEG_LOSS = _stream(2, 60, -1.0, [-0.05, -0.02, -0.01, 0.01, 0.03])  # negative


def _torch_plateau_lrs(torch, stream, base, **kw):
  """Step size after each evaluation under torch's ReduceLROnPlateau."""
  if "min_value" in kw:
    kw["min_lr"] = kw.pop("min_value")
  p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
  opt = torch.optim.SGD([p], lr=base)
  sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
  out = []
  for m in stream:
    sched.step(m)
    out.append(opt.param_groups[0]["lr"])
  return out


def _ref_plateau_lrs(stream, base, mode="min", factor=0.1, patience=10,
                     threshold=1e-4, threshold_mode="rel", cooldown=0,
                     min_value=0.0, eps=1e-8):
  """torch's rule, written out in float64, with the |best| relative threshold."""
  best = math.inf if mode == "min" else -math.inf
  bad = cooldown_counter = 0
  lr, out = base, []
  for a in stream:
    if threshold_mode == "rel":
      margin = threshold * abs(best) if math.isfinite(best) else 0.0
    else:
      margin = threshold
    better = a < best - margin if mode == "min" else a > best + margin
    if better:
      best, bad = a, 0
    else:
      bad += 1
    if cooldown_counter > 0:
      cooldown_counter -= 1
      bad = 0
    if bad > patience:
      new = max(lr * factor, min_value)
      if lr - new > eps:
        lr = new
      cooldown_counter, bad = cooldown, 0
    out.append(lr)
  return out


def _our_plateau_lrs(stream, base, jit=False, **kw):
  plateau = proxopt.reduce_on_plateau(base, **kw)
  state = plateau.init()
  observe = jax.jit(plateau.observe) if jit else plateau.observe
  out = []
  for m in stream:
    state = observe(state, m)
    out.append(float(plateau(state)))
  return out


def _n_reductions(lrs):
  return sum(b < a for a, b in zip(lrs, lrs[1:]))


# ---------------------------------------------------------------------------
# reduce_on_plateau == torch.optim.lr_scheduler.ReduceLROnPlateau

TORCH_SETTINGS = [
    # (stream, base, kwargs)
    (LOSS, 0.1, dict(mode="min", factor=0.5, patience=2)),
    (LOSS, 0.1, dict(mode="min", factor=0.5, patience=1, threshold=0.02)),
    (LOSS, 0.3, dict(mode="min", threshold_mode="abs", threshold=0.015,
                     patience=0, cooldown=2, factor=0.1, min_value=1e-3)),
    (LOSS, 1.0, dict(mode="min", patience=3, cooldown=1, factor=0.7,
                     min_value=0.2)),
    (LOSS + LOSS[::-1], 0.1, dict()),  # torch defaults, long flat stretch
    (ACC, 0.1, dict(mode="max", threshold=0.01, patience=1, cooldown=1,
                    factor=0.5)),
    (ACC, 0.05, dict(mode="max", threshold_mode="abs", threshold=0.025,
                     patience=3, factor=0.3, min_value=0.01)),
    # Negative metrics in "abs" mode: torch's rule is sound there.
    (NEG_LOSS, 0.1, dict(mode="min", threshold_mode="abs", threshold=0.015,
                         patience=1, cooldown=1, factor=0.5)),
    ([-x for x in NEG_LOSS], 0.1, dict(mode="max", threshold_mode="abs",
                                       threshold=0.025, patience=2,
                                       factor=0.5)),
]


@pytest.mark.torch
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("stream,base,kw", TORCH_SETTINGS)
def test_plateau_matches_torch(torch, stream, base, kw, jit):
  want = _torch_plateau_lrs(torch, stream, base, **dict(kw))
  got = _our_plateau_lrs(stream, base, jit=jit, **kw)
  assert _n_reductions(want) >= 2, "stream too easy: it must reduce"
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # The written-out reference agrees with torch wherever best >= 0 or
  # threshold_mode="abs", so it is a fair reference for the negative case.
  np.testing.assert_allclose(_ref_plateau_lrs(stream, base, **kw), want,
                             rtol=1e-12)


@pytest.mark.torch
def test_plateau_min_value_reached_and_held(torch):
  kw = dict(mode="min", patience=0, factor=0.5, min_value=0.02)
  stream = [1.0] + [2.0] * 10
  want = _torch_plateau_lrs(torch, stream, 0.1, **dict(kw))
  got = _our_plateau_lrs(stream, 0.1, **kw)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got[-1] == pytest.approx(0.02) and got[-5:] == [got[-1]] * 5


def test_negative_metric_rel_uses_abs_best():
  """The one deliberate difference from torch, on a negative loss."""
  # Each value is worse than the best (-1.0) by less than threshold*|best|.
  # torch's best*(1-th) = -0.999 accepts -0.9995 > -1 as an "improvement";
  # the |best| rule (best - th*|best| = -1.001) does not.
  stream = [-1.0, -0.9995, -0.9992, -0.9991, -0.9990, -0.9995, -0.9993]
  kw = dict(mode="min", factor=0.5, patience=1, threshold=1e-3)
  want = _ref_plateau_lrs(stream, 0.1, **kw)
  assert want == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125]
  for jit in (False, True):
    np.testing.assert_allclose(
        _our_plateau_lrs(stream, 0.1, jit=jit, **kw), want, rtol=1e-6)
  # ... and in "max" mode on a negative reward that gets slightly worse.
  reward = [-2.0 - x for x in stream]
  np.testing.assert_allclose(
      _our_plateau_lrs(reward, 0.1, **dict(kw, mode="max")), want, rtol=1e-6)
  # A real improvement on a negative metric resets the patience.
  better = [-1.0, -1.0, -1.5, -1.5, -1.5]
  np.testing.assert_allclose(
      _our_plateau_lrs(better, 0.1, **kw), [0.1, 0.1, 0.1, 0.1, 0.05],
      rtol=1e-6)


@pytest.mark.torch
def test_negative_metric_rel_torch_differs(torch):
  """Documents torch's behaviour that we deliberately do not copy."""
  stream = [-1.0, -0.9995, -0.9992, -0.9991, -0.9990, -0.9995, -0.9993]
  kw = dict(mode="min", factor=0.5, patience=1, threshold=1e-3)
  assert _torch_plateau_lrs(torch, stream, 0.1, **dict(kw)) == [0.1] * 7
  assert _our_plateau_lrs(stream, 0.1, **kw)[-1] < 0.1


def test_plateau_with_schedule_base_multiplies():
  base = proxopt.step_decay(1.0, 0.1, every_epochs=10)
  plateau = proxopt.reduce_on_plateau(base, factor=0.5, patience=0)
  st = plateau.init()
  st = plateau.observe(plateau.observe(st, 1.0), 2.0)  # one reduction
  for t in range(0, 25, 4):
    assert float(plateau(st._replace(count=jnp.asarray(t)))) == pytest.approx(
        0.5 * 0.1 ** (t // 10), rel=1e-6)
  # update() advances the count and nothing else.
  st2 = plateau.update(st)
  assert int(st2.count) == 1 and float(st2.scale) == float(st.scale)


# ---------------------------------------------------------------------------
# Issue #13: eps with a schedule base, float64 vs float32 decisions.


def _torch_chained_lrs(torch, base_fn, stream, steps_per_eval, **kw):
  """torch's lr after each evaluation: ReduceLROnPlateau chained with a
  per-step MultiplicativeLR whose lr is base_fn(t) (times the reductions)."""
  p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
  opt = torch.optim.SGD([p], lr=base_fn(0))
  per_step = torch.optim.lr_scheduler.MultiplicativeLR(
      opt, lambda t: base_fn(t) / base_fn(t - 1))
  plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
  out = []
  for m in stream:
    for _ in range(steps_per_eval):
      opt.step()
      per_step.step()
    plateau.step(m)
    out.append(opt.param_groups[0]["lr"])
  return out


def _our_chained_lrs(base, stream, steps_per_eval, **kw):
  plateau = proxopt.reduce_on_plateau(base, **kw)
  state = plateau.init()
  update, observe = jax.jit(plateau.update), jax.jit(plateau.observe)
  out = []
  for m in stream:
    for _ in range(steps_per_eval):
      state = update(state)
    state = observe(state, m)
    out.append(float(plateau.step_size(state)))
  return out


def _reductions(lrs, base_lrs):
  """Evaluations at which the scale (lr / base) dropped."""
  scale = np.asarray(lrs) / np.asarray(base_lrs)
  return [i for i in range(1, len(scale)) if scale[i] < scale[i - 1] * (1 - 1e-9)]


@pytest.mark.torch
def test_plateau_eps_with_schedule_base_matches_torch_chained(torch, x64):
  """eps is compared with old_lr - new_lr at the current step, as torch does.

  Warm-up from 0.01 then cosine: while the step is small, a reduction would
  change it by less than eps and torch skips it; later the same reduction is
  large enough. (Measuring eps on the scale alone reduces at every plateau.)
  """
  base = optax.warmup_cosine_decay_schedule(0.001, 1.0, 40, 100, end_value=1e-3)
  # The base as the plateau reads it (optax schedules of an int32 count give
  # float32 values, even under x64), handed to torch as Python floats.
  base_fn = lambda t: float(base(jnp.asarray(t, jnp.int32)))
  kw = dict(mode="min", factor=0.5, patience=0, eps=0.1)
  stream = [1.0] * 30  # no improvement after the first: reduce when allowed
  want = _torch_chained_lrs(torch, base_fn, stream, 2, **kw)
  got = _our_chained_lrs(base, stream, 2, **kw)
  np.testing.assert_allclose(got, want, rtol=1e-12)
  # The case is non-trivial: torch skipped reductions, then made some.
  base_lrs = [base_fn(2 * (i + 1)) for i in range(len(stream))]
  cuts = _reductions(want, base_lrs)
  assert cuts == _reductions(got, base_lrs)
  assert cuts == [3, 7, 15]  # at base(t) > 0.2, 0.4, 0.8: 0.5 * lr > eps
  # With a random-walk metric and patience/cooldown.
  kw = dict(mode="min", factor=0.3, patience=1, cooldown=1, eps=0.02)
  want = _torch_chained_lrs(torch, base_fn, LOSS[:40], 2, **kw)
  np.testing.assert_allclose(_our_chained_lrs(base, LOSS[:40], 2, **kw), want,
                             rtol=1e-12)


# Metric streams on which float32 and float64 decide differently.
TINY_GAINS = [1.0 - k * 1e-9 for k in range(8)]  # each improves, in float64
TIES = [2.13, 2.12, 2.11, 2.1, 2.11, 2.12, 2.13, 2.12, 2.11, 2.1, 2.09, 2.08]
PRECISION_SETTINGS = [
    (TINY_GAINS, dict(threshold=0.0, patience=0, factor=0.5)),
    (TINY_GAINS, dict(threshold=0.0, threshold_mode="abs", patience=0,
                      factor=0.5)),
    (TIES, dict(threshold=0.01, threshold_mode="abs", patience=0, factor=0.5)),
    ([-x for x in TIES], dict(mode="max", threshold=0.01,
                              threshold_mode="abs", patience=0, factor=0.5)),
]


@pytest.mark.torch
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("stream,base,kw", [
    (s, 0.1, kw) for s, kw in PRECISION_SETTINGS] + TORCH_SETTINGS)
def test_plateau_x64_decisions_are_torchs_exactly(torch, x64, stream, base, kw,
                                                  jit):
  """Under x64, best is float64: every decision is torch's, bit for bit."""
  want = _torch_plateau_lrs(torch, stream, base, **dict(kw))
  plateau = proxopt.reduce_on_plateau(base, **kw)
  assert plateau.init().best.dtype == jnp.float64
  got = _our_plateau_lrs(stream, base, jit=jit, **kw)
  # The same evaluations reduce; the step sizes agree to the last bits.
  assert [b < a for a, b in zip(got, got[1:])] == [
      b < a for a, b in zip(want, want[1:])]
  np.testing.assert_allclose(got, want, rtol=1e-15)
  if kw.get("factor") == 0.5 and "min_value" not in kw:
    assert got == want  # products of 0.5: the very same floats


@pytest.mark.parametrize("stream,kw", PRECISION_SETTINGS)
def test_plateau_float32_differs_from_float64_on_these_streams(stream, kw):
  """The streams above are decided differently in float32 (the reason why)."""
  assert not jax.config.jax_enable_x64
  f32 = _our_plateau_lrs(stream, 0.1, **kw)
  assert proxopt.reduce_on_plateau(0.1, **kw).init().best.dtype == jnp.float32
  f64 = _ref_plateau_lrs(stream, 0.1, **kw)  # == torch (tested above)
  drops = lambda lrs: [i for i in range(1, len(lrs)) if lrs[i] < lrs[i - 1]]
  assert drops(f32) != drops(f64)


def _f32_ref_plateau_lrs(stream, base, mode="min", factor=0.1, patience=10,
                         threshold=1e-4, threshold_mode="rel", cooldown=0,
                         min_scale=0.0, eps=1e-8):
  """The documented float32 rule, in NumPy float32 scalars."""
  f = np.float32
  best = f(np.inf) if mode == "min" else f(-np.inf)
  th, one = f(threshold), f(1.0)
  scale, base32 = f(1.0), f(base)
  bad = cooldown_counter = 0
  out = []
  for a in stream:
    m = f(a)  # rounded to nearest float32
    if threshold_mode == "abs":
      bound = best - th if mode == "min" else best + th
    elif np.isinf(best):
      bound = best
    elif mode == "min":
      bound = best * (one - th) if best >= 0 else best * (one + th)
    else:
      bound = best * (one + th) if best >= 0 else best * (one - th)
    better = m < bound if mode == "min" else m > bound
    if better:
      best, bad = m, 0
    else:
      bad += 1
    if cooldown_counter > 0:
      cooldown_counter -= 1
      bad = 0
    if bad > patience:
      new = max(f(scale * f(factor)), f(min_scale))
      if f(base32 * scale) - f(base32 * new) > f(eps):
        scale = new
      cooldown_counter, bad = cooldown, 0
    out.append(float(f(base32 * scale)))
  return out


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("stream,kw", PRECISION_SETTINGS + [
    (s, kw) for s, _, kw in TORCH_SETTINGS if "min_value" not in kw] + [
    (NEG_LOSS, dict(factor=0.5, patience=1, threshold=0.003)),
    ([1.0 + 1e-7 * k for k in range(12)], dict(mode="max", threshold=1e-7,
                                                patience=0, factor=0.7)),
    (TIES, dict(threshold=0.0047, patience=0, factor=0.9, eps=0.0096)),
])
def test_plateau_float32_is_the_documented_rule_exactly(stream, kw, jit):
  """Without x64: metric rounded to float32, comparisons in float32."""
  assert not jax.config.jax_enable_x64
  want = _f32_ref_plateau_lrs(stream, 0.1, **kw)
  got = _our_plateau_lrs(stream, 0.1, jit=jit, **kw)
  assert got == want


def test_plateau_docstring_states_the_differences_from_torch():
  """Issue #13: the docs state the exact differences (checked above)."""
  doc = " ".join(proxopt.reduce_on_plateau.__doc__.split())
  for phrase in [
      "relative to ``|best|``",
      "With ``jax_enable_x64`` on, ``best`` and ``scale`` are float64",
      "the metric is rounded to float32 (to nearest) before it is compared",
      "a metric of ``1 - 1e-9`` does not improve on ``1.0``",
      "``2.11`` improves on ``2.12`` in float64 but not in float32",
      "``base(count) * scale - base(count) * new_scale > eps``",
      "``min_scale`` bounds ``scale``",
  ]:
    assert phrase in doc, phrase


# ---------------------------------------------------------------------------
# Count-based schedules against torch.


def _torch_epoch_lrs(torch, make_sched, base, epochs):
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([p], lr=base)
  sched = make_sched(opt)
  out = []
  for _ in range(epochs):
    out.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
  return out


def _per_step(schedule, epochs, spe):
  return np.asarray([float(schedule(jnp.asarray(t))) for t in range(epochs * spe)])


@pytest.mark.torch
@pytest.mark.parametrize("spe", [1, 3])
def test_step_decay_matches_steplr(torch, spe):
  epochs = 20
  want = _torch_epoch_lrs(
      torch, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5),
      0.1, epochs)
  got = _per_step(proxopt.step_decay(0.1, 0.5, 4, spe), epochs, spe)
  np.testing.assert_allclose(got, np.repeat(want, spe), rtol=1e-6)
  assert len(set(np.round(want, 12))) == 5


@pytest.mark.torch
@pytest.mark.parametrize("spe", [1, 5])
def test_multistep_matches_multisteplr(torch, spe):
  epochs, milestones = 16, [3, 7, 7, 12]  # a repeated milestone counts twice
  want = _torch_epoch_lrs(
      torch, lambda o: torch.optim.lr_scheduler.MultiStepLR(
          o, milestones=milestones, gamma=0.2), 0.5, epochs)
  got = _per_step(proxopt.multistep_decay(0.5, milestones, 0.2, spe), epochs, spe)
  np.testing.assert_allclose(got, np.repeat(want, spe), rtol=1e-6)
  assert want[-1] == pytest.approx(0.5 * 0.2**4)


@pytest.mark.torch
@pytest.mark.parametrize("end_value", [0.0, 0.01])
def test_cosine_per_epoch_matches_cosine_annealing(torch, end_value):
  epochs, spe = 12, 4
  want = _torch_epoch_lrs(
      torch, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
          o, T_max=epochs, eta_min=end_value), 0.1, epochs)
  got = _per_step(proxopt.cosine_per_epoch(0.1, epochs, spe, end_value),
                  epochs, spe)
  np.testing.assert_allclose(got, np.repeat(want, spe), rtol=1e-5, atol=1e-8)
  # Past the last epoch it stays at the end value.
  s = proxopt.cosine_per_epoch(0.1, epochs, spe, end_value)
  assert float(s(jnp.asarray(epochs * spe + 7))) == pytest.approx(end_value, abs=1e-9)


def test_warmup_cosine_closed_form():
  peak, w, total, init, end = 0.2, 5, 25, 0.01, 0.002
  s = proxopt.warmup_cosine(peak, w, total, init_value=init, end_value=end)
  for t in range(0, 30):
    if t < w:
      want = init + (peak - init) * t / w
    else:
      k = min(t - w, total - w) / (total - w)
      want = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * k))
    assert float(s(jnp.asarray(t))) == pytest.approx(want, rel=1e-5, abs=1e-8)


# ---------------------------------------------------------------------------
# One step size drives the base step, the decay and the prox (plateau in effect).

STREAM = [1.0, 2.0, 3.0, 0.5, 0.6, 0.7]  # patience=0: reductions at 2, 3, 5, 6
B1, B2, EPS = 0.9, 0.999, 1e-8


def _grads(n, shape, seed=0):
  return np.random.default_rng(seed).normal(size=(n,) + shape)


def _run(tx, plateau, x0, grads, observe_every=2, jit=False):
  """Steps with `grads`, feeding STREAM to the plateau every few steps."""
  params = {"w": jnp.asarray(x0)}
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  observe = jax.jit(plateau.observe) if jit else plateau.observe
  metrics = iter(STREAM)
  xs, steps = [], []
  for t, g in enumerate(grads):
    if t % observe_every == 0 and t:
      state = observe(state, next(metrics))
    steps.append(float(plateau.step_size(state)))
    updates, state = update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    xs.append(np.asarray(params["w"]))
  return xs, steps, state


def _expected_steps(base, n, observe_every=2):
  lrs = _ref_plateau_lrs(STREAM, base, factor=0.5, patience=0)
  return [base if t < observe_every else lrs[t // observe_every - 1]
          for t in range(n)]


def _adam_reference(x0, grads, steps, finish):
  """float64 Adam; `finish(z, x, s)` maps z = x - s d to the new x."""
  x = np.array(x0, np.float64)
  m = np.zeros_like(x)
  v = np.zeros_like(x)
  out = []
  for t, (g, s) in enumerate(zip(grads, steps), start=1):
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    d = (m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t)) + EPS)
    x = finish(x - s * d, x, s, d)
    out.append(x.copy())
  return out


def _plateau():
  return proxopt.reduce_on_plateau(0.1, factor=0.5, patience=0)


def _soft(z, t):
  return np.sign(z) * np.maximum(np.abs(z) - t, 0.0)


N = 14


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_adamprox_exact_prox_at_reduced_step(x64, jit):
  wd = 0.7
  x0 = np.linspace(-2.0, 2.0, 5)
  grads = _grads(N, (5,))
  plateau = _plateau()
  tx = optax.inject_hyperparams(proxopt.adamprox)(
      learning_rate=plateau, weight_decay=wd)
  xs, steps, _ = _run(tx, plateau, x0, grads, jit=jit)
  want_steps = _expected_steps(0.1, N)
  assert steps == pytest.approx(want_steps, rel=1e-12)
  assert min(steps) == pytest.approx(0.1 / 16)  # four reductions happened
  ref = _adam_reference(x0, grads, want_steps, lambda z, x, s, d: z / (1 + s * wd))
  np.testing.assert_allclose(np.array(xs), np.array(ref), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("how", ["inject_chain", "classic"])
def test_adam_plus_l1_prox_exact_at_reduced_step(x64, how):
  lam = 0.8
  x0 = np.array([0.05, -0.03, 1.5, -2.0, 0.0])
  grads = 0.1 * _grads(N, (5,), seed=1)
  plateau = _plateau()
  if how == "inject_chain":
    tx = optax.inject_hyperparams(
        lambda learning_rate: optax.chain(
            optax.adam(learning_rate),
            proxopt.proximal(proxopt.l1(lam), learning_rate)))(
                learning_rate=plateau)
  else:
    tx = proxopt.classic("adam", plateau, regularizer=proxopt.l1(lam))
  xs, steps, _ = _run(tx, plateau, x0, grads)
  want_steps = _expected_steps(0.1, N)
  assert steps == pytest.approx(want_steps, rel=1e-12)
  ref = _adam_reference(x0, grads, want_steps, lambda z, x, s, d: _soft(z, s * lam))
  np.testing.assert_allclose(np.array(xs), np.array(ref), rtol=1e-12, atol=1e-14)
  assert np.sum(np.array(xs[-1]) == 0.0) >= 1  # the prox made exact zeros


def test_adamw_decays_by_reduced_step(x64):
  wd = 0.3
  x0 = np.linspace(-1.0, 3.0, 4)
  grads = _grads(N, (4,), seed=2)
  plateau = _plateau()
  tx = optax.inject_hyperparams(proxopt.adamw)(learning_rate=plateau, weight_decay=wd)
  xs, _, _ = _run(tx, plateau, x0, grads)
  want_steps = _expected_steps(0.1, N)
  ref = _adam_reference(x0, grads, want_steps, lambda z, x, s, d: z - s * wd * x)
  np.testing.assert_allclose(np.array(xs), np.array(ref), rtol=1e-12, atol=1e-14)


def test_update_multiplier_would_make_prox_inexact():
  """Why the plateau is the learning rate and not a factor on the update."""
  x, u, s, c, wd = 1.0, -0.2, 0.1, 0.5, 1.0  # AdamProx step, then scaled by c
  scaled_after = c * ((x + u) / (1 + s * wd) - x)
  exact = (x + c * u) / (1 + c * s * wd) - x  # the prox at the reduced step
  assert abs(scaled_after - exact) > 5e-3


# ---------------------------------------------------------------------------
# Classic optimizers with decay, prox and a schedule.


# Each classic optimizer runs under a different schedule: (schedule, closed form).
CLASSIC_SCHEDULES = [
    (lambda: proxopt.step_decay(0.05, 0.5, every_epochs=2, steps_per_epoch=3),
     lambda t: 0.05 * 0.5 ** (t // 6)),
    (lambda: proxopt.multistep_decay(0.05, [1, 3], 0.5, steps_per_epoch=3),
     lambda t: 0.05 * 0.5 ** ((t >= 3) + (t >= 9))),
    (lambda: proxopt.cosine_per_epoch(0.05, 5, steps_per_epoch=3),
     lambda t: 0.05 * 0.5 * (1 + math.cos(math.pi * min(t // 3, 5) / 5))),
    (lambda: proxopt.warmup_cosine(0.05, 3, 15, init_value=0.01),
     lambda t: 0.01 + 0.04 * t / 3 if t < 3 else
     0.05 * 0.5 * (1 + math.cos(math.pi * min(t - 3, 12) / 12))),
    (lambda: optax.linear_schedule(0.05, 0.005, 15), lambda t: 0.05 - 0.003 * min(t, 15)),
    (lambda: 0.03, lambda t: 0.03),
]


@pytest.mark.parametrize(
    "name,schedule",
    list(zip(proxopt.CLASSIC_OPTIMIZERS, CLASSIC_SCHEDULES)),
    ids=[f"{n}-{i}" for i, n in enumerate(proxopt.CLASSIC_OPTIMIZERS)],
)
def test_classic_decay_and_prox_read_the_schedule(x64, name, schedule):
  """classic(name) == optax base step + decay/prox at s_t, in float64 NumPy."""
  make, closed_form = schedule
  sched = make()
  wd, lam = 0.4, 0.3
  x0 = np.array([0.5, -1.0, 0.01, 2.0])
  grads = _grads(15, (4,), seed=3)
  tx = proxopt.classic(name, sched, weight_decay=wd, regularizer=proxopt.l1(lam))
  base = proxopt.classic(name, sched)  # the peer: plain optax
  params = {"w": jnp.asarray(x0)}
  st, bst = tx.init(params), base.init(params)
  x = x0.copy()
  for t, g in enumerate(grads):
    g = {"w": jnp.asarray(g)}
    u, bst = base.update(g, bst, {"w": jnp.asarray(x)})
    # The schedule's own value (optax may compute it in float32); that it is
    # the closed form is checked here, and against torch above.
    s = float(sched(jnp.asarray(t, jnp.int32))) if callable(sched) else sched
    assert s == pytest.approx(closed_form(t), rel=1e-6)
    x_ref = _soft(x + np.asarray(u["w"]) - s * wd * x, s * lam)
    upd, st = tx.update(g, st, params)
    params = optax.apply_updates(params, upd)
    np.testing.assert_allclose(np.asarray(params["w"]), x_ref, rtol=1e-12, atol=1e-14)
    x = x_ref


@pytest.mark.torch
def test_classic_adam_decay_step_decay_matches_torch_adamw(torch):
  """Same schedule drives Adam's step and the decoupled decay: torch AdamW+StepLR."""
  spe, epochs, wd = 3, 6, 0.5
  x0 = np.array([1.0, -2.0, 0.3])
  grads = _grads(spe * epochs, (3,), seed=4)
  tx = proxopt.classic("adam", proxopt.step_decay(0.05, 0.5, 2, spe), weight_decay=wd)
  params = {"w": jnp.asarray(x0, jnp.float32)}
  st = tx.init(params)
  p = torch.nn.Parameter(torch.tensor(x0, dtype=torch.float32))
  opt = torch.optim.AdamW([p], lr=0.05, weight_decay=wd)
  sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
  for t, g in enumerate(grads):
    upd, st = tx.update({"w": jnp.asarray(g, jnp.float32)}, st, params)
    params = optax.apply_updates(params, upd)
    p.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
    if (t + 1) % spe == 0:
      sched.step()
    np.testing.assert_allclose(np.asarray(params["w"]), p.detach().numpy(),
                               rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", proxopt.CLASSIC_OPTIMIZERS)
def test_classic_with_plateau(name):
  plateau = proxopt.reduce_on_plateau(0.1, factor=0.5, patience=0)
  tx = proxopt.classic(name, plateau, weight_decay=0.1)
  params = {"w": jnp.ones(3)}
  st = tx.init(params)
  st = plateau.observe(plateau.observe(st, 1.0), 2.0)
  assert float(plateau.step_size(st)) == pytest.approx(0.05)
  _, st = jax.jit(tx.update)({"w": jnp.ones(3)}, st, params)
  assert float(st.hyperparams["learning_rate"]) == pytest.approx(0.05)


# ---------------------------------------------------------------------------
# State: checkpoint round trip, jit, nnx.


def test_plateau_state_checkpoint_round_trip():
  plateau = proxopt.reduce_on_plateau(0.1, factor=0.5, patience=1, cooldown=1)
  tx = optax.inject_hyperparams(proxopt.adamprox)(learning_rate=plateau, weight_decay=0.2)
  params = {"w": jnp.linspace(-1.0, 1.0, 3)}
  grads = _grads(10, (3,), seed=5).astype(np.float32)
  metrics = [1.0, 0.9, 0.95, 0.97, 0.91, 0.92, 0.93, 0.94, 0.8, 0.85]

  def run(state, params, ts):
    for t in ts:
      state = plateau.observe(state, metrics[t])
      u, state = tx.update({"w": jnp.asarray(grads[t])}, state, params)
      params = optax.apply_updates(params, u)
    return state, params

  state, p = run(tx.init(params), params, range(5))
  # Save as plain NumPy arrays (what np.savez would store), restore into the
  # structure of a fresh init.
  saved = [np.asarray(x) for x in jax.tree.leaves(state)]
  treedef = jax.tree.structure(tx.init(params))
  restored = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in saved])
  pl = restored.hyperparams_states["learning_rate"]
  assert isinstance(pl, ReduceOnPlateauState)
  assert float(pl.scale) == 0.5 and int(pl.num_evals) == 5
  a_state, a_p = run(state, p, range(5, 10))
  b_state, b_p = run(restored, p, range(5, 10))
  np.testing.assert_array_equal(a_p["w"], b_p["w"])
  for x, y in zip(jax.tree.leaves(a_state), jax.tree.leaves(b_state)):
    np.testing.assert_array_equal(x, y)
  assert float(a_state.hyperparams_states["learning_rate"].scale) == 0.25


def test_plateau_jit_matches_eager_and_does_not_retrace():
  plateau = proxopt.reduce_on_plateau(0.1, factor=0.5, patience=1, cooldown=2)
  traces = []

  def observe(st, m):
    traces.append(1)
    return plateau.observe(st, m)

  jobs = jax.jit(observe)
  a = b = plateau.init()
  for m in LOSS[:30]:
    a = plateau.observe(a, m)
    b = jobs(b, jnp.float32(m))
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
  assert len(traces) == 1


def test_plateau_with_nnx_optimizer_in_place():
  nnx = pytest.importorskip("flax.nnx")

  class M(nnx.Module):

    def __init__(self):
      self.w = nnx.Param(jnp.array([1.0, -2.0]))

  model = M()
  plateau = proxopt.reduce_on_plateau(0.1, factor=0.5, patience=0)
  opt = nnx.Optimizer(
      model, optax.inject_hyperparams(proxopt.adamprox)(
          learning_rate=plateau, weight_decay=1.0), wrt=nnx.Param)

  @nnx.jit
  def observe(opt, m):
    plateau.observe(opt.opt_state, m)

  observe(opt, 1.0)
  observe(opt, 2.0)
  assert float(plateau.step_size(opt.opt_state)) == pytest.approx(0.05)
  grads = nnx.grad(lambda m: jnp.sum(m.w * 0.0))(model)
  opt.update(model, grads)
  np.testing.assert_allclose(np.asarray(model.w[...]), np.array([1.0, -2.0]) / 1.05,
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("kw,arg", [
    (dict(factor=0.0), "factor"),
    (dict(factor=1.0), "factor"),
    (dict(factor=1.5), "factor"),
    (dict(factor=-0.5), "factor"),
    (dict(patience=-1), "patience"),
    (dict(cooldown=-2), "cooldown"),
    (dict(mode="minimum"), "mode"),
    (dict(threshold_mode="relative"), "threshold_mode"),
    (dict(threshold=-1e-3), "threshold"),
    (dict(min_scale=2.0), "min_scale"),
    (dict(min_value=0.5), "min_value"),  # above the base 0.1
    (dict(min_value=0.01, min_scale=0.1), "min_value"),
])
def test_plateau_bad_input(kw, arg):
  with pytest.raises(ValueError, match=f"`?{arg}"):
    proxopt.reduce_on_plateau(0.1, **kw)


def test_plateau_bad_base_and_usage():
  with pytest.raises(ValueError, match="base"):
    proxopt.reduce_on_plateau(0.0)
  with pytest.raises(ValueError, match="min_value"):
    proxopt.reduce_on_plateau(optax.constant_schedule(0.1), min_value=0.01)
  plateau = proxopt.reduce_on_plateau(0.1)
  params = {"w": jnp.ones(2)}
  # Passed to a plain optax transformation, it is called with a count
  # instead of its state: clear error. (proxopt's aliases wrap a plateau in
  # inject_hyperparams themselves.)
  tx = optax.sgd(plateau)
  with pytest.raises(TypeError, match="inject_hyperparams"):
    tx.update({"w": jnp.ones(2)}, tx.init(params), params)
  # Observing a state that holds no plateau.
  with pytest.raises(ValueError, match="ReduceOnPlateauState"):
    plateau.observe(optax.adam(0.1).init(params), 1.0)
  with pytest.raises(ValueError, match="scalar"):
    plateau.observe(plateau.init(), jnp.ones(3))


@pytest.mark.parametrize("make,arg", [
    (lambda: proxopt.step_decay(0.1, 0.0, 2), "factor"),
    (lambda: proxopt.step_decay(0.1, 1.5, 2), "factor"),
    (lambda: proxopt.step_decay(0.1, 0.5, 0), "every_epochs"),
    (lambda: proxopt.step_decay(0.1, 0.5, 2, steps_per_epoch=0), "steps_per_epoch"),
    (lambda: proxopt.step_decay(-0.1, 0.5, 2), "init_value"),
    (lambda: proxopt.multistep_decay(0.1, [2, -1], 0.5), "milestones"),
    (lambda: proxopt.multistep_decay(0.1, [2], 2.0), "factor"),
    (lambda: proxopt.cosine_per_epoch(0.1, 0, 10), "epochs"),
    (lambda: proxopt.warmup_cosine(0.1, 10, 10), "total_steps"),
    (lambda: proxopt.warmup_cosine(0.1, -1, 10), "warmup_steps"),
    (lambda: proxopt.classic("adamax", 0.1), "name"),
    (lambda: proxopt.classic("momentum", 0.1, momentum=1.0), "momentum"),
    (lambda: proxopt.classic("adam", -0.1), "learning_rate"),
])
def test_schedule_bad_input(make, arg):
  with pytest.raises(ValueError, match=arg):
    make()


# ---------------------------------------------------------------------------
# Issue #23: classic under optax.inject_hyperparams, like every optimizer here.


def _numpy_adam_wd(x, grads, lrs, wd, b1=0.9, b2=0.999, eps=1e-8):
  """float64 NumPy Adam followed by decoupled decay -lr_t * wd * x."""
  m, v = np.zeros_like(x), np.zeros_like(x)
  for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    d = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    x = x - lr * d - lr * wd * x
  return x


def test_classic_under_inject_hyperparams_changes_lr_at_runtime():
  # Before #23: TypeError: adam() got an unexpected keyword argument 'optax_kwargs'.
  tx = optax.inject_hyperparams(proxopt.classic, static_args=("name",))(
      name="adam", learning_rate=0.1, weight_decay=0.1)
  x0 = np.array([1.0, -2.0, 0.5])
  params = {"w": jnp.asarray(x0, jnp.float32)}
  state = tx.init(params)
  grads = [np.array([0.3, -1.0, 2.0]), np.array([-0.5, 0.2, 1.0]), np.array([1.0, 1.0, -1.0])]
  lrs = [0.1, 0.1, 0.01]
  update = jax.jit(tx.update)
  for g, lr in zip(grads, lrs):
    state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    u, state = update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, u)
  np.testing.assert_allclose(np.asarray(params["w"]), _numpy_adam_wd(x0, grads, lrs, 0.1),
                             rtol=1e-5, atol=1e-6)


def test_classic_optax_kwargs_is_a_dict():
  tx = proxopt.classic("adam", 0.1, optax_kwargs={"eps": 0.0, "b1": 0.5})
  params = {"w": jnp.array([1.0])}
  g = {"w": jnp.array([4.0])}
  u, _ = tx.update(g, tx.init(params), params)
  ref = optax.adam(0.1, b1=0.5, eps=0.0)
  np.testing.assert_array_equal(np.asarray(u["w"]), np.asarray(ref.update(g, ref.init(params))[0]["w"]))
  np.testing.assert_allclose(np.asarray(u["w"]), [-0.1], rtol=1e-5)  # a sign step at eps=0
  with pytest.raises(TypeError, match=r"`optax_kwargs` must be a dict"):
    proxopt.classic("adam", 0.1, optax_kwargs=[("eps", 0.0)])
  with pytest.raises(TypeError, match=r"takes only `momentum`"):
    proxopt.classic("sgd", 0.1, optax_kwargs={"eps": 0.0})


def test_flax_interop_lives_in_its_own_module():
  # Issue #23 (code shape): one concept per private module. The schedules do
  # not sniff whether Flax is loaded; proxopt._nnx does, for observe().
  import inspect
  from proxopt import _nnx, _schedules
  src = inspect.getsource(_schedules)
  assert "sys.modules" not in src and "from flax" not in src
  assert _nnx.unwrap([1, 2.0]) == [1, 2.0]
  assert not _nnx.holds_variables([jnp.ones(2), 3])
