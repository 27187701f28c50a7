"""Tests of experiments.kernels.train_step (the CPU speed layer): every implementation gives the plain jax.grad
gradients, donation, training progress, augmentation, data parallelism."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.models.resnet import ResNet
from experiments.input_pipeline import CIFAR_MEAN, CIFAR_STD
from experiments.kernels import train_step as step_lib
from experiments.training import train_step as plain_step
from experiments.input_pipeline.augment import augment, normalize
from experiments.kernels.train_step import (
    TrainState, create_train_state, make_eval_step, make_train_step)

from experiments.kernels import onednn as onednn_conv
from experiments.training.loop import check_step


# Every step implementation compiled and compared with the plain step: about 90 s idle on 2 cores,
# so with the long tests (`pytest -m slow`, which CI runs too).
pytestmark = pytest.mark.slow

FAST_IMPLS = ["nofusion", "blockwise"]
# name -> (impl, conv, conv_grad_chunk); batch 8 in chunks of 4 = 2 chunks.
# "plain" (XLA's convolutions, one jit) is the reference the others must equal.
CONFIGS = {"plain": ("plain", "xla", None), "nofusion": ("nofusion", "xla", None),
           "blockwise+chunk": ("blockwise", "xla", 4),
           "nofusion+chunk": ("nofusion", "xla", 4)}
# Always listed; the kernels are built on first use by the fixture (never at
# collection) and these cases skip, saying why, where they cannot be built.
CONFIGS.update({f"{impl}+onednn": (impl, "onednn", None)
                for impl in ("plain", "nofusion", "blockwise")})
# The same with Flax's BatchNorm instead of oneDNN's (batch_norm='flax'; 'auto'
# picks oneDNN's with oneDNN convolutions in float32): only run on the model with BatchNorm.
FLAX_BN = "+flaxbn"
CONFIGS.update({f"{impl}+onednn{FLAX_BN}": (impl, "onednn", None)
                for impl in ("plain", "nofusion", "blockwise")})
# The oneDNN configs above fuse the ReLUs (what relu='auto' picks): into the
# convolutions without BN, into oneDNN's BatchNorm with it; this one keeps
# XLA's ReLUs (and, with BN, oneDNN's unfused BatchNorm).
XLA_RELU = "+xlarelu"
CONFIGS[f"nofusion+onednn{XLA_RELU}"] = ("nofusion", "onednn", None)


def _onednn_unavailable() -> str:
  try:
    onednn_conv.require()
    return ""
  except onednn_conv.OneDNNUnavailable as e:
    return str(e)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          rng.integers(0, 10, n))


def grad_capture() -> optax.GradientTransformation:
  """Zero updates; the optimizer state is the last gradient (to read it)."""
  return optax.GradientTransformation(
      lambda p: jax.tree.map(jnp.zeros_like, p),
      lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g),
  )


def reference_grads(model, state, images, labels, multiplier, augmented):
  """Independent reference: jax.grad of the loss written out by hand."""
  graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  x = (augment(plain_step.step_key(state), images) if augmented
       else normalize(images))
  r_leaves, r_def = jax.tree.flatten(state.model_state)

  def loss(params):
    m = nnx.merge(graphdef, params, jax.tree.unflatten(r_def, r_leaves))
    m.train()
    logits = m(x)
    logp = jax.nn.log_softmax(logits)
    return -multiplier * jnp.mean(logp[jnp.arange(len(labels)), labels])

  return jax.grad(loss)(state.params), loss(state.params) / multiplier


def assert_trees_close(a, b, rtol=2e-5, what=""):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  for x, y in zip(la, lb):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(np.max(np.abs(y)), 1e-12)
    np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale, err_msg=what)


# With BatchNorm: slow (the default run checks the kernels without BN and the
# plain step with BN, test_plain_step_is_what_the_kernels_layer_runs...).
@pytest.fixture(scope="module", params=[False, pytest.param(True, marks=pytest.mark.slow)],
                ids=["nobn", "bn"])
def setup(request):
  model = ResNet(8, 10, use_bn=request.param, rngs=nnx.Rngs(0))
  images, labels = _batch()
  tx = grad_capture()
  out = {}
  why_not = _onednn_unavailable()
  for name, (impl, conv, chunk) in CONFIGS.items():
    if conv == "onednn" and why_not:
      out[name] = why_not
      continue
    flax_bn = name.endswith(FLAX_BN)
    if flax_bn and not request.param:
      out[name] = "no BatchNorm in this model"
      continue
    state = create_train_state(model, tx, seed=3)
    # oneDNN's BatchNorm with oneDNN convolutions on the model with BN (opt-in),
    # else 'auto', which is Flax's.
    want_bn = ("onednn" if conv == "onednn" and request.param and not flax_bn
               else "flax")
    xla_relu = name.endswith(XLA_RELU)
    # 'auto' picks oneDNN's BatchNorm with oneDNN convolutions in float32.
    st = make_train_step(model, tx, impl=impl, loss_multiplier=2.0,
                         conv=conv, conv_grad_chunk=chunk,
                         batch_norm="flax" if flax_bn else "auto",
                         relu="xla" if xla_relu else "auto")
    assert (st.impl, st.conv, st.conv_grad_chunk) == (impl, conv, chunk or 0)
    assert st.batch_norm == want_bn, (name, st.batch_norm_reason)
    # The ReLUs are fused into oneDNN's convolutions (no BN) or BatchNorm.
    fused = (conv == "onednn" and not xla_relu
             and (not request.param or want_bn == "onednn"))
    assert st.relu == ("onednn" if fused else "xla"), (name, st.relu_reason)
    new_state, metrics = st(state, images, labels)
    out[name] = (new_state, metrics)
  ref_state = create_train_state(model, tx, seed=3)
  ref = reference_grads(model, ref_state, images, labels, 2.0, True)
  return model, out, ref


def test_plain_matches_handwritten_jax_grad(setup):
  # The reference includes augmentation from fold_in(rng, step) and the loss
  # multiplier (2): the step uses both as documented.
  _, out, ref = setup
  assert_trees_close(out["plain"][0].opt_state, ref[0], what="plain vs reference")
  # The reported loss is the cross-entropy without the multiplier.
  np.testing.assert_allclose(out["plain"][1]["loss"], ref[1], rtol=1e-5)


@pytest.mark.parametrize("impl", [c for c in CONFIGS if c != "plain"])
def test_fast_impl_gradients_equal_plain(setup, impl):
  model, out, _ = setup
  if isinstance(out[impl], str):
    pytest.skip(out[impl])
  plain_state, plain_metrics = out["plain"]
  state, metrics = out[impl]
  assert_trees_close(state.opt_state, plain_state.opt_state, what=impl)
  # BatchNorm statistics (empty tree without BN) and metrics agree too.
  assert_trees_close(state.model_state, plain_state.model_state, what=impl)
  for k in ("loss", "accuracy"):
    np.testing.assert_allclose(metrics[k], plain_metrics[k], rtol=1e-5)
  if model.use_bn:
    # The running mean moved away from its zero init: statistics are updated.
    means = [v for p, v in jax.tree_util.tree_flatten_with_path(
        state.model_state)[0] if "mean" in jax.tree_util.keystr(p)]
    assert means and all(float(jnp.max(jnp.abs(m))) > 0 for m in means)


@pytest.mark.parametrize("use_bn", [False, True], ids=["nobn", "bn"])
def test_plain_step_is_what_the_kernels_layer_runs_without_kernels(use_bn):
  """experiments.training.train_step (XLA only, the default off CPU) equals the
  CPU layer with every choice off, bit for bit, and the handwritten gradient."""
  model = ResNet(8, 10, use_bn=use_bn, rngs=nnx.Rngs(0))
  images, labels = _batch()
  tx = grad_capture()
  ours = plain_step.make_train_step(model, tx, loss_multiplier=2.0)(
      create_train_state(model, tx, seed=3), images, labels)
  theirs = make_train_step(model, tx, loss_multiplier=2.0, impl="plain", conv="xla",
                           conv_grad_chunk=None, batch_norm="flax", relu="xla")(
      create_train_state(model, tx, seed=3), images, labels)
  jax.tree.map(np.testing.assert_array_equal, ours, theirs)
  ref = reference_grads(model, create_train_state(model, tx, seed=3), images, labels, 2.0, True)
  assert_trees_close(ours[0].opt_state, ref[0], what="plain step vs reference")


# oneDNN's BatchNorm against Flax's, both with oneDNN convolutions: measured
# on ResNet-8 BN, batch 8 (max difference over a leaf / max of that leaf):
# gradients <= 6.3e-6, running statistics <= 2.8e-6, loss <= 1e-7 relative,
# accuracy equal. 2e-5 (as for the other implementations) leaves a margin.
@pytest.mark.parametrize("impl", ["plain", "nofusion", "blockwise"])
def test_onednn_batch_norm_step_equals_flax_batch_norm(setup, impl):
  model, out, _ = setup
  if not model.use_bn:
    pytest.skip("no BatchNorm in this model")
  onednn_bn, flax_bn = out[f"{impl}+onednn"], out[f"{impl}+onednn{FLAX_BN}"]
  if isinstance(onednn_bn, str):
    pytest.skip(onednn_bn)
  (state, metrics), (ref_state, ref_metrics) = onednn_bn, flax_bn
  assert_trees_close(state.opt_state, ref_state.opt_state, what="gradients")
  assert_trees_close(state.model_state, ref_state.model_state, what="BN statistics")
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
  np.testing.assert_array_equal(metrics["accuracy"], ref_metrics["accuracy"])


def test_batch_norm_choice_resolution_and_errors(monkeypatch):
  from experiments.configs.default import Config, ConfigError
  from experiments.train import config_from_argv
  bn_model = ResNet(8, 10, use_bn=True, rngs=nnx.Rngs(0))
  plain_model = ResNet(8, 10, use_bn=False, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.1)
  for bad in ("xla", "oneDNN", None):
    with pytest.raises(ValueError, match=r"make_train_step: unknown `batch_norm=.*auto, onednn, flax"):
      make_train_step(bn_model, tx, batch_norm=bad)
    with pytest.raises(ValueError, match=r"make_eval_step: unknown `batch_norm=.*auto, onednn, flax"):
      make_eval_step(bn_model, batch_norm=bad)
  # The eval step normalises with the running statistics: always Flax's.
  assert make_eval_step(bn_model, conv="xla", batch_norm="flax").batch_norm == "flax"
  # 'auto' is oneDNN's BatchNorm with oneDNN convolutions in float32 (where
  # the ReLUs fuse into it), else Flax's.
  resolve = step_lib._resolve_batch_norm_why
  if not _onednn_unavailable():
    assert resolve("auto", "onednn", "float32", None, bn_model) == (
        "onednn", "auto: oneDNN convolutions, float32 (fused with the ReLUs)")
  assert resolve("auto", "xla", "float32", None, bn_model) == (
      "flax", "auto: the convolutions are XLA's")
  assert resolve("auto", "onednn", "bfloat16", None, bn_model) == (
      "flax", "auto: oneDNN's BatchNorm is float32 only (precision='bfloat16')")
  assert resolve("auto", "onednn", "float32", None, plain_model) == (
      "flax", "auto: the model has no nnx.BatchNorm")
  assert resolve("flax", "onednn", "float32", None, bn_model) == ("flax", "requested")
  st = make_train_step(bn_model, tx, impl="plain", conv="xla")
  assert st.batch_norm == "flax" and st.batch_norm_reason == "auto: the convolutions are XLA's"
  # 'onednn' where it cannot run: the reason and the fix.
  with pytest.raises(ValueError, match=r"batch_norm='onednn'.*float32.*batch_norm='auto' or 'flax'"):
    make_train_step(bn_model, tx, batch_norm="onednn", precision="bfloat16")

  class FakeMesh:
    shape = {"data": 8}
  if jax.default_backend() == "cpu":
    with pytest.raises(ValueError, match=r"batch_norm='onednn'.*one device.*batch_norm='flax'"):
      resolve("onednn", "xla", "float32", FakeMesh(), bn_model)
  monkeypatch.setattr(onednn_conv, "_load_built", lambda: "no oneDNN here; pip install X")
  monkeypatch.setattr(onednn_conv, "build", lambda: None)
  if jax.default_backend() == "cpu":
    with pytest.raises(onednn_conv.OneDNNUnavailable,
                       match=r"batch_norm='onednn'.*pip install X.*batch_norm='flax'"):
      make_train_step(bn_model, tx, conv="xla", batch_norm="onednn")
  # The run config: an option of the one `step` field, checked by the kernels.
  assert config_from_argv(["--step", "kernels:batch_norm=flax"]).step == "kernels:batch_norm=flax"
  with pytest.raises(ConfigError, match="unknown batch_norm 'fast'; valid: auto, onednn, flax"):
    check_step(Config(step="kernels:batch_norm=fast"))


@pytest.mark.parametrize("use_bn", [False, True], ids=["nobn", "bn"])
def test_blockwise_runs_of_blocks_map_every_leaf(monkeypatch, use_bn):
  # ResNet-14 has 6 blocks: runs of 4 give two segments of unequal length
  # (4 and 2), so the paths inside a run must map back to ['blocks'][i].
  monkeypatch.setattr(step_lib, "BLOCKS_PER_SEGMENT", 4)
  model = ResNet(14, 10, use_bn=use_bn, rngs=nnx.Rngs(1))
  _, params, rest = plain_step.split(model)
  segs = step_lib._segments(model, params, rest, 4)
  assert len(segs) == 4  # stem, 4 blocks, 2 blocks, head
  assert sorted(i for s in segs for i in s.p_index) == list(range(len(jax.tree.leaves(params))))
  # Each segment's leaves are those of its own part of the model.
  paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  owners = [("['stem']",), tuple(f"['blocks'][{i}]" for i in range(4)),
            ("['blocks'][4]", "['blocks'][5]"), ("['head']",)]
  for seg, prefixes in zip(segs, owners):
    assert seg.p_index and all(paths[i].startswith(prefixes) for i in seg.p_index)
  # And the step computes the plain step's gradients and statistics.
  images, labels = _batch()
  tx = grad_capture()
  out = {}
  for impl in ("plain", "blockwise"):
    st = make_train_step(model, tx, impl=impl, conv="xla", conv_grad_chunk=None)
    out[impl] = st(create_train_state(model, tx, seed=3), images, labels)
  assert_trees_close(out["blockwise"][0].opt_state, out["plain"][0].opt_state, what="runs of 4")
  assert_trees_close(out["blockwise"][0].model_state, out["plain"][0].model_state, what="stats")


def test_relu_choice_resolution_and_errors():
  from experiments.configs.default import Config, ConfigError
  from experiments.train import config_from_argv
  bn_model = ResNet(8, 10, use_bn=True, rngs=nnx.Rngs(0))
  plain_model = ResNet(8, 10, use_bn=False, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.1)
  resolve = step_lib._resolve_relu_why
  for bad in ("fused", "ONEDNN", None):
    with pytest.raises(ValueError, match=r"make_train_step: unknown `relu=.*auto, onednn, xla"):
      resolve(bad, "onednn", "flax", plain_model)
  assert resolve("auto", "onednn", "flax", plain_model) == ("onednn", "auto: oneDNN convolutions")
  assert resolve("auto", "xla", "flax", plain_model) == ("xla", "auto: the convolutions are XLA's")
  assert resolve("auto", "onednn", "onednn", bn_model) == (
      "onednn", "auto: oneDNN convolutions and BatchNorm")
  assert resolve("auto", "onednn", "flax", bn_model) == (
      "xla", "auto: no ResNet stem or block without BatchNorm or with oneDNN's BatchNorm")
  assert resolve("xla", "onednn", "flax", plain_model) == ("xla", "requested")
  # 'onednn' where there is nothing to fuse into: the reason and the fix.
  with pytest.raises(ValueError, match=r"relu='onednn'.*resolved to 'xla'.*conv='onednn'"):
    make_train_step(plain_model, tx, conv="xla", relu="onednn")
  if not _onednn_unavailable():
    with pytest.raises(ValueError, match=r"relu='onednn'.*ResNet has neither.*batch_norm='onednn'"):
      make_train_step(bn_model, tx, conv="onednn", batch_norm="flax", relu="onednn")
  st = make_train_step(plain_model, tx, impl="plain", conv="xla")
  assert (st.relu, st.relu_reason) == ("xla", "auto: the convolutions are XLA's")
  # The run config: an option of the one `step` field, checked by the kernels.
  assert config_from_argv(["--step", "kernels:relu=xla"]).step == "kernels:relu=xla"
  with pytest.raises(ConfigError, match="unknown relu 'fused'; valid: auto, onednn, xla"):
    check_step(Config(step="kernels:relu=fused"))


def test_chunked_conv_matches_lax_conv_gradients():
  from experiments.kernels.fastconv import chunked_wgrad_conv
  k = jax.random.split(jax.random.key(0), 3)
  dn = ("NHWC", "HWIO", "NHWC")
  for stride, shape in ((1, (16, 8, 8, 5)), (2, (12, 9, 9, 4))):
    x = jax.random.normal(k[0], shape)
    w = jax.random.normal(k[1], (3, 3, shape[-1], 6))

    def loss(x, w, conv):
      y = conv(x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=dn)
      return jnp.sum(jnp.sin(y))

    grad = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)
    ref = grad(x, w, jax.lax.conv_general_dilated)
    for chunk in (2, 3, 4):  # 3 does not divide 16: falls back to lax there
      got = grad(x, w, chunked_wgrad_conv(chunk))
      assert_trees_close(got, ref, rtol=1e-5, what=f"chunk {chunk}")
  with pytest.raises(ValueError, match="chunk"):
    chunked_wgrad_conv(0)


# "nofusion" shares the plain code path (only a compiler option differs).
@pytest.mark.parametrize("impl", [
    "plain", "blockwise", pytest.param("nofusion", marks=pytest.mark.slow)])
def test_donation_repeated_calls_and_loss_decreases(impl):
  model = ResNet(8, 10, use_bn=True, rngs=nnx.Rngs(2))
  tx = optax.adam(3e-3)
  images, labels = _batch(16, seed=1)
  state = create_train_state(model, tx)
  train_step = make_train_step(model, tx, impl=impl, augment=False)
  old = state
  state, m = train_step(state, images, labels)
  losses = [float(m["loss"])]
  # The input state's buffers were donated to the output...
  assert all(x.is_deleted() for x in jax.tree.leaves(old.params))
  # ...but not the model's own arrays (the state holds copies).
  assert not any(x.is_deleted() for x in jax.tree.leaves(nnx.state(model)))
  for _ in range(5):
    state, m = train_step(state, images, labels)
    losses.append(float(m["loss"]))
  assert int(state.step) == 6
  assert losses[-1] < 0.7 * losses[0], losses


def _numpy_crops(image, pad=4):
  """All 81 crops x 2 flips of the zero-padded image (NumPy reference)."""
  p = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  h, w, _ = image.shape
  out = []
  for i in range(2 * pad + 1):
    for j in range(2 * pad + 1):
      c = p[i:i + h, j:j + w]
      out += [c, c[:, ::-1]]
  return np.stack(out)


def test_augmentation_deterministic_and_valid():
  images, _ = _batch(16, seed=4)
  key = jax.random.key(7)
  a = np.asarray(augment(key, images))
  b = np.asarray(augment(key, images))
  np.testing.assert_array_equal(a, b)
  c = np.asarray(augment(jax.random.key(8), images))
  assert not np.array_equal(a, c)
  mean, std = np.array(CIFAR_MEAN), np.array(CIFAR_STD)
  pixels = a * std + mean  # undo normalisation -> [0, 1]
  n_flipped = n_shifted = 0
  for k in range(len(images)):
    cand = _numpy_crops(images[k]).astype(np.float64) / 255.0
    err = np.abs(cand - pixels[k]).reshape(len(cand), -1).max(1)
    idx = int(np.argmin(err))
    assert err[idx] < 1e-5, "output is not a crop/flip of the padded image"
    n_flipped += idx % 2
    n_shifted += idx // 2 != 40  # 40 = the centred crop (i = j = 4)
  assert 0 < n_flipped < len(images) and n_shifted > len(images) // 2


def test_augmentation_depends_on_step_and_seed():
  model = ResNet(8, 10, use_bn=False, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.0)
  images, labels = _batch()
  s0 = create_train_state(model, tx, seed=0)
  s1 = create_train_state(model, tx, seed=1)
  k00 = plain_step.step_key(s0)
  k01 = plain_step.step_key(s0._replace(step=jnp.int32(1)))
  k10 = plain_step.step_key(s1)
  outs = [np.asarray(augment(k, images)) for k in (k00, k01, k10)]
  assert not np.array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2])
  # Same state -> same key (a resumed run sees the same batches).
  np.testing.assert_array_equal(
      jax.random.key_data(k00),
      jax.random.key_data(plain_step.step_key(create_train_state(
          model, tx, seed=0))))


def test_eval_step_uses_running_statistics_and_mask():
  model = ResNet(8, 10, use_bn=True, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.0)
  images, labels = _batch(8)
  state = create_train_state(model, tx)
  out = make_eval_step(model)(state, images, labels,
                              np.array([1] * 6 + [0] * 2, np.float32))
  # Reference: the model in eval mode on normalised images, first 6 only.
  m = nnx.merge(*nnx.split(model, nnx.Param, ...))
  m.eval()
  logits = np.asarray(m(normalize(images[:6])), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
      1, keepdims=True)) - logits.max(1, keepdims=True)
  np.testing.assert_allclose(
      out["loss_sum"], -logp[np.arange(6), labels[:6]].sum(), rtol=1e-5)
  assert float(out["count"]) == 6
  assert float(out["correct"]) == (logits.argmax(1) == labels[:6]).sum()


def test_bad_input():
  model = ResNet(8, 10, use_bn=False, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.1)
  with pytest.raises(ValueError, match="impl.*valid choices"):
    make_train_step(model, tx, impl="fast")
  train_step = make_train_step(model, tx, impl="plain")
  state = create_train_state(model, tx)
  images, labels = _batch(4)
  with pytest.raises(ValueError, match="labels"):
    train_step(state, images, labels[:3])
  with pytest.raises(ValueError, match="images"):
    train_step(state, images[..., 0], labels)

  class NoBlocks(nnx.Module):
    def __init__(self):
      self.fc = nnx.Linear(3, 10, rngs=nnx.Rngs(0))

    def __call__(self, x):
      return self.fc(x.mean((1, 2)))

  with pytest.raises(ValueError, match="stem.*blocks.*head"):
    make_train_step(NoBlocks(), tx, impl="blockwise")
  mesh = jax.make_mesh((1,), ("batch",))
  with pytest.raises(ValueError, match="'data'"):
    make_train_step(model, tx, mesh=mesh)
  with pytest.raises(ValueError, match="conv_grad_chunk"):
    make_train_step(model, tx, conv_grad_chunk=-1)


@pytest.mark.parametrize("bn", [False, True], ids=["nobn", "bn"])
def test_auto_impl_is_cpu_only_choice(bn):
  model = ResNet(8, 10, use_bn=bn, rngs=nnx.Rngs(0))
  backend = jax.default_backend()
  cpu = backend == "cpu"
  f = make_train_step(model, optax.sgd(0.1), impl="auto")
  conv = "onednn" if cpu and onednn_conv.available() else "xla"
  assert f.conv == conv
  assert f.impl == step_lib.AUTO_IMPL.get(
      (backend, conv, f.batch_norm if bn else "none"), "plain")
  assert f.conv_grad_chunk == (
      step_lib.AUTO_CONV_GRAD_CHUNK if cpu and conv == "xla" else 0)
  # With XLA's convolutions, auto chunks their weight gradients on CPU.
  g = make_train_step(model, optax.sgd(0.1), conv="xla")
  assert g.conv_grad_chunk == (step_lib.AUTO_CONV_GRAD_CHUNK if cpu else 0)
  # "plain" stays the unchunked reference under "auto"; an explicit chunk
  # means XLA's convolutions.
  assert make_train_step(model, optax.sgd(0.1), impl="plain").conv_grad_chunk == 0
  assert make_train_step(model, optax.sgd(0.1), conv_grad_chunk=4).conv == "xla"
  # Turning fusion off is only ever chosen for XLA:CPU.
  assert all(v != "nofusion" for k, v in step_lib.AUTO_IMPL.items()
             if k[0] != "cpu")
  # On a multi-device mesh auto keeps XLA's convolutions (checked without
  # building one: the rule only reads the mesh's 'data' axis size).
  class FakeMesh:
    shape = {"data": 8}
  assert step_lib._resolve_conv("auto", FakeMesh()) == "xla"
  with pytest.raises(ValueError, match="conv='xla'"):
    step_lib._resolve_conv("onednn", FakeMesh())


def test_conv_choice_errors(monkeypatch):
  model = ResNet(8, 10, use_bn=False, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.1)
  with pytest.raises(ValueError, match="conv='fast'.*auto, xla, onednn"):
    make_train_step(model, tx, conv="fast")
  if jax.default_backend() == "cpu":
    with pytest.raises(ValueError, match="conv_grad_chunk.*conv='xla'"):
      make_train_step(model, tx, conv="onednn", conv_grad_chunk=4)
  # When the kernels cannot be built, 'onednn' says why and how to fix it,
  # and 'auto' falls back to XLA's convolutions.
  monkeypatch.setattr(onednn_conv, "_load_built", lambda: "no oneDNN here; pip install X")
  monkeypatch.setattr(onednn_conv, "build", lambda: None)
  if jax.default_backend() == "cpu":
    with pytest.raises(onednn_conv.OneDNNUnavailable, match="pip install X"):
      make_train_step(model, tx, conv="onednn")
  assert make_train_step(model, tx).conv == "xla"


_MESH_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from experiments.models.resnet import ResNet
from experiments.kernels.train_step import create_train_state, make_train_step
assert jax.device_count() == 8, jax.devices()
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
labels = rng.integers(0, 10, 16)
mesh = jax.make_mesh((8,), ("data",))
out = {}
def leaves(state):
  return jax.tree.leaves((state.params, state.model_state))
full = sys.argv[1] == "full"
for bn in ((False, True) if full else (True,)):
  model = ResNet(8, 10, use_bn=bn, rngs=nnx.Rngs(0))
  tx = optax.adamw(1e-3, weight_decay=1e-2)
  def run(impl, m, chunk="auto", conv="auto"):
    state = create_train_state(model, tx, seed=5, mesh=m)
    f = make_train_step(model, tx, impl=impl, mesh=m, conv=conv,
                        conv_grad_chunk=chunk)
    assert f.conv == "xla"  # what auto picks on a multi-device mesh
    for _ in range(2):
      state, metrics = f(state, images, labels)
    if m is not None:
      assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 8
    return state
  # One-device plain run vs every implementation on the 8-device mesh (the
  # one-device implementations are compared with each other in this file).
  ref = run("plain", None, conv="xla")
  for impl in ("plain", "nofusion", "blockwise", "nofusion:4") if full else (
      "nofusion", "blockwise"):
    name, _, chunk = impl.partition(":")
    got = run(name, mesh, int(chunk) if chunk else "auto")
    out[f"{impl}-bn{int(bn)}"] = max(
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))
        for a, b in zip(leaves(got), leaves(ref)))
print(json.dumps(out))
"""


def _run_mesh_script(mode):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
      [sys.executable, "-c", _MESH_SCRIPT, mode], env=env, cwd=REPO,
      capture_output=True, text=True, timeout=1800,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # 8 devices in a subprocess
def test_eight_device_mesh_equals_one_device():
  # With BatchNorm (its statistics are reduced across devices): the whole-step
  # jit and the blockwise step on 8 devices vs the plain step on 1 device.
  errs = _run_mesh_script("quick")
  assert sorted(errs) == ["blockwise-bn1", "nofusion-bn1"]
  for name, err in errs.items():
    assert err < 1e-4, (name, err)


@pytest.mark.slow
def test_eight_device_mesh_equals_one_device_all_impls():
  errs = _run_mesh_script("full")
  assert len(errs) == 8
  for name, err in errs.items():
    assert err < 1e-4, (name, err)


@pytest.mark.parametrize("impl", ["plain", "blockwise"])
def test_nonfinite_step_keeps_batchnorm_statistics(impl):
  # A NaN loss multiplier makes every gradient NaN while the forward pass
  # (and so the batch statistics) stays finite: apply_if_finite skips the
  # update and the step must not absorb the batch into the statistics.
  model = ResNet(8, 10, use_bn=True, rngs=nnx.Rngs(0))
  tx = optax.apply_if_finite(optax.adam(1e-3), max_consecutive_errors=5)
  images, labels = _batch()
  state = create_train_state(model, tx)
  before = jax.tree.map(np.asarray, (state.params, state.model_state))
  f = make_train_step(model, tx, impl=impl, loss_multiplier=float("nan"))
  state, _ = f(state, images, labels)
  after = jax.tree.map(np.asarray, (state.params, state.model_state))
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  assert int(state.opt_state.notfinite_count) == 1


# ----------------------------------------------------- bfloat16 mixed precision
# Tolerances. bfloat16 keeps 8 significant bits (unit roundoff 2^-8 = 3.9e-3).
# The loss is a mean over the batch, so its rounding errors average out:
# measured relative difference 4e-4 (no BN) and 7e-4 (BN) on ResNet-8, batch
# 8; 1e-2 leaves a margin of 14x. Gradients: without BN every leaf agrees with
# float32 to cosine >= 0.998 (measured). With BN at batch 8 the first-step
# gradient itself is ill-conditioned: computing in float32 with only the
# weights rounded to bfloat16 already moves the stem's gradients by 25%
# (cosine 0.971, measured), and the bfloat16 step is within that (worst leaf
# 0.985: the first BN's bias, relative error 18%; whole gradient 0.997;
# without BN 0.99996). So each leaf must reach cosine 0.99 without BN and
# 0.97 with it, and the whole gradient 0.999 without BN and 0.99 with it.
BF16_LOSS_RTOL = 1e-2
BF16_LEAF_COSINE = {False: 0.99, True: 0.97}
BF16_TOTAL_COSINE = {False: 0.999, True: 0.99}


def _cosines(a, b):
  """Per-leaf cosine similarities and that of the whole flattened trees."""
  la = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(a)]
  lb = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(b)]
  cos = lambda x, y: float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
  return ([cos(x, y) for x, y in zip(la, lb)],
          cos(np.concatenate(la), np.concatenate(lb)))


def _float_dtypes(tree):
  return {str(x.dtype) for x in jax.tree.leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.fixture(scope="module")
def bf16_steps(setup):
  """The `setup` step (grad_capture, multiplier 2, seed 3) in bfloat16 with
  XLA's convolutions, plain and blockwise (nofusion shares plain's code path)."""
  return _bf16_steps(setup, "xla")


def _bf16_steps(setup, conv: str, relu: str = "auto") -> dict:
  """{impl: (step, new_state, metrics)} for plain and blockwise in bfloat16."""
  model, _, _ = setup
  images, labels = _batch()
  tx = grad_capture()
  out = {}
  for impl in ("plain", "blockwise"):
    st = make_train_step(model, tx, impl=impl, loss_multiplier=2.0,
                         conv=conv, precision="bfloat16", relu=relu)
    assert (st.impl, st.conv, st.conv_grad_chunk, st.precision) == (
        impl, conv, 0, "bfloat16")
    out[impl] = (st,) + st(create_train_state(model, tx, seed=3), images, labels)
  return out


def test_bf16_step_matches_float32(setup, bf16_steps):
  model, out, _ = setup
  ref_state, ref_metrics = out["plain"]
  _, state, metrics = bf16_steps["plain"]
  assert metrics["loss"].dtype == jnp.float32
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"],
                             rtol=BF16_LOSS_RTOL)
  # grad_capture's state is the gradient the optimizer received: float32,
  # like the parameters and the BatchNorm statistics.
  assert _float_dtypes((state.params, state.opt_state, state.model_state)) == {"float32"}
  assert jax.tree.structure(state) == jax.tree.structure(ref_state)
  leaf, total = _cosines(state.opt_state, ref_state.opt_state)
  assert min(leaf) > BF16_LEAF_COSINE[model.use_bn], leaf
  assert total > BF16_TOTAL_COSINE[model.use_bn], total
  # The BatchNorm statistics, computed in float32 from bfloat16 activations.
  assert_trees_close(state.model_state, ref_state.model_state, rtol=2e-2,
                     what="bf16 BN statistics")


def test_bf16_convolutions_and_head_run_in_bf16(setup, bf16_steps):
  model, _, _ = setup
  st = bf16_steps["plain"][0]
  images, labels = _batch()
  hlo = st.jitted.lower(create_train_state(model, grad_capture(), seed=3),
                        images, labels).as_text()
  ops = [l for l in hlo.splitlines()
         if "stablehlo.convolution" in l or "stablehlo.dot_general" in l]
  # ResNet-8: 7 convs forward, 7 weight and 6 input gradients; the head's
  # dense layer forward and its two gradients.
  assert len(ops) == 23
  for op in ops:
    assert "bf16" in op and "f32" not in op, op
  # The loss: log-softmax of float32 logits.
  assert "tensor<8x10xf32>" in hlo


def test_bf16_blockwise_equals_plain_bf16(bf16_steps):
  _, plain, pm = bf16_steps["plain"]
  _, block, bm = bf16_steps["blockwise"]
  # The same bfloat16 computation cut into jits: only fusion-dependent
  # roundings differ.
  np.testing.assert_allclose(bm["loss"], pm["loss"], rtol=1e-3)
  leaf, _ = _cosines(block.opt_state, plain.opt_state)
  assert min(leaf) > 0.999, leaf
  assert _float_dtypes((block.opt_state, block.model_state)) == {"float32"}


# oneDNN's bfloat16 convolutions vs XLA's, both in the bfloat16 step. Without
# BN they are the same computation up to float32 summation order inside the
# convolutions (measured: loss bit-identical, every leaf's cosine >= 0.999999),
# so each leaf must reach 0.9999. With BN the batch-8 gradient amplifies the
# odd 1-ulp bfloat16 difference (measured: loss 7.5e-4 relative, worst leaf
# 0.987 -- a BN bias --, whole gradient 0.997, BN statistics 1e-3 of their
# largest value): XLA keeps some intermediate results in float32
# (xla_allow_excess_precision; with it off, XLA's bfloat16 step is as far from
# float32 as oneDNN's: worst leaf 0.9845 vs 0.9844), oneDNN's are all rounded
# to bfloat16. So with BN the bfloat16-vs-float32 tolerances apply. Either
# way the oneDNN step must also meet them against float32 (measured: worst
# leaf 0.9986 / 0.984, whole gradient 0.99996 / 0.997, loss 4e-4 / 6e-5).
ONEDNN_BF16_LEAF_COSINE = {False: 0.9999, True: BF16_LEAF_COSINE[True]}
ONEDNN_BF16_TOTAL_COSINE = {False: 0.99999, True: BF16_TOTAL_COSINE[True]}


@pytest.fixture(scope="module")
def bf16_onednn_steps(setup):
  """`bf16_steps` with oneDNN's convolutions and XLA's ReLUs, the same
  computation as XLA's bfloat16 step (skips where they cannot be built)."""
  why_not = _onednn_unavailable()
  if why_not:
    pytest.skip(why_not)
  return _bf16_steps(setup, "onednn", relu="xla")


@pytest.fixture(scope="module")
def bf16_fused_steps(setup):
  """`bf16_steps` with oneDNN's convolutions fused with their ReLU and
  residual add (what relu='auto' picks without BN)."""
  why_not = _onednn_unavailable()
  if why_not:
    pytest.skip(why_not)
  if setup[0].use_bn:
    pytest.skip("with BatchNorm the ReLU is not fused")
  return _bf16_steps(setup, "onednn", relu="onednn")


@pytest.mark.parametrize("impl", ["plain", "blockwise"])
def test_bf16_onednn_step_matches_xla_bf16_and_float32(setup, bf16_steps,
                                                       bf16_onednn_steps, impl):
  model, out, _ = setup
  _, state, metrics = bf16_onednn_steps[impl]
  assert metrics["loss"].dtype == jnp.float32
  assert _float_dtypes((state.params, state.opt_state, state.model_state)) == {"float32"}
  refs = {"xla bf16": bf16_steps[impl][1:],
          "float32": out["plain"]}
  for what, (ref_state, ref_metrics) in refs.items():
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"],
                               rtol=BF16_LOSS_RTOL, err_msg=what)
    leaf, total = _cosines(state.opt_state, ref_state.opt_state)
    leaf_min = (ONEDNN_BF16_LEAF_COSINE if what == "xla bf16" else BF16_LEAF_COSINE)
    total_min = (ONEDNN_BF16_TOTAL_COSINE if what == "xla bf16" else BF16_TOTAL_COSINE)
    assert min(leaf) > leaf_min[model.use_bn], (what, leaf)
    assert total > total_min[model.use_bn], (what, total)
    assert_trees_close(state.model_state, ref_state.model_state, rtol=2e-2,
                       what=f"bf16 oneDNN BN statistics vs {what}")


# The fused bfloat16 step rounds relu(conv + residual) once where the unfused
# one rounds the convolution and then the sum, so it is not the XLA bfloat16
# step up to summation order; it must meet the bfloat16-vs-float32
# tolerances (measured on ResNet-8 without BN, batch 8: worst leaf cosine
# 0.99853, whole gradient 0.99996, loss 4.8e-4 relative; the unfused oneDNN
# bfloat16 step: 0.99860, 0.99996, 3.7e-4; fused vs unfused: worst leaf 0.99948).
@pytest.mark.parametrize("impl", ["plain", "blockwise"])
def test_bf16_fused_relu_step_matches_float32(setup, bf16_fused_steps, impl):
  model, out, _ = setup
  st, state, metrics = bf16_fused_steps[impl]
  assert st.relu == "onednn"
  ref_state, ref_metrics = out["plain"]
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=BF16_LOSS_RTOL)
  assert _float_dtypes((state.params, state.opt_state)) == {"float32"}
  leaf, total = _cosines(state.opt_state, ref_state.opt_state)
  assert min(leaf) > BF16_LEAF_COSINE[False], leaf
  assert total > BF16_TOTAL_COSINE[False], total
  if impl == "plain":  # one jit: the fused kernels ran, in bfloat16
    hlo = st.jitted.lower(create_train_state(model, grad_capture(), seed=3),
                          *_batch()).as_text()
    assert "experiments_onednn_conv_fwd_add_relu_bf16" in hlo
    assert "experiments_onednn_relu_bwd_bf16" in hlo


def test_bf16_onednn_step_runs_every_convolution_on_bf16_kernels(setup,
                                                                 bf16_onednn_steps):
  model, _, _ = setup
  st = bf16_onednn_steps["plain"][0]
  images, labels = _batch()
  hlo = st.jitted.lower(create_train_state(model, grad_capture(), seed=3),
                        images, labels).as_text()
  calls = [l for l in hlo.splitlines() if "experiments_onednn_conv_" in l]
  assert "stablehlo.convolution" not in hlo
  # ResNet-8: 7 forward convolutions, 7 weight gradients, 6 or 7 input
  # gradients (the stem's is dead code); all on the bfloat16 kernels.
  assert sum("conv_fwd_bf16" in l for l in calls) == 7
  assert sum("conv_bwd_weights_bf16" in l for l in calls) == 7
  assert all("_bf16" in l for l in calls), calls


def test_bf16_training_keeps_float32_state_and_eval_matches():
  model = ResNet(8, 10, use_bn=True, rngs=nnx.Rngs(2))
  tx = optax.adamw(3e-3, weight_decay=1e-4)
  images, labels = _batch(16, seed=1)
  state = create_train_state(model, tx)
  dtypes = jax.tree.map(lambda x: x.dtype, state)
  step = make_train_step(model, tx, impl="plain", augment=False,
                         precision="bfloat16")
  losses = []
  for _ in range(6):
    state, m = step(state, images, labels)
    assert m["loss"].dtype == jnp.float32
    losses.append(float(m["loss"]))
  # Master weights, Adam's moments and BN statistics are still float32.
  assert jax.tree.map(lambda x: x.dtype, state) == dtypes
  assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
  # Eval in bfloat16 (running statistics) vs float32 on the trained state.
  ev = {p: make_eval_step(model, conv="xla", precision=p)(state, images, labels)
        for p in ("float32", "bfloat16")}
  assert ev["bfloat16"]["loss_sum"].dtype == jnp.float32
  np.testing.assert_allclose(ev["bfloat16"]["loss_sum"], ev["float32"]["loss_sum"],
                             rtol=BF16_LOSS_RTOL)


def test_precision_choice_errors():
  model = ResNet(8, 10, use_bn=False, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.1)
  for bad in ("float16", "bf16", None):
    with pytest.raises(ValueError,
                       match=r"make_train_step: unknown `precision=.*float32, bfloat16"):
      make_train_step(model, tx, precision=bad)
  with pytest.raises(ValueError, match=r"make_eval_step: unknown `precision=.*float32, bfloat16"):
    make_eval_step(model, precision="fp32")
  # oneDNN has bfloat16 kernels: 'auto' resolves as in float32 (oneDNN only
  # where already built; checked without building anything here).
  st = make_train_step(model, tx, precision="bfloat16")
  f32 = make_train_step(model, tx)
  assert (st.conv, st.conv_reason) == (f32.conv, f32.conv_reason)
  assert st.conv == ("onednn" if jax.default_backend() == "cpu"
                     and onednn_conv.available() else "xla")
  # No chunked weight gradient in bfloat16: off under 'auto', refused if asked.
  assert make_train_step(model, tx, impl="nofusion", conv="xla",
                         precision="bfloat16").conv_grad_chunk == 0
  with pytest.raises(ValueError, match=r"conv_grad_chunk.*bfloat16.*precision='float32'"):
    make_train_step(model, tx, conv_grad_chunk=4, precision="bfloat16")
  # float32 stays the default, and its resolution is unchanged.
  f = make_train_step(model, tx)
  assert f.precision == "float32" and f.conv_reason.startswith(("auto", "requested"))

  class NoLayers(nnx.Module):
    def __call__(self, x):
      return x.mean((1, 2))

  with pytest.raises(ValueError, match="precision='bfloat16'.*NoLayers.*precision='float32'"):
    make_train_step(NoLayers(), tx, impl="plain", precision="bfloat16")
