r"""BatchNorm with batch statistics on oneDNN for XLA:CPU (forward and gradients).

In train mode ``nnx.BatchNorm`` computes, per channel of an NHWC input,

.. math::
   \mu = \frac{1}{M}\sum x, \quad \sigma^2 = \frac{1}{M}\sum (x - \mu)^2, \quad
   y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

(``M = N H W``, the *biased* variance), and its gradient

.. math::
   \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \quad
   \frac{\partial L}{\partial x} = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}
     \big(g - \overline{g} - \hat x\, \overline{g \hat x}\big), \quad
   \frac{\partial L}{\partial \gamma} = \sum g \hat x, \quad
   \frac{\partial L}{\partial \beta} = \sum g,

with ``g = dL/dy`` and bars the means over ``N, H, W``. XLA:CPU computes these
as separate reductions and elementwise passes over the activation; oneDNN's
``batch_normalization_forward`` / ``_backward`` primitives (the ones PyTorch
uses on CPU) do each direction in one or two passes. They are bound as the FFI
handlers ``experiments_onednn_batch_norm_fwd`` / ``_bwd`` of the library of
:mod:`experiments.kernels.onednn` (``onednn_conv.cc``; built by the same
``python -m experiments.kernels build``), float32 only;
``experiments_onednn_batch_norm_relu_fwd`` is the forward pass with the ReLU
that follows applied in the same pass (oneDNN's ``fuse_norm_relu``), used by
:func:`batch_norm_relu_train` and :mod:`experiments.kernels.fused_relu`.

:func:`batch_norm_train` is the op, with a ``jax.custom_vjp`` whose backward
pass is oneDNN's. Its ``mean`` and ``var`` outputs are for the running
statistics: they carry no gradient (``lax.stop_gradient``), as in
``nnx.BatchNorm``, whose statistics live outside the differentiated
parameters. :func:`with_onednn_batch_norm` gives a view of an NNX model whose
``nnx.BatchNorm`` layers run it in train mode and update their running
averages exactly as Flax does; everything else goes to Flax's own code.

Numerics: oneDNN computes the variance as the mean of squared deviations,
Flax (``use_fast_variance=True``, the default) as ``E[x^2] - E[x]^2``; both
are the biased batch variance, equal within float32 rounding for
normalisation inputs (tested against a float64 reference, and the whole train
step against Flax's BatchNorm, in tests/harness/test_onednn_conv.py and
tests/harness/test_step.py). Its per-channel sums round about ten times more
than XLA's (ResNet-20, batch 32: running statistics 4e-6 from float64, 4e-7
for Flax's), so a few more pre-activations within 1e-5 standard deviations
of zero land on the other side of a ReLU than in the plain step, and each
such flip moves the gradients of the earlier layers by up to ~1e-3; the
plain float32 step has the same kind of flips, just fewer. With the float32
step's ReLU masks given to a float64 reference, the gradients agree to 3e-5
(tests/harness/test_batch_norm_reference.py).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from experiments.kernels import batch_norm, onednn
  >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  >>> if onednn.available():
  ...   y, mean, var = batch_norm.batch_norm_train(x, jnp.ones(3), jnp.zeros(3), 1e-5)
  ... else:
  ...   mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  >>> bool(jnp.allclose(mean, x.mean((0, 1, 2)), atol=1e-6))
  True
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes
from jax import lax

import experiments.kernels.onednn as onednn
from experiments.kernels.fastconv import with_layers_changed


def _ffi(kind: str, x: jax.Array, epsilon: float, *operands):
  """One FFI call: an activation-shaped result and two per-channel ones."""
  chan = jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)
  return jax.ffi.ffi_call(
      onednn.BATCH_NORM_TARGETS[kind],
      (jax.ShapeDtypeStruct(x.shape, jnp.float32), chan, chan),
      vmap_method="sequential",
  )(*operands, epsilon=np.float32(epsilon))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm(x, scale, bias, epsilon):
  return _ffi("fwd", x, epsilon, x, scale, bias)


def _batch_norm_fwd(x, scale, bias, epsilon):
  y, mean, var = _ffi("fwd", x, epsilon, x, scale, bias)
  return (y, mean, var), (x, scale, mean, var)


def _batch_norm_bwd(epsilon, res, cotangents):
  x, scale, mean, var = res
  # The statistics' cotangents are dropped: batch_norm_train stops their
  # gradient, so they are zero.
  g = cotangents[0].astype(jnp.float32)
  return _ffi("bwd", x, epsilon, x, g, mean, var, scale)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_relu(x, scale, bias, epsilon):
  return _ffi("relu_fwd", x, epsilon, x, scale, bias)


def _batch_norm_relu_fwd(x, scale, bias, epsilon):
  y, mean, var = _ffi("relu_fwd", x, epsilon, x, scale, bias)
  return (y, mean, var), (x, scale, mean, var, y)


def _batch_norm_relu_bwd(epsilon, res, cotangents):
  x, scale, mean, var, y = res
  # The ReLU's gradient from its output (one oneDNN pass), then BatchNorm's.
  g = onednn.relu_grad(cotangents[0].astype(jnp.float32), y)
  return _ffi("bwd", x, epsilon, x, g, mean, var, scale)


_batch_norm_relu.defvjp(_batch_norm_relu_fwd, _batch_norm_relu_bwd)


def supports(x: Any, scale: Any, bias: Any) -> bool:
  """Whether :func:`batch_norm_train` runs these operands on oneDNN: CPU,
  float32 NHWC `x`, float32 `scale` and `bias` of ``x.shape[-1]`` entries."""
  c = x.shape[-1] if x.ndim else None
  return (jax.default_backend() == "cpu" and x.ndim == 4
          and all(a is not None and jnp.dtype(a.dtype) == jnp.float32
                  for a in (x, scale, bias))
          and scale.shape == bias.shape == (c,))


def _require(owner: str, x, scale, bias) -> None:
  """Raises, naming the fix, unless the oneDNN kernels can run these operands."""
  if not supports(x, scale, bias):
    raise ValueError(
        f"{owner}: needs CPU, `x` float32 NHWC and `scale`/`bias` "
        f"float32 of shape (C,); got x {x.dtype}{tuple(x.shape)}, scale "
        f"{getattr(scale, 'dtype', None)}{tuple(getattr(scale, 'shape', ()))}, "
        f"bias {getattr(bias, 'dtype', None)}{tuple(getattr(bias, 'shape', ()))} "
        f"on {jax.default_backend()!r}. Use nnx.BatchNorm for other inputs.")
  reason = onednn.unavailable_reason()
  if reason:
    raise onednn.OneDNNUnavailable(f"{owner}: {reason}")


def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(y, mean, var)``: BatchNorm of NHWC float32 `x` with its batch statistics.

  ``y = scale * (x - mean) / sqrt(var + epsilon) + bias``, ``mean`` and the
  biased ``var`` per channel over ``N, H, W``, all from oneDNN; differentiable
  in `x`, `scale` and `bias` (oneDNN's backward primitive). ``mean`` and
  ``var`` are returned under ``lax.stop_gradient``: they feed the running
  averages, not the loss. Not differentiable twice.

  Raises ValueError when :func:`supports` is False and
  :class:`~experiments.kernels.onednn.OneDNNUnavailable` when the kernels are
  not built (:func:`experiments.kernels.onednn.require` builds them).
  """
  _require("batch_norm_train", x, scale, bias)
  y, mean, var = _batch_norm(x, scale, bias, float(epsilon))
  return y, lax.stop_gradient(mean), lax.stop_gradient(var)


def batch_norm_relu_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                          epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(relu(y), mean, var)`` with ``y, mean, var`` as in
  :func:`batch_norm_train`, the ReLU applied by oneDNN in the same pass
  (``fuse_norm_relu``). Its gradient: the ReLU's (from the output), then
  oneDNN's BatchNorm backward. Same requirements as :func:`batch_norm_train`.
  """
  _require("batch_norm_relu_train", x, scale, bias)
  y, mean, var = _batch_norm_relu(x, scale, bias, float(epsilon))
  return y, lax.stop_gradient(mean), lax.stop_gradient(var)


class OneDNNBatchNorm(nnx.BatchNorm):
  """``nnx.BatchNorm`` whose train-mode call runs :func:`batch_norm_train`.

  Same variables and attributes as ``nnx.BatchNorm`` (instances are made by
  :func:`with_onednn_batch_norm` by changing the class of a view's layers).
  The oneDNN path is taken when the call uses batch statistics, without
  `mask`, cross-device statistics (``axis_name``/``axis_index_groups``) or a
  custom ``promote_dtype``, with float32 NHWC input, features on the last
  axis, compute ``dtype`` None/float32, float32 scale, bias and statistics,
  and the kernels loaded; every other call is ``nnx.BatchNorm.__call__``.
  """

  def _onednn_applies(self, x, use_running_average, mask) -> bool:
    return (use_running_average is False and mask is None
            and self.axis_name is None and self.axis_index_groups is None
            and self.promote_dtype is nnx_dtypes.promote_dtype
            and self.scale is not None and self.bias is not None
            and self.dtype in (None, jnp.float32) and x.ndim == 4
            and self.axis in (-1, 3)
            and self.mean.dtype == self.var.dtype == jnp.float32
            and supports(x, self.scale[...], self.bias[...])
            and onednn.available())

  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    ura = (use_running_average if use_running_average is not None
           else self.use_running_average)
    if not self._onednn_applies(x, ura, mask):
      return super().__call__(x, use_running_average, mask=mask)
    y, mean, var = batch_norm_train(x, self.scale[...], self.bias[...],
                                    self.epsilon)
    self._update_statistics(mean, var)
    return y

  def _update_statistics(self, mean, var):
    # Flax's running-average update, term for term (biased batch variance).
    self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
    self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * var

  def relu_call(self, x, use_running_average: bool | None = None):
    """``jax.nn.relu(self(x))``, with the ReLU fused into oneDNN's forward
    pass (:func:`batch_norm_relu_train`) when the oneDNN path applies."""
    ura = (use_running_average if use_running_average is not None
           else self.use_running_average)
    if not self._onednn_applies(x, ura, None):
      return jax.nn.relu(super().__call__(x, use_running_average))
    y, mean, var = batch_norm_relu_train(x, self.scale[...], self.bias[...],
                                         self.epsilon)
    self._update_statistics(mean, var)
    return y


def with_onednn_batch_norm(model: Any) -> Any:
  """A copy of the NNX `model` whose ``nnx.BatchNorm`` layers are
  :class:`OneDNNBatchNorm` (parameters and statistics shared, as in
  :func:`experiments.kernels.fastconv.with_conv_function`).

  Only layers of exactly ``nnx.BatchNorm`` are changed (a subclass may
  override the call). Raises
  :class:`~experiments.kernels.onednn.OneDNNUnavailable` (with the fix) when
  the kernels cannot be built here.
  """
  onednn.require()

  def use_onednn(node):
    node.__class__ = OneDNNBatchNorm

  return with_layers_changed(model, lambda n: type(n) is nnx.BatchNorm, use_onednn)


__all__ = ["OneDNNBatchNorm", "batch_norm_relu_train", "batch_norm_train", "supports",
           "with_onednn_batch_norm"]
