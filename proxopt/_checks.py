"""Argument checks for every proxopt module: the one place they live.

Each check raises at construction or ``init`` time (never inside a jitted hot
path). Helpers are named ``check_<what>(name, value, owner, ..., fix=...)``
and their messages have one format::

  <owner>: `<name>` must be <rule>, got <value>. <fix>

(``owner`` is the public function, e.g. ``proxopt.adamw``). A rule that ties
several arguments together goes through :func:`check_that`, which writes
``<owner>: <rule>, got <values>. <fix>``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def is_concrete_number(value: Any) -> bool:
  """True for Python/NumPy numbers and concrete (non-traced) scalar arrays."""
  if isinstance(value, jax.core.Tracer):
    return False
  if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
    return True
  if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
    return True
  return False


def is_concrete_array(value: Any) -> bool:
  """True for NumPy arrays and concrete (non-traced) JAX arrays of any rank."""
  if isinstance(value, jax.core.Tracer):
    return False
  return isinstance(value, (np.ndarray, jax.Array, np.number))


def check_nonnegative(name: str, value: Any, owner: str, fix: str = "") -> None:
  """Raises ValueError if a concrete `value` has a negative, NaN or inf entry.

  Scalars and arrays are checked; schedules (callables) and traced values
  (e.g. from `optax.inject_hyperparams` under jit) cannot be and pass. An
  infinite coefficient or step size turns parameters into NaN/inf (``inf *
  0``, ``x / inf``), so it is refused like NaN.
  """
  hint = f" {fix}" if fix else ""
  if is_concrete_number(value):
    v = float(value)
    if not v >= 0.0:  # also catches NaN
      raise ValueError(f"{owner}: `{name}` must be >= 0, got {v!r}.{hint}")
    if v == np.inf:
      raise ValueError(
          f"{owner}: `{name}` must be finite, got {v!r}; an infinite value "
          "turns the parameters into NaN/inf. Use a large finite number."
      )
    return
  if is_concrete_array(value):
    arr = np.asarray(value)
    if not jnp.issubdtype(arr.dtype, jnp.number) or jnp.issubdtype(
        arr.dtype, jnp.complexfloating
    ):
      raise TypeError(
          f"{owner}: `{name}` must be a real number or array, got dtype "
          f"{arr.dtype}."
      )
    bad = ~(arr >= 0)  # negative or NaN
    if np.any(bad):
      first = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(
          f"{owner}: `{name}` must be >= 0 everywhere, got {arr[first].item()!r} at "
          f"index {first}.{hint}"
      )
    if np.any(np.isinf(arr)):
      first = tuple(int(i) for i in np.argwhere(np.isinf(arr))[0])
      raise ValueError(
          f"{owner}: `{name}` must be finite everywhere, got inf at index "
          f"{first}; an infinite value turns the parameters into NaN/inf."
      )


def check_hyperparam(
    name: str, value: Any, owner: str, *, allow_none: bool = False
) -> None:
  """Raises TypeError unless `value` is a number, an array or a schedule.

  Catches `learning_rate="1e-3"` or `None` at construction: optax accepts
  them and fails inside jit with a message about abstract values.
  """
  if allow_none and value is None:
    return
  ok = (
      callable(value)
      or isinstance(value, jax.core.Tracer)
      or (isinstance(value, (int, float, np.number)) and not isinstance(value, bool))
      or isinstance(value, (np.ndarray, jax.Array))
  )
  if not ok:
    example = "1e-3" if name == "learning_rate" else "0.1"
    raise TypeError(
        f"{owner}: `{name}` must be a number, an array or a schedule "
        f"(a function count -> value), got {value!r} of type "
        f"{type(value).__name__}. Pass e.g. {name}={example}."
    )


def _hint(fix: str) -> str:
  return f" {fix}" if fix else ""


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
  """``">= 0"``, ``"> 0"`` for an unbounded rule, ``"in [0, 1)"`` otherwise."""
  if high == np.inf:
    rule = f"{'>' if low_open else '>='} {low:g}"
    return rule if not high_open else f"a finite number {rule}"
  return (
      f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
  )


def check_number_in(
    name: str,
    value: Any,
    owner: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = True,
    scalar: bool = False,
    fix: str = "",
    wrong_type: type[Exception] = TypeError,
) -> None:
  """Checks a number-only argument (``b1``, ``b2``, ``momentum``, ``factor``).

  Raises ``wrong_type`` (TypeError) unless `value` is a real number or array
  (no strings, ``None`` or schedules: optax would fail at ``update`` with an
  unrelated message), and ValueError if a concrete entry lies outside the
  interval from ``low`` to ``high`` (closed unless ``low_open`` /
  ``high_open``; NaN is outside). Traced values pass, unless ``scalar``:
  then `value` must be a concrete scalar (it is used on the host, e.g. by a
  schedule's constructor).
  """
  hint = _hint(fix)
  if scalar:
    ok = is_concrete_number(value) and not np.iscomplexobj(value)
    if not ok:
      raise wrong_type(
          f"{owner}: `{name}` must be a real number, got {value!r} of type "
          f"{type(value).__name__}.{hint}"
      )
  elif isinstance(value, jax.core.Tracer):
    return
  number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
  if not (number or isinstance(value, (np.ndarray, jax.Array))) or not np.issubdtype(
      np.asarray(value).dtype, np.number
  ) or np.iscomplexobj(value):
    raise wrong_type(
        f"{owner}: `{name}` must be a real number, got {value!r} of type "
        f"{type(value).__name__}.{hint}"
    )
  arr = np.asarray(value, np.float64)
  above = (arr > low) if low_open else (arr >= low)
  below = (arr < high) if high_open else (arr <= high)
  if not np.all(above & below):
    raise ValueError(
        f"{owner}: `{name}` must be "
        f"{_interval(low, high, low_open, high_open)}, got {value!r}.{hint}"
    )


def check_int(
    name: str,
    value: Any,
    owner: str,
    *,
    minimum: int,
    fix: str = "",
    wrong_type: type[Exception] = TypeError,
) -> int:
  """Returns `value` as an int; raises unless it is an int ``>= minimum``.

  Bools and floats (``2.0``) are refused with ``wrong_type``: TypeError, or
  ValueError where a public function has always raised that.
  """
  hint = _hint(fix)
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise wrong_type(
        f"{owner}: `{name}` must be an int >= {minimum}, got {value!r} of type "
        f"{type(value).__name__}.{hint}"
    )
  if value < minimum:
    raise ValueError(
        f"{owner}: `{name}` must be an int >= {minimum}, got {value!r}.{hint}"
    )
  return int(value)


def check_one_of(
    name: str, value: Any, choices: Any, owner: str, fix: str = ""
) -> None:
  """Raises ValueError unless `value` is one of `choices` (strings, names)."""
  ok = isinstance(value, str) and value in tuple(choices)
  if not ok:
    raise ValueError(
        f"{owner}: unknown {name}={value!r}; choose one of "
        f"{tuple(choices)}.{_hint(fix)}"
    )


def check_type(
    name: str,
    value: Any,
    types: Any,
    owner: str,
    what: str,
    fix: str = "",
    *,
    allow_none: bool = False,
) -> None:
  """Raises TypeError unless `value` is an instance of `types` (``what`` says so)."""
  if allow_none and value is None:
    return
  if not isinstance(value, types):
    raise TypeError(
        f"{owner}: `{name}` must be {what}, got {value!r} of type "
        f"{type(value).__name__}.{_hint(fix)}"
    )


def check_callable(
    name: str, value: Any, owner: str, what: str = "a function", fix: str = ""
) -> None:
  """Raises TypeError unless `value` is callable."""
  if not callable(value):
    raise TypeError(
        f"{owner}: `{name}` must be {what}, got {value!r} of type "
        f"{type(value).__name__}.{_hint(fix)}"
    )


def check_transformation(
    name: str, value: Any, owner: str, *, allow_none: bool = False
) -> None:
  """Raises TypeError unless `value` has ``init`` and ``update`` (optax's protocol)."""
  if allow_none and value is None:
    return
  if not (hasattr(value, "init") and hasattr(value, "update")):
    raise TypeError(
        f"{owner}: `{name}` must be an optax.GradientTransformation (with "
        f"init and update){' or None' if allow_none else ''}, got "
        f"{type(value).__name__}. Build it first, e.g. optax.adam(1e-3) "
        "rather than optax.adam."
    )


REGULARIZER_WHAT = (
    "a proxopt.Regularizer, e.g. proxopt.l1(1e-4) or proxopt.l2_squared(1e-4)"
)


def check_concrete(name: str, value: Any, owner: str, why: str) -> None:
  """Raises TypeError for a schedule or a traced value where a static one is needed."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    raise TypeError(
        f"{owner}: `{name}` must be a concrete number or array ({why}), got "
        "a schedule or traced value. Pass a number or a NumPy array."
    )


def broadcasts_to(shape: tuple, target: tuple) -> bool:
  """Whether an array of `shape` broadcasts *to* `target` (without changing it)."""
  try:
    return np.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
  except ValueError:
    return False


def check_broadcasts_to(
    name: str, value: Any, target: Any, owner: str, *, where: str = "", fix: str = ""
) -> None:
  """Raises ValueError unless array `value` broadcasts *to* the parameter `target`.

  One-directional: a (3, 6) value for a (6,) parameter would change its shape.
  """
  label = f"`{name}`" + (f" leaf at {where}" if where else "")
  shape, target_shape = tuple(np.shape(value)), tuple(np.shape(target))
  if not broadcasts_to(shape, target_shape):
    raise ValueError(
        f"{owner}: {label} has shape {shape}, which does not broadcast to the "
        f"parameter's shape {target_shape}.{_hint(fix)}"
    )


def check_positive_finite(
    name: str, value: Any, owner: str, *, where: str = "", fix: str = ""
) -> None:
  """Raises unless every entry of `value` is real, finite and > 0 (factors).

  ``where`` (a pytree path) is named after the argument for a leaf of a tree.
  """
  label = f"`{name}`" + (f" leaf at {where}" if where else "")
  hint = _hint(fix)
  arr = np.asarray(value)
  if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(
      arr.dtype, np.complexfloating
  ) or isinstance(value, (bool, np.bool_)):
    raise TypeError(
        f"{owner}: {label} must hold real numbers, got dtype {arr.dtype}.{hint}"
    )
  arr = arr.astype(np.float64)
  if arr.ndim == 0:
    if not (arr > 0 and np.isfinite(arr)):
      raise ValueError(
          f"{owner}: {label} must be > 0 and finite, got {value!r}.{hint}"
      )
    return
  bad = ~(arr > 0)  # <= 0 or NaN
  if np.any(bad):
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"{owner}: {label} has entries <= 0 (or NaN), e.g. {float(arr[first])!r} at "
        f"index {first}; it must be > 0 everywhere.{hint}"
    )
  if not np.all(np.isfinite(arr)):
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
    raise ValueError(
        f"{owner}: {label} has infinite entries, e.g. at index {first}; it "
        f"must be finite.{hint}"
    )


def check_float_leaves(name: str, tree: Any, owner: str) -> None:
  """A non-empty pytree of floating-point leaves (Python floats allowed).

  Unlike :func:`check_float_params` (what optimizers update), Python floats
  are accepted: this is for trees that are converted with ``jnp.asarray``.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  if not leaves:
    raise ValueError(
        f"{owner}: `{name}` must have at least one array leaf, got {tree!r}. "
        "Pass the parameters, e.g. {'w': jnp.zeros(3)}."
    )
  for path, leaf in leaves:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{owner}: `{name}` leaves must be floating point, got dtype "
          f"{dtype} at path {jax.tree_util.keystr(path) or '<root>'}. Cast "
          "with `x.astype(jnp.float32)`."
      )


def check_contains(
    name: str, tree: Any, found: bool, what: str, owner: str, fix: str
) -> None:
  """Raises ValueError if `tree` (e.g. an optimizer state) holds no `what`."""
  if not found:
    raise ValueError(
        f"{owner}: `{name}` holds no {what}, got a "
        f"{type(tree).__name__}.{_hint(fix)}"
    )


def check_that(
    ok: Any,
    owner: str,
    rule: str,
    got: str,
    fix: str = "",
    *,
    error: type[Exception] = ValueError,
) -> None:
  """A rule that ties arguments together (``total_steps > warmup_steps``).

  Raises ``error`` with ``<owner>: <rule>, got <got>. <fix>`` unless ``ok``.
  """
  if not ok:
    raise error(f"{owner}: {rule}, got {got}.{_hint(fix)}")


def check_momentum(momentum: Any, owner: str) -> None:
  """One rule for every momentum in proxopt (aliases and `classic`): [0, 1).

  ``momentum=1`` never forgets a gradient (the buffer is their running sum),
  which no training means; ``None`` (no buffer) is handled by the caller.
  """
  check_number_in(
      "momentum", momentum, owner, 0.0, 1.0,
      fix="Typical: 0.9; None for no momentum buffer.",
  )


def check_adam_hyperparams(b1, b2, eps, eps_root, nesterov, owner: str) -> None:
  """The Adam aliases' ``b1``, ``b2``, ``eps``, ``eps_root`` and ``nesterov``.

  optax.scale_by_adam accepts any value and fails (``b1="0.9"``) or diverges
  (``b1=1.5``, ``eps=-1``) only at ``update``: refused here, as
  ``torch.optim.Adam`` does.
  """
  check_number_in("b1", b1, owner, 0.0, 1.0, fix="Typical: b1=0.9.")
  check_number_in("b2", b2, owner, 0.0, 1.0, fix="Typical: b2=0.999.")
  for name, value in (("eps", eps), ("eps_root", eps_root)):
    check_number_in(name, value, owner, 0.0, np.inf, fix="Use 0.0 for none.")
  check_bool("nesterov", nesterov, owner)


def check_sgd_hyperparams(momentum, nesterov, owner: str) -> None:
  """The SGD aliases' ``momentum`` and ``nesterov``, in optax.sgd's order.

  ``sgdw(0.1, 0.9, 5e-4)`` puts 5e-4 in ``nesterov`` (optax.sgd's third
  positional argument), which Python reads as True: Nesterov with the default
  decay. A non-bool ``nesterov`` is refused with the keyword call to write.
  """
  if momentum is not None:
    check_momentum(momentum, owner)
  name = owner.split(".")[-1]
  check_bool(
      "nesterov", nesterov, owner,
      f"The third positional argument is optax.sgd's `nesterov`; pass the "
      f"decay by keyword: {name}(learning_rate, {momentum!r}, "
      f"weight_decay={nesterov!r}).",
  )


def check_alpha(alpha: Any, owner: str) -> None:
  """The paper's base step size ``alpha`` of the ``"paper"`` convention: > 0."""
  check_number_in(
      "alpha", alpha, owner, 0.0, np.inf, low_open=True, high_open=False,
      fix="It is the paper's base step size, e.g. the constant learning rate.",
  )


def check_bool(
    name: str, value: Any, owner: str, fix: str = "", *, allow_none: bool = False
) -> None:
  """Raises TypeError unless `value` is a Python or NumPy bool (or None if allowed)."""
  if allow_none and value is None:
    return
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(
        f"{owner}: `{name}` must be True{', False or None' if allow_none else ' or False'}, "
        f"got {value!r} of type {type(value).__name__}.{_hint(fix)}"
    )


def check_float_params(params: Any, owner: str) -> None:
  """Raises TypeError naming the first parameter leaf that is not a float array."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  for path, leaf in leaves:
    where = jax.tree_util.keystr(path) or "<root>"
    if isinstance(leaf, (bool, int, float, complex)):
      raise TypeError(
          f"{owner}: parameter at path {where} is a Python "
          f"{type(leaf).__name__} ({leaf!r}); optimizers update arrays. "
          "Convert the tree first, e.g. "
          "`params = jax.tree.map(jnp.asarray, params)`."
      )
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      dtype = np.asarray(leaf).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{owner}: parameter at path {where} has "
          f"dtype {dtype}; optimizers update floating-point parameters only. "
          "Cast it to a float dtype (e.g. `x.astype(jnp.float32)`) or keep it "
          "out of the optimized tree (e.g. with `optax.multi_transform` or "
          "`nnx.Optimizer(..., wrt=nnx.Param)`)."
      )


def check_broadcasts_to_leaves(
    name: str, value: Any, params: Any, owner: str, prefix: Any = ()
) -> None:
  """Raises ValueError naming the first leaf that array `value` does not broadcast to."""
  shape = tuple(np.shape(value))
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = tuple(prefix) + tuple(path)
    target = tuple(np.shape(leaf))
    if not broadcasts_to(shape, target):
      where = jax.tree_util.keystr(path) or "<root>"
      raise ValueError(
          f"{owner}: `{name}` has shape {shape}, which does not broadcast to "
          f"the parameter at path {where} of shape {target}. Use a scalar, an "
          "array that broadcasts to every decayed leaf, or a `mask=` that "
          "leaves the other leaves out."
      )


def check_params_given(params: Any, owner: str) -> None:
  """Raises ValueError if ``update`` was called without ``params``."""
  if params is None:
    raise ValueError(
        f"{owner} needs the current parameters: call "
        "`tx.update(updates, state, params)` with `params` set."
    )


_MASK_FIX = (
    "Build the mask from params, e.g. "
    "`mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)` (a callable "
    "mask always matches the tree it is given)."
)


def check_mask_argument(mask: Any, owner: str) -> None:
  """Refuses a single boolean as `mask` at construction.

  A whole-tree ``True``/``False`` is never what a user means (use
  ``mask=None`` or ``weight_decay=0``), and it is what
  ``optax.inject_hyperparams(alias)(..., mask=fn)`` passes: it evaluates
  every callable argument as a schedule, ``fn(step_count)``, and for the
  usual ``lambda p: jax.tree.map(lambda x: x.ndim > 1, p)`` that is
  ``False``, silently turning the decay off.
  """
  if mask is None or callable(mask):
    return
  single = isinstance(mask, (bool, np.bool_)) or (
      isinstance(mask, (np.ndarray, jax.Array)) and np.ndim(mask) == 0
  )
  if single:
    raise TypeError(
        f"{owner}: `mask` is a single boolean ({mask!r}), not a tree. "
        "If this comes from `optax.inject_hyperparams(...)(..., mask=fn)`: "
        "inject_hyperparams calls every function argument as a schedule, "
        "fn(step), so mark the mask static with "
        "`optax.inject_hyperparams(f, static_args=(\"mask\",))`, or pass a "
        "`proxopt.reduce_on_plateau` directly as the learning rate. "
        "Otherwise use mask=None (apply everywhere) or weight_decay=0."
    )


def _is_masked_node(x: Any) -> bool:
  # Inside optax.masked the unselected leaves are MaskedNode (an empty node).
  return isinstance(x, optax.MaskedNode)


def check_tree_prefix(name: str, tree: Any, params: Any, owner: str, fix: str) -> None:
  """Checks that `tree` is `params`' structure or a prefix of it, naming paths.

  jax.tree.map fails with a message that does not say which entry is wrong;
  this names the first path `tree` has and params lack, or the first
  parameter leaf that `tree` does not cover.
  """
  is_leaf = lambda x: x is None or _is_masked_node(x)
  tree_leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
  param_leaves, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_leaf)
  param_paths = [tuple(p) for p, _ in param_leaves]
  # Sets of prefixes keep this linear in the number of leaves (big models).
  param_prefixes = {p[:i] for p in param_paths for i in range(len(p) + 1)}
  tree_paths = set()
  for path, _ in tree_leaves:
    path = tuple(path)
    if path not in param_prefixes:
      raise ValueError(
          f"{owner}: `{name}` does not match params: the {name} has an entry at path "
          f"{jax.tree_util.keystr(path) or '<root>'} that params do not have. "
          f"{fix}"
      )
    tree_paths.add(path)
  for p in param_paths:
    if not any(p[:i] in tree_paths for i in range(len(p) + 1)):
      raise ValueError(
          f"{owner}: `{name}` does not match params: params have a leaf at path "
          f"{jax.tree_util.keystr(p)} that the {name} does not cover. {fix}"
      )
  # Same paths but different containers (a plain dict on flax FrozenDict
  # params): jax.tree.map would fail.
  try:
    jax.tree.map(lambda m, *_: m, tree, params)
  except ValueError:
    raise TypeError(
        f"{owner}: `{name}` has the right keys but not the same container "
        f"types as params (`{name}` is a {type(tree).__name__}, params a "
        f"{type(params).__name__}, e.g. a plain dict for flax FrozenDict "
        "params). Build it with the params' own types, e.g. "
        "`jax.tree.map(lambda x: ..., params)`, or convert it "
        f"(`flax.core.freeze({name})`)."
    ) from None


def is_coefficient_tree(value: Any) -> bool:
  """True for a pytree of per-leaf values (a dict, list, ... of numbers)."""
  if value is None or callable(value) or isinstance(value, jax.core.Tracer):
    return False
  if isinstance(value, (int, float, np.number, np.ndarray, jax.Array)):
    return False
  return not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(value))


def check_coefficient(name: str, value: Any, owner: str, fix: str = "") -> None:
  """A coefficient: a number, an array, a schedule, or a pytree of them.

  A pytree (e.g. ``{"w": 0.1, "b": 0.0}``) gives each parameter leaf its own
  value, as jaxopt's proximal operators do; its structure is checked against
  params (:func:`check_tree_prefix`) when they are known.
  """
  if not is_coefficient_tree(value):
    check_hyperparam(name, value, owner)
    check_nonnegative(name, value, owner, fix)
    return
  for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
    where = f"{name}{jax.tree_util.keystr(path)}"
    check_hyperparam(where, leaf, owner)
    check_nonnegative(where, leaf, owner, fix)


def leaf_values(name: str, value: Any, params: Any, owner: str) -> list:
  """One value per leaf of `params`: a coefficient tree broadcast, or `value` repeated."""
  n = len(jax.tree.leaves(params))
  if not is_coefficient_tree(value):
    return [value] * n
  check_tree_prefix(
      name, value, params, owner,
      f"Give `{name}` the structure of params (or a prefix of it), e.g. "
      f"`{name}=jax.tree.map(lambda x: 0.1, params)`; use 0 where it "
      "should not act, or a `mask=`.",
  )
  full = jax.tree.map(lambda c, sub: jax.tree.map(lambda _: c, sub), value, params)
  out = jax.tree.leaves(full)
  assert len(out) == n
  return out


def check_mask(mask: Any, params: Any, owner: str) -> None:
  """Checks that `mask` (a pytree of bools) is `params` or a prefix of it.

  optax.masked fails deep inside `jax.tree.map` with a message that does not
  say which entry is wrong; this names the first mismatching path.
  """
  is_none = lambda x: x is None
  for path, leaf in jax.tree_util.tree_flatten_with_path(mask, is_leaf=is_none)[0]:
    where = jax.tree_util.keystr(path) or "<root>"
    is_bool_array = hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.bool_)
    if is_bool_array and np.ndim(leaf) > 0:
      raise TypeError(
          f"{owner}: mask leaf at path {where} is a boolean array of shape "
          f"{np.shape(leaf)}; a mask selects whole parameter leaves (one "
          "bool per leaf, as in optax.masked). To regularize only some "
          "entries of a leaf, give the regularizer an array coefficient with "
          "zeros where it should not act, e.g. "
          "`proxopt.proximal(proxopt.l2_squared(lam * entry_mask), lr)`."
      )
    if not isinstance(leaf, (bool, np.bool_)) and not is_bool_array:
      raise TypeError(
          f"{owner}: mask leaf at path {where} is "
          f"{leaf!r}; mask leaves must be booleans (True = apply)."
      )
  check_tree_prefix("mask", mask, params, owner, _MASK_FIX)


def resolve_mask(mask: Any | Callable[[Any], Any], params: Any) -> Any:
  return mask(params) if callable(mask) else mask


def leaf_path_names(tree: Any) -> list[str]:
  """`keystr` of every leaf path, for error messages."""
  return [
      jax.tree_util.keystr(p) or "<root>"
      for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]
