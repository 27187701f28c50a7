r"""Keep freed host memory in the process, so that XLA:CPU does not re-fault it every step.

XLA:CPU allocates the temporary buffer of each execution (every intermediate
activation of a train step: 203 MB for ResNet-20 at batch 128) with one
``malloc`` from one of its worker threads, and frees it when the step ends.
glibc cannot serve an allocation that large from a worker thread's arena (64
MB heaps), so it ``mmap``\ s fresh pages and ``munmap``\ s them on free: every
step the kernel faults in and zeroes the whole buffer again (page faults:
docs/guides/cpu_training.md; step times with and without it: ``python -m
benchmarks.train_step``, whose rows record ``host_memory``).

:func:`keep_freed_memory` sets three of glibc's ``mallopt`` parameters:

* ``M_ARENA_MAX = 1``: threads allocate from the main heap, which can grow
  to any size (worker-thread arenas cannot hold the buffer);
* ``M_MMAP_MAX = 0``: large blocks come from that heap, not from ``mmap``;
* ``M_TRIM_THRESHOLD = -1``: freed memory at the top of the heap is kept
  for the next step instead of being returned to the kernel (no trimming).

The same as starting the process with
``GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615``.
The cost: the process keeps its peak heap until it exits (a training run
needs that peak every step anyway), and all threads share one malloc lock
(no slowdown measured). No library exposes this (JAX and XLA have no option
for the CPU client's temporary allocations), hence this small module.

Call it at the start of a process, **before the first JAX computation**:
threads that already allocated keep their own arenas, and XLA's worker
threads are created with the CPU backend. The entry points of the
experiments call :func:`keep_freed_memory_on_cpu` first thing, which does it only
when JAX will run on its CPU backend (``JAX_PLATFORMS=cpu``, or no GPU/TPU plugin
installed); the train-step benchmark calls :func:`keep_freed_memory`. Set
``EXPERIMENTS_HOST_MEMORY=keep`` to ask for it anywhere, ``default`` to leave
glibc's defaults. Linux with glibc only; elsewhere it changes nothing and says why.

Example:
  >>> from experiments.kernels import host_memory
  >>> host_memory.status() in ("default", "kept") or host_memory.status().startswith(("default", "kept"))
  True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import sys

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV_VAR = "EXPERIMENTS_HOST_MEMORY"
TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
            f"glibc.malloc.trim_threshold={2**64 - 1}")

_status = "default"


def _backend_started() -> bool:
  """Whether JAX has already created a backend (and its worker threads)."""
  bridge = sys.modules.get("jax._src.xla_bridge")
  if bridge is None:
    return False
  started = getattr(bridge, "backends_are_initialized", None)
  return bool(started()) if started else bool(getattr(bridge, "_backends", None))


def keep_freed_memory() -> str:
  """Makes glibc keep freed memory for reuse (see the module docstring).

  Returns the new :func:`status`. Idempotent. Does nothing, and says why in the
  status, with ``EXPERIMENTS_HOST_MEMORY=default``, off Linux or without
  glibc's ``mallopt``.
  """
  global _status
  if _setting() == "default":
    _status = f"default ({ENV_VAR}=default)"
    return _status
  if _status.startswith("kept"):
    return _status
  if not sys.platform.startswith("linux"):
    _status = f"default (not Linux: {sys.platform})"
    return _status
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    _status = "default (no glibc mallopt in this C library)"
    return _status
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  ok = all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
  if not ok:
    _status = "default (mallopt refused a parameter)"
  elif _backend_started():
    # Still worth setting (later threads and large blocks), but XLA's worker
    # threads may keep their own arenas: say so in what gets recorded.
    _status = "kept (partial: set after the JAX backend had started)"
  else:
    _status = "kept"
  return _status


def _setting() -> str:
  value = os.environ.get(ENV_VAR, "auto")
  if value not in ("auto", "keep", "default"):
    raise ValueError(
        f"{ENV_VAR}={value!r}: use 'auto' (the default: keep on a CPU backend), 'keep' "
        "(always) or 'default' (glibc's own malloc settings).")
  return value


# Distributions that give JAX a GPU or TPU backend.
_ACCELERATOR_PLUGINS = ("jax-cuda", "jax-rocm", "libtpu", "jax-metal", "jax-tpu")


def cpu_backend_reason() -> str | None:
  """None if JAX will run on its CPU backend, else why not. Decided without
  starting a backend (that would create XLA's threads before the tuning)."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  jax = sys.modules.get("jax")
  if jax is not None and getattr(jax.config, "jax_platforms", None):
    platforms = jax.config.jax_platforms
  if platforms:
    return None if platforms.split(",")[0].strip() == "cpu" else f"JAX_PLATFORMS={platforms}"
  plugins = sorted({d.metadata["Name"].lower().replace("_", "-")
                    for d in importlib.metadata.distributions()
                    if (d.metadata["Name"] or "").lower().replace("_", "-").startswith(
                        _ACCELERATOR_PLUGINS)})
  return f"accelerator plugin installed: {', '.join(plugins)}" if plugins else None


def keep_freed_memory_on_cpu() -> str:
  """:func:`keep_freed_memory` if JAX will run on its CPU backend or
  ``EXPERIMENTS_HOST_MEMORY=keep``; else leaves glibc alone and says why."""
  global _status
  setting = _setting()
  reason = cpu_backend_reason()
  if setting == "auto" and reason is not None:
    _status = f"default (not a CPU backend: {reason})"
    return _status
  return keep_freed_memory()


def status() -> str:
  """``"kept"`` after :func:`keep_freed_memory` took effect (also when the
  process was started with :data:`TUNABLES`), else ``"default"`` with the
  reason in parentheses when there is one."""
  if _status == "default" and TUNABLES in os.environ.get("GLIBC_TUNABLES", ""):
    return "kept (GLIBC_TUNABLES)"
  return _status


__all__ = ["ENV_VAR", "TUNABLES", "cpu_backend_reason", "keep_freed_memory",
           "keep_freed_memory_on_cpu", "status"]
