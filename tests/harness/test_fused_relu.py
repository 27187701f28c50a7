"""Tests of experiments.kernels.fused_relu: relu(conv(x, w)) and
relu(conv(x, w) + r) in one oneDNN call equal XLA's unfused computation
(forward and every gradient; float32, and bfloat16 within one rounding of the
float32 result), follow jax.nn.relu's gradient convention at 0, and the
ResNet view computes what the model computes, with the fused kernels."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from experiments.kernels import fused_relu
from experiments.kernels import onednn as onednn_conv
from experiments.models.resnet import ResNet

# Compiles fused oneDNN kernels per shape: about 20 s idle, so with the long tests (CI runs them too).
pytestmark = pytest.mark.slow

DN = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(scope="module", autouse=True)
def onednn():
  try:
    onednn_conv.require()
  except onednn_conv.OneDNNUnavailable as e:
    pytest.skip(str(e))


def _close(got, ref, tol=2e-5, what=""):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  np.testing.assert_allclose(got, ref, rtol=0, atol=tol * max(np.abs(ref).max(), 1e-12),
                             err_msg=what)


def _calls(hlo: str, kind: str) -> int:
  """Custom calls of the FFI target experiments_onednn_<kind> in `hlo`."""
  return hlo.count(f"@experiments_onednn_{kind}(")


def _reference(x, w, r, strides, pads):
  z = lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=DN)
  return jax.nn.relu(z if r is None else z + r)


# (batch, H, C, K, stride, pads): ResNet block shapes and a stem-like one.
CASES = [(4, 8, 16, 16, 1, ((1, 1), (1, 1))), (4, 8, 16, 32, 2, ((1, 1), (1, 1))),
         (3, 7, 3, 5, 1, ((1, 1), (1, 1))), (2, 9, 4, 6, 2, ((0, 1), (2, 0)))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])))
@pytest.mark.parametrize("with_residual", [False, True], ids=["relu", "add_relu"])
def test_forward_and_gradients_equal_unfused_xla(case, with_residual):
  n, h, c, k, s, pads = case
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (n, h, h, c))
  w = jax.random.normal(keys[1], (3, 3, c, k)) / np.sqrt(9 * c)
  out_shape = jax.eval_shape(lambda: _reference(x, w, None, (s, s), pads)).shape
  r = jax.random.normal(keys[2], out_shape) if with_residual else None
  g = jax.random.normal(keys[3], out_shape)  # a cotangent that is not all ones

  def fused(x, w, r):
    if r is None:
      return fused_relu.conv_relu(x, w, (s, s), pads)
    return fused_relu.conv_add_relu(x, w, r, (s, s), pads)

  def vjp(f, x, w, r):
    y, back = jax.vjp(f, x, w, r)
    return (y, *back(g))

  ref_f = lambda x, w, r: _reference(x, w, r, (s, s), pads)
  got = jax.jit(functools.partial(vjp, fused))(x, w, r)
  ref = jax.jit(functools.partial(vjp, ref_f))(x, w, r)
  # The ReLU cut something: about half the outputs are zero.
  assert 0.2 < float(jnp.mean(ref[0] == 0)) < 0.8
  for what, a, b in zip(("y", "dx", "dw", "dresidual"), got, ref):
    if b is None:
      assert a is None
      continue
    _close(a, b, what=what)
  # One fused forward call, one ReLU-gradient call, no separate max/select.
  hlo = jax.jit(functools.partial(vjp, fused)).lower(x, w, r).as_text()
  kind = "conv_fwd_add_relu" if with_residual else "conv_fwd_relu"
  assert _calls(hlo, kind) == 1 and _calls(hlo, "relu_bwd") == 1
  assert _calls(hlo, "conv_bwd_data") == 1 and _calls(hlo, "conv_bwd_weights") == 1
  assert "stablehlo.maximum" not in hlo and "stablehlo.select" not in hlo


def test_relu_gradient_at_zero_is_zero_like_jax_nn_relu():
  # Exactly-zero pre-activations (zero kernel, zero residual): jax.nn.relu's
  # gradient there is 0, so nothing reaches the weights or the input.
  x = jnp.ones((2, 4, 4, 3))
  w = jnp.zeros((3, 3, 3, 4))
  r = jnp.zeros((2, 4, 4, 4))
  pads = ((1, 1), (1, 1))
  f = lambda x, w, r: jnp.sum(fused_relu.conv_add_relu(x, w, r, (1, 1), pads))
  ref = lambda x, w, r: jnp.sum(_reference(x, w, r, (1, 1), pads))
  got, want = jax.grad(f, (0, 1, 2))(x, w, r), jax.grad(ref, (0, 1, 2))(x, w, r)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)
  assert not np.any(np.asarray(got[1]))


def test_bf16_within_one_rounding_of_float32():
  # One bfloat16 rounding of the float32 result computed from the same
  # bfloat16 operands: relative 2^-8, as for the unfused oneDNN bfloat16
  # convolutions (tests/harness/test_onednn_conv.py).
  keys = jax.random.split(jax.random.key(1), 4)
  bf16, f32 = (lambda a: a.astype(jnp.bfloat16)), (lambda a: a.astype(jnp.float32))
  x = bf16(jax.random.normal(keys[0], (8, 16, 16, 32)))
  w = bf16(jax.random.normal(keys[1], (3, 3, 32, 32)) / np.sqrt(9 * 32))
  r = bf16(jax.random.normal(keys[2], (8, 16, 16, 32)))
  g = bf16(jax.random.normal(keys[3], (8, 16, 16, 32)))
  pads = ((1, 1), (1, 1))
  y, back = jax.vjp(lambda x, w, r: fused_relu.conv_add_relu(x, w, r, (1, 1), pads), x, w, r)
  got = (y, *back(g))
  y32, back32 = jax.vjp(lambda x, w, r: _reference(x, w, r, (1, 1), pads), f32(x), f32(w), f32(r))
  # The reference gradient flows from the bfloat16 cotangent through the
  # same ReLU mask (the signs of y and y32 agree: bfloat16 keeps float32's
  # exponent range, so no positive value rounds to zero).
  ref = (y32, *back32(f32(g)))
  for what, a, b in zip(("y", "dx", "dw", "dresidual"), got, ref):
    assert a.dtype == jnp.bfloat16, what
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=2.0 ** -8, atol=1e-5 * np.abs(b).max(),
                               err_msg=what)


@pytest.mark.parametrize("use_bn", [False, True], ids=["nobn", "bn"])
def test_resnet_view_computes_the_model_with_fused_kernels(use_bn):
  model = ResNet(8, 10, use_bn=use_bn, rngs=nnx.Rngs(0))
  model.eval()
  view = fused_relu.with_fused_relu(model)
  x = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
  _close(view(x), model(x), tol=1e-5)
  hlo = jax.jit(lambda x: view(x)).lower(x).as_text()
  # ResNet-8: the stem and 3 blocks have a conv + ReLU, the 3 blocks a
  # conv + residual + ReLU; with BN nothing is fused (the ReLU follows BN).
  assert _calls(hlo, "conv_fwd_relu") == (0 if use_bn else 4)
  assert _calls(hlo, "conv_fwd_add_relu") == (0 if use_bn else 3)
  assert fused_relu.has_fusable_layers(model) is not use_bn
  # The view shares the parameters and splits into the same state.
  assert jax.tree.structure(nnx.state(view)) == jax.tree.structure(nnx.state(model))
  assert type(model.blocks[0]).__name__ == "BasicBlock"  # the model is untouched


# ------------------------------------------------- with oneDNN's BatchNorm


def _bn_relu_reference(x, scale, bias, residual=None):
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  y = (x - mean) * lax.rsqrt(var + 1e-5) * scale + bias
  return jax.nn.relu(y if residual is None else y + residual)


@pytest.mark.parametrize("shape", [(8, 16, 16, 16), (8, 8, 8, 64)], ids=["16x16x16", "8x8x64"])
def test_batch_norm_relu_and_add_relu_equal_unfused_xla(shape):
  from experiments.kernels import batch_norm
  keys = jax.random.split(jax.random.key(3), 5)
  x = 2.0 + 3.0 * jax.random.normal(keys[0], shape)  # not already normalised
  scale = 1.0 + 0.5 * jax.random.normal(keys[1], shape[-1:])
  bias = 0.5 * jax.random.normal(keys[2], shape[-1:])
  r = jax.random.normal(keys[3], shape)
  g = jax.random.normal(keys[4], shape)

  def bn_relu(x, scale, bias):
    return batch_norm.batch_norm_relu_train(x, scale, bias, 1e-5)[0]

  got = jax.vjp(bn_relu, x, scale, bias)
  ref = jax.vjp(_bn_relu_reference, x, scale, bias)
  _close(got[0], ref[0], what="relu(bn(x))")
  for what, a, b in zip(("dx", "dscale", "dbias"), got[1](g), ref[1](g)):
    _close(a, b, what=what)
  # The batch statistics it returns for the running averages.
  _, mean, var = batch_norm.batch_norm_relu_train(x, scale, bias, 1e-5)
  _close(mean, x.mean((0, 1, 2)), tol=1e-6, what="mean")
  _close(var, x.var((0, 1, 2)), tol=1e-5, what="var")
  # relu(a + b) in one oneDNN pass, and its gradient for both operands.
  a = jax.random.normal(keys[0], shape)
  got = jax.vjp(fused_relu.add_relu, a, r)
  ref = jax.vjp(lambda a, b: jax.nn.relu(a + b), a, r)
  np.testing.assert_array_equal(got[0], ref[0])
  for a_, b_ in zip(got[1](g), ref[1](g)):
    np.testing.assert_array_equal(a_, b_)


def test_resnet_view_with_onednn_batch_norm_fuses_the_relus():
  from experiments.kernels.batch_norm import with_onednn_batch_norm
  model = ResNet(8, 10, use_bn=True, rngs=nnx.Rngs(0))
  assert fused_relu.has_fusable_layers(model, onednn_batch_norm=True)
  view = with_onednn_batch_norm(fused_relu.with_fused_relu(model))
  x = jax.random.normal(jax.random.key(4), (8, 32, 32, 3))

  def train_forward(m):
    # Batch statistics (the layers' default mode), and the running averages
    # they update, as a pure function of the split state.
    graphdef, state = nnx.split(m)

    def f(state, x):
      m = nnx.merge(graphdef, state)
      return m(x), nnx.state(m, nnx.BatchStat)

    return jax.jit(f), state

  f, state = train_forward(view)
  f_ref, state_ref = train_forward(model)
  y, stats = f(state, x)
  y_ref, stats_ref = f_ref(state_ref, x)
  _close(y, y_ref, tol=1e-5, what="logits")
  initial = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(stats), initial))
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats_ref)):
    _close(a, b, tol=1e-5, what="running statistics")
  text = f.lower(state, x).as_text()
  # ResNet-8: the stem's and the 3 blocks' first BN with their ReLU, the 3
  # blocks' second BN unfused, then add + ReLU in one pass.
  assert _calls(text, "batch_norm_relu_fwd") == 4
  assert _calls(text, "batch_norm_fwd") == 3
  assert _calls(text, "add_relu") == 3
