r"""2-D convolutions on oneDNN for XLA:CPU: forward, input and weight gradient.

XLA:CPU runs convolutions on Eigen's contraction kernels, which for CIFAR
ResNet shapes were measured slower than oneDNN's, the library PyTorch uses on
CPU, in the forward pass and both gradients (what was measured:
docs/guides/cpu_training.md).

No maintained package exposes oneDNN convolutions to JAX (jaxlib's own
``--xla_cpu_use_onednn`` / oneDNN-fusion flags were measured and did not speed
these convolutions up, see docs/guides/cpu_training.md), so this module
binds them itself: ``onednn_conv.cc`` holds three XLA FFI handlers (forward,
backward-data, backward-weights on NHWC activations and HWIO weights) for
float32 and three for bfloat16 (both operands in one dtype, accumulated in
float32 by oneDNN; the weight gradient is rounded to bfloat16 once, at the
end), compiled with the machine's C++ compiler against jaxlib's FFI headers
and the oneDNN of the ``onednn-cpu-gomp`` wheel (or ``ONEDNN_ROOT``, or
Debian's ``libdnnl-dev``), and cached in ``~/.cache/proxopt-experiments`` (or
``EXPERIMENTS_CACHE_DIR``). The FFI targets are ``experiments_onednn_conv_*``
(float32) and ``experiments_onednn_conv_*_bf16``. The same library holds
oneDNN's batch normalization (``experiments_onednn_batch_norm_*``), used by
:mod:`experiments.kernels.batch_norm`.

Nothing is compiled behind the user's back: :func:`build` (``python -m
experiments.kernels build``, or ``--step kernels:conv=onednn`` on first use, which prints
one line saying so) compiles; :func:`available` only reports whether a build
for this source/jaxlib/oneDNN is already in the cache and loads, and
``--step auto`` uses the kernels only then. :func:`conv_general_dilated` is a drop-in for
``lax.conv_general_dilated`` with a ``jax.custom_vjp`` whose backward pass
calls the two gradient kernels; anything it does not handle (other or mixed
dtypes, a ``preferred_element_type`` other than the inputs', layouts,
dilation, groups, non-CPU backends) goes to ``lax`` unchanged.

The float32 results equal ``lax.conv_general_dilated``'s within float32
rounding (measured max relative difference <= 6e-6 on the ResNet shapes;
tested). The bfloat16 ones are float32 ``lax``'s on the same bfloat16 inputs
rounded once to bfloat16: every element within relative 2^-8 (measured max
3.89e-3 on the ResNet shapes; tested), as XLA's own bfloat16 convolutions.
Second derivatives are not supported (the custom VJP is not differentiable).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from experiments.kernels import onednn as onednn_conv
  >>> x = jnp.ones((4, 6, 6, 3)); w = jnp.ones((3, 3, 3, 5))
  >>> dn = ("NHWC", "HWIO", "NHWC")
  >>> f = lambda w, conv: conv(x, w, (1, 1), "SAME", dimension_numbers=dn).sum()
  >>> conv = onednn_conv.conv_general_dilated if onednn_conv.available() else jax.lax.conv_general_dilated
  >>> bool(jnp.allclose(jax.grad(f)(w, conv), jax.grad(f)(w, jax.lax.conv_general_dilated)))
  True
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SOURCE = Path(__file__).with_name("onednn_conv.cc")
_KINDS = ("fwd", "bwd_data", "bwd_weights")
# FFI target of each (kernel, element type); onednn_conv.cc instantiates both.
_DTYPE_SUFFIX = {jnp.dtype(jnp.float32): "", jnp.dtype(jnp.bfloat16): "_bf16"}
_TARGETS = {(k, dt): f"experiments_onednn_conv_{k}{suffix}"
            for k in _KINDS for dt, suffix in _DTYPE_SUFFIX.items()}
# The batch normalization handlers of the same library (float32), used by
# experiments/kernels/batch_norm.py.
BATCH_NORM_TARGETS = {"fwd": "experiments_onednn_batch_norm_fwd",
                      "relu_fwd": "experiments_onednn_batch_norm_relu_fwd",
                      "bwd": "experiments_onednn_batch_norm_bwd"}
# Fused forward convolutions (relu(conv), relu(conv + r)) and the relu
# gradient, per element type: used by experiments/kernels/fused_relu.py.
FUSED_TARGETS = {(k, dt): f"experiments_onednn_{k}{suffix}"
                 for k in ("conv_fwd_relu", "conv_fwd_add_relu", "relu_bwd", "add_relu")
                 for dt, suffix in _DTYPE_SUFFIX.items()}
_INSTALL_HINT = (
    "install oneDNN with `pip install onednn-cpu-gomp==2023.2.0 "
    "onednn-devel-cpu-gomp==2023.2.0` (part of `pip install -e .[experiments]` "
    "on x86-64 Linux), or point ONEDNN_ROOT at a oneDNN 3.x install (with "
    "include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so)"
)


class OneDNNUnavailable(RuntimeError):
  """The oneDNN kernels (convolutions, batch norm) cannot be built or loaded here."""


# ----------------------------------------------------------------- building


def _onednn_roots() -> list[Path]:
  roots = []
  if os.environ.get("ONEDNN_ROOT"):
    roots.append(Path(os.environ["ONEDNN_ROOT"]))
  roots += [Path(sys.prefix), Path("/usr/local"), Path("/usr")]
  return roots


def _find_onednn() -> tuple[Path, Path]:
  """(include dir, lib dir) of a oneDNN 3.x install."""
  for root in _onednn_roots():
    inc = root / "include"
    if not (inc / "oneapi" / "dnnl" / "dnnl.hpp").exists():
      continue
    for lib in [root / "lib", root / "lib64", *map(Path, glob.glob(str(root / "lib" / "*-linux-gnu")))]:
      if glob.glob(str(lib / "libdnnl.so*")):
        return inc, lib
  raise OneDNNUnavailable(
      "oneDNN headers and library not found (looked in "
      f"{', '.join(str(r) for r in _onednn_roots())}); {_INSTALL_HINT}."
  )


def _compiler() -> str:
  cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if not cxx:
    raise OneDNNUnavailable(
        "no C++ compiler found to build experiments/kernels/onednn_conv.cc: install "
        "one (`apt-get install g++`) or set CXX."
    )
  return cxx


def cache_dir() -> Path:
  """Where the compiled kernels live: ``$EXPERIMENTS_CACHE_DIR`` or
  ``~/.cache/proxopt-experiments``."""
  d = os.environ.get("EXPERIMENTS_CACHE_DIR")
  return Path(d) if d else Path.home() / ".cache" / "proxopt-experiments"


def library_path() -> Path:
  """The cache path of the build for this source, jaxlib, compiler and oneDNN
  (it may not exist yet). Raises :class:`OneDNNUnavailable` without oneDNN or
  a compiler."""
  import jaxlib

  inc, lib = _find_onednn()
  cxx = _compiler()
  version_h = inc / "oneapi" / "dnnl" / "dnnl_version.h"
  key = hashlib.sha256()
  for part in (SOURCE.read_bytes(), jaxlib.__version__.encode(), cxx.encode(),
               str(inc).encode(), str(lib).encode(),
               version_h.read_bytes() if version_h.exists() else b""):
    key.update(part)
  return cache_dir() / f"onednn_conv-{key.hexdigest()[:16]}.so"


def is_built() -> bool:
  """Whether :func:`build` has already compiled the kernels for this setup."""
  try:
    return library_path().exists()
  except OneDNNUnavailable:
    return False


def build(log=None) -> Path:
  """Compiles ``onednn_conv.cc`` (once per source/jaxlib/oneDNN) and returns the .so.

  Prints one line to stderr (or calls ``log``) when it actually compiles. The
  shared object is written to a temporary file and renamed into the cache, so
  concurrent first uses (e.g. pytest workers) never see a partial file.
  """
  out = library_path()
  if out.exists():
    return out
  inc, lib = _find_onednn()
  cxx = _compiler()
  ffi_inc = Path(jax.ffi.include_dir())
  (log or (lambda m: print(m, file=sys.stderr, flush=True)))(
      f"experiments: compiling the oneDNN kernels (convolutions, batch norm) once into {out} "
      "(a few seconds)")
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
         f"-I{ffi_inc}", f"-I{inc}", str(SOURCE), f"-L{lib}", "-ldnnl",
         f"-Wl,-rpath,{lib}", "-o", tmp]
  try:
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:  # CXX names no runnable program
      raise OneDNNUnavailable(f"cannot run the C++ compiler {cxx!r}: {e}; install one "
                              "(`apt-get install g++`) or set CXX.") from None
    if proc.returncode:
      raise OneDNNUnavailable(
          f"building {SOURCE.name} failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}"
      )
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


_REGISTERED: set[str] = set()


@functools.lru_cache(maxsize=None)
def _load_built() -> str:
  """Loads and registers an already built library; '' on success, else why not."""
  if sys.platform != "linux":
    return f"the oneDNN convolutions are only built on Linux (this is {sys.platform})"
  try:
    path = library_path()
    if not path.exists():
      return ("the oneDNN kernels are not built yet: run `python -m experiments.kernels "
              "build` or pass conv='onednn' (--step kernels:conv=onednn) once")
    so = ctypes.cdll.LoadLibrary(str(path))
  except (OneDNNUnavailable, OSError) as e:
    return str(e)
  for name in (*_TARGETS.values(), *BATCH_NORM_TARGETS.values(), *FUSED_TARGETS.values()):
    if name not in _REGISTERED:  # once per process, whichever cache it came from
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(so, name)),
                                  platform="cpu")
      _REGISTERED.add(name)
  return ""


def available() -> bool:
  """Whether the kernels are already built and load (never compiles)."""
  return not _load_built()


def unavailable_reason() -> str:
  """Why :func:`available` is False ('' when it is True)."""
  return _load_built()


def require() -> None:
  """Builds the kernels if needed (the user asked for them) and loads them.

  Raises :class:`OneDNNUnavailable`, naming the fix, when they cannot be built.
  """
  if not _load_built():
    return
  if sys.platform == "linux":
    try:
      build()
    except OneDNNUnavailable as e:
      raise OneDNNUnavailable(f"oneDNN kernels unavailable: {e}") from None
    getattr(_load_built, "cache_clear", lambda: None)()
  reason = _load_built()
  if reason:
    raise OneDNNUnavailable(f"oneDNN kernels unavailable: {reason}")


# ----------------------------------------------------------------- the op


_NHWC = (0, 3, 1, 2)  # lax ConvDimensionNumbers specs: batch, feature, spatial
_HWIO = (3, 2, 0, 1)  # out-feature, in-feature, spatial


def _geometry(strides, pads) -> np.ndarray:
  (pt, pb), (pl, pr) = pads
  return np.array([strides[0], strides[1], pt, pb, pl, pr], np.int64)


def _call(kind, out_shape, a, b, geometry):
  # Operands and result share a's dtype (supports() admits no mixed dtypes).
  return jax.ffi.ffi_call(
      _TARGETS[kind, a.dtype], jax.ShapeDtypeStruct(out_shape, a.dtype),
      vmap_method="sequential",
  )(a, b, geometry=geometry)


def fused_call(kind: str, like, *operands, **attrs) -> jax.Array:
  """One call of the FFI target ``FUSED_TARGETS[kind, like.dtype]``, whose
  result has the shape and dtype of `like` (an array or ShapeDtypeStruct)."""
  return jax.ffi.ffi_call(
      FUSED_TARGETS[kind, like.dtype], jax.ShapeDtypeStruct(like.shape, like.dtype),
      vmap_method="sequential")(*operands, **attrs)


def relu_grad(g: jax.Array, y: jax.Array) -> jax.Array:
  """``g * (y > 0)``, the gradient through ``y = relu(z)`` computed from its
  output ``y``, in one multi-threaded oneDNN pass (in ``y``'s dtype). Used by
  the fused ReLUs of :mod:`experiments.kernels.fused_relu` and
  :mod:`experiments.kernels.batch_norm`."""
  return fused_call("relu_bwd", y, g.astype(y.dtype), y)


def output_shape(x, w, strides, pads) -> tuple[int, int, int, int]:
  """NHWC shape of the convolution of NHWC `x` with HWIO `w` (explicit pads)."""
  n, h, wd, _ = x.shape
  kh, kw, _, k = w.shape
  oh = (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1
  ow = (wd + pads[1][0] + pads[1][1] - kw) // strides[1] + 1
  return n, oh, ow, k


def explicit_pads(x, w, strides, padding) -> tuple[tuple[int, int], ...]:
  """`padding` ("SAME", "VALID" or (low, high) pairs) as int pairs for NHWC
  `x` and HWIO `w`."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], w.shape[0:2], strides, padding)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
  return _forward(x, w, strides, pads)


def _forward(x, w, strides, pads):
  return _call("fwd", output_shape(x, w, strides, pads), x, w, _geometry(strides, pads))


def _conv_fwd(x, w, strides, pads):
  return _forward(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, res, g):
  x, w = res
  geom = _geometry(strides, pads)
  g = g.astype(x.dtype)
  dx = _call("bwd_data", x.shape, g, w, geom)
  dw = _call("bwd_weights", w.shape, x, g, geom)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def supports(lhs, rhs, window_strides, padding, lhs_dilation=None,
             rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
             batch_group_count=1, preferred_element_type=None) -> bool:
  """Whether :func:`conv_general_dilated` runs these arguments on oneDNN."""
  if jax.default_backend() != "cpu" or lhs.ndim != 4 or rhs.ndim != 4:
    return False
  if lhs.dtype != rhs.dtype or jnp.dtype(lhs.dtype) not in _DTYPE_SUFFIX:
    return False  # kernels for float32 and bfloat16, both operands alike
  if (preferred_element_type is not None
      and jnp.dtype(preferred_element_type) != jnp.dtype(lhs.dtype)):
    return False
  if feature_group_count != 1 or batch_group_count != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    return False
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if tuple(dn.lhs_spec) != _NHWC or tuple(dn.rhs_spec) != _HWIO or tuple(dn.out_spec) != _NHWC:
    return False
  if isinstance(padding, str):
    return True
  return all(lo >= 0 and hi >= 0 for lo, hi in padding)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None,
                         out_sharding=None):
  """``lax.conv_general_dilated`` computed by oneDNN where :func:`supports` says so.

  Same signature as ``lax.conv_general_dilated`` (so it can be passed as
  ``nnx.Conv(..., conv_general_dilated=...)``). Falls back to ``lax`` for
  unsupported arguments, an explicit ``out_sharding``, or when the kernels
  are unavailable (call :func:`require` first to get the reason as an error).
  ``precision`` is ignored on the oneDNN path: it computes in the inputs'
  dtype (float32 or bfloat16), accumulating in float32.
  """
  args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
          dimension_numbers, feature_group_count, batch_group_count)
  if (out_sharding is not None or not supports(*args, preferred_element_type)
      or not available()):
    return lax.conv_general_dilated(
        *args, precision=precision,
        preferred_element_type=preferred_element_type, out_sharding=out_sharding)
  strides = tuple(int(s) for s in window_strides)
  return _conv(lhs, rhs, strides, explicit_pads(lhs, rhs, strides, padding))


def with_onednn_convs(model):
  """A copy of the NNX `model` whose ``nnx.Conv`` layers run on oneDNN.

  Parameters are shared, as in :func:`experiments.kernels.fastconv.with_conv_function`.
  Raises :class:`OneDNNUnavailable` (with the fix) when the kernels cannot be
  built here.
  """
  from experiments.kernels.fastconv import with_conv_function

  require()
  return with_conv_function(model, conv_general_dilated)


__all__ = ["OneDNNUnavailable", "available", "build", "conv_general_dilated",
           "explicit_pads", "fused_call", "output_shape", "relu_grad", "require",
           "supports", "unavailable_reason", "with_onednn_convs"]
