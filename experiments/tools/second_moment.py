r"""Is Adam's second moment tracking the current gradients? ``python -m experiments.tools.second_moment RUN``.

Adam divides by :math:`\sqrt{\hat v}`, an exponential average of :math:`g^2`
with a memory of :math:`1/(1-\beta_2)` steps (1000 at :math:`\beta_2=0.999`).
If the gradients were once much larger (a blow-up in the first epoch of a
deep network without BatchNorm), :math:`\hat v` keeps that memory long after:
an old term :math:`\beta_2^t g_0^2` halves every :math:`\ln 2/(1-\beta_2)`
steps (693 at 0.999), so a :math:`g_0^2` larger by a factor :math:`2^k`
dominates for about :math:`693\,k` steps, and every step of those coordinates
is shrunk by :math:`\sqrt{\hat v / \mathbb{E}[g^2]}`.

This tool restores a run's latest checkpoint and measures, per coordinate,

- ``g2``: the mean of :math:`g^2` over the next ``--batches`` training batches
  the run would see (same data order and augmentation keys as the train step,
  at the checkpoint's parameters), where :math:`g` is the gradient Adam
  receives: the loss gradient, plus :math:`\mathrm{wd}\,x` for Adam-L2;
- ``nu``: quantiles of :math:`\hat v` itself, and for Adam-L2 the per-step
  shrink of its L2 term, :math:`s_t\,\mathrm{wd}/\sqrt{\hat v}` (median over
  coordinates and weighted by :math:`x^2`: ``l2_shrink_per_step``);
- ``nu_over_g2``: :math:`\hat v / \overline{g^2}` (1 when Adam's second moment
  tracks the current gradients; :math:`4^k` when it makes the step :math:`2^k`
  times smaller than they would);
- the Adam direction :math:`u=\hat m/(\sqrt{\hat v}+\epsilon)` (the study's
  update histogram) and the same with :math:`\overline{g^2}` in place of
  :math:`\hat v`: their spreads (inter-quartile range of :math:`\log_2|u|`, in
  octaves) say how much of the recorded spread is the second moment's memory.

It also compares the weights with the run's initial ones (``weights_vs_init``:
:math:`\|w\|/\|w_0\|`, the least-squares scale :math:`c` of :math:`w \approx c\,w_0`
and the rest :math:`\|w - c\,w_0\|/\|w_0\|`, over all parameters): when the
gradient steps are shrunk, a decoupled weight decay may be most of what moves the weights.

``b1``, ``b2`` and ``eps`` are the defaults of the run's proxopt alias (the
experiments' config does not set them). Prints a summary and writes
``--out`` (JSON) when given.
"""

from __future__ import annotations

import argparse
import inspect
import json
import pathlib
import sys
from typing import Any

import numpy as np

# Octave thresholds of the step's shrink factor sqrt(nu / g2) that the summary counts.
SHRINK_OCTAVES = (1, 2, 4)


def log2_spread(x: np.ndarray) -> dict[str, float]:
  """Inter-quartile range and median of ``log2|x|`` over the non-zero entries
  (the study's ``update_iqr_octaves`` / ``update_median_log2``)."""
  x = np.abs(np.asarray(x, np.float64))
  lx = np.log2(x[x > 0])
  q25, q50, q75 = np.percentile(lx, [25, 50, 75])
  return {"iqr_octaves": float(q75 - q25), "median_log2": float(q50)}


def _concat(leaves: dict[str, np.ndarray], keys) -> np.ndarray:
  """The leaves ``keys`` of a flat parameter dict as one float64 vector."""
  return np.concatenate([np.asarray(leaves[k], np.float64).ravel() for k in keys])


def memory_summary(mu_hat: dict[str, np.ndarray], nu_hat: dict[str, np.ndarray],
                   g2: dict[str, np.ndarray], eps: float) -> dict[str, Any]:
  """Compares Adam's bias-corrected moments with the mean squared gradient ``g2``,
  leaf by leaf (dicts keyed by parameter path) and over all coordinates."""
  if not (mu_hat.keys() == nu_hat.keys() == g2.keys()):
    raise ValueError("mu_hat, nu_hat and g2 must have the same parameter paths.")
  med = lambda a: float(np.median(np.log2(a))) if a.size else None
  layers, ratios, u_nu, u_g2 = [], [], [], []
  for name in nu_hat:
    m, v, g = (np.asarray(a, np.float64).ravel() for a in (mu_hat[name], nu_hat[name], g2[name]))
    # Coordinates with a zero gradient or an empty moment (dead units) have no ratio.
    ok = (v > 0) & (g > 0)
    r = v[ok] / g[ok]
    ratios.append(r)
    u_nu.append(m / (np.sqrt(v) + eps))
    u_g2.append(m / (np.sqrt(g) + eps))
    layers.append({"name": name, "size": int(v.size), "log2_nu_median": med(v[v > 0]),
                   "log2_g2_median": med(g[g > 0]), "log2_nu_over_g2_median": med(r)})
  r = np.concatenate(ratios)
  lr = np.log2(r)
  shrink = 0.5 * lr  # octaves by which the step is smaller than with g2
  nu_all = _concat(nu_hat, nu_hat)
  quantiles = lambda x: dict(zip(("p10", "p25", "p50", "p75", "p90"),
                                 map(float, np.percentile(x, [10, 25, 50, 75, 90]))))
  return {
      "coordinates": int(sum(l["size"] for l in layers)),
      "with_ratio": int(r.size),
      "log2_nu_over_g2_quantiles": quantiles(lr),
      # v_hat itself: alpha * wd / sqrt(v_hat) is what Adam-L2's L2 term shrinks a weight by per step.
      "log2_nu_quantiles": quantiles(np.log2(nu_all[nu_all > 0])),
      "share_step_shrunk_by_octaves": {str(k): float(np.mean(shrink >= k)) for k in SHRINK_OCTAVES},
      "direction": log2_spread(np.concatenate(u_nu)),
      "direction_with_g2": log2_spread(np.concatenate(u_g2)),
      "layers": layers,
  }


def weights_vs_init(initial: dict[str, np.ndarray], final: dict[str, np.ndarray]) -> dict[str, float]:
  """``norm_ratio`` |w|/|w0|, the least-squares ``scale`` c of w ~ c w0 and the
  ``rest`` |w - c w0|/|w0|, over all leaves together."""
  w0, w = _concat(initial, initial), _concat(final, initial)
  n0 = np.linalg.norm(w0)
  c = float(w @ w0 / n0**2)
  return {"norm_ratio": float(np.linalg.norm(w) / n0), "scale": c,
          "rest": float(np.linalg.norm(w - c * w0) / n0)}


def l2_shrink_per_step(params: dict[str, np.ndarray], nu_hat: dict[str, np.ndarray],
                       step_size: float, wd: float, eps: float) -> dict[str, float]:
  """How much Adam-L2's L2 term shrinks the weights per step: for a weight
  whose gradient is mostly ``wd * x`` over Adam's memory, the step removes the
  fraction ``step_size * wd / (sqrt(v_hat) + eps)`` of it. ``median`` over
  coordinates, and ``norm_weighted`` (weighted by x^2: the rate at which
  ``|w|^2`` shrinks, which a few coordinates with a small v_hat can dominate)."""
  x, v = _concat(params, nu_hat), _concat(nu_hat, nu_hat)
  rate = step_size * wd / (np.sqrt(v) + eps)
  return {"median": float(np.median(rate)), "norm_weighted": float(np.sum(x**2 * rate) / np.sum(x**2))}


def adam_hyperparameters(optimizer: str) -> dict[str, float]:
  """``b1``, ``b2``, ``eps`` of the proxopt alias ``optimizer`` (its defaults)."""
  import proxopt
  params = inspect.signature(getattr(proxopt, optimizer)).parameters
  missing = [k for k in ("b1", "b2", "eps") if k not in params]
  if missing:
    raise ValueError(f"optimizer {optimizer!r} is not an Adam alias (no {', '.join(missing)}); "
                     "this tool reads Adam's moments.")
  return {k: float(params[k].default) for k in ("b1", "b2", "eps")}


def measure(run: str | pathlib.Path, *, batches: int = 20, epoch: int | None = None,
            dataset: str | None = None) -> dict[str, Any]:
  """The :func:`memory_summary` of ``run``'s latest checkpoint, with ``g2`` the
  mean squared gradient over the first ``batches`` batches of ``epoch``
  (default: the epoch after the checkpoint). ``dataset`` overrides the run's
  (e.g. a relative ``npz:`` path from another directory)."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from experiments.configs.default import L2_COUPLED, Config
  from experiments.input_pipeline.datasets import load_dataset, steps_per_epoch, train_batches
  from experiments.models import make_model
  from experiments.training import train_step as step_lib
  from experiments.training.checkpoint import Checkpointer, flatten_by_path
  from experiments.training.optimizer import build_optimizer, optax_weight_decay

  run = pathlib.Path(run)
  if not (run / "config.json").exists():
    raise FileNotFoundError(f"{run}: no config.json; pass a run directory of "
                            "`python -m experiments.train --out DIR`.")
  cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
  if dataset:
    cfg = cfg.replace(dataset=dataset)
  hp = adam_hyperparameters(cfg.optimizer)
  if batches < 1:
    raise ValueError(f"--batches must be at least 1, got {batches}.")

  ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, train_subset=cfg.train_subset,
                    val_size=cfg.val_size)
  spe = steps_per_epoch(len(ds.train), cfg.batch_size)
  if batches > spe:
    raise ValueError(f"--batches {batches} exceeds the {spe} batches of an epoch; lower it.")
  model = make_model(cfg.model, num_classes=ds.num_classes, use_bn=cfg.use_bn,
                     seed=cfg.init_seed, zero_init_residual=cfg.zero_init_residual)
  tx, plateau, learning_rate = build_optimizer(cfg, spe)
  initial = step_lib.split(model)[1]
  checkpointer = Checkpointer(run / "checkpoints")
  try:
    state, meta = checkpointer.restore(step_lib.create_train_state(model, tx, seed=cfg.seed))
  finally:
    checkpointer.close()
  epoch = meta["epoch"] + 1 if epoch is None else epoch

  graphdef = step_lib.split(step_lib.model_view(model, cfg.precision, train=True))[0]
  # Adam-L2 (unmasked in the experiments) adds wd * x to the gradient before
  # Adam's moments; AdamW's decay is outside them.
  l2 = optax_weight_decay(cfg) if cfg.optimizer in L2_COUPLED else 0.0

  @jax.jit
  def grad_sq(state, images, labels):
    # The train step's loss, at the checkpoint's parameters, without the update.
    x = step_lib.model_inputs(state, images, cfg.augment)

    def loss_fn(params):
      logits = nnx.merge(graphdef, params, state.model_state)(x)
      return step_lib.loss_and_metrics(logits, labels, cfg.loss_multiplier)[0]

    grads = jax.grad(loss_fn)(state.params)
    return jax.tree.map(lambda g, p: jnp.square(g + l2 * p), grads, state.params)

  total = None
  for j, (images, labels) in enumerate(train_batches(ds.train, cfg.batch_size, cfg.seed, epoch - 1)):
    if j == batches:
      break
    # The augmentation key of global step (epoch - 1) * spe + j, as in training.
    at = state._replace(step=jnp.asarray((epoch - 1) * spe + j, jnp.int32))
    sq = grad_sq(at, images, labels)
    total = sq if total is None else jax.tree.map(jnp.add, total, sq)

  count = int(optax.tree.get(state.opt_state, "count"))
  flat = lambda tree: {k: np.asarray(v) for k, v in flatten_by_path(tree).items()}
  mu_hat = {k: v / (1 - hp["b1"] ** count) for k, v in flat(optax.tree.get(state.opt_state, "mu")).items()}
  nu_hat = {k: v / (1 - hp["b2"] ** count) for k, v in flat(optax.tree.get(state.opt_state, "nu")).items()}
  g2 = {k: v / batches for k, v in flat(total).items()}
  params = flat(state.params)
  extra = {}
  if l2 and plateau is None:  # a plateau's step size lives in its own state; not read here
    s_t = float(learning_rate(count) if callable(learning_rate) else learning_rate)
    extra["l2_shrink_per_step"] = l2_shrink_per_step(params, nu_hat, s_t, l2, hp["eps"])
  return {"run": run.name, "optimizer": cfg.optimizer, "checkpoint_epoch": int(meta["epoch"]),
          "adam_count": count, "gradient_epoch": epoch, "batches": batches, **hp,
          **memory_summary(mu_hat, nu_hat, g2, hp["eps"]),
          "weights_vs_init": weights_vs_init(flat(initial), params), **extra}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.tools.second_moment",
                              description=__doc__.split("\n")[0])
  p.add_argument("run", help="run directory (experiments.train --out) with a checkpoint")
  p.add_argument("--batches", type=int, default=20, help="training batches to average g^2 over")
  p.add_argument("--epoch", type=int, help="epoch whose batches to use (default: the next)")
  p.add_argument("--dataset", help="override the run's dataset, e.g. npz:../shared/data/cifar10")
  p.add_argument("--out", help="write the summary here (JSON)")
  args = p.parse_args(argv)
  try:
    s = measure(args.run, batches=args.batches, epoch=args.epoch, dataset=args.dataset)
  except (FileNotFoundError, ValueError) as e:
    p.error(str(e))
  q = s["log2_nu_over_g2_quantiles"]
  print(f"{s['run']} after epoch {s['checkpoint_epoch']} (Adam step {s['adam_count']}), "
        f"g^2 over {s['batches']} batches of epoch {s['gradient_epoch']}:")
  print(f"  log2(nu_hat / g2): p10 {q['p10']:.2f}  p25 {q['p25']:.2f}  median {q['p50']:.2f}  "
        f"p75 {q['p75']:.2f}  p90 {q['p90']:.2f}")
  print(f"  log2(nu_hat): median {s['log2_nu_quantiles']['p50']:.2f}")
  print("  share of coordinates whose step is shrunk by >= 1 / 2 / 4 octaves: "
        + " / ".join(f"{v:.3f}" for v in s["share_step_shrunk_by_octaves"].values()))
  for key, what in (("direction", "with nu_hat"), ("direction_with_g2", "with g2   ")):
    d = s[key]
    print(f"  Adam direction {what}: IQR {d['iqr_octaves']:.2f} octaves, median log2 {d['median_log2']:.2f}")
  w = s["weights_vs_init"]
  print(f"  weights vs initial: |w|/|w0| {w['norm_ratio']:.3f}, w = {w['scale']:.3f} w0 + a rest "
        f"of {w['rest']:.3f} |w0|")
  if args.out:
    from experiments.files import write_json
    write_json(args.out, s)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
