"""Run by tests/library/test_integration.py in a subprocess with 8 host CPU devices.

`--xla_force_host_platform_device_count` only takes effect if it is set before
jax initialises its backend, which the pytest process has already done.
Prints one JSON line: per case, the max |sharded - unsharded| and whether every
output leaf kept its input sharding.
"""

import json
import os
import sys


def main():
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  )
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import NamedSharding, PartitionSpec as P

  import proxopt

  assert jax.device_count() == 8, jax.devices()
  mesh = jax.make_mesh((8,), ("d",))
  rng = np.random.default_rng(0)
  params0 = {
      "kernel": rng.normal(size=(16, 24)).astype(np.float32),  # sharded over rows
      "bias": rng.normal(size=(24,)).astype(np.float32),        # sharded over its only axis
      "scale": rng.normal(size=(3,)).astype(np.float32),        # replicated
  }
  specs = {"kernel": P("d", None), "bias": P("d"), "scale": P()}
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params0)
           for _ in range(5)]

  lr = optax.cosine_decay_schedule(0.05, 5)
  cases = {
      "adam_l2": proxopt.adam_l2(lr, weight_decay=0.1),
      "adamw": proxopt.adamw(lr, weight_decay=0.1),
      "adamprox": proxopt.adamprox(lr, weight_decay=0.1),
      "sgd_l2": proxopt.sgd_l2(lr, momentum=0.9, nesterov=True, weight_decay=0.1),
      "sgdw": proxopt.sgdw(lr, momentum=0.9, weight_decay=0.1),
      "sgdprox": proxopt.sgdprox(lr, momentum=0.9, weight_decay=0.1),
      # group norms reduce across the sharded axis 0 of the kernel
      "group_lasso_axis0": optax.chain(
          optax.adam(lr), proxopt.proximal(proxopt.group_lasso(0.5, axis=0), lr)),
      "l1": optax.chain(optax.sgd(lr, momentum=0.9), proxopt.proximal(proxopt.l1(0.5), lr)),
      "box": optax.chain(optax.adam(lr), proxopt.proximal(proxopt.box(-0.5, 0.5), lr)),
  }

  def run(tx, params, grads):
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in grads:
      updates, state = step(g, state, params)
      params = optax.apply_updates(params, updates)
    return params

  report = {}
  for name, tx in cases.items():
    plain = run(tx, jax.tree.map(jnp.asarray, params0), jax.tree.map(jnp.asarray, grads))
    shard = lambda tree: jax.tree.map(
        lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)
    sharded_in = shard(params0)
    out = run(tx, sharded_in, [shard(g) for g in grads])
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(plain)))
    kept = all(
        o.sharding.is_equivalent_to(i.sharding, o.ndim)
        for o, i in zip(jax.tree.leaves(out), jax.tree.leaves(sharded_in)))
    ndev = [len(o.sharding.device_set) for o in jax.tree.leaves(out)]
    report[name] = {"max_abs_diff": diff, "sharding_kept": kept, "devices": ndev,
                    "moved": float(np.max(np.abs(np.asarray(out["kernel"]) - params0["kernel"])))}
  print(json.dumps(report))


if __name__ == "__main__":
  sys.exit(main())
