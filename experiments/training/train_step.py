r"""The train and eval steps: softmax cross-entropy, ``jax.value_and_grad``, one optax update.

.. math::
   L(\theta) = c \cdot \frac{1}{B}\sum_i -\log \mathrm{softmax}(f_\theta(a(x_i)))_{y_i},
   \qquad (u, s') = \mathrm{tx.update}(\nabla L, s, \theta), \qquad \theta' = \theta + u,

with ``c`` the ``loss_multiplier`` (the paper's loss-scaling test) and ``a`` the
CIFAR augmentation, drawn on device from ``fold_in(state.rng, state.step)`` so
that a step is a pure function of the state and the batch (resume is
bit-identical). The NNX model is split into a graph definition and pytrees
(``nnx.Param`` leaves; everything else, such as BatchNorm statistics), so the
step runs on a :class:`TrainState` of plain arrays and donates it.

This is the whole step on every backend, XLA's kernels only. On a CPU backend the
training loop swaps in the CPU speed layer (:mod:`experiments.kernels`), which
runs this same step on a model whose layers call oneDNN, or in segments.

Example:
  >>> import numpy as np, optax
  >>> from flax import nnx
  >>> from experiments.models.resnet import ResNet
  >>> from experiments.training.train_step import create_train_state, make_train_step
  >>> model = ResNet(8, 10, use_bn=False, rngs=nnx.Rngs(0))
  >>> tx = optax.adamw(1e-3, weight_decay=1e-4)
  >>> state = create_train_state(model, tx, seed=0)
  >>> step = make_train_step(model, tx)
  >>> images = np.zeros((8, 32, 32, 3), np.uint8); labels = np.arange(8) % 10
  >>> state, metrics = step(state, images, labels)
  >>> int(state.step), sorted(metrics)
  (1, ['accuracy', 'loss'])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from experiments.input_pipeline.augment import augment as augment_images, normalize

DATA_AXIS = "data"
PRECISIONS = ("float32", "bfloat16")


class TrainState(NamedTuple):
  """Everything a train step reads and writes; a pytree of arrays.

  ``params``/``model_state``: the model's ``nnx.Param`` variables / every other
  variable (BatchNorm statistics); ``opt_state``: ``tx``'s state; ``step``: int32;
  ``rng``: uint32[2] raw key, step ``t`` draws from ``fold_in(rng, t)``.
  """
  params: Any
  model_state: Any
  opt_state: Any
  step: jax.Array
  rng: jax.Array


def split(model: nnx.Module):
  """(graphdef, params, rest): the NNX module as pure pytrees."""
  return nnx.split(model, nnx.Param, ...)


def create_train_state(model, tx, *, seed: int = 0, mesh: Mesh | None = None) -> TrainState:
  """The initial state of `model` (not modified) and `tx`; replicated over `mesh`."""
  _, params, rest = split(model)
  state = TrainState(params, rest, tx.init(params), jnp.zeros((), jnp.int32),
                     jax.random.key_data(jax.random.key(seed)))
  # Fresh copies: the step donates the state, which must not alias `model`'s arrays.
  state = jax.tree.map(jnp.array, state)
  if mesh is not None:
    check_mesh(mesh)
    state = jax.device_put(state, NamedSharding(mesh, P()))
  return state


def state_to_model(model: nnx.Module, state: TrainState) -> nnx.Module:
  """A copy of `model` carrying the parameters and statistics of `state`."""
  return nnx.merge(split(model)[0], state.params, state.model_state)


def step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def model_inputs(state: TrainState, images, augment: bool):
  return augment_images(step_key(state), images) if augment else normalize(images)


def loss_and_metrics(logits, labels, loss_multiplier):
  # float32 whatever the compute dtype (the cast's VJP hands bfloat16 cotangents back).
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  acc = (jnp.argmax(logits, -1) == labels).mean()
  return ce * loss_multiplier, {"loss": ce, "accuracy": acc}


def keep_stats_if_nonfinite(grads, new_rest, old_rest):
  """The new BatchNorm statistics only if the step is finite: with
  ``optax.apply_if_finite`` a skipped step must not absorb the bad batch either."""
  if not jax.tree.leaves(new_rest):
    return new_rest
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((grads, new_rest))]))
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_rest, old_rest)


def model_view(model: nnx.Module, precision: str = "float32", train: bool = True) -> nnx.Module:
  """`model` in train (batch statistics) or eval mode, its Flax layers computing in
  `precision` (Flax's own mixed precision: ``dtype`` casts inputs and weights, the
  weights stay float32 in ``param_dtype``, so the state is the same in both)."""
  if precision not in PRECISIONS:
    raise ValueError(f"unknown `precision={precision!r}`; valid choices: {', '.join(PRECISIONS)}.")
  model = nnx.view(model, use_running_average=not train, deterministic=not train,
                   raise_if_not_found=False)
  if precision == "float32":
    return model
  is_layer = lambda _, n: hasattr(n, "dtype") and hasattr(n, "param_dtype")
  if not any(is_layer(p, n) for p, n in nnx.iter_graph(model)):
    raise ValueError(f"precision={precision!r} sets the `dtype` of the model's Flax layers; "
                     f"{type(model).__name__} has none. Use precision='float32'.")
  return nnx.with_attributes(model, only=is_layer, raise_if_not_found=False, dtype=jnp.bfloat16)


def jit_train_step(train_model, tx, *, loss_multiplier=1.0, augment=True, mesh=None,
                   compiler_options=None):
  """The jitted step of a model already in train mode (:func:`model_view`)."""
  graphdef = split(train_model)[0]

  def train_step(state: TrainState, images, labels):
    x = model_inputs(state, images, augment)
    # Merged inside the differentiated function: NNX mutates variables (BatchNorm
    # statistics) only in the trace that created them.
    rest_leaves, rest_def = jax.tree.flatten(state.model_state)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, jax.tree.unflatten(rest_def, rest_leaves))
      loss, metrics = loss_and_metrics(model(x), labels, loss_multiplier)
      return loss, (metrics, split(model)[2])

    (_, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    rest = keep_stats_if_nonfinite(grads, rest, state.model_state)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, rest, opt_state, state.step + 1, state.rng), metrics

  kwargs = {"compiler_options": compiler_options} if compiler_options else {}
  if mesh is not None:
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    kwargs.update(in_shardings=(rep, data, data), out_shardings=(rep, rep))
  return jax.jit(train_step, donate_argnums=0, **kwargs)


def jit_eval_step(eval_model, *, mesh=None):
  """Sums over a batch, so that partial batches can be padded and masked."""
  graphdef = split(eval_model)[0]

  def eval_step(state: TrainState, images, labels, mask):
    logits = nnx.merge(graphdef, state.params, state.model_state)(normalize(images))
    logits = logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(ce * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask), "predictions": jnp.argmax(logits, -1).astype(jnp.int32)}

  kwargs = {}
  if mesh is not None:
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    kwargs.update(in_shardings=(rep, data, data, data), out_shardings=rep)
  return jax.jit(eval_step, **kwargs)


def make_train_step(model, tx, *, loss_multiplier: float = 1.0, augment: bool = True,
                    mesh: Mesh | None = None, precision: str = "float32"):
  """``train_step(state, images_uint8, labels) -> (state, {"loss", "accuracy"})``.

  Donates `state`. ``loss`` is the cross-entropy without the multiplier. With a
  `mesh` (axis ``"data"``) the batch is sharded and the state replicated; XLA
  inserts the gradient all-reduce. ``precision="bfloat16"``: bfloat16 compute,
  float32 weights, gradients, optimizer state, statistics and loss.
  """
  if mesh is not None:
    check_mesh(mesh)
  jitted = jit_train_step(model_view(model, precision), tx, loss_multiplier=float(loss_multiplier),
                          augment=augment, mesh=mesh)
  return checked_train_step(jitted, mesh)


def make_eval_step(model, *, mesh: Mesh | None = None, precision: str = "float32"):
  """``eval_step(state, images_uint8, labels, mask=None) -> sums``: ``loss_sum``,
  ``correct``, ``count`` (the sum of `mask`: 1 for real examples, 0 for padding)
  and the per-example ``predictions``; eval mode, no augmentation."""
  if mesh is not None:
    check_mesh(mesh)
  return checked_eval_step(jit_eval_step(model_view(model, precision, train=False), mesh=mesh), mesh)


def checked_train_step(jitted, mesh):
  def train_step(state, images, labels):
    check_batch(images, labels, mesh, "train_step")
    return jitted(state, images, labels)
  train_step.jitted = jitted
  return train_step


def checked_eval_step(jitted, mesh):
  def eval_step(state, images, labels, mask=None):
    check_batch(images, labels, mesh, "eval_step")
    if mask is None:
      mask = np.ones(images.shape[:1], np.float32)
    return jitted(state, images, labels, mask)
  return eval_step


def check_mesh(mesh) -> None:
  if not isinstance(mesh, Mesh):
    raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}; "
                    "build one with jax.make_mesh((jax.device_count(),), ('data',)).")
  if DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"`mesh` must have an axis named {DATA_AXIS!r} (the batch axis), got "
                     f"axes {mesh.axis_names}; e.g. jax.make_mesh((n,), ('data',)).")


def check_batch(images, labels, mesh, owner) -> None:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"{owner}: `images` must be (batch, height, width, 3) uint8, got shape "
                     f"{tuple(images.shape)}.")
  if labels.shape != images.shape[:1]:
    raise ValueError(f"{owner}: `labels` must have shape (batch,) = {images.shape[:1]}, got "
                     f"{tuple(labels.shape)}.")
  if mesh is not None and images.shape[0] % mesh.shape[DATA_AXIS]:
    raise ValueError(
        f"{owner}: the batch size {images.shape[0]} must be divisible by the "
        f"{mesh.shape[DATA_AXIS]} devices of the mesh's {DATA_AXIS!r} axis; pad or drop the "
        "last batch, or choose a batch size that is a multiple of it.")
