r"""The paper's loss-multiplier test in seconds: multiply the loss by k.

Multiplying the loss by ``k`` multiplies every gradient by ``k``. Adam divides
each gradient coordinate by its running RMS, so its direction does not change;
AdamW and AdamProx apply the weight decay outside that direction, so their
iterates are the same for every ``k`` (up to ``eps`` and float rounding).
Adam-L2 adds ``lambda * w`` to the gradient *before* the normalisation: the
multiplier divides its effective L2 strength by ``k`` and its trajectory moves
(Zhuang, Liu, Cutkosky, Orabona, TMLR 2022, Sec. 4, and the x10 / x100 runs of
its Sec. 6).

The model is softmax regression on the pixels of the embedded CIFAR-10 sample
(1600 training images): a convex problem, so that float rounding is not
amplified by the chaos of a deep network and what moves a trajectory is the
optimizer, not the arithmetic. Each optimizer runs the same batches with the
loss multiplied by every ``k`` at once (``vmap`` over ``k``, ``lax.scan`` over
steps, one compile per optimizer). Reported per (optimizer, k):
``traj_change`` = max_t ||w_t(k) - w_t(1)|| / max_t ||w_t(1) - w_0|| (how far
the trajectory moves from the x1 trajectory, relative to how far the x1
trajectory goes), the final ``weight_norm``, ``train_loss`` (of the loss
without the multiplier) and ``test_acc``.

``python -m experiments.toy.loss_multiplier`` prints the table;
``python -m experiments.compare`` runs it as its first part.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import proxopt
from experiments.input_pipeline import load_dataset, normalize

OPTIMIZERS = ("adam_l2", "adamw", "adamprox")
LABEL = {"adam_l2": "Adam-L2", "adamw": "AdamW", "adamprox": "AdamProx"}


@dataclasses.dataclass(frozen=True)
class Config:
  multipliers: tuple[float, ...] = (1.0, 10.0, 100.0)
  optimizers: tuple[str, ...] = OPTIMIZERS
  steps: int = 300
  batch_size: int = 128
  lr: float = 1e-3
  # The paper's convention: Adam-L2's lambda is the L2 coefficient; AdamW and
  # AdamProx decay by lambda * lr_t / alpha per step. One lambda for all three.
  lam: float = 1e-2
  train_subset: int | None = None
  seed: int = 0


def _optimizer(name: str, cfg: Config) -> optax.GradientTransformation:
  if name == "adam_l2":
    return proxopt.adam_l2(cfg.lr, weight_decay=cfg.lam)
  if name in ("adamw", "adamprox"):
    wd = proxopt.paper_to_optax(alpha=cfg.lr, lam=cfg.lam)
    return getattr(proxopt, name)(cfg.lr, weight_decay=wd)
  raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}.")


def _logits(p, x):
  return x @ p["kernel"] + p["bias"]


def _loss(p, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(_logits(p, x), y).mean()


def _norm(tree) -> jax.Array:
  return optax.tree.norm(tree)


def _data(cfg: Config):
  ds = load_dataset("sample", train_subset=cfg.train_subset)
  flat = lambda s: np.asarray(normalize(s.images)).reshape(len(s.images), -1)
  return (flat(ds.train), ds.train.labels.astype(np.int32),
          flat(ds.test), ds.test.labels.astype(np.int32), ds.num_classes)


def run(cfg: Config = Config(), progress: Callable[[str], None] | None = None
        ) -> dict[str, Any]:
  """``{"rows": [dict per (optimizer, k)], "distance": {optimizer: {k: per-step
  ||w_t(k) - w_t(1)|| / max_t ||w_t(1) - w_0||}}, "config": ...}``.

  ``progress``: called with the optimizer's name after each optimizer.
  """
  if not cfg.multipliers or cfg.multipliers[0] != 1.0:
    raise ValueError(f"multipliers must start with 1 (the reference), got {cfg.multipliers}")
  if any(not k > 0 for k in cfg.multipliers):
    raise ValueError(f"multipliers must be positive, got {cfg.multipliers}")
  if cfg.steps < 1:
    raise ValueError(f"steps must be >= 1, got {cfg.steps}")
  xtr, ytr, xte, yte, n_cls = _data(cfg)
  rng = np.random.default_rng(cfg.seed)
  idx = jnp.asarray(np.stack([rng.choice(len(xtr), cfg.batch_size, replace=False)
                              for _ in range(cfg.steps)]))
  p0 = {"kernel": jnp.zeros((xtr.shape[1], n_cls)), "bias": jnp.zeros(n_cls)}
  ks = jnp.asarray(cfg.multipliers, jnp.float32)
  xtr_j, ytr_j = jnp.asarray(xtr), jnp.asarray(ytr)
  rows, distance = [], {}
  for name in cfg.optimizers:
    tx = _optimizer(name, cfg)

    @jax.jit
    def train(p0, idx):
      params = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(cfg.multipliers), *x.shape)), p0)
      state = jax.vmap(tx.init)(params)

      def one(p, s, k, xb, yb):
        g = jax.grad(lambda p: k * _loss(p, xb, yb))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

      def step(carry, i):
        params, state = carry
        params, state = jax.vmap(one, in_axes=(0, 0, 0, None, None))(
            params, state, ks, xtr_j[i], ytr_j[i])
        ref = jax.tree.map(lambda x: x[0], params)
        dist = jax.vmap(lambda p: _norm(jax.tree.map(jnp.subtract, p, ref)))(params)
        return (params, state), (dist, _norm(jax.tree.map(jnp.subtract, ref, p0)))

      (params, _), (dist, moved) = jax.lax.scan(step, (params, state), idx)
      return params, dist, moved

    params, dist, moved = jax.device_get(train(p0, idx))
    scale = float(np.max(moved))
    distance[name] = {}
    for j, k in enumerate(cfg.multipliers):
      p = jax.tree.map(lambda x: x[j], params)
      rows.append(dict(
          optimizer=name, multiplier=float(k),
          traj_change=float(np.max(dist[:, j]) / scale),
          weight_norm=float(_norm(p)),
          train_loss=float(_loss(p, xtr_j, ytr_j)),
          test_acc=float(np.mean(np.argmax(np.asarray(_logits(p, xte)), -1) == yte))))
      distance[name][float(k)] = [float(v) / scale for v in dist[:, j]]
    if progress is not None:
      progress(name)
  return {"rows": rows, "distance": distance, "config": dataclasses.asdict(cfg)}


def format_table(result: dict[str, Any]) -> str:
  lines = ["| optimizer | loss x | trajectory change vs x1 | weight norm | train loss | test acc |",
           "|---|---|---|---|---|---|"]
  for r in result["rows"]:
    lines.append(f"| {LABEL.get(r['optimizer'], r['optimizer'])} | {r['multiplier']:g} "
                 f"| {r['traj_change']:.1e} | {r['weight_norm']:.3f} "
                 f"| {r['train_loss']:.4f} | {r['test_acc']:.3f} |")
  return "\n".join(lines)


def largest_change(result: dict[str, Any], optimizer: str) -> float:
  """The largest ``traj_change`` of ``optimizer`` over the multipliers."""
  return max(r["traj_change"] for r in result["rows"] if r["optimizer"] == optimizer)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.toy.loss_multiplier",
                              description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=Config.steps)
  p.add_argument("--lam", type=float, default=Config.lam,
                 help="lambda of all three optimizers (paper convention)")
  p.add_argument("--seed", type=int, default=Config.seed)
  args = p.parse_args(argv)
  if args.steps < 1:
    p.error(f"--steps must be >= 1, got {args.steps}.")
  if not args.lam >= 0:
    p.error(f"--lam must be >= 0, got {args.lam}.")
  print(format_table(run(Config(steps=args.steps, lam=args.lam, seed=args.seed))))
  return 0


if __name__ == "__main__":
  sys.exit(main())
