"""Shared benchmark machinery: machine description, interleaved timing,
memory-bandwidth probes, atomic and resumable JSON results.

Timing rules (the project's): candidates run interleaved, one call of each
per round, in a fresh seeded random order every round (a fixed or merely
rotated order keeps neighbours fixed: with a rotated order, two candidates
compiling to the identical XLA program differed far beyond the noise, the
slower one always running right after torch, whose OpenMP threads keep
spinning for a while after a call), the statistic is the
median of many repetitions, and a run records the machine's load average,
since the CPU may be shared.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Mapping

import numpy as np


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info(note: str = "") -> dict[str, Any]:
  """What ran the benchmark: CPU, cores, versions, load, date (UTC)."""
  import jax
  info = {
      "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime(
          "%Y-%m-%dT%H:%M:%SZ"),
      "platform": platform.platform(),
      "cpu": cpu_model(),
      "cpu_count": os.cpu_count(),
      "python": sys.version.split()[0],
      "jax": jax.__version__,
      "jax_backend": jax.default_backend(),
      "jax_devices": [str(d) for d in jax.devices()],
      "loadavg_start": list(os.getloadavg()),
  }
  for mod in ("jaxlib", "optax", "flax", "torch", "numpy"):
    try:
      info[mod] = __import__(mod).__version__
    except ImportError:
      info[mod] = None
  if os.environ.get("XLA_FLAGS"):
    info["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
  if note:
    info["note"] = note
  return info


def log(msg: str) -> None:
  """Progress goes to stderr so that stdout stays the results table."""
  print(msg, file=sys.stderr, flush=True)


def interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    reps: int,
    warmup: int = 2,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, list[float]]:
  """Seconds per call of each candidate, measured in interleaved rounds.

  Each candidate is a zero-argument callable that runs one step and blocks
  until its results are ready. ``warmup`` untimed rounds come first (compile,
  first-touch page faults).
  """
  names = list(candidates)
  for _ in range(warmup):
    for n in names:
      candidates[n]()
  times: dict[str, list[float]] = {n: [] for n in names}
  rng = np.random.default_rng(seed)
  for r in range(reps):
    for i in rng.permutation(len(names)):
      n = names[i]
      t0 = time.perf_counter()
      candidates[n]()
      times[n].append(time.perf_counter() - t0)
    if progress and (r + 1) % max(1, reps // 5) == 0:
      log(f"  round {r + 1}/{reps}")
  return times


def median(xs) -> float:
  return float(np.median(np.asarray(xs)))


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON atomically (the experiments' one writer of result files)."""
  from experiments.files import write_json
  write_json(path, obj, indent=2, sort_keys=False)


def load_json(path: str | None) -> Any:
  if path and os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


# ------------------------------------------------------------------ bandwidth
def bandwidth_probes(n: int, reps: int, threads: int) -> dict[str, float]:
  """Memory bandwidth in GB/s from large streaming ops, counting bytes read
  plus bytes written (8 B per float32 element for a copy or an in-place
  scale), interleaved like everything else.

  Probes: NumPy copy and in-place scale (one thread), torch ``copy_`` and
  in-place ``mul_`` (``threads`` threads), and a jitted, donated JAX in-place
  scale and an (undonated) JAX copy. The fastest sets the floor: it is a
  rate this machine demonstrably reaches for streaming float32 arrays.
  """
  import jax
  import jax.numpy as jnp

  a = np.ones(n, np.float32)
  b = np.empty_like(a)
  probes: dict[str, Callable[[], Any]] = {
      "numpy_copy": lambda: np.copyto(b, a),
      "numpy_inplace_scale": lambda: np.multiply(a, np.float32(1.0), out=a),
  }
  try:
    import torch
    torch.set_num_threads(threads)
    ta, tb = torch.ones(n), torch.empty(n)
    probes["torch_copy"] = lambda: tb.copy_(ta)
    probes["torch_inplace_scale"] = lambda: ta.mul_(1.0)
  except ImportError:
    pass

  # The scalar is a runtime argument: XLA would fold `x * 1.0` into a no-op.
  scale = jax.jit(lambda x, c: x * c, donate_argnums=0)
  copy = jax.jit(lambda x, c: x + c)
  one, zero = jnp.float32(1.0), jnp.float32(0.0)
  box = {"x": jnp.ones(n, jnp.float32), "y": jnp.ones(n, jnp.float32)}

  def jax_scale():
    box["x"] = scale(box["x"], one)
    box["x"].block_until_ready()

  def jax_copy():
    out = copy(box["y"], zero)
    out.block_until_ready()

  probes["jax_inplace_scale"] = jax_scale
  probes["jax_copy"] = jax_copy
  times = interleaved(probes, reps, warmup=2, progress=False)
  return {k: 8 * n / median(t) / 1e9 for k, t in times.items()}
