r"""The CPU speed layer of the train step: the same numbers as
:mod:`experiments.training.train_step`, faster on XLA:CPU.

One call, :func:`make_train_step` (and :func:`make_eval_step`), returns the
plain step run on a model whose layers call oneDNN, or split into segments.
Four choices, each ``"auto"`` by default (the fastest measured on this backend;
measurements in ``benchmarks/results/train_step.json``, by ``python -m
benchmarks.train_step``):

* ``impl``: ``"plain"`` (one ``jax.jit`` of the step); ``"nofusion"`` (the same
  jit without XLA's ``fusion`` pass: on XLA:CPU fusion re-computes the forward
  residual chain inside the transposes feeding each weight-gradient
  convolution, so the backward pass costs O(depth^2); CPU only);
  ``"blockwise"`` (one jitted forward and backward per segment of the model,
  ``stem``, runs of ``BLOCKS_PER_SEGMENT`` ``blocks``, ``head``, chained from
  Python: linear in depth on every backend, and runs of the same shape share
  one executable).
* ``conv``: ``"onednn"`` (oneDNN's convolutions, the library PyTorch uses on
  CPU, as XLA FFI custom calls, :mod:`~experiments.kernels.onednn`; CPU, one
  device) or ``"xla"`` (then ``conv_grad_chunk`` computes the weight gradients
  in chunks of a few images, :mod:`~experiments.kernels.fastconv`: only the
  summation order changes). ``"auto"`` is oneDNN on one CPU device when its
  kernels are already built (``python -m experiments.kernels build``; ``auto``
  never compiles).
* ``batch_norm``: train-mode BatchNorm by oneDNN
  (:mod:`~experiments.kernels.batch_norm`; float32, CPU, one device) or by
  Flax. ``"auto"``: oneDNN's with oneDNN convolutions in float32 (it only pays
  with the ReLUs fused into it). Eval always uses Flax's (running statistics).
* ``relu``: the ReLUs and residual adds of the ResNet stem and blocks fused
  into oneDNN's convolutions (without BatchNorm) or BatchNorm
  (:mod:`~experiments.kernels.fused_relu`), or XLA's own.

All give the plain step's gradients within float32 rounding (in bfloat16 a
fused convolution rounds once instead of twice).

Example:
  >>> import numpy as np, optax
  >>> from flax import nnx
  >>> from experiments.models.resnet import ResNet
  >>> from experiments.training.train_step import create_train_state
  >>> from experiments.kernels.train_step import make_train_step
  >>> model = ResNet(8, 10, use_bn=False, rngs=nnx.Rngs(0))
  >>> tx = optax.adamw(1e-3, weight_decay=1e-4)
  >>> state = create_train_state(model, tx, seed=0)
  >>> step = make_train_step(model, tx, impl="blockwise", conv="xla")
  >>> images = np.zeros((8, 32, 32, 3), np.uint8); labels = np.arange(8) % 10
  >>> state, metrics = step(state, images, labels)
  >>> int(state.step), step.impl, step.conv
  (1, 'blockwise', 'xla')
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from experiments.configs.default import PRECISIONS
import experiments.kernels.onednn as onednn_conv
from experiments.kernels.batch_norm import with_onednn_batch_norm
from experiments.kernels.fastconv import with_chunked_wgrad
from experiments.kernels.fused_relu import has_fusable_layers, with_fused_relu
from experiments.training import train_step as plain
from experiments.training.train_step import (
    DATA_AXIS, TrainState, check_mesh, create_train_state, keep_stats_if_nonfinite,
    loss_and_metrics, split, state_to_model, model_view)

# The four choices of the CPU layer (the harness passes them through its one
# `step` field: --step kernels:impl=blockwise,conv=xla).
IMPLS = ("auto", "plain", "nofusion", "blockwise")
CONVS = ("auto", "xla", "onednn")
BATCH_NORMS = ("auto", "onednn", "flax")
RELUS = ("auto", "onednn", "xla")

# The fastest implementation measured per (backend, conv, batch norm or "none"
# without BN) (benchmarks/results/train_step.json: python -m benchmarks.train_step).
# With oneDNN convolutions and Flax's BatchNorm XLA's fusion pays (fused
# normalisation) but the whole-step jit grows faster than depth, so per-segment
# jits; with oneDNN's BatchNorm nothing is left for XLA to fuse.
AUTO_IMPL = {("cpu", "xla", "none"): "nofusion", ("cpu", "xla", "flax"): "nofusion",
             ("cpu", "xla", "onednn"): "nofusion",
             ("cpu", "onednn", "none"): "nofusion",
             ("cpu", "onednn", "flax"): "blockwise",
             ("cpu", "onednn", "onednn"): "nofusion"}
# Images per weight-gradient chunk under "auto" on CPU (fastest of 4, 8, 16, 32).
AUTO_CONV_GRAD_CHUNK = 8
_DEFAULT_IMPL = "plain"
# Blocks per segment of impl="blockwise": one block per jit leaves XLA idle while
# Python dispatches the next; a whole stage brings back the superlinear backward.
BLOCKS_PER_SEGMENT = 3


def _check_choice(arg: str, value: str, choices, owner: str) -> str:
  if value not in choices:
    raise ValueError(
        f"{owner}: unknown `{arg}={value!r}`; valid choices: "
        f"{', '.join(choices)}."
    )
  return value


def _check_precision(precision: str, owner: str) -> str:
  return _check_choice("precision", precision, PRECISIONS, owner)


def _has_batch_norm(model: nnx.Module) -> bool:
  return any(isinstance(n, nnx.BatchNorm) for _, n in nnx.iter_graph(model))


def _check_impl(impl: str, conv: str, batch_norm: str, model: nnx.Module) -> str:
  _check_choice("impl", impl, IMPLS, "make_train_step")
  if impl == "auto":
    key = (jax.default_backend(), conv,
           batch_norm if _has_batch_norm(model) else "none")
    impl = AUTO_IMPL.get(key, _DEFAULT_IMPL)
    if impl == "blockwise" and not all(
        hasattr(model, a) for a in ("stem", "blocks", "head")):
      impl = _DEFAULT_IMPL  # a model that cannot run block by block
    return impl
  if impl == "nofusion" and jax.default_backend() != "cpu":
    raise ValueError(
        "make_train_step: `impl='nofusion'` disables XLA fusion, which only "
        f"helps XLA:CPU; the backend is {jax.default_backend()!r}. Use "
        "impl='auto' (or 'plain'/'blockwise')."
    )
  return impl


def _multi_device(mesh) -> bool:
  return mesh is not None and mesh.shape[DATA_AXIS] > 1


def _resolve_conv(conv: str, mesh, chunk_requested: bool = False) -> str:
  return _resolve_conv_why(conv, mesh, chunk_requested)[0]


def _resolve_conv_why(conv: str, mesh,
                      chunk_requested: bool = False) -> tuple[str, str]:
  """(convolution kind, why it was chosen). The same in both precisions:
  oneDNN has float32 and bfloat16 kernels."""
  _check_choice("conv", conv, CONVS, "make_train_step")
  if conv == "auto":
    # On a multi-device mesh XLA cannot partition the custom calls (it would
    # gather the batch onto every device), so data parallelism keeps XLA's
    # convolutions; so does an explicit conv_grad_chunk (it chunks XLA's).
    if jax.default_backend() != "cpu":
      return "xla", f"auto: backend {jax.default_backend()!r} (oneDNN kernels are CPU-only)"
    if _multi_device(mesh):
      return "xla", "auto: multi-device mesh (XLA cannot partition oneDNN calls)"
    if chunk_requested:
      return "xla", "auto: explicit conv_grad_chunk (it chunks XLA's convolutions)"
    if not onednn_conv.available():
      return "xla", "auto: oneDNN kernels not built (python -m experiments.kernels build)"
    return "onednn", "auto: oneDNN kernels built, one CPU device"
  if conv == "onednn":
    _require_onednn("conv", mesh, "conv='auto' or 'xla'",
                    "conv='xla' (what conv='auto' picks on a multi-device mesh)")
  return conv, "requested"


def _require_onednn(arg: str, mesh, use_elsewhere: str, use_on_mesh: str) -> None:
  """Raises, naming `arg` and the fix, unless oneDNN's kernels can run here
  (CPU, one device; builds them if needed, saying so)."""
  if jax.default_backend() != "cpu":
    raise ValueError(
        f"make_train_step: `{arg}='onednn'` runs oneDNN's CPU kernels; the "
        f"backend is {jax.default_backend()!r}. Use {use_elsewhere}."
    )
  if _multi_device(mesh):
    raise ValueError(
        f"make_train_step: `{arg}='onednn'` runs on one device: XLA cannot "
        f"partition its custom calls over the mesh's 'data' axis. Use "
        f"{use_on_mesh}."
    )
  onednn_conv.require()


def _check_batch_norm(batch_norm: str, owner: str) -> str:
  return _check_choice("batch_norm", batch_norm, BATCH_NORMS, owner)


def _resolve_batch_norm_why(batch_norm: str, conv: str, precision: str, mesh,
                            model: nnx.Module) -> tuple[str, str]:
  """(who computes the train-mode BatchNorm, why): ``"onednn"``
  (:mod:`experiments.kernels.batch_norm`) or ``"flax"`` (``nnx.BatchNorm``).

  ``"auto"`` is ``"onednn"`` with oneDNN convolutions in float32 (fused with the
  ReLUs; see the module docstring), else ``"flax"``.
  """
  _check_batch_norm(batch_norm, "make_train_step")
  if batch_norm == "flax":
    return "flax", "requested"
  if batch_norm == "auto":
    # oneDNN's BatchNorm alone was no faster than Flax's in the step (XLA fuses
    # Flax's normalisation with the ReLU and the residual add); with the ReLU
    # fused into it and the residual add + ReLU in one oneDNN pass
    # (relu="auto", experiments/kernels/fused_relu.py) it is: see the module
    # docstring. So "auto" is oneDNN's wherever that fusion runs: oneDNN
    # convolutions, float32.
    if not _has_batch_norm(model):
      return "flax", "auto: the model has no nnx.BatchNorm"
    if conv != "onednn":
      return "flax", "auto: the convolutions are XLA's"
    if precision != "float32":
      return "flax", f"auto: oneDNN's BatchNorm is float32 only (precision={precision!r})"
    return "onednn", "auto: oneDNN convolutions, float32 (fused with the ReLUs)"
  if precision != "float32":
    raise ValueError(
        "make_train_step: `batch_norm='onednn'` has float32 kernels only; "
        f"`precision={precision!r}` normalises in float32 within Flax's "
        "BatchNorm already. Pass batch_norm='auto' or 'flax', or "
        "precision='float32'."
    )
  fix = "batch_norm='flax' (or 'auto')"
  try:
    _require_onednn("batch_norm", mesh, fix, fix)
  except onednn_conv.OneDNNUnavailable as e:
    raise onednn_conv.OneDNNUnavailable(
        f"make_train_step: `batch_norm='onednn'`: {e} Or pass {fix}.") from None
  return "onednn", "requested"


def _resolve_relu_why(relu: str, conv: str, batch_norm: str,
                      model: nnx.Module) -> tuple[str, str]:
  """(who computes the ReLUs and residual adds of the ResNet stem and
  blocks, why): ``"onednn"`` (fused into the convolutions without BatchNorm,
  into oneDNN's BatchNorm with it; :mod:`experiments.kernels.fused_relu`)
  or ``"xla"``."""
  _check_choice("relu", relu, RELUS, "make_train_step")
  if relu == "xla":
    return "xla", "requested"
  fusable = has_fusable_layers(model, onednn_batch_norm=batch_norm == "onednn")
  if relu == "auto":
    if conv != "onednn":
      return "xla", "auto: the convolutions are XLA's"
    if not fusable:
      return "xla", ("auto: no ResNet stem or block without BatchNorm or with "
                     "oneDNN's BatchNorm")
    return "onednn", "auto: oneDNN convolutions" + (
        " and BatchNorm" if batch_norm == "onednn" and _has_batch_norm(model) else "")
  if conv != "onednn":
    raise ValueError(
        "make_train_step: `relu='onednn'` fuses the ReLUs into oneDNN's "
        f"kernels, but the convolutions resolved to {conv!r}. Pass "
        "conv='onednn' (or 'auto' on one CPU device), or relu='auto'/'xla'.")
  if not fusable:
    raise ValueError(
        "make_train_step: `relu='onednn'` fuses the ReLUs of the ResNet stem "
        "and basic blocks into oneDNN's convolutions (without BatchNorm) or "
        f"BatchNorm (batch_norm='onednn'); {type(model).__name__} has neither "
        "kind. Pass relu='auto' or 'xla' (or batch_norm='onednn').")
  return "onednn", "requested"


def _resolve_chunk(conv_grad_chunk, impl: str, conv: str, mesh,
                   precision: str = "float32") -> int:
  if conv_grad_chunk == "auto":
    # Not in bfloat16: each chunk's partial weight gradient would be rounded
    # to bfloat16 before the sum (and the speed-up was measured in float32).
    if (jax.default_backend() == "cpu" and impl != "plain" and conv == "xla"
        and not _multi_device(mesh) and precision == "float32"):
      return AUTO_CONV_GRAD_CHUNK
    return 0
  if conv_grad_chunk is None:
    return 0
  if (isinstance(conv_grad_chunk, bool) or not isinstance(conv_grad_chunk, int)
      or conv_grad_chunk < 0):
    raise ValueError(
        "make_train_step: `conv_grad_chunk` must be 'auto', None or an int >= "
        f"0 (images per weight-gradient chunk, e.g. 8), got {conv_grad_chunk!r}."
    )
  if conv_grad_chunk and conv == "onednn":
    raise ValueError(
        "make_train_step: `conv_grad_chunk` chunks XLA's weight-gradient "
        "convolutions; with conv='onednn' oneDNN computes them whole. Pass "
        "conv_grad_chunk='auto'/None, or conv='xla'."
    )
  if conv_grad_chunk and precision != "float32":
    raise ValueError(
        "make_train_step: `conv_grad_chunk` sums per-chunk weight gradients in "
        f"the convolution's dtype; with `precision={precision!r}` each partial "
        "sum would be rounded to it. Pass conv_grad_chunk='auto'/None (no "
        "chunking in bfloat16), or precision='float32'."
    )
  return conv_grad_chunk



# ----------------------------------------------------------------- train step


def make_train_step(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    *,
    loss_multiplier: float = 1.0,
    augment: bool = True,
    mesh: Mesh | None = None,
    impl: str = "auto",
    conv: str = "auto",
    conv_grad_chunk: int | str | None = "auto",
    precision: str = "float32",
    batch_norm: str = "auto",
    relu: str = "auto",
) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict]]:
  """``train_step(state, images_uint8, labels) -> (state, metrics)``.

  The input `state` is donated (its buffers are reused for the output): do not
  use it after the call. BatchNorm statistics are only updated when the
  gradients and new statistics are finite (so that ``optax.apply_if_finite``
  skips a bad step entirely). ``metrics`` holds the mean cross-entropy ``loss``
  (without the multiplier) and ``accuracy`` on the augmented batch.

  Args:
    model: the NNX module (only its structure is used; its mode is ignored:
      the step runs it in train mode).
    tx: the optax transformation whose state is in ``state.opt_state``.
    loss_multiplier: constant the loss is multiplied by before differentiation.
    augment: random crop + flip (else only normalisation).
    mesh: optional mesh with a ``"data"`` axis for data parallelism.
    impl: ``"auto"``, ``"plain"``, ``"nofusion"`` or ``"blockwise"`` (see the
      module docstring).
    conv: ``"auto"``, ``"onednn"`` or ``"xla"``: who computes the
      convolutions (see the module docstring). ``"onednn"`` raises
      :class:`experiments.kernels.onednn.OneDNNUnavailable`, naming the fix,
      when its kernels cannot be built here.
    conv_grad_chunk: with XLA's convolutions, images per chunk of the
      weight gradients (:mod:`experiments.kernels.fastconv`), ``None``/0 for XLA's
      whole-batch one, or ``"auto"``: 8 on CPU for the fast implementations
      without a multi-device mesh, else off (``impl="plain"`` is never
      chunked by ``"auto"``: it is the reference). Not with bfloat16.
    precision: ``"float32"`` or ``"bfloat16"`` (bfloat16 compute, float32
      weights, gradients, optimizer state, BatchNorm statistics and loss; see
      the module docstring). Every `impl` and `conv` supports both.
    batch_norm: ``"auto"``, ``"onednn"`` or ``"flax"``: who computes the
      train-mode BatchNorm (see the module docstring). ``"onednn"`` needs
      CPU, one device and ``precision="float32"`` (else ValueError) and its
      kernels (else :class:`~experiments.kernels.onednn.OneDNNUnavailable`).
    relu: ``"auto"``, ``"onednn"`` or ``"xla"``: who computes the ReLUs and
      residual adds of the ResNet stem and blocks (see the module
      docstring). ``"onednn"`` needs the convolutions on oneDNN, and
      ``batch_norm`` resolved to ``"onednn"`` for layers with BatchNorm
      (else ValueError).

  The returned function has attributes ``impl``, ``conv``,
  ``conv_grad_chunk``, ``batch_norm``, ``relu`` and ``precision`` (what was
  resolved) and ``conv_reason`` / ``batch_norm_reason`` / ``relu_reason``
  (why that kind).
  """
  if mesh is not None:
    check_mesh(mesh)
  precision = _check_precision(precision, "make_train_step")
  conv, conv_reason = _resolve_conv_why(
      conv, mesh, conv_grad_chunk not in ("auto", None, 0))
  batch_norm, batch_norm_reason = _resolve_batch_norm_why(
      batch_norm, conv, precision, mesh, model)
  relu, relu_reason = _resolve_relu_why(relu, conv, batch_norm, model)
  impl = _check_impl(impl, conv, batch_norm, model)
  chunk = _resolve_chunk(conv_grad_chunk, impl, conv, mesh, precision)
  loss_multiplier = float(loss_multiplier)
  train_model = model_view(model, precision)
  if conv == "onednn":
    train_model = onednn_conv.with_onednn_convs(train_model)
  if relu == "onednn":
    train_model = with_fused_relu(train_model)
  if batch_norm == "onednn":
    train_model = with_onednn_batch_norm(train_model)
  if chunk:
    train_model = with_chunked_wgrad(train_model, chunk)
  if impl == "blockwise":
    inner = _BlockwiseStep(train_model, tx, loss_multiplier, augment, mesh)
  else:
    inner = _whole_step(train_model, tx, loss_multiplier, augment, mesh,
                        fusion=impl != "nofusion")

  train_step = plain.checked_train_step(inner, mesh)
  train_step.impl = impl
  train_step.conv = conv
  train_step.conv_grad_chunk = chunk
  train_step.conv_reason = conv_reason
  train_step.batch_norm = batch_norm
  train_step.batch_norm_reason = batch_norm_reason
  train_step.relu = relu
  train_step.relu_reason = relu_reason
  train_step.precision = precision
  train_step.jitted = getattr(inner, "jitted", None)  # None for blockwise
  return train_step


def _whole_step(model, tx, loss_multiplier, augment_flag, mesh, fusion):
  jitted = plain.jit_train_step(
      model, tx, loss_multiplier=loss_multiplier, augment=augment_flag, mesh=mesh,
      compiler_options=None if fusion else {"xla_disable_hlo_passes": "fusion"})
  jitted.jitted = jitted
  return jitted


# ----------------------------------------------------------------- eval step


def make_eval_step(
    model: nnx.Module, *, mesh: Mesh | None = None, conv: str = "auto",
    precision: str = "float32", batch_norm: str = "auto",
) -> Callable[..., dict]:
  """``eval_step(state, images_uint8, labels, mask=None) -> sums``.

  Runs the model in eval mode (BatchNorm running statistics), without
  augmentation. Returns sums over the batch so partial batches can be padded
  and masked: ``loss_sum``, ``correct`` and ``count`` (sum of ``mask``, which
  is 1 for real examples and 0 for padding), and the per-example predicted
  class ``predictions`` (padding included). `conv` and `precision` are as
  in :func:`make_train_step` (the loss is float32 in both precisions).
  `batch_norm` is validated as there but BatchNorm is always Flax's here:
  in eval mode it normalises with the running statistics, one elementwise
  pass that XLA fuses into its neighbours (oneDNN's kernel is for batch
  statistics); ``eval_step.batch_norm`` is ``"flax"``.
  """
  if mesh is not None:
    check_mesh(mesh)
  precision = _check_precision(precision, "make_eval_step")
  _check_batch_norm(batch_norm, "make_eval_step")
  eval_model = model_view(model, precision, train=False)
  if _resolve_conv(conv, mesh) == "onednn":
    eval_model = onednn_conv.with_onednn_convs(eval_model)
  eval_step = plain.checked_eval_step(plain.jit_eval_step(eval_model, mesh=mesh), mesh)
  eval_step.precision = precision
  eval_step.batch_norm = "flax"
  return eval_step


# ----------------------------------------------------------------- blockwise


class _Segment(NamedTuple):
  graphdef: Any
  p_treedef: Any
  r_treedef: Any
  p_index: tuple  # positions of this segment's leaves in the whole model's
  r_index: tuple


class _Blocks(nnx.Module):
  """Consecutive blocks of a model, run one after the other as one segment."""

  def __init__(self, blocks):
    self.layers = nnx.List(blocks)

  def __call__(self, x):
    for block in self.layers:
      x = block(x)
    return x


def _segments(model: nnx.Module, params, rest,
              blocks_per_segment: int = 1) -> list[_Segment]:
  """Maps the stem, each run of `blocks_per_segment` blocks and the head
  onto the whole model's leaves."""
  missing = [a for a in ("stem", "blocks", "head") if not hasattr(model, a)]
  if missing:
    raise ValueError(
        "make_train_step(impl='blockwise') needs a model exposing `stem`, "
        f"`blocks` and `head` (model(x) == head(blocks(stem(x)))); "
        f"{type(model).__name__} lacks {missing}. Use impl='plain'."
    )
  p_pos = {jax.tree_util.keystr(k): i for i, (k, _) in
           enumerate(jax.tree_util.tree_flatten_with_path(params)[0])}
  r_pos = {jax.tree_util.keystr(k): i for i, (k, _) in
           enumerate(jax.tree_util.tree_flatten_with_path(rest)[0])}
  blocks = list(model.blocks)
  parts = [(lambda k: "['stem']" + jax.tree_util.keystr(k), model.stem)]
  for first in range(0, len(blocks), blocks_per_segment):
    # A run of blocks: its leaves' paths start with ['layers'][j], which is
    # ['blocks'][first + j] in the whole model.
    parts.append((lambda k, first=first: f"['blocks'][{first + k[1].key}]"
                  + jax.tree_util.keystr(k[2:]),
                  _Blocks(blocks[first:first + blocks_per_segment])))
  parts += [(lambda k: "['head']" + jax.tree_util.keystr(k), model.head)]
  segs, seen_p, seen_r = [], set(), set()
  for path_in_model, module in parts:
    g, p, r = split(module)
    pl, ptd = jax.tree_util.tree_flatten_with_path(p)
    rl, rtd = jax.tree_util.tree_flatten_with_path(r)
    pi = tuple(p_pos[path_in_model(k)] for k, _ in pl)
    ri = tuple(r_pos[path_in_model(k)] for k, _ in rl)
    seen_p.update(pi)
    seen_r.update(ri)
    segs.append(_Segment(g, ptd, rtd, pi, ri))
  if len(seen_p) != len(p_pos) or len(seen_r) != len(r_pos):
    raise ValueError(
        "make_train_step(impl='blockwise'): the model has variables outside "
        "`stem`, `blocks` and `head`, so it cannot be run block by block. Use "
        "impl='plain'."
    )
  return segs


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _segment_forward(graphdef, p_treedef, r_treedef, input_grad, p_leaves,
                     r_leaves, x):
  """Forward of one segment; returns (y, new_rest_leaves, vjp)."""
  p = jax.tree.unflatten(p_treedef, p_leaves)

  def f(p, x):
    # The rest (BatchNorm statistics) is rebuilt in this trace so NNX lets
    # the module update it.
    m = nnx.merge(graphdef, p, jax.tree.unflatten(r_treedef, r_leaves))
    y = m(x)
    _, _, new_r = split(m)
    return y, jax.tree.leaves(new_r)

  if input_grad:
    y, vjp, new_r = jax.vjp(f, p, x, has_aux=True)
  else:
    y, vjp, new_r = jax.vjp(lambda p: f(p, x), p, has_aux=True)
  return y, new_r, vjp


@jax.jit
def _segment_backward(vjp, g):
  """(param grads, input grad or None) from a segment's saved VJP."""
  out = vjp(g)
  return jax.tree.leaves(out[0]), (out[1] if len(out) > 1 else None)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _head_loss(graphdef, p_treedef, r_treedef, loss_multiplier, p_leaves,
               r_leaves, x, labels):
  """Head + loss: (param grads, input grad, new rest leaves, metrics)."""
  p = jax.tree.unflatten(p_treedef, p_leaves)

  def f(p, x):
    m = nnx.merge(graphdef, p, jax.tree.unflatten(r_treedef, r_leaves))
    loss, metrics = loss_and_metrics(m(x), labels, loss_multiplier)
    _, _, new_r = split(m)
    return loss, (metrics, jax.tree.leaves(new_r))

  (gp, gx), (metrics, new_r) = jax.grad(f, argnums=(0, 1), has_aux=True)(p, x)
  return jax.tree.leaves(gp), gx, new_r, metrics


class _BlockwiseStep:
  """Forward segment by segment, keeping each VJP; backward in reverse."""

  def __init__(self, model, tx, loss_multiplier, augment_flag, mesh):
    self.graphdef, params, rest = split(model)
    self.segs = _segments(model, params, rest, BLOCKS_PER_SEGMENT)
    self.p_treedef = jax.tree.structure(params)
    self.r_treedef = jax.tree.structure(rest)
    self.n_p = self.p_treedef.num_leaves
    self.n_r = self.r_treedef.num_leaves
    self.loss_multiplier = loss_multiplier
    self.mesh = mesh
    self.jitted = None

    def prepare(state, images):
      return plain.model_inputs(state, images, augment_flag)

    def apply(state, grad_leaves, rest_leaves):
      grads = jax.tree.unflatten(self.p_treedef, grad_leaves)
      rest = keep_stats_if_nonfinite(
          grads, jax.tree.unflatten(self.r_treedef, rest_leaves),
          state.model_state)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      return TrainState(params, rest, opt_state, state.step + 1, state.rng)

    if mesh is not None:
      rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
      self.prepare = jax.jit(prepare, in_shardings=(rep, data),
                             out_shardings=data)
      self.apply = jax.jit(apply, donate_argnums=0, out_shardings=rep)
      self.data_sharding = data
    else:
      self.prepare = jax.jit(prepare)
      self.apply = jax.jit(apply, donate_argnums=0)
      self.data_sharding = None

  def __call__(self, state: TrainState, images, labels):
    if self.data_sharding is not None:
      labels = jax.device_put(labels, self.data_sharding)
    x = self.prepare(state, images)
    p_all = jax.tree.leaves(state.params)
    r_all = jax.tree.leaves(state.model_state)
    grads = [None] * self.n_p
    new_rest = [None] * self.n_r
    vjps = []
    *body, head = self.segs
    for k, seg in enumerate(body):
      x, r_new, vjp = _segment_forward(
          seg.graphdef, seg.p_treedef, seg.r_treedef, k > 0,
          [p_all[i] for i in seg.p_index], [r_all[i] for i in seg.r_index], x)
      for i, v in zip(seg.r_index, r_new):
        new_rest[i] = v
      vjps.append(vjp)
    g_p, g, r_new, metrics = _head_loss(
        head.graphdef, head.p_treedef, head.r_treedef, self.loss_multiplier,
        [p_all[i] for i in head.p_index], [r_all[i] for i in head.r_index],
        x, labels)
    for i, v in zip(head.p_index, g_p):
      grads[i] = v
    for i, v in zip(head.r_index, r_new):
      new_rest[i] = v
    for seg, vjp in zip(reversed(body), reversed(vjps)):
      g_p, g = _segment_backward(vjp, g)
      for i, v in zip(seg.p_index, g_p):
        grads[i] = v
    del vjps  # free the saved activations before the update
    return self.apply(state, grads, new_rest), metrics


__all__ = [
    "AUTO_IMPL", "BATCH_NORMS", "CONVS", "IMPLS", "PRECISIONS", "RELUS", "TrainState",
    "create_train_state", "make_eval_step", "make_train_step", "state_to_model",
]
