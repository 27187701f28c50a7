"""Training metrics kept on the device between logging points.

A train step returns its loss and accuracy as device scalars; reading them
with ``float()`` every step would force a host round trip per step (free on
CPU, but it serialises a GPU/TPU: the host waits for step t before it can
enqueue step t+1). :func:`accumulate` folds them into running sums on the
device instead, and the loop reads the sums with one ``jax.device_get`` at a
logging point (every ``log_every`` steps and at the end of an epoch).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def init() -> dict[str, jax.Array]:
  """Empty running sums."""
  return dict(loss_sum=jnp.zeros((), jnp.float32), acc_sum=jnp.zeros((), jnp.float32),
              count=jnp.zeros((), jnp.int32), first_nonfinite_step=jnp.full((), -1, jnp.int32),
              max_consecutive_skips=jnp.zeros((), jnp.int32))


@jax.jit
def accumulate(acc: dict, metrics: dict, step: jax.Array, skips: jax.Array) -> dict:
  """Adds one step's metrics. ``skips``: the step's consecutive non-finite
  skips (``optax.apply_if_finite``; 0 without it): a skipped step's loss stays
  out of the means."""
  loss = metrics["loss"].astype(jnp.float32)
  finite = jnp.isfinite(loss)
  ok = finite & (skips == 0)
  first = jnp.where((acc["first_nonfinite_step"] < 0) & ~finite & (skips == 0),
                    step.astype(jnp.int32), acc["first_nonfinite_step"])
  return dict(loss_sum=acc["loss_sum"] + jnp.where(ok, loss, 0.0),
              acc_sum=acc["acc_sum"] + jnp.where(ok, metrics["accuracy"], 0.0),
              count=acc["count"] + ok.astype(jnp.int32),
              first_nonfinite_step=first,
              max_consecutive_skips=jnp.maximum(acc["max_consecutive_skips"],
                                                jnp.asarray(skips, jnp.int32)))


def read(acc: dict) -> dict[str, Any]:
  """The sums on the host (one transfer): means, counts, the first
  non-finite step (-1: none) and the longest run of skips."""
  h = jax.device_get(acc)
  n = int(h["count"])
  return dict(loss=float(h["loss_sum"]) / n if n else float("nan"),
              accuracy=float(h["acc_sum"]) / n if n else float("nan"), count=n,
              first_nonfinite_step=int(h["first_nonfinite_step"]),
              max_consecutive_skips=int(h["max_consecutive_skips"]))


def evaluate(eval_step, state, batches, put=lambda x: x,
             predictions: bool = False) -> tuple:
  """(mean loss, accuracy) of ``state`` over ``batches`` of (images, labels, mask);
  with ``predictions``, also the per-example predicted classes (padding
  dropped) as a third element.

  The per-batch sums stay on the device until one transfer at the end, and
  are added on the host in float64 in a fixed order.
  """
  outs, masks = [], []
  for x, y, m in batches:
    outs.append(eval_step(state, put(x), put(y), put(m)))
    masks.append(np.asarray(m) > 0)
  outs = jax.device_get(outs)
  tot = {k: sum(float(o[k]) for o in outs) for k in ("loss_sum", "correct", "count")}
  loss, acc = tot["loss_sum"] / tot["count"], tot["correct"] / tot["count"]
  if not predictions:
    return loss, acc
  preds = np.concatenate([np.asarray(o["predictions"])[k] for o, k in zip(outs, masks)])
  return loss, acc, preds
