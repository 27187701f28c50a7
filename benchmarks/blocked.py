r"""An experimental cache-blocked AdamW/AdamProx step for large leaves (XLA:CPU).

Why this exists: XLA:CPU has no multi-output loop fusion ("Multi-output
fusion is disabled" in its fusion pipeline), so the Optax Adam step, whose
outputs are the new ``m``, the new ``v`` and the new params, becomes three
separate loops over memory: ``m' = b1 m + (1-b1) g`` (reads m, g; writes m),
``v' = ...`` (reads v, g; writes v), and ``x' = ...`` (re-reads x, m', v';
writes x). That is 40 bytes per float32 parameter instead of the 28 a single
pass needs (read x, g, m, v; write x, m, v), so a jitted, donated
``optax.adamw`` can reach at most 28/40 = 70% of the bandwidth floor; the
proxopt aliases are the same Optax chains and share the limit (the prox and
the decay fuse into the third loop and cost nothing extra).

The blocked step below walks the leaf in chunks of ``chunk`` elements inside
one ``lax.fori_loop``: per chunk it updates ``m`` and ``v`` in place
(``dynamic_update_slice``) and then updates ``x``, reading ``m'`` and ``v'``
back from the chunk just written, which is still in cache. DRAM traffic is
then the 28 B/param of a single pass. The read-back uses an offset that XLA
cannot prove equal to the write offset (a runtime zero is added); otherwise
XLA re-computes ``m'`` from the old ``m`` inside the ``x`` loop, which
conflicts with the in-place update and makes it copy the whole ``m`` and
``v`` every iteration (measured much slower than no blocking at 4M floats,
at every chunk size tried).

It is hand-written (no Optax primitive) because no library provides a
cache-blocked optimizer step for XLA:CPU; it only exists to measure how much
of the floor is reachable from JAX without custom C. It implements the
``proxopt.adamprox`` and ``proxopt.adamw`` updates (optax convention,
constant learning rate) on single-leaf parameters, with numerics equal to
those aliases up to float32 rounding (tests/harness/test_benchmarks.py checks this).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class BlockedAdamState(NamedTuple):
  count: jax.Array  # int32 scalar
  mu: jax.Array
  nu: jax.Array


def _adam_chunk_params(x, m, v, count, *, lr, wd, b1, b2, eps, kind):
  # Same expression order as optax.scale_by_adam + proxopt's decay / prox.
  t = count.astype(jnp.float32)
  m_hat = m / (1 - jnp.float32(b1) ** t)
  v_hat = v / (1 - jnp.float32(b2) ** t)
  d = m_hat / (jnp.sqrt(v_hat) + jnp.float32(eps))
  if kind == "adamprox":
    return (x - jnp.float32(lr) * d) / (1 + jnp.float32(lr) * jnp.float32(wd))
  return x - jnp.float32(lr) * (d + jnp.float32(wd) * x)


def blocked_adam(lr: float, weight_decay: float, b1: float = 0.9,
                 b2: float = 0.999, eps: float = 1e-8, *,
                 kind: str = "adamprox", chunk: int = 2**16):
  """Returns ``(init, step)``; ``step(params, state, grads) -> (params, state)``.

  ``params`` must be one 1-D float32 array whose length is a multiple of
  ``chunk`` (or shorter than ``chunk``: then one fused expression is used).
  """
  if kind not in ("adamprox", "adamw"):
    raise ValueError(f"blocked_adam: `kind` must be 'adamprox' or 'adamw', "
                     f"got {kind!r}.")
  hp = dict(lr=lr, wd=weight_decay, b1=b1, b2=b2, eps=eps, kind=kind)

  def init(params):
    return BlockedAdamState(jnp.zeros([], jnp.int32), jnp.zeros_like(params),
                            jnp.zeros_like(params))

  def step(params, state, grads):
    if params.ndim != 1:
      raise ValueError("blocked_adam: `params` must be one 1-D array; got "
                       f"shape {params.shape}. Flatten it first.")
    n = params.shape[0]
    count = state.count + 1
    if n <= chunk:
      m = b1 * state.mu + (1 - b1) * grads
      v = b2 * state.nu + (1 - b2) * grads * grads
      return _adam_chunk_params(params, m, v, count, **hp), BlockedAdamState(
          count, m, v)
    if n % chunk:
      raise ValueError(f"blocked_adam: the length {n} is not a multiple of "
                       f"`chunk={chunk}`; pick a divisor.")

    def body(i, carry):
      x, m, v, zero = carry
      o = i * chunk
      sl = lambda a, o=o: lax.dynamic_slice(a, (o,), (chunk,))
      g = sl(grads)
      m = lax.dynamic_update_slice(m, b1 * sl(m) + (1 - b1) * g, (o,))
      v = lax.dynamic_update_slice(v, b2 * sl(v) + (1 - b2) * g * g, (o,))
      # Read the fresh chunk back (from cache) at an offset XLA cannot fold.
      o2 = o + zero
      new_x = _adam_chunk_params(sl(x), sl(m, o2), sl(v, o2), count, **hp)
      return lax.dynamic_update_slice(x, new_x, (o,)), m, v, zero

    zero = jnp.minimum(state.count, 0)  # a runtime 0 (count >= 0)
    x, m, v, _ = lax.fori_loop(0, n // chunk, body,
                               (params, state.mu, state.nu, zero))
    return x, BlockedAdamState(count, m, v)

  return init, step
