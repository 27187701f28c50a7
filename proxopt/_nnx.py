"""Flax NNX interop: reading and writing ``nnx.Variable`` leaves of a state.

``flax.nnx.Optimizer`` keeps its optimizer state in ``nnx.Variable`` objects,
which it updates in place. Functions here let proxopt's host-side helpers
(e.g. :meth:`proxopt.ReduceOnPlateau.observe`) do the same, without a
dependency on Flax: they look for Flax only when it is already imported
(without Flax there can be no ``nnx.Variable``).
"""

from __future__ import annotations

import sys
from typing import Any, Iterable


def variable_type() -> type | None:
  """``flax.nnx.Variable`` if Flax is already imported, else None."""
  if "flax" not in sys.modules:
    return None
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return nnx.Variable


def holds_variables(values: Iterable[Any]) -> bool:
  """Whether any of `values` is an ``nnx.Variable``."""
  var = variable_type()
  return var is not None and any(isinstance(v, var) for v in values)


def unwrap(values: Iterable[Any]) -> list[Any]:
  """`values` with every ``nnx.Variable`` replaced by its value."""
  var = variable_type()
  if var is None:
    return list(values)
  return [get_value(v) if isinstance(v, var) else v for v in values]


def get_value(v: Any) -> Any:
  """The value of an ``nnx.Variable`` (``get_value()`` or, in older Flax, ``.value``)."""
  return v.get_value() if hasattr(v, "get_value") else v.value


def set_value(v: Any, value: Any) -> None:
  """Sets an ``nnx.Variable`` in place (``set_value`` or ``.value =``)."""
  if hasattr(v, "set_value"):
    v.set_value(value)
  else:
    v.value = value
