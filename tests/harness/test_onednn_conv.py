"""Tests of experiments.kernels.onednn: the oneDNN convolutions equal XLA's
(forward, input and weight gradients; float32, and bfloat16 within one
rounding of the float32 result), fall back to lax where unsupported,
work under jit/vmap, fail with an actionable message when unavailable, and
are compiled only when asked for (here: by the `onednn` fixture, on first use,
never at collection)."""

from __future__ import annotations

import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from experiments.kernels import onednn as onednn_conv

# Builds and compiles oneDNN kernels: about 25 s idle, so with the long tests (CI runs them too).
pytestmark = pytest.mark.slow

DN = ("NHWC", "HWIO", "NHWC")


needs_onednn = pytest.mark.usefixtures("onednn")


@pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="the onednn-cpu-gomp wheel is only installed on x86-64 Linux")
def test_kernels_build_on_x86_linux():
  # pyproject installs oneDNN here, so the fast path must not silently vanish.
  onednn_conv.require()
  assert onednn_conv.available(), onednn_conv.unavailable_reason()


def _custom_calls(f, *args):
  return jax.jit(f).lower(*args).as_text().count("experiments_onednn_conv_")


def _close(got, ref, tol=2e-5):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  np.testing.assert_allclose(got, ref, rtol=0, atol=tol * max(np.abs(ref).max(), 1e-12))


# (batch, H, W, C, K, kernel, strides, padding): ResNet shapes and odd ones.
CASES = [
    (4, 8, 8, 3, 16, (3, 3), (1, 1), ((1, 1), (1, 1))),
    (4, 8, 8, 16, 32, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (3, 9, 7, 5, 6, (3, 3), (2, 2), "SAME"),
    (2, 9, 9, 4, 3, (3, 2), (1, 2), "VALID"),
    (2, 6, 6, 4, 5, (1, 1), (1, 1), ((0, 0), (0, 0))),
    (1, 7, 7, 2, 3, (5, 5), (1, 1), ((2, 0), (1, 3))),
]


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_forward_and_gradients_equal_lax(case):
  n, h, w, c, k, ksz, strides, padding = case
  keys = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(keys[0], (n, h, w, c))
  kern = jax.random.normal(keys[1], (*ksz, c, k))

  def loss(x, kern, conv):
    y = conv(x, kern, strides, padding, dimension_numbers=DN)
    return jnp.sum(jnp.sin(y)), y

  f = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True), static_argnums=2)
  (_, y), (dx, dk) = f(x, kern, onednn_conv.conv_general_dilated)
  (_, y_ref), (dx_ref, dk_ref) = f(x, kern, lax.conv_general_dilated)
  assert y.shape == y_ref.shape
  _close(y, y_ref)
  _close(dx, dx_ref)
  _close(dk, dk_ref)
  # The oneDNN path really ran: forward, input and weight gradient kernels.
  g = lambda x, kern: jax.grad(lambda x, kern: loss(x, kern, onednn_conv.conv_general_dilated)[0], (0, 1))(x, kern)
  assert _custom_calls(g, x, kern) == 3


@needs_onednn
def test_float64_reference_on_resnet_block_shape():
  # An independent reference: the convolution written as a sum of shifted
  # matrix products in float64 NumPy.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 16, 16, 16)).astype(np.float32)
  kern = rng.normal(size=(3, 3, 16, 16)).astype(np.float32)
  y = onednn_conv.conv_general_dilated(jnp.asarray(x), jnp.asarray(kern), (1, 1),
                                       ((1, 1), (1, 1)), dimension_numbers=DN)
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = sum(np.einsum("nhwc,ck->nhwk", xp[:, i:i + 16, j:j + 16], kern[i, j])
            for i in range(3) for j in range(3))
  _close(y, ref, tol=1e-6)


# ----------------------------------------------------------- batch norm
# The ResNet stages' activation shapes at batch 8 (stem/stage 1, 2, 3).
BN_SHAPES = [(8, 32, 32, 16), (8, 16, 16, 32), (8, 8, 8, 64)]


@needs_onednn
@pytest.mark.parametrize("shape", BN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_batch_norm_kernel_equals_float64_reference(shape):
  """Forward (y, mean, biased var) and backward (closed form) against float64
  NumPy. Measured max error / max |reference| per output: <= 2e-6 (mean,
  var, dscale, dbias: sums over up to 8192 float32 terms), <= 6e-7 (y, dx);
  tolerance 1e-5."""
  from experiments.kernels.batch_norm import batch_norm_train
  rng = np.random.default_rng(0)
  eps = 1e-5
  # An offset and a spread per channel, as conv outputs have.
  x = (rng.normal(size=shape) * rng.uniform(0.5, 3, shape[-1])
       + rng.normal(size=shape[-1])).astype(np.float32)
  scale, bias = (rng.normal(size=shape[-1]).astype(np.float32) for _ in range(2))
  g = rng.normal(size=shape).astype(np.float32)

  def f(x, scale, bias):
    return batch_norm_train(x, scale, bias, eps)

  (y, mean, var), vjp = jax.jit(lambda *a: jax.vjp(f, *a))(x, scale, bias)
  dx, dscale, dbias = jax.jit(vjp)((jnp.asarray(g), jnp.zeros_like(mean), jnp.zeros_like(var)))
  axes = (0, 1, 2)
  x64, g64 = x.astype(np.float64), g.astype(np.float64)
  mu, v = x64.mean(axes), x64.var(axes)  # biased variance
  inv = 1 / np.sqrt(v + eps)
  xhat = (x64 - mu) * inv
  refs = {"y": scale * xhat + bias, "mean": mu, "var": v,
          "dx": scale * inv * (g64 - g64.mean(axes) - xhat * (g64 * xhat).mean(axes)),
          "dscale": (g64 * xhat).sum(axes), "dbias": g64.sum(axes)}
  got = {"y": y, "mean": mean, "var": var, "dx": dx, "dscale": dscale, "dbias": dbias}
  for name, ref in refs.items():
    assert got[name].dtype == jnp.float32, name
    _close(got[name], ref, tol=1e-5)
  # The statistics carry no gradient (they feed the running averages).
  gm = jax.grad(lambda x: f(x, scale, bias)[1].sum() + f(x, scale, bias)[2].sum())(x)
  assert not np.any(np.asarray(gm))


@needs_onednn
def test_onednn_batch_norm_layer_updates_statistics_as_flax_and_falls_back():
  """The view's BatchNorm in train mode: Flax's output and running-average
  update within float32 rounding, on oneDNN; eval mode, a mask, bfloat16 or
  features not on the last axis run Flax's own code (same results)."""
  from flax import nnx
  from experiments.kernels.batch_norm import OneDNNBatchNorm, with_onednn_batch_norm
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 16)) * 2 + 1
  model = nnx.Sequential(nnx.BatchNorm(16, momentum=0.9, rngs=nnx.Rngs(0)))
  model.layers[0].scale.set_value(jax.random.normal(jax.random.key(1), (16,)))
  view = with_onednn_batch_norm(model)
  assert type(view.layers[0]) is OneDNNBatchNorm and type(model.layers[0]) is nnx.BatchNorm
  # Parameters are shared with the model.
  assert view.layers[0].scale.get_value() is model.layers[0].scale.get_value()

  def run(m, x, **kw):
    graphdef, state = nnx.split(m)

    def f(state, x):
      m = nnx.merge(graphdef, state)
      return m(x, **kw), nnx.split(m)[1]
    text = jax.jit(f).lower(state, x).as_text()
    return jax.jit(f)(state, x), "experiments_onednn_batch_norm_fwd" in text

  (y_ref, st_ref), on_ref = run(model, x, use_running_average=False)
  (y, st), on = run(view, x, use_running_average=False)
  assert on and not on_ref
  _close(y, y_ref)
  for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(st_ref)):
    _close(a, b)
  assert float(jnp.abs(st["layers"][0]["mean"].get_value()).max()) > 0.05  # it moved
  # Fallbacks: still Flax's computation, same results.
  mask = jnp.ones(x.shape, bool).at[0].set(False)
  for kw, xin in (({"use_running_average": True}, x), ({"use_running_average": False, "mask": mask}, x)):
    (y, _), on = run(view, xin, **kw)
    (y_ref, _), _ = run(model, xin, **kw)
    assert not on, kw
    _close(y, y_ref)
  bf16 = nnx.with_attributes(view, dtype=jnp.bfloat16, raise_if_not_found=False)
  (y, _), on = run(bf16, x, use_running_average=False)
  assert not on and y.dtype == jnp.bfloat16
  nchw = with_onednn_batch_norm(nnx.Sequential(nnx.BatchNorm(8, axis=1, rngs=nnx.Rngs(0))))
  (y, _), on = run(nchw, x, use_running_average=False)
  assert not on and y.shape == x.shape


@needs_onednn
def test_unsupported_arguments_fall_back_to_lax():
  x = jnp.ones((2, 6, 6, 4)); kern = jnp.ones((3, 3, 4, 4))
  xb, kb = x.astype(jnp.bfloat16), kern.astype(jnp.bfloat16)
  conv = onednn_conv.conv_general_dilated
  cases = {
      "float16": lambda: conv(x.astype(jnp.float16), kern.astype(jnp.float16),
                              (1, 1), "SAME", dimension_numbers=DN),
      "bf16->f32": lambda: conv(xb, kb, (1, 1), "SAME", dimension_numbers=DN,
                                preferred_element_type=jnp.float32),
      "dilation": lambda: conv(x, kern, (1, 1), "SAME", rhs_dilation=(2, 2),
                               dimension_numbers=DN),
      "groups": lambda: conv(x, kern[:, :, :2], (1, 1), "SAME", dimension_numbers=DN,
                             feature_group_count=2),
      "NCHW": lambda: conv(x.transpose(0, 3, 1, 2), kern, (1, 1), "SAME",
                           dimension_numbers=("NCHW", "HWIO", "NCHW")),
  }
  for name, f in cases.items():
    text = jax.jit(f).lower().as_text()
    assert "experiments_onednn_conv_" not in text, name
    assert "convolution" in text, name
  assert _custom_calls(lambda: conv(x, kern, (1, 1), "SAME", dimension_numbers=DN)) == 1
  # float32 and bfloat16 run on oneDNN, the output in the inputs' dtype
  # (also when that dtype is asked for explicitly); mixed dtypes do not.
  for a, b, pet in ((x, kern, jnp.float32), (xb, kb, None), (xb, kb, jnp.bfloat16)):
    assert onednn_conv.supports(a, b, (1, 1), "SAME", dimension_numbers=DN,
                                preferred_element_type=pet)
  assert not onednn_conv.supports(xb, kern, (1, 1), "SAME", dimension_numbers=DN)
  assert not onednn_conv.supports(x, kb, (1, 1), "SAME", dimension_numbers=DN)
  y = conv(xb, kb, (1, 1), "SAME", dimension_numbers=DN)
  assert y.dtype == jnp.bfloat16
  assert _custom_calls(lambda: conv(xb, kb, (1, 1), "SAME", dimension_numbers=DN)) == 1


# bfloat16 on the ResNet shapes, (batch, H=W, C, K, stride), 3x3 SAME. oneDNN
# accumulates in float32 and rounds the result (the weight gradient too) to
# bfloat16 once, so each element must be the float32 convolution of the same
# bfloat16-rounded operands within one bfloat16 rounding: relative error <=
# 2^-8 (bfloat16's unit roundoff, 3.9e-3). Measured on these shapes (batch 8):
# max elementwise relative error 3.89e-3 (forward and input gradient) and
# 3.86e-3 (weight gradient), except near-zero elements, where float32
# summation order adds at most 3e-8 of the largest |element|; relative to the
# largest element the error is <= 3.5e-3 (XLA's own bfloat16 convolution: the
# same; >= 99.96% of the elements equal oneDNN's bit for bit). So rtol = 2^-8
# and atol = 1e-5 of the largest element (300x the measured excess). A kernel
# summing in bfloat16 (27..576 products per output here) would miss by ~1e-2.
BF16_CASES = [(8, 32, 3, 16, 1), (8, 32, 16, 16, 1), (8, 32, 16, 32, 2),
              (8, 16, 32, 32, 1), (8, 16, 32, 64, 2), (8, 8, 64, 64, 1)]
BF16_RTOL, BF16_ATOL = 2.0 ** -8, 1e-5


def _conv_vjp(conv, x, kern, g, stride):
  y, vjp = jax.vjp(lambda x, kern: conv(x, kern, (stride, stride), "SAME",
                                       dimension_numbers=DN), x, kern)
  return (y, *vjp(g))


@needs_onednn
@pytest.mark.parametrize("case", BF16_CASES, ids=lambda c: "x".join(map(str, c)))
def test_bf16_forward_and_gradients_within_one_rounding_of_float32(case):
  n, h, c, k, stride = case
  keys = jax.random.split(jax.random.key(2), 3)
  bf16 = lambda a: a.astype(jnp.bfloat16)
  x = bf16(jax.random.normal(keys[0], (n, h, h, c)))
  kern = bf16(jax.random.normal(keys[1], (3, 3, c, k)) / np.sqrt(9 * c))
  g = bf16(jax.random.normal(keys[2], (n, -(-h // stride), -(-h // stride), k)))
  f = jax.jit(_conv_vjp, static_argnums=(0, 4))
  got = f(onednn_conv.conv_general_dilated, x, kern, g, stride)
  f32 = lambda a: a.astype(jnp.float32)
  ref = f(lax.conv_general_dilated, f32(x), f32(kern), f32(g), stride)
  for name, a, r in zip(("forward", "input gradient", "weight gradient"), got, ref):
    assert a.dtype == jnp.bfloat16, name  # the cotangent dtype JAX expects
    a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
    np.testing.assert_allclose(a, r, rtol=BF16_RTOL,
                               atol=BF16_ATOL * np.abs(r).max(), err_msg=name)
  # All three ran on the bfloat16 kernels.
  text = f.lower(onednn_conv.conv_general_dilated, x, kern, g, stride).as_text()
  for kind in ("fwd", "bwd_data", "bwd_weights"):
    assert text.count(f"experiments_onednn_conv_{kind}_bf16") == 1, kind


@needs_onednn
def test_bf16_auto_conv_picks_onednn_when_built():
  """With the kernels built, conv='auto' in bfloat16 resolves as in float32
  (oneDNN on one CPU device), for the train and the eval step."""
  import optax
  from flax import nnx
  from experiments.models.resnet import ResNet
  from experiments.kernels.train_step import (
      create_train_state, make_eval_step, make_train_step)
  if jax.default_backend() != "cpu":
    pytest.skip("conv='auto' picks oneDNN only on CPU")
  model = ResNet(8, 10, use_bn=True, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.1)
  st = make_train_step(model, tx, impl="plain", precision="bfloat16")
  f32 = make_train_step(model, tx, impl="plain")
  assert (st.conv, st.precision) == ("onednn", "bfloat16")
  assert st.conv_reason == f32.conv_reason == "auto: oneDNN kernels built, one CPU device"
  images = np.zeros((8, 32, 32, 3), np.uint8); labels = np.arange(8) % 10
  state = create_train_state(model, tx)
  text = st.jitted.lower(state, images, labels).as_text()
  assert "experiments_onednn_conv_fwd_bf16" in text
  assert "stablehlo.convolution" not in text  # every convolution on oneDNN
  # The eval step too: its 7 forward convolutions on oneDNN in bfloat16.
  ev = make_eval_step(model, precision="bfloat16")
  jaxpr = str(jax.make_jaxpr(ev)(state, images, labels))
  assert jaxpr.count("experiments_onednn_conv_fwd_bf16") == 7
  assert "conv_general_dilated" not in jaxpr
  out = ev(state, images, labels)
  assert np.isfinite(float(out["loss_sum"])) and float(out["count"]) == 8


@needs_onednn
def test_vmap_and_nnx_conv():
  from flax import nnx
  x = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 4))
  layer = nnx.Conv(4, 6, (3, 3), rngs=nnx.Rngs(0))
  ref = jax.vmap(layer)(x)
  layer.conv_general_dilated = onednn_conv.conv_general_dilated
  _close(jax.vmap(layer)(x), ref)
  clone = onednn_conv.with_onednn_convs(nnx.Sequential(nnx.Conv(4, 6, (3, 3), rngs=nnx.Rngs(0))))
  assert clone.layers[0].conv_general_dilated is onednn_conv.conv_general_dilated


def test_missing_onednn_names_the_fix(monkeypatch, tmp_path):
  monkeypatch.setenv("ONEDNN_ROOT", str(tmp_path))
  monkeypatch.setattr(onednn_conv, "_onednn_roots", lambda: [tmp_path])
  with pytest.raises(onednn_conv.OneDNNUnavailable, match="pip install onednn-cpu-gomp"):
    onednn_conv._find_onednn()
  monkeypatch.setattr(onednn_conv, "_load_built", lambda: "oneDNN headers and library not found")
  assert not onednn_conv.available()
  with pytest.raises(onednn_conv.OneDNNUnavailable, match="not found"):
    onednn_conv.require()
  # Unavailable kernels: the drop-in still computes, through lax.
  x = jnp.ones((2, 5, 5, 3)); kern = jnp.ones((3, 3, 3, 2))
  y = onednn_conv.conv_general_dilated(x, kern, (1, 1), "SAME", dimension_numbers=DN)
  _close(y, lax.conv_general_dilated(x, kern, (1, 1), "SAME", dimension_numbers=DN))


@needs_onednn
def test_build_is_cached_and_failed_builds_leave_nothing(monkeypatch, tmp_path):
  monkeypatch.setenv("EXPERIMENTS_CACHE_DIR", str(tmp_path))
  first = onednn_conv.build()
  mtime = first.stat().st_mtime_ns
  assert onednn_conv.build() == first and first.stat().st_mtime_ns == mtime
  # A compiler that fails: a clear error with its output, no partial file.
  bad = tmp_path / "bad"
  bad.mkdir()
  monkeypatch.setenv("EXPERIMENTS_CACHE_DIR", str(bad))
  monkeypatch.setenv("CXX", "false")
  with pytest.raises(onednn_conv.OneDNNUnavailable, match="building onednn_conv.cc failed"):
    onednn_conv.build()
  assert list(bad.iterdir()) == []


def test_auto_never_compiles(monkeypatch, tmp_path):
  """With an empty cache, available() is False and says how to build, the
  cache stays empty, and conv='auto' runs XLA's convolutions."""
  import optax
  from flax import nnx
  from experiments.models.resnet import ResNet
  from experiments.kernels.train_step import make_train_step
  monkeypatch.setenv("EXPERIMENTS_CACHE_DIR", str(tmp_path))
  onednn_conv._load_built.cache_clear()
  try:
    assert not onednn_conv.available()
    assert "python -m experiments.kernels build" in onednn_conv.unavailable_reason()
    model = ResNet(8, 10, use_bn=False, rngs=nnx.Rngs(0))
    assert make_train_step(model, optax.sgd(0.1)).conv == "xla"
    assert list(tmp_path.iterdir()) == []
  finally:
    onednn_conv._load_built.cache_clear()


def test_cache_and_targets_are_the_experiments_own():
  assert "proxopt-experiments" in str(onednn_conv.cache_dir())
  assert all(t.startswith("experiments_onednn_") for t in onednn_conv._TARGETS.values())


def test_train_cli_with_unbuildable_onednn_exits_2_naming_the_fix(monkeypatch, tmp_path, capsys):
  from experiments import train
  monkeypatch.setenv("EXPERIMENTS_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  onednn_conv._load_built.cache_clear()
  try:
    rc = train.main(["--dataset", "sample", "--train-subset", "128", "--epochs", "1",
                     "--step", "kernels:conv=onednn", "--out", str(tmp_path / "run"), "--no-progress"])
  finally:
    onednn_conv._load_built.cache_clear()
  err = capsys.readouterr().err
  assert rc == 2 and "cannot run the C++ compiler" in err and "--step kernels:conv=xla" in err
