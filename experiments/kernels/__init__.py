"""The CPU speed layer of the train step, reached through one call each.

* :func:`make_steps`: the train and eval steps with oneDNN's convolutions,
  BatchNorm and fused ReLUs (XLA FFI custom calls, :mod:`~experiments.kernels.onednn`,
  :mod:`~experiments.kernels.batch_norm`, :mod:`~experiments.kernels.fused_relu`),
  chunked weight gradients on XLA's (:mod:`~experiments.kernels.fastconv`), and
  the no-fusion / blockwise implementations (:mod:`~experiments.kernels.train_step`);
  the same numbers as the plain step of :mod:`experiments.training.train_step`.
* :func:`keep_freed_host_memory`: glibc keeps freed memory on a CPU backend
  (:mod:`~experiments.kernels.host_memory`).

The training loop calls them on a CPU backend (or when a config field asks for a
kernel); without this package the harness runs the plain step everywhere. The
oneDNN kernels compile only on request (``python -m experiments.kernels build``,
or ``conv="onednn"``); their wheels come with ``pip install -e ".[cpu-kernels]"``.
"""

from experiments.kernels.onednn import OneDNNUnavailable


def make_steps(model, tx, *, loss_multiplier=1.0, augment=True, mesh=None, precision="float32",
               impl="auto", conv="auto", batch_norm="auto", relu="auto"):
  """``(train_step, eval_step)``: see :func:`experiments.kernels.train_step.make_train_step`
  for the four choices; the train step records what each resolved to and why."""
  from experiments.kernels import train_step as fast

  train_step = fast.make_train_step(
      model, tx, loss_multiplier=loss_multiplier, augment=augment, mesh=mesh,
      precision=precision, impl=impl, conv=conv, batch_norm=batch_norm, relu=relu)
  eval_step = fast.make_eval_step(model, mesh=mesh, conv=train_step.conv, precision=precision)
  return train_step, eval_step


def keep_freed_host_memory() -> str:
  """:func:`experiments.kernels.host_memory.keep_freed_memory` when JAX will run on
  its CPU backend (or ``EXPERIMENTS_HOST_MEMORY=keep``); returns the status.
  Call it before the first JAX computation."""
  from experiments.kernels import host_memory

  return host_memory.keep_freed_memory_on_cpu()

__all__ = ["OneDNNUnavailable", "keep_freed_host_memory", "make_steps"]
