r"""A convolution whose weight gradient is computed in batch chunks (fast on XLA:CPU).

For ``y = conv(x, w)`` the weight gradient is a sum over the batch,

.. math::
   \frac{\partial L}{\partial w} = \sum_{b=1}^{B} \mathrm{conv\_wgrad}(x_b, g_b)
   = \sum_{k=1}^{B/c} \mathrm{conv\_wgrad}(x_{[kc-c+1, kc]}, g_{[kc-c+1, kc]}),

so it can be computed ``c`` images at a time and summed. XLA:CPU lowers the
weight-gradient convolution to one Eigen contraction over the whole batch,
which for CIFAR shapes was measured several times slower than the forward
convolution of the same size, and much faster on chunks of 8 images (see
docs/guides/cpu_training.md). With oneDNN available, the step uses
:mod:`experiments.kernels.onednn` instead, which is faster still. The forward pass and the input gradient
are XLA's own. The chunks are unrolled (B/c weight-gradient convolutions per
layer in the HLO).

Only the summation order of the weight gradient changes: results equal
``lax.conv_general_dilated``'s within float32 rounding. Keep it for CPU: on
accelerators one large convolution is what the kernels are built for.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from experiments.kernels.fastconv import chunked_wgrad_conv
  >>> conv = chunked_wgrad_conv(4)
  >>> x = jnp.ones((8, 6, 6, 3)); w = jnp.ones((3, 3, 3, 5))
  >>> dn = ("NHWC", "HWIO", "NHWC")
  >>> f = lambda w, c: c(x, w, (1, 1), "SAME", dimension_numbers=dn).sum()
  >>> g1 = jax.grad(f)(w, conv); g2 = jax.grad(f)(w, jax.lax.conv_general_dilated)
  >>> bool(jnp.allclose(g1, g2))
  True
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax


def _conv_vjp(conv, chunk, batch_dim, x, w):
  return _conv_custom(conv, chunk, batch_dim, x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _conv_custom(conv, chunk, batch_dim, x, w):
  return conv(x, w)


def _fwd(conv, chunk, batch_dim, x, w):
  return conv(x, w), (x, w)


def _bwd(conv, chunk, batch_dim, res, g):
  x, w = res
  # Input gradient: XLA's transposed convolution, as without chunking.
  dx = jax.vjp(lambda x: conv(x, w), x)[1](g)[0]
  n = x.shape[batch_dim] // chunk

  def wgrad(xc, gc):
    return jax.vjp(lambda w: conv(xc, w), w)[1](gc)[0]

  # Unrolled static slices: a lax.fori_loop over dynamic slices was measured
  # slower on XLA:CPU than even one whole-batch weight gradient.
  dw = wgrad(lax.slice_in_dim(x, 0, chunk, axis=batch_dim),
             lax.slice_in_dim(g, 0, chunk, axis=batch_dim))
  for i in range(1, n):
    dw = dw + wgrad(
        lax.slice_in_dim(x, i * chunk, (i + 1) * chunk, axis=batch_dim),
        lax.slice_in_dim(g, i * chunk, (i + 1) * chunk, axis=batch_dim))
  return dx, dw


_conv_custom.defvjp(_fwd, _bwd)


def chunked_wgrad_conv(chunk: int = 8) -> Callable[..., jax.Array]:
  """A drop-in ``lax.conv_general_dilated`` with a batch-chunked weight gradient.

  Pass it as ``nnx.Conv(..., conv_general_dilated=chunked_wgrad_conv(8))`` or
  let :func:`experiments.kernels.train_step.make_train_step` install it. Falls back to the
  plain convolution when the batch is not a multiple of ``2 * chunk`` or when
  features it does not handle are requested (batch groups, output sharding,
  a preferred element type).
  """
  if not isinstance(chunk, int) or chunk < 1:
    raise ValueError(
        f"chunked_wgrad_conv: `chunk` must be a positive int (images per "
        f"weight-gradient chunk, e.g. 8), got {chunk!r}."
    )

  def conv_general_dilated(lhs, rhs, window_strides, padding,
                           lhs_dilation=None, rhs_dilation=None,
                           dimension_numbers=None, feature_group_count=1,
                           batch_group_count=1, precision=None,
                           preferred_element_type=None, out_sharding=None):
    conv = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides,
        padding=padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    batch_dim = dn.lhs_spec[0]
    b = lhs.shape[batch_dim]
    if (batch_group_count != 1 or out_sharding is not None
        or preferred_element_type is not None or b % chunk or b < 2 * chunk):
      return lax.conv_general_dilated(
          lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
          dimension_numbers, feature_group_count, batch_group_count,
          precision, preferred_element_type, out_sharding=out_sharding)
    return _conv_custom(conv, chunk, batch_dim, lhs, rhs)

  conv_general_dilated.chunk = chunk
  return conv_general_dilated


def with_conv_function(model: Any, conv: Callable[..., jax.Array]) -> Any:
  """A copy of the NNX `model` whose ``nnx.Conv`` layers call `conv`.

  `conv` has the signature of ``lax.conv_general_dilated``. The parameters are
  shared (not copied); only the static convolution function of each
  ``nnx.Conv`` changes, so the result splits into the same state pytrees as
  `model`.
  """
  from flax import nnx

  def use_conv(node):
    node.conv_general_dilated = conv

  return with_layers_changed(model, lambda node: isinstance(node, nnx.Conv), use_conv)


def with_layers_changed(model: Any, select: Callable[[Any], bool],
                        change: Callable[[Any], None]) -> Any:
  """A copy of the NNX `model` where `change(node)` was applied to every graph
  node for which `select(node)` holds.

  The copy shares the parameter and statistics arrays with `model` (split and
  merged, not deep-copied), so it splits into the same state pytrees; meant
  for changes of static attributes (the layer's compute function, its class),
  which leave `model` itself untouched.
  """
  from flax import nnx

  graphdef, state = nnx.split(model)
  clone = nnx.merge(graphdef, state)
  for _, node in nnx.iter_graph(clone):
    if select(node):
      change(node)
  return clone


def with_chunked_wgrad(model: Any, chunk: int = 8) -> Any:
  """A copy of the NNX `model` whose ``nnx.Conv`` layers use the chunked conv
  (see :func:`with_conv_function`)."""
  return with_conv_function(model, chunked_wgrad_conv(chunk))
