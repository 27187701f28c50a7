r"""The ReLUs and residual adds of a ResNet, fused into oneDNN's kernels.

A basic block computes

.. math::
   h = \mathrm{relu}(\mathrm{conv}(x, w_1)), \qquad
   y = \mathrm{relu}(\mathrm{conv}(h, w_2) + s(x))

without BatchNorm (with it, ``bn`` after each ``conv``), with ``s`` the
shortcut. XLA:CPU runs each ReLU and the residual add as a separate pass
over the activation (one thread per pass), and with its ``fusion`` pass off
(``impl="nofusion"``) the ReLU gradient ``dz = dy * [y > 0]`` takes three
(broadcast, compare, select). Here, as in PyTorch's CPU step, the ReLU is
applied by the kernel that produces its input and its gradient is one
multi-threaded oneDNN pass from the output:

* without BatchNorm, :func:`conv_relu` and :func:`conv_add_relu` apply the
  ReLU (and the add of the shortcut) to the convolution's output before
  writing it (oneDNN post-ops);
* with oneDNN's BatchNorm (:mod:`experiments.kernels.batch_norm`), the
  first BatchNorm of a block applies its ReLU (``fuse_norm_relu``) and
  :func:`add_relu` computes ``relu(bn(...) + s(x))`` in one pass (oneDNN's
  binary add with a ReLU post-op; oneDNN 3.2 has no CPU
  ``fuse_norm_add_relu``).

XLA:CPU runs the separate ReLU, add and ReLU-gradient passes on one thread
each; ``docs/guides/cpu_training.md`` has the step times with and without
fusion (from ``benchmarks/results/train_step.json``).

The ops are ``jax.custom_vjp`` functions whose backward pass is the ReLU
gradient, then the producer's own gradients. :func:`with_fused_relu` gives a
view of a model whose :class:`~experiments.models.resnet.Stem` and
:class:`~experiments.models.resnet.BasicBlock` layers call them, without
BatchNorm or with oneDNN's; anything else (Flax's BatchNorm, biases,
dilation, other layouts or dtypes) runs the layers' own code. The numbers
are the unfused step's within float32 rounding (tested against the plain
XLA step); in bfloat16 the fused convolution rounds once where the unfused
one rounds after the convolution and again after the add.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from experiments.kernels import fused_relu, onednn
  >>> x = jnp.ones((2, 4, 4, 3)); w = jnp.full((3, 3, 3, 5), -0.1)
  >>> pads = ((1, 1), (1, 1))
  >>> y = fused_relu.conv_relu(x, w, (1, 1), pads) if onednn.available() else jnp.zeros((2, 4, 4, 5))
  >>> float(y.max())
  0.0
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

import experiments.kernels.onednn as onednn
from experiments.kernels.batch_norm import OneDNNBatchNorm
from experiments.kernels.fastconv import with_layers_changed
from experiments.models.resnet import BasicBlock, Stem, shortcut_option_a


def _out_like(x, w, strides, pads):
  return jax.ShapeDtypeStruct(onednn.output_shape(x, w, strides, pads), x.dtype)


@jax.custom_vjp
def add_relu(a: jax.Array, b: jax.Array) -> jax.Array:
  """``relu(a + b)`` in one oneDNN pass (same shape and dtype)."""
  return onednn.fused_call("add_relu", a, a, b)


def _add_relu_fwd(a, b):
  z = add_relu(a, b)
  return z, z


def _add_relu_bwd(z, g):
  dz = onednn.relu_grad(g, z)
  return dz, dz


add_relu.defvjp(_add_relu_fwd, _add_relu_bwd)


def _conv_grads(x, w, y, g, strides, pads):
  """(dz, dx, dw) for y = relu(z), z = conv(x, w) (+ r), from dL/dy = g."""
  dz = onednn.relu_grad(g, y)
  dx, dw = onednn._conv_bwd(strides, pads, (x, w), dz)
  return dz, dx, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_relu(x: jax.Array, w: jax.Array, strides, pads) -> jax.Array:
  """``relu(conv(x, w))`` in one oneDNN call (NHWC ``x``, HWIO ``w``, same dtype).

  `strides` is a pair of ints, `pads` a pair of (low, high) pairs.
  """
  return onednn.fused_call("conv_fwd_relu", _out_like(x, w, strides, pads), x, w,
                           geometry=onednn._geometry(strides, pads))


def _conv_relu_fwd(x, w, strides, pads):
  y = conv_relu(x, w, strides, pads)
  return y, (x, w, y)


def _conv_relu_bwd(strides, pads, res, g):
  x, w, y = res
  _, dx, dw = _conv_grads(x, w, y, g, strides, pads)
  return dx, dw


conv_relu.defvjp(_conv_relu_fwd, _conv_relu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def conv_add_relu(x: jax.Array, w: jax.Array, residual: jax.Array, strides,
                  pads) -> jax.Array:
  """``relu(conv(x, w) + residual)`` in one oneDNN call; `residual` has the
  output's shape and dtype."""
  return onednn.fused_call("conv_fwd_add_relu", _out_like(x, w, strides, pads), x, w,
                           residual, geometry=onednn._geometry(strides, pads))


def _conv_add_relu_fwd(x, w, residual, strides, pads):
  y = conv_add_relu(x, w, residual, strides, pads)
  return y, (x, w, y)


def _conv_add_relu_bwd(strides, pads, res, g):
  x, w, y = res
  dz, dx, dw = _conv_grads(x, w, y, g, strides, pads)
  return dx, dw, dz


conv_add_relu.defvjp(_conv_add_relu_fwd, _conv_add_relu_bwd)


# ------------------------------------------------------------ the ResNet view


def _operands(conv, x):
  """(x, kernel, strides, pads) cast as ``nnx.Conv`` would, or None when the
  fused op does not apply to this layer and input."""
  if (conv.use_bias or conv.feature_group_count != 1 or conv.mask is not None
      or any(d != 1 for d in _pair(conv.kernel_dilation))
      or any(d != 1 for d in _pair(conv.input_dilation))):
    return None
  kernel = conv.kernel[...]
  dtype = conv.dtype if conv.dtype is not None else jnp.result_type(x, kernel)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  strides = _pair(conv.strides)
  padding = conv.padding
  # nnx.Conv also accepts one int, or one int per spatial dimension.
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      return None
  elif isinstance(padding, int):
    padding = ((padding, padding),) * 2
  else:
    padding = tuple(((p, p) if isinstance(p, int) else tuple(p)) for p in padding)
  if not onednn.supports(x, kernel, strides, padding, dimension_numbers=(
      "NHWC", "HWIO", "NHWC")):
    return None
  return x, kernel, strides, onednn.explicit_pads(x, kernel, strides, padding)


def _pair(v):
  if v is None:
    return (1, 1)
  return (int(v), int(v)) if isinstance(v, int) else tuple(int(s) for s in v)


def _onednn_bn(*layers) -> bool:
  """Whether every one of `layers` is a BatchNorm computed by oneDNN."""
  return all(isinstance(layer, OneDNNBatchNorm) for layer in layers)


class FusedStem(Stem):
  """:class:`~experiments.models.resnet.Stem` with conv + ReLU in one call
  (without BN), or BN + ReLU in one call (oneDNN's BN)."""

  def __call__(self, x):
    if self.bn is not None:
      if not _onednn_bn(self.bn):
        return super().__call__(x)
      return self.bn.relu_call(self.conv(x))
    ops = _operands(self.conv, x)
    if ops is None:
      return super().__call__(x)
    return conv_relu(*ops)


class FusedBasicBlock(BasicBlock):
  """:class:`~experiments.models.resnet.BasicBlock` with its ReLUs fused:
  without BN, into both convolutions (the second one with the shortcut's
  add too); with oneDNN's BN, into the first BN, and the shortcut's add +
  ReLU in one oneDNN pass (:func:`add_relu`)."""

  def __call__(self, x):
    if self.bn1 is not None or self.bn2 is not None:
      if not _onednn_bn(self.bn1, self.bn2):
        return super().__call__(x)
      h = self.bn1.relu_call(self.conv1(x))
      h = self.bn2(self.conv2(h))
      residual = shortcut_option_a(x, self.cout, self.stride)
      if residual.dtype != h.dtype or residual.shape != h.shape:
        return jax.nn.relu(h + residual)
      return add_relu(h, residual)
    ops1 = _operands(self.conv1, x)
    if ops1 is None:
      return super().__call__(x)
    h = conv_relu(*ops1)
    ops2 = _operands(self.conv2, h)
    if ops2 is None:
      return super().__call__(x)
    h, kernel, strides, pads = ops2
    residual = shortcut_option_a(x, self.cout, self.stride).astype(h.dtype)
    return conv_add_relu(h, kernel, residual, strides, pads)


_FUSED = {Stem: FusedStem, BasicBlock: FusedBasicBlock}


def with_fused_relu(model: Any) -> Any:
  """A view of the NNX `model` whose ResNet stem and basic blocks without
  BatchNorm run :func:`conv_relu` / :func:`conv_add_relu` (shared
  parameters, as :func:`~experiments.kernels.fastconv.with_layers_changed`).

  Needs the oneDNN kernels (raises
  :class:`~experiments.kernels.onednn.OneDNNUnavailable`, naming the fix).
  Models without such layers are returned unchanged in behaviour.
  """
  onednn.require()

  def fuse(node):
    node.__class__ = _FUSED[type(node)]

  return with_layers_changed(model, lambda n: type(n) in _FUSED, fuse)


def has_fusable_layers(model: Any, onednn_batch_norm: bool = False) -> bool:
  """Whether :func:`with_fused_relu` changes any layer of `model`: a ResNet
  stem or block without BatchNorm, or, with `onednn_batch_norm` (its
  BatchNorm layers will run on oneDNN), one with BatchNorm."""
  from flax import nnx

  for _, node in nnx.iter_graph(model):
    if type(node) is Stem and (node.bn is None or onednn_batch_norm):
      return True
    if type(node) is BasicBlock and (
        (node.bn1 is None and node.bn2 is None) or onednn_batch_norm):
      return True
  return False


__all__ = ["FusedBasicBlock", "FusedStem", "add_relu", "conv_add_relu", "conv_relu",
           "has_fusable_layers", "with_fused_relu"]
