r"""Update-scale statistics: a histogram of log2|update| kept in optimizer state.

Zhuang et al. (2022, Sec. 6) compare the magnitudes of per-coordinate updates
of Adam-L2 and AdamW: a scale-free method's updates sit within a few octaves
of each other, Adam-L2's spread over many more scales. :func:`track_update_scales`
wraps any Optax transformation and accumulates, per parameter leaf and under
``jit`` (no host callbacks), the histogram of ``log2|u|`` of the updates ``u``
that the *wrapped* transformation outputs, over fixed bins
``numpy.linspace(low, high, bins + 1)`` (``numpy.histogram`` semantics: bins
are ``[e_k, e_{k+1})``, the last one closed), with zeros, values below/above
the range and non-finite values counted separately. The updates themselves are
returned unchanged.

Which update is histogrammed is your choice, by where you put the wrapper:

* the paper's figure shows the Adam direction ``m_hat / (sqrt(v_hat) + eps)``
  (before the step size and the decoupled decay): wrap the Adam part only,
  e.g. for AdamW and Adam-L2 (the same updates as ``proxopt.adamw`` and
  ``proxopt.adam_l2``)::

    adamw = optax.chain(track_update_scales(optax.scale_by_adam()),
                        optax.add_decayed_weights(wd),
                        optax.scale_by_learning_rate(lr))
    adam_l2 = optax.chain(optax.add_decayed_weights(wd),
                          track_update_scales(optax.scale_by_adam()),
                          optax.scale_by_learning_rate(lr))

* wrapping a whole optimizer, ``track_update_scales(proxopt.adamw(lr, weight_decay=wd))``,
  histograms the final step ``x_{t+1} - x_t`` (step size and decay included).

:func:`update_scale_summary` turns the counts into per-leaf and pooled spread
statistics (inter-quantile range in octaves, share within one octave of the
median); :func:`update_scale_histogram` extracts the raw counts and
:func:`reset_update_scales` zeroes them (e.g. once per epoch, for logging).

Reference: Zhuang, Liu, Cutkosky, Orabona, "Understanding AdamW through
Proximal Methods and Scale-Freeness", TMLR 2022 (arXiv 2202.00089).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxopt import _checks

__all__ = [
    "ScaleSpread",
    "UpdateScaleState",
    "UpdateScaleSummary",
    "reset_update_scales",
    "track_update_scales",
    "update_scale_histogram",
    "update_scale_summary",
]

_INT_MAX = np.iinfo(np.int32).max


class UpdateScaleState(NamedTuple):
  """State of :func:`track_update_scales`.

  All count fields are pytrees like the updates, with int32 leaves; counts
  saturate at 2**31 - 1 instead of wrapping (reset them, e.g. per epoch).

  Attributes:
    inner_state: the wrapped transformation's state.
    counts: per leaf, a ``(bins,)`` int32 array: coordinates with
      ``log2|u|`` in each bin.
    underflow: per leaf, coordinates with ``0 < |u| < 2**low``.
    overflow: per leaf, coordinates with ``2**high < |u| < inf``.
    zeros: per leaf, coordinates with ``u == 0``.
    nonfinite: per leaf, NaN or infinite updates.
    steps: number of updates histogrammed (int32).
    calls: number of ``update`` calls (drives ``every``).
    edges: ``(bins + 1,)`` float32 bin edges in log2 units.
  """

  inner_state: Any
  counts: Any  # (bins,) per leaf: coordinates with log2|u| in each bin
  underflow: Any  # scalar per leaf: 0 < |u| < 2**low (incl. float32 underflow)
  overflow: Any  # scalar per leaf: 2**high < |u| < inf
  zeros: Any  # scalar per leaf: u == 0
  nonfinite: Any  # scalar per leaf: NaN or inf
  steps: jax.Array  # int32: number of updates histogrammed
  calls: jax.Array  # int32: number of `update` calls (drives `every`)
  edges: jax.Array  # float32 (bins + 1,): bin edges in log2 units


def _saturating_add(old, new):
  return jnp.where(old > _INT_MAX - new, _INT_MAX, old + new)


def _dyadic_scale(bins, low, high):
  """``bins / (high - low)`` if it is a power of two and ``low`` a multiple of
  the bin width (so every edge is exact in float32), else None."""
  s = bins / (high - low)
  k = np.log2(s)
  if k == np.round(k) and abs(k) <= 10 and float(low * s).is_integer() and abs(low * s) < 2**20:
    return float(s)
  return None


def _leaf_histogram(u, edges, bins, low, high):
  """Counts of log2|u| per bin (numpy.histogram semantics) + 4 extra slots.

  Returns int32 ``(bins + 4,)``: the bins, then underflow, overflow, zeros,
  non-finite. One fused elementwise pass and one ``bincount``.
  """
  a = jnp.abs(u)
  # log2 in float32 (plenty for bins down to 1/64 octave); a float64 value
  # below float32's range becomes log2(0) = -inf and lands in `underflow`.
  log_a = jnp.log2(a.astype(jnp.float32))
  s = _dyadic_scale(bins, low, high)
  if s is not None:
    # Default path: scaling by a power of two and flooring are exact, so
    # floor(l * s) - low * s is exactly numpy's bin index (no edge fix-up).
    idx = jnp.floor(log_a * jnp.float32(s)) - jnp.float32(low * s)
  else:
    # General uniform bins: index by arithmetic, then fix the off-by-one at
    # an edge by comparing with the edges, as numpy.histogram does.
    f = (log_a - jnp.float32(low)) * jnp.float32(bins / (high - low))
    i = jnp.clip(jnp.floor(f), 0, bins - 1).astype(jnp.int32)
    i = jnp.where(log_a < edges[i], i - 1, i)
    i = jnp.where((log_a >= edges[i + 1]) & (i != bins - 1), i + 1, i)
    idx = jnp.clip(i, 0, bins - 1).astype(jnp.float32)
  idx = jnp.where(log_a == edges[-1], bins - 1, idx)  # last bin is closed
  idx = jnp.where(log_a < edges[0], bins, idx)  # underflow (incl. -inf)
  idx = jnp.where(log_a > edges[-1], bins + 1, idx)  # overflow
  idx = jnp.where(a == 0, bins + 2, idx)  # zeros, tested in u's own dtype
  idx = jnp.where(jnp.isfinite(a), idx, bins + 3)  # NaN / inf
  return jnp.bincount(idx.astype(jnp.int32).ravel(), length=bins + 4).astype(jnp.int32)


def track_update_scales(
    inner: optax.GradientTransformation,
    bins: int = 160,
    low: float = -32.0,
    high: float = 8.0,
    every: int = 1,
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps ``inner`` and histograms ``log2|u|`` of its output updates ``u``.

  The updates are returned bit-for-bit unchanged; only the state grows by
  ``bins + 4`` int32 per parameter leaf. The histogram runs inside ``update``
  (pure JAX, jit/pmap friendly, no host callbacks); it costs an ``abs``, a
  ``log2`` and a ``bincount`` over every update coordinate (see
  ``benchmarks/`` for the measured overhead; ``every=k`` divides it by k).
  With :math:`u = \text{inner}(g)` and edges :math:`e_0 < \dots < e_B`
  (:math:`e_0` = ``low``, :math:`e_B` = ``high``), bin :math:`k` counts

  .. math::
     \#\{\, i : e_k \le \log_2 |u_i| < e_{k+1} \,\}

  (the last bin closed), accumulated over steps.

  Args:
    inner: any Optax transformation (``optax.scale_by_adam()``, a whole
      optimizer, your own); extra ``update`` arguments are passed through.
    bins: number of bins between ``low`` and ``high`` (default 160: a quarter
      octave each).
    low: lower end of the histogram range in log2 units (octaves): ``|u|``
      from ``2**low``; smaller non-zero values count as underflow.
    high: upper end of the range: ``|u|`` up to ``2**high``; larger finite
      values count as overflow.
    every: histogram only every ``every``-th call to ``update`` (the first
      call included), via ``lax.cond``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`UpdateScaleState`.

  Example (the paper's figure: the Adam direction of AdamW):
    >>> import jax.numpy as jnp, optax
    >>> import proxopt
    >>> tx = optax.chain(proxopt.track_update_scales(optax.scale_by_adam()),
    ...                  optax.add_decayed_weights(1e-2),
    ...                  optax.scale_by_learning_rate(1e-3))
    >>> params = {"w": jnp.ones(4)}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.array([1e-4, 1e-2, 1.0, 0.0])}
    >>> updates, state = tx.update(grads, state, params)
    >>> s = proxopt.update_scale_summary(state)
    >>> s.pooled.total, s.pooled.zero_fraction  # the first Adam step is sign(g)
    (4, 0.25)
    >>> s.pooled.within_one_octave
    1.0

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022
    (the histograms of the Adam direction, Figure 3).
  """
  owner = "proxopt.track_update_scales"
  # ValueError for a non-int too, as since the first release.
  _checks.check_int("bins", bins, owner, minimum=1, wrong_type=ValueError)
  _checks.check_int(
      "every", every, owner, minimum=1, wrong_type=ValueError,
      fix="1 records every update.",
  )
  finite = lambda v: _checks.is_concrete_number(v) and bool(np.isfinite(v))
  _checks.check_that(
      finite(low) and finite(high) and low < high, owner,
      "need finite `low` < `high` (log2 units)", f"low={low!r}, high={high!r}",
      "Use e.g. low=-32, high=8.",
  )
  inner = optax.with_extra_args_support(inner)
  edges_np = np.linspace(low, high, bins + 1).astype(np.float32)

  def init_fn(params):
    leaf_zeros = lambda shape: jax.tree.map(
        lambda _: jnp.zeros(shape, jnp.int32), params
    )
    return UpdateScaleState(
        inner_state=inner.init(params),
        counts=leaf_zeros([bins]),
        underflow=leaf_zeros([]),
        overflow=leaf_zeros([]),
        zeros=leaf_zeros([]),
        nonfinite=leaf_zeros([]),
        steps=jnp.zeros([], jnp.int32),
        calls=jnp.zeros([], jnp.int32),
        edges=jnp.asarray(edges_np),
    )

  def update_fn(updates, state, params=None, **extra_args):
    updates, inner_state = inner.update(
        updates, state.inner_state, params, **extra_args
    )
    edges = jnp.asarray(edges_np)
    old = (state.counts, state.underflow, state.overflow, state.zeros,
           state.nonfinite, state.steps)

    def record(old):
      hist = jax.tree.map(
          lambda u: _leaf_histogram(u, edges, bins, low, high), updates
      )
      acc = lambda tree, sl: jax.tree.map(
          lambda o, h: _saturating_add(o, h[sl]), tree, hist
      )
      return (
          acc(old[0], slice(0, bins)), acc(old[1], bins), acc(old[2], bins + 1),
          acc(old[3], bins + 2), acc(old[4], bins + 3),
          optax.safe_increment(old[5]),
      )

    if every == 1:
      new = record(old)
    else:
      new = jax.lax.cond(state.calls % every == 0, record, lambda o: o, old)
    new_state = UpdateScaleState(
        inner_state, *new, calls=optax.safe_increment(state.calls),
        edges=state.edges,
    )
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _is_tracker(x: Any) -> bool:
  return isinstance(x, UpdateScaleState)


def _find_trackers(opt_state: Any, owner: str) -> list[UpdateScaleState]:
  found = [
      x for x in jax.tree.leaves(opt_state, is_leaf=_is_tracker) if _is_tracker(x)
  ]
  _checks.check_contains(
      "opt_state", opt_state, bool(found), "UpdateScaleState", owner,
      "Wrap (part of) the optimizer with `proxopt.track_update_scales(...)` "
      "and pass its state (or any state containing it).",
  )
  return found


def reset_update_scales(opt_state: Any) -> Any:
  """Returns ``opt_state`` with every update-scale histogram set to zero.

  Works on any state containing :class:`UpdateScaleState` (chains, masked or
  injected states, ``nnx.Optimizer.opt_state``); jit-compatible. The inner
  optimizer's state is kept: ``counts, underflow, overflow, zeros, nonfinite,
  steps <- 0``.

  Args:
    opt_state: an optimizer state containing one or more
      :class:`UpdateScaleState`.

  Returns:
    The same state with the histograms zeroed (a new pytree; nothing is
    modified in place).

  Example:
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = proxopt.track_update_scales(optax.scale_by_adam())
    >>> params = {"w": jnp.ones(4)}
    >>> updates, state = tx.update({"w": jnp.array([1e-4, 1e-2, 1.0, 0.0])},
    ...                            tx.init(params), params)
    >>> proxopt.update_scale_histogram(state)["steps"]
    1
    >>> state = proxopt.reset_update_scales(state)   # e.g. every epoch
    >>> proxopt.update_scale_histogram(state)["steps"]
    0

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022
    (the histograms of the Adam direction, Figure 3).
  """

  def reset(x):
    if not _is_tracker(x):
      return x
    zero = lambda t: jax.tree.map(jnp.zeros_like, t)
    return x._replace(
        counts=zero(x.counts), underflow=zero(x.underflow),
        overflow=zero(x.overflow), zeros=zero(x.zeros),
        nonfinite=zero(x.nonfinite), steps=zero(x.steps),
    )

  return jax.tree.map(reset, opt_state, is_leaf=_is_tracker)


def update_scale_histogram(opt_state: Any) -> dict[str, Any]:
  """Extracts the histograms as NumPy arrays (host side), e.g. for logging.

  Args:
    opt_state: an optimizer state containing one or more
      :class:`UpdateScaleState` (from :func:`track_update_scales`).

  Returns:
    ``{"edges": (bins+1,) float32 log2 edges, "steps": int, "leaves":
    {path: {"counts", "underflow", "overflow", "zeros", "nonfinite"}}}``.
    Paths are ``jax.tree_util.keystr`` of the leaf (``"<root>"`` when the
    updates are a single array). With several wrapped transformations in one
    state, paths are prefixed by ``"tracker{i}"``.

  Example:
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = proxopt.track_update_scales(optax.scale_by_adam())
    >>> params = {"w": jnp.ones(4)}
    >>> updates, state = tx.update({"w": jnp.array([1e-4, 1e-2, 1.0, 0.0])},
    ...                            tx.init(params), params)
    >>> h = proxopt.update_scale_histogram(state)
    >>> h["steps"], h["edges"].shape, int(h["leaves"]["['w']"]["counts"].sum())
    (1, (161,), 3)

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022
    (the histograms of the Adam direction, Figure 3).
  """
  trackers = _find_trackers(opt_state, "proxopt.update_scale_histogram")
  leaves: dict[str, dict[str, Any]] = {}
  for i, tr in enumerate(trackers):
    prefix = f"tracker{i}" if len(trackers) > 1 else ""
    flat = {
        name: jax.tree_util.tree_flatten_with_path(getattr(tr, name))[0]
        for name in ("counts", "underflow", "overflow", "zeros", "nonfinite")
    }
    for j, (path, counts) in enumerate(flat["counts"]):
      key = prefix + (jax.tree_util.keystr(path) or "<root>")
      leaves[key] = {"counts": np.asarray(counts, np.int64)}
      for name in ("underflow", "overflow", "zeros", "nonfinite"):
        leaves[key][name] = int(np.asarray(flat[name][j][1]))
  edges = np.asarray(jax.tree.leaves(trackers[0].edges)[0])
  steps = int(np.asarray(jax.tree.leaves(trackers[0].steps)[0]))
  return {"edges": edges, "steps": steps, "leaves": leaves}


@dataclasses.dataclass(frozen=True)
class ScaleSpread:
  """Spread of log2|u| over the coordinates counted in one histogram.

  Quantiles are over the non-zero finite updates, read off the histogram by
  linear interpolation inside a bin (accurate to about one bin width); values
  below/above the range count as sitting at the first/last edge.

  Attributes:
    total: coordinate-updates counted (coordinates x steps), zeros included.
    zero_fraction: share of exact zeros among ``total``.
    nonfinite: number of NaN/inf updates (excluded elsewhere).
    out_of_range: share of non-zero finite updates outside ``[low, high]``.
    median_log2: median of log2|u|.
    q_low_log2, q_high_log2: the lower and upper quantiles of log2|u|.
    iqr_octaves: ``q_high_log2 - q_low_log2``.
    within_one_octave: share of non-zero finite updates with
      ``|log2|u| - median| <= 1``.
  """

  total: int
  zero_fraction: float
  nonfinite: int
  out_of_range: float
  median_log2: float
  q_low_log2: float
  q_high_log2: float
  iqr_octaves: float
  within_one_octave: float

  def to_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class UpdateScaleSummary:
  """Per-leaf and pooled :class:`ScaleSpread`; ``to_dict()`` is JSON-ready.

  Returned by :func:`update_scale_summary`.

  Attributes:
    per_leaf: ``{path: ScaleSpread}``, paths as in
      :func:`update_scale_histogram`.
    pooled: the spread of all leaves' counts merged.
    steps: number of updates histogrammed.
    quantiles: the (low, high) quantiles used for ``iqr_octaves``.
  """

  per_leaf: dict[str, ScaleSpread]
  pooled: ScaleSpread
  steps: int
  quantiles: tuple[float, float]

  def to_dict(self) -> dict[str, Any]:
    return {
        "steps": self.steps,
        "quantiles": list(self.quantiles),
        "pooled": self.pooled.to_dict(),
        "per_leaf": {k: v.to_dict() for k, v in self.per_leaf.items()},
    }


def _cdf_at_edges(counts, underflow):
  # F[k] = number of non-zero finite values below edge k (underflow included).
  return underflow + np.concatenate([[0], np.cumsum(counts)])


def _quantile(q, counts, edges, underflow, n):
  F = _cdf_at_edges(counts, underflow)
  target = q * n
  if target <= F[0]:
    return float(edges[0])
  # First bin k with F[k] < target <= F[k+1]; it has counts[k] > 0.
  k = int(np.searchsorted(F[1:], target, side="left"))
  if k >= len(counts):
    return float(edges[-1])
  frac = (target - F[k]) / counts[k]
  return float(edges[k] + frac * (edges[k + 1] - edges[k]))


def _cdf(x, counts, edges, underflow, n):
  if x < edges[0]:
    return 0.0
  if x >= edges[-1]:
    return float(n)
  return float(np.interp(x, edges, _cdf_at_edges(counts, underflow)))


def summarize_histogram(
    counts: np.ndarray,
    edges: np.ndarray,
    *,
    underflow: int = 0,
    overflow: int = 0,
    zeros: int = 0,
    nonfinite: int = 0,
    quantiles: Sequence[float] = (0.25, 0.75),
) -> ScaleSpread:
  r"""Spread of one histogram of ``log2|u|`` (NumPy, host side).

  Quantiles :math:`Q(q)` of ``log2|u|`` over the ``n`` non-zero finite values
  are read off the cumulative counts by linear interpolation inside a bin;
  ``iqr_octaves`` = :math:`Q(q_{hi}) - Q(q_{lo})` and ``within_one_octave`` =
  :math:`(F(m + 1) - F(m - 1)) / n` with :math:`m = Q(1/2)` and :math:`F` the
  interpolated cumulative count.

  Args:
    counts: ``(bins,)`` counts per bin.
    edges: ``(bins + 1,)`` increasing bin edges in log2 units.
    underflow: non-zero values below ``edges[0]``.
    overflow: finite values above ``edges[-1]``.
    zeros: exact zeros (counted in ``total`` only).
    nonfinite: NaN/inf values (reported, otherwise excluded).
    quantiles: ``(low, high)`` with ``0 <= low < high <= 1``.

  Returns:
    A :class:`ScaleSpread` (NaN statistics when nothing non-zero was
    counted).

  Raises:
    ValueError: on mismatched shapes or invalid quantiles.

  Example:
    >>> import numpy as np, proxopt
    >>> edges = np.arange(-4.0, 5.0)            # 8 bins of one octave
    >>> counts = np.array([0, 0, 0, 5, 5, 0, 0, 0])
    >>> s = proxopt.summarize_histogram(counts, edges, zeros=2)
    >>> s.total, s.median_log2, s.iqr_octaves, s.zero_fraction
    (12, 0.0, 1.0, 0.16666666666666666)

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022
    (the histograms of the Adam direction, Figure 3).
  """
  owner = "proxopt.summarize_histogram"
  counts = np.asarray(counts, np.float64)
  edges = np.asarray(edges, np.float64)
  _checks.check_that(
      counts.ndim == 1 and edges.shape == (counts.size + 1,), owner,
      "need 1-D `counts` and `edges` with len(edges) == len(counts) + 1",
      f"shapes {counts.shape} and {edges.shape}",
      "Pass one leaf's arrays from proxopt.update_scale_histogram(state).",
  )
  try:
    q = tuple(quantiles)
  except TypeError:  # a number: refused below
    q = ()
  _checks.check_that(
      len(q) == 2 and all(_checks.is_concrete_number(v) for v in q)
      and 0 <= q[0] < q[1] <= 1, owner,
      "`quantiles` must be (low, high) with 0 <= low < high <= 1",
      f"{quantiles!r}", "The default is (0.25, 0.75).",
  )
  q_lo, q_hi = q
  n = float(counts.sum() + underflow + overflow)
  total = int(n + zeros)
  if n == 0:
    nan = float("nan")
    return ScaleSpread(total, 1.0 if total else nan, int(nonfinite), nan, nan,
                       nan, nan, nan, nan)
  med = _quantile(0.5, counts, edges, underflow, n)
  lo = _quantile(q_lo, counts, edges, underflow, n)
  hi = _quantile(q_hi, counts, edges, underflow, n)
  within = (
      _cdf(med + 1.0, counts, edges, underflow, n)
      - _cdf(med - 1.0, counts, edges, underflow, n)
  ) / n
  return ScaleSpread(
      total=total,
      zero_fraction=float(zeros) / total,
      nonfinite=int(nonfinite),
      out_of_range=float(underflow + overflow) / n,
      median_log2=med,
      q_low_log2=lo,
      q_high_log2=hi,
      iqr_octaves=hi - lo,
      within_one_octave=float(min(max(within, 0.0), 1.0)),
  )


def update_scale_summary(
    opt_state: Any, quantiles: Sequence[float] = (0.25, 0.75)
) -> UpdateScaleSummary:
  """Per-leaf and pooled spread of the accumulated update scales.

  Args:
    opt_state: the state of :func:`track_update_scales`, or any optimizer
      state containing it (a chain, ``nnx.Optimizer.opt_state``, ...).
    quantiles: the (low, high) quantiles of ``iqr_octaves``.

  Returns:
    An :class:`UpdateScaleSummary`; ``.pooled`` merges every leaf's counts.

  Example:
    >>> import jax.numpy as jnp, optax, proxopt
    >>> tx = proxopt.track_update_scales(optax.scale_by_adam())
    >>> params = {"w": jnp.ones(4)}
    >>> updates, state = tx.update({"w": jnp.array([1e-4, 1e-2, 1.0, 0.0])},
    ...                            tx.init(params), params)
    >>> summary = proxopt.update_scale_summary(state)
    >>> summary.pooled.total, summary.pooled.within_one_octave
    (4, 1.0)
    >>> sorted(summary.to_dict())
    ['per_leaf', 'pooled', 'quantiles', 'steps']

  References:
    Zhuang, Liu, Cutkosky, Orabona, `Understanding AdamW through Proximal
    Methods and Scale-Freeness <https://arxiv.org/abs/2202.00089>`_, TMLR 2022
    (the histograms of the Adam direction, Figure 3).
  """
  hist = update_scale_histogram(opt_state)
  edges = hist["edges"]
  per_leaf = {}
  pooled = {"counts": np.zeros(len(edges) - 1, np.int64), "underflow": 0,
            "overflow": 0, "zeros": 0, "nonfinite": 0}
  for key, h in hist["leaves"].items():
    per_leaf[key] = summarize_histogram(
        h["counts"], edges, underflow=h["underflow"], overflow=h["overflow"],
        zeros=h["zeros"], nonfinite=h["nonfinite"], quantiles=quantiles,
    )
    for name in pooled:
      pooled[name] = pooled[name] + h[name]
  pooled_spread = summarize_histogram(
      pooled.pop("counts"), edges, quantiles=quantiles, **pooled
  )
  return UpdateScaleSummary(
      per_leaf=per_leaf, pooled=pooled_spread, steps=hist["steps"],
      quantiles=tuple(float(q) for q in quantiles),
  )
