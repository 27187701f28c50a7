"""The CPU speed layer of the train step, reached through one call each.

* :func:`make_steps`: the train and eval steps with oneDNN's convolutions,
  BatchNorm and fused ReLUs (XLA FFI custom calls, :mod:`~experiments.kernels.onednn`,
  :mod:`~experiments.kernels.batch_norm`, :mod:`~experiments.kernels.fused_relu`),
  chunked weight gradients on XLA's (:mod:`~experiments.kernels.fastconv`), and
  the no-fusion / blockwise implementations (:mod:`~experiments.kernels.train_step`);
  the same numbers as the plain step of :mod:`experiments.training.train_step`.
* :func:`keep_freed_host_memory`: glibc keeps freed memory on a CPU backend
  (:mod:`~experiments.kernels.host_memory`).

The harness reaches it through its one ``step`` field (``--step auto``: on a
CPU backend; ``--step kernels:OPTION=VALUE,...`` asks for it and for its
:data:`STEP_OPTIONS`); without this package it runs the plain step everywhere.
The oneDNN kernels compile only on request (``python -m experiments.kernels
build``, or ``--step kernels:conv=onednn``); their wheels come with
``pip install -e ".[cpu-kernels]"``.
"""

from __future__ import annotations

from typing import Mapping

from experiments.kernels.onednn import OneDNNUnavailable

# The options of ``--step kernels:OPTION=VALUE,...``: the keyword arguments of
# experiments.kernels.train_step.make_train_step that pick a kernel (each
# "auto" by default). Their values are listed by `python -m experiments.kernels options`.
STEP_OPTIONS = ("impl", "conv", "batch_norm", "relu")


def step_option_choices() -> dict[str, tuple[str, ...]]:
  """Each option of :data:`STEP_OPTIONS` with its valid values."""
  from experiments.kernels import train_step as fast

  return {"impl": fast.IMPLS, "conv": fast.CONVS, "batch_norm": fast.BATCH_NORMS,
          "relu": fast.RELUS}


def check_step_options(options: Mapping[str, str]) -> dict[str, str]:
  """``options`` as a dict, or ``ValueError`` naming the bad option and the valid ones."""
  choices = step_option_choices()
  for k, v in options.items():
    if k not in choices:
      raise ValueError(f"--step kernels:{k}={v}: unknown option {k!r}; valid options: "
                       f"{', '.join(STEP_OPTIONS)}.")
    if v not in choices[k]:
      raise ValueError(f"--step kernels:{k}={v}: unknown {k} {v!r}; valid: "
                       f"{', '.join(choices[k])}.")
  return dict(options)


def make_steps(model, tx, *, loss_multiplier=1.0, augment=True, mesh=None, precision="float32",
               options: Mapping[str, str] | None = None):
  """``(train_step, eval_step)`` of the CPU layer; ``options`` (see
  :data:`STEP_OPTIONS`, default all ``"auto"``) go to
  :func:`experiments.kernels.train_step.make_train_step`, and the train step
  records what each resolved to and why."""
  from experiments.kernels import train_step as fast

  train_step = fast.make_train_step(
      model, tx, loss_multiplier=loss_multiplier, augment=augment, mesh=mesh,
      precision=precision, **check_step_options(options or {}))
  eval_step = fast.make_eval_step(model, mesh=mesh, conv=train_step.conv, precision=precision)
  return train_step, eval_step


def keep_freed_host_memory() -> str:
  """:func:`experiments.kernels.host_memory.keep_freed_memory` when JAX will run on
  its CPU backend (or ``EXPERIMENTS_HOST_MEMORY=keep``); returns the status.
  Call it before the first JAX computation."""
  from experiments.kernels import host_memory

  return host_memory.keep_freed_memory_on_cpu()


__all__ = ["OneDNNUnavailable", "STEP_OPTIONS", "check_step_options", "keep_freed_host_memory",
           "make_steps", "step_option_choices"]
