"""The kernels step with oneDNN's BatchNorm against a float64 reference.

The question: does the CPU speed layer's train-mode BatchNorm
(``batch_norm="onednn"``, and ``"auto"`` with oneDNN convolutions in float32)
differ from Flax's beyond float32 rounding? On ResNet-20 with BN, batch 32 of
the embedded sample, one step's gradients differ from a float64 reference by
up to 0.3% per leaf for the plain float32 step and 0.7% for the oneDNN one
(largest at the BatchNorm biases and early convolutions), and after a second
momentum-SGD step by up to 3% and 9% on a momentum leaf. That is not the
BatchNorm: the gradient of a ReLU network is discontinuous in its inputs. A
pre-activation within rounding of zero lands on the other side of the kink
in float32 (2 of ~6M elements for the plain step, 11 for oneDNN's BatchNorm,
all within 1e-5 standard deviations of zero in float64), and one such flip
moves the gradient of every earlier layer by up to ~1e-3 relative; the
training dynamics then amplify the difference. So the gradients are
compared with the float64 reference running the float32 step's own ReLU
masks: the plain step agrees to 2e-6, oneDNN's BatchNorm (fused ReLUs or
XLA's) to 3e-5 (its per-channel sums of 32768 float32 terms round more than
XLA's). Injected faults fail it: a running variance 5e-4 too large (what
Bessel's correction does at 2048 terms), epsilon 1e-3 instead of 1e-5, the
running-average momentum swapped, a ReLU gradient ignoring its mask. The
forward pass (loss, running statistics) is compared without pinning.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.input_pipeline.augment import normalize
from experiments.input_pipeline.datasets import load_sample
from experiments.kernels import onednn
from experiments.kernels import train_step as kernels_step
from experiments.models.resnet import ResNet
from experiments.training import train_step as plain_step

# Per-leaf ||got - reference|| / ||reference||, with the reference on the
# float32 step's ReLU masks. Measured (ResNet-20, batch 32): gradients 2.1e-6
# plain, 2.6e-5 oneDNN's BatchNorm; running statistics 4.3e-7 plain, 3.8e-6
# oneDNN's.
GRAD_RTOL = 2e-4
STATS_RTOL = 5e-5
# |loss - reference| / reference: measured 1.1e-9 plain, 1.4e-10 to 1.9e-7
# oneDNN's BatchNorm (by impl; float32 rounds 3.75 to within 6e-8).
LOSS_RTOL = 2e-6
# A float32 ReLU decision may differ from float64's only where the float64
# pre-activation is this close to zero, in units of its layer's standard
# deviation (measured: at most 1e-5).
FLIP_MARGIN = 1e-4


def _grad_capture() -> optax.GradientTransformation:
  """Zero updates; the optimizer state is the step's gradient (to read it)."""
  return optax.GradientTransformation(
      lambda p: jax.tree.map(jnp.zeros_like, p),
      lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))


def _leaves(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(k): np.asarray(v, np.float64)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _float32_step(monkeypatch, model, images, labels, kernel_options):
  """One step (the plain one when `kernel_options` is None, else the kernels
  step with them): (gradients, new statistics, loss, ReLU masks in forward
  order, the step). Each mask is read where the gradient uses it, by a host
  callback: in the forward pass for ``jax.nn.relu`` (XLA's ReLUs; its
  gradient is taken at the same pre-activation), in the backward pass for
  the fused ReLUs (``onednn.relu_grad(g, y)``: ``g`` where ``y > 0``)."""
  forward, backward, count = {}, {}, {"forward": 0, "backward": 0}

  def recorder(store, kind):
    i = count[kind]  # trace order, so the callbacks' run order does not matter
    count[kind] += 1
    return lambda m: store.__setitem__(i, np.asarray(m))

  relu, relu_grad = jax.nn.relu, onednn.relu_grad

  def recorded_relu(z):
    jax.debug.callback(recorder(forward, "forward"), z > 0)
    return relu(z)

  def recorded_relu_grad(g, y):
    jax.debug.callback(recorder(backward, "backward"), y > 0)
    return relu_grad(g, y)

  tx = _grad_capture()
  with monkeypatch.context() as m:
    m.setattr(jax.nn, "relu", recorded_relu)
    m.setattr(onednn, "relu_grad", recorded_relu_grad)
    if kernel_options is None:
      step = plain_step.make_train_step(model, tx, augment=False)
    else:
      step = kernels_step.make_train_step(model, tx, augment=False, **kernel_options)
    state, metrics = step(plain_step.create_train_state(model, tx), images, labels)
    jax.effects_barrier()
  # One source per run (ResNet's ReLUs are all fused or none is); the
  # backward pass meets them last to first.
  assert not (forward and backward), (len(forward), len(backward))
  masks = ([forward[i] for i in range(len(forward))] if forward
           else [backward[i] for i in reversed(range(len(backward)))])
  return (_leaves(state.opt_state), _leaves(state.model_state),
          float(metrics["loss"]), masks, step)


def _float64_reference(monkeypatch, model, images, labels, masks):
  """The plain model's loss gradient and new statistics in float64 on the
  same normalised input, each ``jax.nn.relu`` replaced by ``z * mask`` with
  the float32 step's mask; also the float64 pre-activations."""
  graphdef, params, rest = plain_step.split(plain_step.model_view(model))
  x = np.asarray(normalize(images), np.float64)
  pre, count = {}, [0]

  def pinned_relu(z):
    i = count[0]
    count[0] += 1
    jax.debug.callback(lambda z: pre.__setitem__(i, np.asarray(z)), z)
    return z * jnp.asarray(masks[i], z.dtype)

  with jax.enable_x64(True), monkeypatch.context() as m:
    m.setattr(jax.nn, "relu", pinned_relu)
    to64 = lambda a: jnp.asarray(np.asarray(a, np.float64))
    params = jax.tree.map(to64, params)
    rest_leaves, rest_def = jax.tree.flatten(jax.tree.map(to64, rest))

    def loss_fn(p):
      # Merged in the differentiated trace: NNX updates the statistics there.
      model = nnx.merge(graphdef, p, jax.tree.unflatten(rest_def, rest_leaves))
      logits = model(jnp.asarray(x))
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return ce, plain_step.split(model)[2]

    (loss, new_rest), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    jax.effects_barrier()
    assert {a.dtype for a in jax.tree.leaves((grads, new_rest))} == {jnp.dtype("float64")}
    out = _leaves(grads), _leaves(new_rest), float(loss)
  assert count[0] == len(masks), (count[0], len(masks))
  return (*out, [pre[i] for i in range(len(pre))])


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
  return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


# name -> kernels-step options (None: the plain step, the control). "auto" is
# what the harness runs: oneDNN convolutions, BatchNorm and fused ReLUs.
RUNS = {"plain": None,
        "onednn_bn_xla_relu": {"conv": "onednn", "batch_norm": "onednn", "relu": "xla"},
        "auto": {}}


@pytest.mark.slow  # ~5 ResNet-20 compilations (float32 and float64)
@pytest.mark.usefixtures("onednn")  # tests/harness/conftest.py: skips where it cannot be built
def test_onednn_batch_norm_step_equals_float64_reference_on_its_relu_masks(monkeypatch):
  train, _, _ = load_sample()
  images, labels = train.images[:32], np.asarray(train.labels[:32], np.int32)
  model = ResNet(20, 10, use_bn=True, rngs=nnx.Rngs(0))
  references = {}  # float64 runs by their masks: runs that agree share one
  for name, options in RUNS.items():
    grads, stats, loss, masks, step = _float32_step(
        monkeypatch, model, images, labels, options)
    if options is not None:
      assert step.batch_norm == "onednn", (name, step.batch_norm_reason)
      assert step.relu == ("xla" if options else "onednn"), (name, step.relu_reason)
    # The stem's ReLU and two per block.
    assert len(masks) == 1 + 2 * len(model.blocks), (name, len(masks))
    key = b"".join(np.packbits(m).tobytes() for m in masks)
    if key not in references:
      references[key] = _float64_reference(monkeypatch, model, images, labels, masks)
    ref_grads, ref_stats, ref_loss, pre = references[key]

    for i, (mask, z) in enumerate(zip(masks, pre)):
      flipped = mask != (z > 0)
      if flipped.any():
        margin = np.abs(z[flipped]).max() / z.std()
        assert margin <= FLIP_MARGIN, (
            f"{name}: ReLU {i} decides {int(flipped.sum())} pre-activations "
            f"against float64, up to {margin:.1e} standard deviations from 0")
    assert abs(loss - ref_loss) <= LOSS_RTOL * abs(ref_loss), (name, loss, ref_loss)
    assert stats.keys() == ref_stats.keys() and grads.keys() == ref_grads.keys()
    for kind, got, ref, rtol in (("statistics", stats, ref_stats, STATS_RTOL),
                                 ("gradient", grads, ref_grads, GRAD_RTOL)):
      errors = {k: _rel(got[k], ref[k]) for k in ref}
      worst = max(errors, key=errors.get)
      assert errors[worst] <= rtol, (
          f"{name}: {kind} of {worst} off the float64 reference by "
          f"{errors[worst]:.1e} (relative)")
