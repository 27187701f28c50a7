r"""Step-size schedules that drive the base step, the decay and the prox alike.

In proxopt the step size ``s_t`` is not a multiplier applied at the end: AdamW
decays by ``s_t * wd``, AdamProx divides by ``1 + s_t * wd``, and every
:func:`proxopt.proximal` evaluates ``prox_{s_t R}``. A schedule must therefore
*be* the learning rate the optimizer reads, never a factor applied after it
(``c * (prox_s(z) - x)`` is not ``prox_{c s}(x + c u) - x``; this is why
``optax.contrib.reduce_on_plateau``, which scales the final update, is not
used here).

Count-based schedules (plain functions ``count -> s_t``; pass them as
``learning_rate=`` anywhere):

- :func:`step_decay` -- ``torch.optim.lr_scheduler.StepLR``;
- :func:`multistep_decay` -- ``MultiStepLR``;
- :func:`cosine_per_epoch` -- the paper's cosine, constant within an epoch
  (``CosineAnnealingLR`` stepped once per epoch);
- :func:`warmup_cosine` -- linear warm-up then cosine (per step).

The first three are thin wrappers over Optax schedules, converting epochs to
steps; :func:`warmup_cosine` is ``optax.warmup_cosine_decay_schedule`` with
argument checks.

Metric-driven: :func:`reduce_on_plateau` -- ``ReduceLROnPlateau``. It is an
``optax.schedules.StatefulSchedule`` (``s_t = base(t) * scale``), so it goes through
``optax.inject_hyperparams``, which hands the *same* ``s_t`` to the base step,
the decay and the prox; the metric is fed once per evaluation with
``plateau.observe(opt_state, metric)`` (jit-safe, returns a new state)::

  plateau = proxopt.reduce_on_plateau(1e-3, factor=0.5, patience=5)
  tx = optax.inject_hyperparams(proxopt.adamprox)(
      learning_rate=plateau, weight_decay=0.1)
  ...
  opt_state = plateau.observe(opt_state, val_loss)   # torch: scheduler.step(val_loss)

Classic optimizers driven by these schedules are :func:`proxopt.classic`
(``proxopt._classic``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxopt import _checks
from proxopt import _nnx
from proxopt._proximal import ScalarOrSchedule

Schedule = Callable[[jax.Array], jax.Array]


_INIT_VALUE_FIX = "Pass the (positive) initial step size."
_FACTOR_FIX = (
    "It multiplies the step size at each reduction, e.g. factor=0.5 halves it."
)


def _factor(factor: Any, owner: str, allow_one: bool) -> float:
  _checks.check_number_in(
      "factor", factor, owner, 0.0, 1.0, low_open=True,
      high_open=not allow_one, scalar=True, fix=_FACTOR_FIX,
  )
  return float(factor)


# ---------------------------------------------------------------------------
# Count-based schedules.


def step_decay(
    init_value: float,
    factor: float,
    every_epochs: int,
    steps_per_epoch: int = 1,
) -> Schedule:
  r"""``s_t = init_value * factor ** floor(epoch / every_epochs)``.

  ``epoch = floor(t / steps_per_epoch)`` for the optimizer step count ``t``,
  so the value is constant within an epoch and equals
  ``torch.optim.lr_scheduler.StepLR(step_size=every_epochs, gamma=factor)``
  stepped once per epoch. With ``steps_per_epoch=1`` the unit is the step.
  This is ``optax.exponential_decay(staircase=True)`` with
  ``transition_steps = every_epochs * steps_per_epoch``.

  Args:
    init_value: the initial step size :math:`s_0 > 0`.
    factor: the multiplier applied every ``every_epochs`` epochs (PyTorch's
      ``gamma``), in ``(0, 1]``.
    every_epochs: the number of epochs between two decays (PyTorch's
      ``step_size``), a positive int.
    steps_per_epoch: optimizer steps per epoch (positive int; 1: the unit is
      the step).

  Returns:
    An ``optax.Schedule`` (step count -> step size); pass it as
    ``learning_rate`` to any alias and, for a hand-built chain, as the
    ``step_size`` of :func:`proxopt.proximal` too.

  Raises:
    ValueError: on a non-positive ``init_value``, ``every_epochs`` or
      ``steps_per_epoch``, or a ``factor`` outside ``(0, 1]``.

  Example (halve every 2 epochs of 3 steps):
    >>> import proxopt
    >>> s = proxopt.step_decay(0.1, 0.5, every_epochs=2, steps_per_epoch=3)
    >>> [round(float(s(t)), 6) for t in (0, 5, 6, 11, 12)]
    [0.1, 0.1, 0.05, 0.05, 0.025]

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022.
  """
  owner = "proxopt.step_decay"
  _checks.check_nonnegative("init_value", init_value, owner, _INIT_VALUE_FIX)
  factor = _factor(factor, owner, allow_one=True)
  every_epochs = _checks.check_int("every_epochs", every_epochs, owner, minimum=1)
  steps_per_epoch = _checks.check_int(
      "steps_per_epoch", steps_per_epoch, owner, minimum=1
  )
  return optax.exponential_decay(
      init_value=init_value,
      transition_steps=every_epochs * steps_per_epoch,
      decay_rate=factor,
      staircase=True,
  )


def multistep_decay(
    init_value: float,
    milestones: Iterable[int],
    factor: float,
    steps_per_epoch: int = 1,
) -> Schedule:
  r"""Multiplies by ``factor`` at each milestone epoch (``MultiStepLR``).

  ``s_t = init_value * factor ** #{m in milestones : m <= epoch}`` with
  ``epoch = floor(t / steps_per_epoch)``; a milestone listed twice counts
  twice, as in PyTorch. This is ``optax.piecewise_constant_schedule`` with the
  milestones converted to steps.

  Args:
    init_value: the initial step size :math:`s_0 > 0`.
    milestones: epoch indices (non-negative ints) at which the step size is
      multiplied by ``factor``.
    factor: the multiplier (PyTorch's ``gamma``), in ``(0, 1]``.
    steps_per_epoch: optimizer steps per epoch (positive int; 1: the
      milestones are steps).

  Returns:
    An ``optax.Schedule`` (step count -> step size).

  Raises:
    ValueError: on a non-positive ``init_value`` or ``steps_per_epoch``, a
      negative or non-integer milestone, or a ``factor`` outside ``(0, 1]``.

  Example:
    >>> import proxopt
    >>> s = proxopt.multistep_decay(1.0, [2, 4], 0.1, steps_per_epoch=10)
    >>> [round(float(s(t)), 6) for t in (0, 19, 20, 39, 40)]
    [1.0, 1.0, 0.1, 0.1, 0.01]

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022.
  """
  owner = "proxopt.multistep_decay"
  _checks.check_nonnegative("init_value", init_value, owner, _INIT_VALUE_FIX)
  factor = _factor(factor, owner, allow_one=True)
  steps_per_epoch = _checks.check_int(
      "steps_per_epoch", steps_per_epoch, owner, minimum=1
  )
  milestones = list(milestones)
  for i, m in enumerate(milestones):
    _checks.check_int(
        f"milestones[{i}]", m, owner, minimum=0,
        fix="Milestones are epoch indices.",
    )
  counts = Counter(int(m) for m in milestones)
  return optax.piecewise_constant_schedule(
      init_value,
      {m * steps_per_epoch: factor**k for m, k in sorted(counts.items())},
  )


def cosine_per_epoch(
    init_value: float,
    epochs: int,
    steps_per_epoch: int,
    end_value: float = 0.0,
) -> Schedule:
  r"""The paper's cosine decay, constant within each epoch.

  .. math:: s_t = e + (s_0 - e)\,\tfrac12\bigl(1 + \cos(\pi\, k / K)\bigr),
     \qquad k = \lfloor t / \text{steps\_per\_epoch} \rfloor,

  with ``K = epochs``, ``s_0 = init_value`` and ``e = end_value``: the value
  of ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=epochs,
  eta_min=end_value)`` stepped once per epoch, and the per-epoch cosine
  ``eta_t`` of Zhuang et al. (2022). After ``epochs`` epochs it stays at
  ``end_value``. Built from ``optax.cosine_decay_schedule`` evaluated at the
  epoch index.

  Args:
    init_value: the initial step size :math:`s_0 > 0`.
    epochs: the length :math:`K` of the cosine, in epochs (PyTorch's
      ``T_max``), a positive int.
    steps_per_epoch: optimizer steps per epoch, a positive int.
    end_value: the final step size :math:`e \ge 0` (PyTorch's ``eta_min``).

  Returns:
    An ``optax.Schedule`` (step count -> step size), constant within an
    epoch.

  Raises:
    ValueError: on a non-positive ``init_value``, ``epochs`` or
      ``steps_per_epoch``, or a negative ``end_value``.

  Example:
    >>> import proxopt
    >>> s = proxopt.cosine_per_epoch(1.0, epochs=4, steps_per_epoch=10)
    >>> [round(float(s(t)), 4) for t in (0, 9, 10, 20, 30, 40)]
    [1.0, 1.0, 0.8536, 0.5, 0.1464, 0.0]

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022.
  """
  owner = "proxopt.cosine_per_epoch"
  _checks.check_nonnegative("init_value", init_value, owner, _INIT_VALUE_FIX)
  epochs = _checks.check_int("epochs", epochs, owner, minimum=1)
  steps_per_epoch = _checks.check_int(
      "steps_per_epoch", steps_per_epoch, owner, minimum=1
  )
  _checks.check_nonnegative("end_value", end_value, owner)
  positive_init = _checks.is_concrete_number(init_value) and init_value > 0
  _checks.check_that(
      positive_init or float(end_value) == 0.0, owner,
      "a nonzero `end_value` needs a positive `init_value`",
      f"init_value={init_value!r}, end_value={end_value!r}",
      "Pass the initial step size as a positive number, or end_value=0.",
  )
  alpha = float(end_value) / float(init_value) if positive_init else 0.0
  per_epoch = optax.cosine_decay_schedule(init_value, epochs, alpha=alpha)
  return lambda count: per_epoch(count // steps_per_epoch)


def warmup_cosine(
    peak_value: float,
    warmup_steps: int,
    total_steps: int,
    *,
    init_value: float = 0.0,
    end_value: float = 0.0,
) -> Schedule:
  r"""Linear warm-up from ``init_value`` to ``peak_value``, then cosine.

  ``optax.warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps,
  decay_steps=total_steps, end_value)`` with argument checks:
  ``total_steps`` counts the warm-up, so the cosine spans
  ``total_steps - warmup_steps`` steps and ends at ``end_value``:

  .. math::
     s_t = \begin{cases}
       s_{\text{init}} + (s_{\text{peak}} - s_{\text{init}})\, t / W, & t < W, \\
       e + (s_{\text{peak}} - e)\,\tfrac12\bigl(1 + \cos(\pi \tfrac{t - W}{T - W})\bigr), & W \le t \le T,
     \end{cases}

  with :math:`W` = ``warmup_steps`` and :math:`T` = ``total_steps``.

  Args:
    peak_value: the step size at the end of the warm-up, :math:`\ge 0`.
    warmup_steps: the length :math:`W` of the linear warm-up, in steps
      (non-negative int; 0: no warm-up).
    total_steps: the total length :math:`T` in steps, warm-up included; must
      exceed ``warmup_steps``.
    init_value: the step size at step 0, :math:`\ge 0`.
    end_value: the step size from step ``total_steps`` on, :math:`\ge 0`.

  Returns:
    An ``optax.Schedule`` (step count -> step size).

  Raises:
    ValueError: on negative values or ``total_steps <= warmup_steps``.

  Example:
    >>> import proxopt
    >>> s = proxopt.warmup_cosine(1.0, warmup_steps=10, total_steps=110)
    >>> [round(float(s(t)), 4) for t in (0, 5, 10, 60, 110)]
    [0.0, 0.5, 1.0, 0.5, 0.0]

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022.
  """
  owner = "proxopt.warmup_cosine"
  _checks.check_nonnegative("peak_value", peak_value, owner)
  _checks.check_nonnegative("init_value", init_value, owner)
  _checks.check_nonnegative("end_value", end_value, owner)
  warmup_steps = _checks.check_int(
      "warmup_steps", warmup_steps, owner, minimum=0, fix="Use 0 for no warm-up."
  )
  total_steps = _checks.check_int("total_steps", total_steps, owner, minimum=1)
  _checks.check_that(
      total_steps > warmup_steps, owner,
      "`total_steps` must exceed `warmup_steps`",
      f"total_steps={total_steps}, warmup_steps={warmup_steps}",
      "total_steps counts the warm-up too.",
  )
  return optax.warmup_cosine_decay_schedule(
      init_value=init_value,
      peak_value=peak_value,
      warmup_steps=warmup_steps,
      decay_steps=total_steps,
      end_value=end_value,
  )


# ---------------------------------------------------------------------------
# Reduce on plateau.

MODES = ("min", "max")
THRESHOLD_MODES = ("rel", "abs")


class ReduceOnPlateauState(NamedTuple):
  """State of :func:`reduce_on_plateau` (a pytree of scalars; checkpointable).

  Attributes:
    count: int32, optimizer updates taken; the base schedule is read here.
    scale: float, product of the reductions so far (starts at 1).
    best: float, best metric seen (``+inf`` / ``-inf`` before any).
      ``scale`` and ``best`` have JAX's default float dtype when ``init``
      runs: float64 under ``jax_enable_x64`` (PyTorch's decisions exactly),
      float32 otherwise (see :func:`reduce_on_plateau`).
    num_bad_evals: int32, evaluations since the last improvement.
    cooldown_counter: int32, evaluations left in the cooldown.
    num_evals: int32, metrics observed so far.
  """

  count: jax.Array
  scale: jax.Array
  best: jax.Array
  num_bad_evals: jax.Array
  cooldown_counter: jax.Array
  num_evals: jax.Array


def _is_plateau_state(x: Any) -> bool:
  return isinstance(x, ReduceOnPlateauState)


def _plateau_states(tree: Any) -> list[ReduceOnPlateauState]:
  return [
      x for x in jax.tree.leaves(tree, is_leaf=_is_plateau_state)
      if _is_plateau_state(x)
  ]


def _holds_nnx_variables(tree: Any) -> bool:
  return _nnx.holds_variables(
      getattr(st, f) for st in _plateau_states(tree) for f in st._fields
  )


def _unwrap(st: ReduceOnPlateauState) -> ReduceOnPlateauState:
  return ReduceOnPlateauState(*_nnx.unwrap(st))


_NO_STATE_FIX = (
    "Pass the optimizer state of "
    "`optax.inject_hyperparams(<optimizer>)(learning_rate=plateau, ...)` "
    "(or of `proxopt.classic(name, plateau)`), or the plateau state."
)


class ReduceOnPlateau:
  """A stateful step-size schedule ``s_t = base(t) * scale``; see :func:`reduce_on_plateau`.

  Implements the ``optax.schedules.StatefulSchedule`` protocol (``init``, ``update``,
  ``__call__``) for ``optax.inject_hyperparams``; ``update`` only advances the
  step count. The scale changes only in :meth:`observe`, once per evaluation.
  """

  def __init__(
      self,
      base: ScalarOrSchedule,
      *,
      mode: str,
      factor: float,
      patience: int,
      threshold: float,
      threshold_mode: str,
      cooldown: int,
      min_scale: float,
      eps: float,
  ):
    self.base = base
    self.mode = mode
    self.factor = factor
    self.patience = patience
    self.threshold = threshold
    self.threshold_mode = threshold_mode
    self.cooldown = cooldown
    self.min_scale = min_scale
    self.eps = eps

  def __repr__(self) -> str:
    return (
        f"reduce_on_plateau({self.base!r}, mode={self.mode!r}, "
        f"factor={self.factor}, patience={self.patience}, "
        f"threshold={self.threshold}, threshold_mode={self.threshold_mode!r}, "
        f"cooldown={self.cooldown}, min_scale={self.min_scale}, eps={self.eps})"
    )

  # -- optax.StatefulSchedule ------------------------------------------------

  def init(self) -> ReduceOnPlateauState:
    worst = jnp.inf if self.mode == "min" else -jnp.inf
    zero = jnp.zeros([], jnp.int32)
    # The default float dtype: float32, or float64 under jax_enable_x64.
    # torch keeps `best` and the learning rate as Python floats (float64), so
    # under x64 every decision is torch's exactly. In float32 we do not try to
    # emulate float64: a metric passed as a Python float is already rounded
    # when it enters the (traceable) state, and reproducing float64's
    # rounding of `best * (1 - threshold)` with float32 pairs would need
    # error-free transformations (TwoProduct/TwoSum) that XLA may fuse or
    # reorder, for ties that only matter at the last bit. Instead float32
    # mode is documented precisely (metric rounded to float32, comparisons in
    # float32) and tested bit for bit against a NumPy float32 reference.
    dtype = jnp.ones([]).dtype
    return ReduceOnPlateauState(
        count=zero,
        scale=jnp.ones([], dtype),
        best=jnp.full([], worst, dtype),
        num_bad_evals=zero,
        cooldown_counter=zero,
        num_evals=zero,
    )

  def update(self, state: ReduceOnPlateauState, **extra_args) -> ReduceOnPlateauState:
    del extra_args  # The metric comes through `observe`, once per evaluation.
    self._expect_state(state)
    return state._replace(count=optax.safe_increment(state.count))

  def __call__(self, state: ReduceOnPlateauState, **extra_args) -> jax.Array:
    del extra_args
    self._expect_state(state)
    base = self.base(state.count) if callable(self.base) else self.base
    return base * state.scale

  def _expect_state(self, state):
    _checks.check_that(
        _is_plateau_state(state), "proxopt.reduce_on_plateau",
        "a stateful schedule must be called with its ReduceOnPlateauState",
        f"a {type(state).__name__}",
        "Wrap the optimizer with optax.inject_hyperparams, e.g. "
        "`optax.inject_hyperparams(proxopt.adamprox)(learning_rate=plateau, "
        "weight_decay=...)`, or use `proxopt.classic(name, plateau, ...)`.",
        error=TypeError,
    )

  # -- feeding the metric -----------------------------------------------------

  def observe(self, tree: Any, metric: Any) -> Any:
    """Feeds one evaluation's metric; returns ``tree`` with the plateau updated.

    The analogue of PyTorch's ``scheduler.step(metric)``: call it once per
    evaluation (e.g. per epoch, after computing the validation loss), not
    per training step. ``tree`` is an optimizer state holding this schedule's
    state (e.g. from ``optax.inject_hyperparams(...)(learning_rate=self)``,
    at any depth), or the :class:`ReduceOnPlateauState` itself. Every
    :class:`ReduceOnPlateauState` found in ``tree`` is updated with this
    object's rule, so an optimizer that uses two *different* plateau rules
    must pass each one its own sub-state. Pure and jit-safe (``metric`` may be
    traced); the reduced step size takes effect at the next ``update``.

    Raises:
      ValueError: if ``tree`` holds no :class:`ReduceOnPlateauState`.
    """
    _checks.check_contains(
        "tree", tree, bool(_plateau_states(tree)), "ReduceOnPlateauState",
        "proxopt.ReduceOnPlateau.observe", _NO_STATE_FIX,
    )
    if _holds_nnx_variables(tree):
      # flax.nnx.Optimizer keeps its state in Variables: update them in place,
      # as nnx.Optimizer.update does, and return the same object.
      for st in _plateau_states(tree):
        new = self._observe_one(_unwrap(st), metric)
        for field, value in zip(st._fields, new):
          _nnx.set_value(getattr(st, field), value)
      return tree
    return jax.tree.map(
        lambda x: self._observe_one(x, metric) if _is_plateau_state(x) else x,
        tree,
        is_leaf=_is_plateau_state,
    )

  def step_size(self, tree: Any) -> jax.Array:
    """The step size the next ``update`` will use (for logging).

    ``tree`` is as in :meth:`observe`; if it holds several plateau states,
    the first one is read.
    """
    states = _plateau_states(tree)
    _checks.check_contains(
        "tree", tree, bool(states), "ReduceOnPlateauState",
        "proxopt.ReduceOnPlateau.step_size", _NO_STATE_FIX,
    )
    return self(_unwrap(states[0]))

  def _improved(self, metric, best):
    th = jnp.asarray(self.threshold, best.dtype)
    if self.threshold_mode == "abs":
      return metric < best - th if self.mode == "min" else metric > best + th
    # Relative threshold measured against |best|: for best >= 0 this is
    # torch's best*(1 -/+ th); for best < 0 torch's rule would accept slightly
    # *worse* values as improvements, so we use best -/+ th*|best| instead.
    # Written as a product with the sign folded in to keep torch's rounding
    # for positive metrics; the infinite starting value is compared as is.
    if self.mode == "min":
      bound = jnp.where(best >= 0, best * (1 - th), best * (1 + th))
      bound = jnp.where(jnp.isinf(best), best, bound)
      return metric < bound
    bound = jnp.where(best >= 0, best * (1 + th), best * (1 - th))
    bound = jnp.where(jnp.isinf(best), best, bound)
    return metric > bound

  def _observe_one(self, st: ReduceOnPlateauState, metric) -> ReduceOnPlateauState:
    m = jnp.asarray(metric, st.best.dtype)
    _checks.check_that(
        m.shape == (), "proxopt.ReduceOnPlateau.observe",
        "`metric` must be a scalar", f"shape {m.shape}",
        "Reduce it first, e.g. `jnp.mean(losses)`.",
    )
    # Same order of operations as torch.optim.lr_scheduler.ReduceLROnPlateau.
    improved = self._improved(m, st.best)
    best = jnp.where(improved, m, st.best)
    bad = jnp.where(improved, 0, st.num_bad_evals + 1)
    in_cooldown = st.cooldown_counter > 0
    cooldown_counter = jnp.where(in_cooldown, st.cooldown_counter - 1, st.cooldown_counter)
    bad = jnp.where(in_cooldown, 0, bad)
    reduce = bad > self.patience
    new_scale = jnp.maximum(st.scale * self.factor, jnp.asarray(self.min_scale, st.scale.dtype))
    # torch skips reductions with old_lr - new_lr <= eps, where old_lr is the
    # step size the next optimizer step would use. Ours is base(count) * scale
    # (the step size `self(st)` reports), so eps is measured in step-size
    # units at the current count, for a schedule base too.
    base = self.base(st.count) if callable(self.base) else self.base
    base = jnp.asarray(base, st.scale.dtype)
    large_enough = base * st.scale - base * new_scale > self.eps
    scale = jnp.where(reduce & large_enough, new_scale, st.scale)
    cooldown_counter = jnp.where(reduce, self.cooldown, cooldown_counter)
    bad = jnp.where(reduce, 0, bad)
    return ReduceOnPlateauState(
        count=st.count,
        scale=scale.astype(st.scale.dtype),
        best=best,
        num_bad_evals=bad.astype(jnp.int32),
        cooldown_counter=cooldown_counter.astype(jnp.int32),
        num_evals=optax.safe_increment(st.num_evals),
    )


def reduce_on_plateau(
    base: ScalarOrSchedule,
    *,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_scale: float = 0.0,
    min_value: float | None = None,
    eps: float = 1e-8,
) -> ReduceOnPlateau:
  r"""Reduce the step size when a metric stops improving (``ReduceLROnPlateau``).

  The step size is ``s_t = base(t) * scale``. ``scale`` starts at 1; each
  call ``plateau.observe(opt_state, metric)`` (once per evaluation) applies
  PyTorch's rule: the metric improves if it beats ``best`` by more than the
  threshold; after more than ``patience`` evaluations without improvement,
  ``scale <- max(scale * factor, min_scale)`` and ``cooldown`` evaluations
  follow in which bad evaluations are not counted. Because the result is the
  learning rate itself (through ``optax.inject_hyperparams``), Adam's step,
  AdamW's decay ``s_t * wd`` and every ``prox_{s_t R}`` use the reduced
  ``s_t``: the prox stays exact.

  The arguments and defaults are PyTorch's, and so are the decisions, with
  these exact differences:

  - ``threshold_mode="rel"`` is relative to ``|best|``
    (``metric < best - threshold * |best|`` in ``"min"`` mode). For
    ``best >= 0`` this is PyTorch's ``best * (1 - threshold)``, computed the
    same way; for a negative ``best`` (e.g. a negative log-likelihood bound
    or a reward) PyTorch's rule would count slightly *worse* values as
    improvements and never reduce.
  - Precision. PyTorch keeps ``best`` and the learning rate as Python
    floats (float64). The state here has JAX's default float dtype at
    ``init``. With ``jax_enable_x64`` on, ``best`` and ``scale`` are float64,
    the metric is converted to float64 (exactly, for float32 or float64
    inputs) and every improvement, cooldown and reduction decision is
    PyTorch's; the step size ``base(t) * scale`` can differ from PyTorch's
    repeatedly multiplied ``lr`` in the last bits only (given the same
    ``base(t)``: Optax schedules evaluated at the int32 count return float32
    even under x64). Without x64
    (float32): the metric is rounded to float32 (to nearest) before it is
    compared, ``best`` is stored in float32, and the comparison, the bound
    (``best * (1 - threshold)``, ``best * (1 + threshold)``,
    ``best - threshold`` or ``best + threshold``, with ``threshold`` and
    ``1 - threshold`` rounded to float32) and the ``eps`` test are computed
    in float32. Improvements below float32 resolution are then lost (a
    metric of ``1 - 1e-9`` does not improve on ``1.0``), and values that tie
    in exact arithmetic are decided by float32 rounding rather than float64
    rounding (with ``threshold_mode="abs", threshold=0.01``, ``2.11``
    improves on ``2.12`` in float64 but not in float32, and ``2.12`` on
    ``2.13`` in float32 but not in float64). Enable x64 for PyTorch's
    decisions.
  - ``eps`` is measured on the step size the next update would use,
    ``base(count) * scale`` (PyTorch's ``old_lr - new_lr > eps`` when its
    learning rate is ``base(t) * scale``, i.e. ``ReduceLROnPlateau`` chained
    with a per-step scheduler). With a schedule ``base`` a reduction that is
    skipped now may therefore happen at a later evaluation, when ``base`` is
    larger.
  - With a schedule ``base``, ``min_scale`` bounds ``scale`` (relative to
    ``base(t)``), not the step size; PyTorch's ``min_lr`` is absolute
    (``min_value`` is ``min_lr`` for a constant ``base``).

  Args:
    base: the step size without reductions: a float, or an Optax schedule
      ``count -> s`` (e.g. :func:`warmup_cosine`), read at the update count.
    mode: ``"min"`` (a loss) or ``"max"`` (an accuracy).
    factor: multiplier at each reduction, in (0, 1).
    patience: evaluations without improvement tolerated before reducing
      (``patience=0`` reduces at the first bad evaluation).
    threshold: minimal improvement that counts (>= 0).
    threshold_mode: ``"rel"`` (relative to ``|best|``) or ``"abs"``.
    cooldown: evaluations after a reduction during which bad evaluations are
      ignored.
    min_scale: lower bound on ``scale`` (PyTorch's ``min_lr`` relative to the
      base).
    min_value: PyTorch's ``min_lr`` in step-size units; only with a constant
      ``base`` (converted to ``min_scale = min_value / base``).
    eps: reductions that would change the step size by no more than ``eps``
      are skipped (PyTorch's ``eps``): a reduction happens only if
      ``base(count) * scale - base(count) * new_scale > eps``, in step-size
      units at the current update count, for a constant or a schedule
      ``base``.

  Returns:
    A :class:`ReduceOnPlateau` (an ``optax.schedules.StatefulSchedule``) to pass to
    ``optax.inject_hyperparams(...)`` as the learning rate; its
    :meth:`~ReduceOnPlateau.observe` feeds the metric.

  Example (Adam + AdamProx decay, halve the step after 2 flat evaluations):
    >>> import jax, jax.numpy as jnp, optax, proxopt
    >>> plateau = proxopt.reduce_on_plateau(0.1, factor=0.5, patience=2)
    >>> tx = optax.inject_hyperparams(proxopt.adamprox)(
    ...     learning_rate=plateau, weight_decay=1.0)
    >>> params = {"w": jnp.array([1.0])}
    >>> state = tx.init(params)
    >>> for val_loss in [1.0, 1.0, 1.0, 1.0]:   # no improvement after the first
    ...   state = plateau.observe(state, val_loss)
    >>> round(float(plateau.step_size(state)), 6)
    0.05
    >>> updates, state = tx.update({"w": jnp.zeros(1)}, state, params)
    >>> new = optax.apply_updates(params, updates)  # prox at s = 0.05
    >>> round(float(new["w"][0]), 6), round(1 / 1.05, 6)
    (0.952381, 0.952381)

  References:
    PyTorch's ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (the rule and the
    defaults); Zhuang et al., TMLR 2022, on why the decay and the prox must
    read the reduced step size.
  """
  owner = "proxopt.reduce_on_plateau"
  _checks.check_one_of(
      "mode", mode, MODES, owner,
      "'min': the metric should decrease (e.g. a loss); 'max': it should "
      "increase (e.g. an accuracy).",
  )
  _checks.check_one_of(
      "threshold_mode", threshold_mode, THRESHOLD_MODES, owner,
      "'rel': relative to |best|; 'abs': in the metric's units.",
  )
  factor = _factor(factor, owner, allow_one=False)
  patience = _checks.check_int(
      "patience", patience, owner, minimum=0,
      fix="It counts evaluations without improvement; 0 reduces at once.",
  )
  cooldown = _checks.check_int(
      "cooldown", cooldown, owner, minimum=0, fix="Use 0 for no cooldown."
  )
  _checks.check_number_in(
      "threshold", threshold, owner, 0.0, np.inf, high_open=False, scalar=True,
      wrong_type=ValueError, fix="Use 0 to count any improvement.",
  )
  _checks.check_number_in(
      "eps", eps, owner, 0.0, np.inf, high_open=False, scalar=True,
      wrong_type=ValueError, fix="Use 0 to never skip a reduction.",
  )
  if not callable(base):
    _checks.check_number_in(
        "base", base, owner, 0.0, np.inf, low_open=True, high_open=False,
        scalar=True, wrong_type=ValueError,
        fix="Pass a positive step size or a schedule count -> step size.",
    )
  _checks.check_number_in(
      "min_scale", min_scale, owner, 0.0, 1.0, high_open=False, scalar=True,
      wrong_type=ValueError, fix="It bounds the product of the reductions.",
  )
  min_scale = float(min_scale)
  if min_value is not None:
    _checks.check_that(
        not callable(base), owner, "`min_value` needs a constant `base`",
        "a schedule as base",
        "With a schedule, bound the reductions with `min_scale` instead.",
    )
    _checks.check_that(
        min_scale == 0.0, owner, "pass either `min_value` or `min_scale`",
        f"min_value={min_value!r} and min_scale={min_scale!r}",
        "min_value is min_scale * base; drop one.",
    )
    _checks.check_nonnegative("min_value", min_value, owner)
    min_scale = float(min_value) / float(base)
    _checks.check_that(
        min_scale <= 1, owner, "`min_value` must not exceed `base`",
        f"min_value={min_value!r}, base={base!r}",
        "min_value is the smallest step size the reductions may reach.",
    )
  return ReduceOnPlateau(
      base,
      mode=mode,
      factor=factor,
      patience=patience,
      threshold=float(threshold),
      threshold_mode=threshold_mode,
      cooldown=cooldown,
      min_scale=min_scale,
      eps=float(eps),
  )
