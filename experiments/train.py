r"""Train a CIFAR model with a proxopt or Optax optimizer: ``python -m experiments.train``.

Writes to ``--out DIR``:

- ``config.json``: the resolved configuration (paper and optax weight decay);
- ``metrics.jsonl``: one JSON object per epoch (``epoch``, ``train_loss``,
  ``train_acc``, ``test_loss``, ``test_acc``, ``val_*`` with a validation
  split, ``lr``, ``epoch_seconds``, ``wall_seconds``, ``images_per_sec``,
  the spread of the update magnitudes ``update_iqr_octaves`` /
  ``update_within_one_octave`` / ``update_median_log2`` and the pooled
  histogram ``update_log2_hist`` over the epoch from
  :func:`proxopt.track_update_scales` (``update_hist_of``: of the
  Adam direction ``log2|m_hat / (sqrt(v_hat) + eps)|`` for the Adam aliases,
  as in the paper, else of the whole step ``log2|x_{t+1} - x_t|``), and
  ``nonfinite_skips`` with ``--skip-nonfinite``);
- ``summary.json``: final metrics, status, compile time, throughput;
- ``checkpoint.npz``: the full train state after the last finished epoch.

With ``--schedule constant`` (the paper's protocol), rerunning with a larger
``--epochs`` extends a finished run from its last checkpoint: the result is
the same as a run started with that many epochs.

Rerunning the same command resumes from the checkpoint (after a crash or a
SIGKILL); the batches (a permutation per ``(seed, epoch)``) and the
augmentation (``fold_in(key, step)``) are pure functions of the position, so
the final metrics are bit-identical to an uninterrupted run on CPU. An
``--out`` holding a different configuration is refused unless
``--overwrite``. A non-finite loss stops the run (exit code 3) and keeps
the last good checkpoint; ``--skip-nonfinite`` skips such steps instead
(``optax.apply_if_finite``) and counts them.

With several JAX devices the batch is sharded over all of them and the state
replicated (``jax.sharding``); see ``docs/readme/5-experiments.md`` for
multi-host runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import time
from typing import Any

import numpy as np

OPTIMIZERS = ("adam_l2", "adamw", "adamprox", "sgd_l2", "sgdw", "sgdprox",
              "sgd", "momentum", "adagrad", "rmsprop", "adam")
ALIASES = OPTIMIZERS[:6]
L2_COUPLED = ("adam_l2", "sgd_l2")  # weight_decay is the L2 coefficient as is
SCHEDULES = ("constant", "cosine", "cosine_epoch", "step", "plateau", "warmup_cosine")
REGULARIZERS = ("none", "l1", "group_lasso")
CONVENTIONS = ("optax", "paper")
IMPLS = ("auto", "plain", "nofusion", "blockwise")
CONVS = ("auto", "xla", "onednn")

# Config keys that do not change the numbers a run produces: they may differ
# between a run and its resumption.
NON_SEMANTIC = ("out", "overwrite", "progress", "data_dir", "distributed")
TIME_KEYS = ("epoch_seconds", "wall_seconds", "images_per_sec")

DEFAULTS: dict[str, Any] = dict(
    dataset="sample", data_dir=None, model="resnet20", use_bn=True,
    zero_init_residual=False,
    optimizer="adamw", lr=1e-3, weight_decay=0.0, convention="optax",
    momentum=0.9, schedule="constant", epochs=10, batch_size=128,
    train_subset=None, test_subset=None, val_size=0, loss_multiplier=1.0,
    seed=0, init_seed=None, regularizer="none", reg_strength=0.0,
    skip_nonfinite=False, max_consecutive_skips=10, step_every=None,
    decay_factor=0.1, warmup_epochs=None, patience=10, augment=True,
    update_hist=True, impl="auto", conv="auto", eval_batch_size=500, max_steps=None,
    recipe=None, scale=None, out=None, overwrite=False, progress=None,
    distributed=False,
)


class ConfigError(ValueError):
  """Bad command-line input; the message names the flag and the fix."""


class NonFiniteLoss(RuntimeError):
  """The loss became NaN/Inf; the run stopped keeping the last checkpoint."""


def _choice(name: str, value: Any, choices) -> None:
  if value not in choices:
    raise ConfigError(
        f"unknown {name} {value!r}; valid choices: {', '.join(map(str, choices))}."
    )


# ----------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
  from experiments.models import MODELS

  p = argparse.ArgumentParser(
      prog="python -m experiments.train",
      description="Train a CIFAR ResNet/DenseNet with AdamW, Adam-L2, AdamProx "
      "or another optimizer (Zhuang et al., TMLR 2022). Resumable.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
      argument_default=argparse.SUPPRESS,
  )
  a = p.add_argument
  a("--recipe", help="a paper recipe (python -m experiments.recipes lists them); "
    "explicit flags override its values")
  a("--scale", choices=("quick", "paper"), help="recipe scale (default paper)")
  a("--dataset", help="cifar10 | cifar100 | npz:DIR | sample (default sample)")
  a("--data-dir", dest="data_dir", help="tensorflow-datasets data_dir")
  a("--model", help=f"one of {', '.join(MODELS)} (default resnet20)")
  a("--no-bn", dest="use_bn", action="store_false", help="remove BatchNorm layers")
  a("--bn", dest="use_bn", action="store_true", help="keep BatchNorm (default)")
  a("--zero-init-residual", dest="zero_init_residual", action="store_true",
    help="ResNets: zero the last conv of every residual branch (trains deep no-BN "
    "nets in short runs; not the paper's init)")
  a("--optimizer", help=f"one of {', '.join(OPTIMIZERS)} (default adamw)")
  a("--lr", type=float, help="base learning rate alpha (default 1e-3)")
  a("--weight-decay", dest="weight_decay", type=float,
    help="decay coefficient in --convention units (default 0); for adam_l2/"
    "sgd_l2 the L2 coefficient; for the classic optimizers a decoupled decay")
  a("--convention", help="optax: per-step decay lr_t*wd; paper: lambda*lr_t/alpha "
    "(default optax)")
  a("--momentum", type=float, help="momentum of sgd_l2/sgdw/sgdprox/momentum (default 0.9)")
  a("--schedule", help=f"one of {', '.join(SCHEDULES)} (default constant)")
  a("--step-every", dest="step_every", type=int,
    help="schedule=step: epochs between decays (default epochs//3)")
  a("--decay-factor", dest="decay_factor", type=float,
    help="schedule=step/plateau: multiplier per decay (default 0.1)")
  a("--warmup-epochs", dest="warmup_epochs", type=float,
    help="schedule=warmup_cosine: warm-up length (default 5%% of the run)")
  a("--patience", type=int, help="schedule=plateau: epochs without improvement (default 10)")
  a("--epochs", type=int, help="default 10")
  a("--batch-size", dest="batch_size", type=int, help="global batch size (default 128)")
  a("--eval-batch-size", dest="eval_batch_size", type=int, help="default 500")
  a("--train-subset", dest="train_subset", type=int, help="train on N images only")
  a("--test-subset", dest="test_subset", type=int, help="evaluate on a fixed random N test images")
  a("--val-size", dest="val_size", type=int,
    help="hold out N training images as a validation split (default 0)")
  a("--loss-multiplier", dest="loss_multiplier", type=float,
    help="multiply the loss (the paper's scale test: 10, 100; default 1)")
  a("--seed", type=int, help="data order and augmentation seed (default 0)")
  a("--init-seed", dest="init_seed", type=int,
    help="model initialisation seed (default: --seed)")
  a("--regularizer", help="extra proximal term on conv/dense kernels: none | l1 | "
    "group_lasso (per output filter/unit) (default none)")
  a("--reg-strength", dest="reg_strength", type=float, help="its lambda (default 0)")
  a("--skip-nonfinite", dest="skip_nonfinite", action="store_true",
    help="skip steps with a NaN/Inf gradient (optax.apply_if_finite) and count them")
  a("--max-consecutive-skips", dest="max_consecutive_skips", type=int,
    help="with --skip-nonfinite, stop after this many skipped steps in a row (default 10)")
  a("--no-augment", dest="augment", action="store_false", help="no crop/flip")
  a("--no-update-hist", dest="update_hist", action="store_false",
    help="do not histogram the update magnitudes")
  a("--impl", help=f"train-step implementation: {', '.join(IMPLS)} (default auto)")
  a("--conv", help=f"convolution kernels: {', '.join(CONVS)} (default auto: oneDNN "
    "on one CPU device when it builds, else XLA)")
  a("--max-steps", dest="max_steps", type=int, help="stop after N steps in total")
  a("--out", help="output directory (default runs/<model>-<optimizer>-s<seed>)")
  a("--overwrite", action="store_true", help="replace an --out holding another config")
  a("--distributed", action="store_true",
    help="multi-host: call jax.distributed.initialize() first (run the same "
    "command on every host)")
  a("--progress", dest="progress", action="store_true", help="force the progress bar")
  a("--no-progress", dest="progress", action="store_false", help="no progress bar")
  return p


def resolve_config(args: dict) -> dict:
  """Recipe values, then explicit flags, then defaults; validated."""
  from experiments import recipes

  cfg = dict(DEFAULTS)
  if args.get("recipe"):
    try:
      recipe = recipes.get_recipe(args["recipe"])
    except ValueError as e:
      raise ConfigError(str(e)) from None
    cfg.update(recipe.config(args.get("scale") or "paper"))
    cfg["scale"] = args.get("scale") or "paper"
  elif args.get("scale"):
    raise ConfigError("--scale applies to a --recipe; pass --recipe NAME too.")
  cfg.update(args)
  if cfg["init_seed"] is None:
    cfg["init_seed"] = cfg["seed"]
  if cfg["out"] is None:
    cfg["out"] = os.path.join(
        "runs", f"{cfg['model']}-{'bn' if cfg['use_bn'] else 'nobn'}-"
        f"{cfg['optimizer']}-s{cfg['seed']}")
  validate_config(cfg)
  return cfg


def validate_config(cfg: dict) -> None:
  from experiments.data import DATASET_CHOICES, TFDS_DATASETS
  from experiments.models import MODELS

  _choice("model", cfg["model"], MODELS)
  _choice("optimizer", cfg["optimizer"], OPTIMIZERS)
  _choice("schedule", cfg["schedule"], SCHEDULES)
  _choice("convention", cfg["convention"], CONVENTIONS)
  _choice("regularizer", cfg["regularizer"], REGULARIZERS)
  _choice("impl", cfg["impl"], IMPLS)
  _choice("conv", cfg["conv"], CONVS)
  ds = cfg["dataset"]
  if not (ds in TFDS_DATASETS or ds == "sample" or (ds.startswith("npz:") and len(ds) > 4)):
    raise ConfigError(f"unknown dataset {ds!r}; valid choices: {', '.join(DATASET_CHOICES)}.")
  for k in ("epochs", "batch_size", "eval_batch_size"):
    if not isinstance(cfg[k], int) or cfg[k] < 1:
      raise ConfigError(f"--{k.replace('_', '-')} must be a positive int, got {cfg[k]!r}.")
  for k in ("train_subset", "test_subset", "max_steps", "step_every"):
    if cfg[k] is not None and cfg[k] < 1:
      raise ConfigError(f"--{k.replace('_', '-')} must be >= 1, got {cfg[k]!r}.")
  if cfg["val_size"] < 0:
    raise ConfigError(f"--val-size must be >= 0, got {cfg['val_size']!r}.")
  if not cfg["lr"] > 0:
    raise ConfigError(f"--lr must be > 0, got {cfg['lr']!r}.")
  for k in ("weight_decay", "reg_strength"):
    if not cfg[k] >= 0:
      raise ConfigError(f"--{k.replace('_', '-')} must be >= 0, got {cfg[k]!r}.")
  if not (cfg["loss_multiplier"] > 0 and math.isfinite(cfg["loss_multiplier"])):
    raise ConfigError(f"--loss-multiplier must be a positive number, got {cfg['loss_multiplier']!r}.")
  if cfg["regularizer"] != "none" and not cfg["reg_strength"] > 0:
    raise ConfigError(f"--regularizer {cfg['regularizer']} needs --reg-strength > 0.")
  if not 0 <= cfg["momentum"] < 1:
    raise ConfigError(f"--momentum must be in [0, 1), got {cfg['momentum']!r}.")


def semantic(cfg: dict) -> dict:
  # Keys added after a run was written take their defaults, so the run still
  # matches a config that leaves them at the default.
  return {k: v for k, v in {**DEFAULTS, **cfg}.items() if k not in NON_SEMANTIC}


# ----------------------------------------------------------------- optimizer


def optax_weight_decay(cfg: dict) -> float:
  """The coefficient the optimizer receives, in the optax/PyTorch convention."""
  from proxopt import paper_to_optax

  wd = cfg["weight_decay"]
  if cfg["convention"] == "paper" and cfg["optimizer"] not in L2_COUPLED:
    return paper_to_optax(alpha=cfg["lr"], lam=wd)
  return wd


def build_schedule(cfg: dict, steps_per_epoch: int):
  """(learning_rate for the optimizer, plateau or None)."""
  import optax
  import proxopt

  lr, epochs, name = cfg["lr"], cfg["epochs"], cfg["schedule"]
  total = epochs * steps_per_epoch
  if name == "constant":
    return lr, None
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, total), None
  if name == "cosine_epoch":
    return proxopt.cosine_per_epoch(lr, epochs, steps_per_epoch), None
  if name == "step":
    every = cfg["step_every"] or max(1, epochs // 3)
    return proxopt.step_decay(lr, cfg["decay_factor"], every, steps_per_epoch), None
  if name == "warmup_cosine":
    we = cfg["warmup_epochs"]
    warm = int(round((we if we is not None else 0.05 * epochs) * steps_per_epoch))
    return proxopt.warmup_cosine(lr, min(warm, total - 1), total), None
  plateau = proxopt.reduce_on_plateau(
      lr, factor=cfg["decay_factor"], patience=cfg["patience"])
  return plateau, plateau


def _kernel_mask(ndim: int):
  return lambda params: __import__("jax").tree.map(lambda x: x.ndim == ndim, params)


def histogram_of(optimizer: str) -> str:
  """What the update histogram of ``optimizer`` holds."""
  return "adam_direction" if optimizer in ALIASES and optimizer.startswith("adam") else "step"


def build_optimizer(cfg: dict, steps_per_epoch: int):
  """(tx, plateau or None) for ``cfg``; the tx may be wrapped for diagnostics."""
  import optax
  import proxopt

  learning_rate, plateau = build_schedule(cfg, steps_per_epoch)
  wd = optax_weight_decay(cfg)
  name = cfg["optimizer"]

  # The Adam aliases histogram their Adam direction (the paper's figure);
  # every other optimizer is wrapped whole and histograms x_{t+1} - x_t.
  adam_alias = histogram_of(name) == "adam_direction"

  def build(learning_rate):
    if name in ALIASES:
      kw = ({"track_direction": cfg["update_hist"]} if adam_alias
            else {"momentum": cfg["momentum"]})
      base = getattr(proxopt, name)(learning_rate, weight_decay=wd, **kw)
    else:
      base = proxopt.classic(name, learning_rate, momentum=cfg["momentum"],
                             weight_decay=wd)
    parts = [base]
    strength = cfg["reg_strength"]
    if cfg["regularizer"] == "l1":
      parts.append(proxopt.proximal(proxopt.l1(strength), learning_rate,
                                    mask=lambda p: __import__("jax").tree.map(
                                        lambda x: x.ndim > 1, p)))
    elif cfg["regularizer"] == "group_lasso":
      # One group per output filter (conv, HWIO) or output unit (dense).
      parts.append(proxopt.proximal(proxopt.group_lasso(strength, axis=(0, 1, 2)),
                                    learning_rate, mask=_kernel_mask(4)))
      parts.append(proxopt.proximal(proxopt.group_lasso(strength, axis=0),
                                    learning_rate, mask=_kernel_mask(2)))
    return optax.with_extra_args_support(optax.chain(*parts))

  if plateau is not None:
    # One injected step size drives the base step, the decay and every prox.
    tx = optax.inject_hyperparams(build)(learning_rate=plateau)
  else:
    tx = build(learning_rate)
  if cfg["update_hist"] and not adam_alias:
    tx = proxopt.track_update_scales(tx)
  if cfg["skip_nonfinite"]:
    # Outermost, so a skipped step leaves the histograms untouched as well.
    tx = optax.apply_if_finite(tx, max_consecutive_errors=cfg["max_consecutive_skips"] + 1)
  return tx, plateau, learning_rate


def current_lr(learning_rate, plateau, opt_state, step: int) -> float:
  if plateau is not None:
    return float(plateau.step_size(opt_state))
  if callable(learning_rate):
    return float(learning_rate(step))
  return float(learning_rate)


# ----------------------------------------------------------------- output dir


def extends(old: dict, cfg: dict) -> bool:
  """True if ``cfg`` is run ``old`` trained for more epochs.

  Only with a constant step size: then epochs 1..E of an (E+k)-epoch run are
  exactly the E-epoch run, so a finished run can be extended in place.
  """
  same = {k: v for k, v in semantic(old).items() if k != "epochs"}
  return (old.get("schedule") == "constant" and cfg["epochs"] >= old.get("epochs", 0)
          and same == {k: v for k, v in semantic(cfg).items() if k != "epochs"})


def prepare_out_dir(cfg: dict) -> pathlib.Path:
  out = pathlib.Path(cfg["out"])
  cfg_path = out / "config.json"
  if cfg_path.exists():
    try:
      old = json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
      old = None
    if old is not None and old.get("epochs") != cfg["epochs"] and extends(old, cfg):
      from experiments.checkpoint import atomic_write_json
      atomic_write_json(cfg_path, cfg)  # the same run, trained longer
    elif old is None or semantic(old) != semantic(cfg):
      if not cfg["overwrite"]:
        diff = sorted(k for k in set(semantic(cfg)) | set(semantic(old or {}))
                      if (old or {}).get(k) != cfg.get(k))
        raise ConfigError(
            f"--out {out} holds a run with a different configuration (differs in: "
            f"{', '.join(diff)}); refusing to overwrite it. Choose another --out, "
            "or pass --overwrite to delete it (with a constant step size, a larger "
            "--epochs alone extends a run)."
        )
      shutil.rmtree(out)
  elif out.exists() and any(out.iterdir()) and not cfg["overwrite"]:
    raise ConfigError(
        f"--out {out} exists, is not empty and holds no config.json; choose another "
        "--out or pass --overwrite."
    )
  elif out.exists() and cfg["overwrite"]:
    shutil.rmtree(out)
  out.mkdir(parents=True, exist_ok=True)
  return out


def _read_metrics(path: pathlib.Path, upto_epoch: int) -> list[dict]:
  if not path.exists():
    return []
  rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
  return [r for r in rows if r["epoch"] <= upto_epoch]


def _write_metrics(path: pathlib.Path, rows: list[dict]) -> None:
  from experiments.checkpoint import atomic_write_text
  atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


# ----------------------------------------------------------------- training


def _device_mesh():
  import jax
  n = jax.device_count()
  if n == 1:
    return None
  return jax.make_mesh((n,), ("data",))


def _global_batch(x: np.ndarray, sharding):
  """This process's slice of a global batch as a sharded array (multi-host)."""
  import jax
  if sharding is None or jax.process_count() == 1:
    return x
  per = x.shape[0] // jax.process_count()
  local = x[jax.process_index() * per:(jax.process_index() + 1) * per]
  return jax.make_array_from_process_local_data(sharding, local, x.shape)


def evaluate(eval_step, state, split, batch_size, sharding) -> tuple[float, float]:
  from experiments.data import eval_batches
  tot = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
  outs = [eval_step(state, _global_batch(x, sharding), _global_batch(y, sharding),
                    _global_batch(m, sharding))
          for x, y, m in eval_batches(split, batch_size)]
  for o in outs:  # summed on host in float64, in a fixed order
    for k in tot:
      tot[k] += float(o[k])
  return tot["loss_sum"] / tot["count"], tot["correct"] / tot["count"]


def _find_if_finite_state(opt_state):
  import jax
  import optax
  found = [x for x in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ApplyIfFiniteState))
           if isinstance(x, optax.ApplyIfFiniteState)]
  return found[0] if found else None


def run(cfg: dict, log=print) -> dict:
  """Trains according to a resolved ``cfg``; returns the summary dict."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from tqdm import tqdm

  import proxopt
  from experiments import checkpoint as ckpt
  from experiments import step as step_lib
  from experiments.data import load_dataset, steps_per_epoch, train_batches
  from experiments.models import count_params, make_model

  # Multi-host: every process trains (its slice of each global batch); only
  # process 0 writes files. The output directory must be shared storage, or
  # at least process 0's, which holds the checkpoint used to resume.
  is_main = jax.process_index() == 0
  out = prepare_out_dir(cfg) if is_main else pathlib.Path(cfg["out"])
  summary_path, metrics_path, ckpt_path = (
      out / "summary.json", out / "metrics.jsonl", out / "checkpoint.npz")
  if summary_path.exists():
    summary = json.loads(summary_path.read_text())
    if summary.get("status") == "complete" and summary.get("epochs", 0) >= cfg["epochs"]:
      log(f"{out}: already complete (final test_acc {summary.get('test_acc')}).")
      return summary

  ds = load_dataset(cfg["dataset"], data_dir=cfg["data_dir"],
                    train_subset=cfg["train_subset"], val_size=cfg["val_size"])
  if cfg["test_subset"]:
    # Test sets may be grouped by class: a fixed random subset, not the head.
    perm = np.random.default_rng(0).permutation(len(ds.test))
    ds.test = ds.test.take(np.sort(perm[:cfg["test_subset"]]))
  n_dev = jax.device_count()
  bs = cfg["batch_size"]
  if bs % n_dev:
    raise ConfigError(
        f"--batch-size {bs} must be divisible by the {n_dev} devices; use a multiple of {n_dev}.")
  eval_bs = -(-cfg["eval_batch_size"] // n_dev) * n_dev
  spe = steps_per_epoch(len(ds.train), bs)
  if spe == 0:
    raise ConfigError(
        f"--batch-size {bs} exceeds the {len(ds.train)} training images; lower it.")

  model = make_model(cfg["model"], num_classes=ds.num_classes,
                     use_bn=cfg["use_bn"], seed=cfg["init_seed"],
                     zero_init_residual=cfg["zero_init_residual"])
  tx, plateau, learning_rate = build_optimizer(cfg, spe)
  mesh = _device_mesh()
  data_sharding = NamedSharding(mesh, P("data")) if mesh is not None else None
  state = step_lib.create_train_state(model, tx, seed=cfg["seed"], mesh=mesh)
  train_step = step_lib.make_train_step(
      model, tx, loss_multiplier=cfg["loss_multiplier"], augment=cfg["augment"],
      mesh=mesh, impl=cfg["impl"], conv=cfg["conv"])
  eval_step = step_lib.make_eval_step(model, mesh=mesh, conv=train_step.conv)

  resolved = dict(cfg, optax_weight_decay=optax_weight_decay(cfg),
                  num_params=count_params(model), num_classes=ds.num_classes,
                  steps_per_epoch=spe, train_size=len(ds.train),
                  test_size=len(ds.test), devices=n_dev,
                  step_impl=train_step.impl, step_conv=train_step.conv)
  if is_main:
    if not (out / "config.json").exists():
      ckpt.atomic_write_json(out / "config.json", cfg)
    ckpt.atomic_write_json(out / "resolved_config.json", resolved)

  start_epoch, wall_before, skips_before = 0, 0.0, 0
  if ckpt_path.exists():
    template = state
    state, meta = ckpt.load_checkpoint(ckpt_path, template)
    del template
    state = jax.device_put(state, NamedSharding(mesh, P()) if mesh is not None
                           else jax.devices()[0])
    start_epoch, wall_before = meta["epoch"], meta["wall_seconds"]
    log(f"{out}: resuming after epoch {start_epoch} (step {meta['step']}).")
  rows = _read_metrics(metrics_path, start_epoch)

  kill_at = int(os.environ.get("EXPERIMENTS_FAULT_KILL_AT_STEP", "0"))
  progress = cfg["progress"]
  first_step_s = None
  step_times = []
  t_run = time.perf_counter()
  global_step = start_epoch * spe
  stop_reason = None
  for epoch in range(start_epoch + 1, cfg["epochs"] + 1):
    t_epoch = time.perf_counter()
    losses, accs = [], []
    bar = tqdm(total=spe, desc=f"epoch {epoch}/{cfg['epochs']}", unit="step",
               disable=(None if progress is None else not progress), leave=False,
               file=sys.stderr)
    for images, labels in train_batches(ds.train, bs, cfg["seed"], epoch - 1):
      t0 = time.perf_counter()
      state, m = train_step(state, _global_batch(images, data_sharding),
                            _global_batch(labels, data_sharding))
      loss = float(m["loss"])  # host sync: needed for the NaN check and the bar
      dt = time.perf_counter() - t0
      global_step += 1
      if first_step_s is None:
        first_step_s = dt
      else:
        step_times.append(dt)
      if kill_at and global_step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume test
      if cfg["skip_nonfinite"]:
        # apply_if_finite decided from the gradients; a skipped step changed
        # nothing but the step count. Its loss stays out of the epoch mean.
        consecutive = int(state.opt_state.notfinite_count)
        if consecutive > cfg["max_consecutive_skips"]:
          bar.close()
          raise NonFiniteLoss(
              f"{consecutive} consecutive non-finite steps at epoch {epoch}, step "
              f"{global_step}: stopped (--max-consecutive-skips "
              f"{cfg['max_consecutive_skips']}). The last good checkpoint is kept.")
        if consecutive or not math.isfinite(loss):
          continue
      elif not math.isfinite(loss):
        bar.close()
        raise NonFiniteLoss(
            f"non-finite loss ({loss}) at epoch {epoch}, step {global_step}: "
            f"stopped. The last good checkpoint (epoch {epoch - 1}) is kept in "
            f"{ckpt_path if epoch > 1 else '(none: failed in epoch 1)'}. Lower "
            "--lr / --loss-multiplier, or pass --skip-nonfinite to skip such steps.")
      losses.append(loss)
      accs.append(m["accuracy"])
      bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{bs / dt:.0f}")
      bar.update(1)
      if cfg["max_steps"] and global_step >= cfg["max_steps"]:
        stop_reason = "max_steps"
        break
    bar.close()
    epoch_s = time.perf_counter() - t_epoch
    row = {"epoch": epoch, "step": global_step,
           "train_loss": float(np.mean(losses)) if losses else float("nan"),
           "train_acc": float(np.mean([float(a) for a in accs])) if accs else float("nan")}
    row["test_loss"], row["test_acc"] = evaluate(eval_step, state, ds.test, eval_bs,
                                                 data_sharding)
    if ds.val is not None:
      row["val_loss"], row["val_acc"] = evaluate(eval_step, state, ds.val, eval_bs,
                                                 data_sharding)
    row["lr"] = current_lr(learning_rate, plateau, state.opt_state, global_step)
    if cfg["update_hist"]:
      s = proxopt.update_scale_summary(state.opt_state)
      hist = proxopt.update_scale_histogram(state.opt_state)
      pooled = sum(h["counts"] for h in hist["leaves"].values())
      row.update(update_hist_of=histogram_of(cfg["optimizer"]),
                 update_iqr_octaves=s.pooled.iqr_octaves,
                 update_within_one_octave=s.pooled.within_one_octave,
                 update_median_log2=s.pooled.median_log2,
                 update_zero_fraction=s.pooled.zero_fraction,
                 update_log2_hist=[int(c) for c in pooled],
                 update_log2_edges=[float(hist["edges"][0]), float(hist["edges"][-1])])
      state = state._replace(opt_state=proxopt.reset_update_scales(state.opt_state))
    if plateau is not None:
      metric = row["val_loss"] if ds.val is not None else row["train_loss"]
      state = state._replace(opt_state=plateau.observe(state.opt_state, metric))
    fin = _find_if_finite_state(state.opt_state)
    if fin is not None:
      row["nonfinite_skips"] = int(fin.total_notfinite)
    if mesh is not None:  # host-side edits above may have moved leaves
      state = jax.device_put(state, NamedSharding(mesh, P()))
    wall = wall_before + (time.perf_counter() - t_run)
    n_img = len(losses) * bs
    row.update(epoch_seconds=epoch_s, wall_seconds=wall,
               images_per_sec=n_img / epoch_s if epoch_s > 0 else float("nan"))
    rows.append(row)
    complete_epoch = stop_reason is None
    if complete_epoch and is_main:
      ckpt.save_checkpoint(ckpt_path, state, {
          "epoch": epoch, "step": global_step, "wall_seconds": wall})
    if is_main:
      _write_metrics(metrics_path, rows)
    msg = (f"epoch {epoch}: train_loss {row['train_loss']:.4f} train_acc "
           f"{row['train_acc']:.3f} test_loss {row['test_loss']:.4f} test_acc "
           f"{row['test_acc']:.3f}")
    if ds.val is not None:
      msg += f" val_acc {row['val_acc']:.3f}"
    log(msg + f" lr {row['lr']:.3g} ({epoch_s:.1f}s)")
    if stop_reason:
      break

  if stop_reason == "max_steps" and is_main:
    # A partial epoch has no checkpoint: save the state for inspection.
    ckpt.save_checkpoint(out / "final_state.npz", state,
                         {"epoch": rows[-1]["epoch"] if rows else 0, "step": global_step})
  last = rows[-1] if rows else {}
  med = float(np.median(step_times)) if step_times else None
  summary = {
      "status": "complete" if stop_reason is None else stop_reason,
      "epochs": last.get("epoch", 0), "steps": global_step,
      **{k: last.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc",
                                  "val_loss", "val_acc") if k in last},
      "best_test_acc": max((r["test_acc"] for r in rows), default=None),
      "first_step_seconds": first_step_s, "median_step_seconds": med,
      # The first step = compile + one step (an estimate of compile time).
      "compile_seconds_estimate": (first_step_s - med) if (first_step_s and med) else None,
      "images_per_sec": (bs / med) if med else None,
      "wall_seconds": last.get("wall_seconds"), "num_params": resolved["num_params"],
      "step_impl": train_step.impl, "step_conv": train_step.conv, "devices": n_dev,
  }
  if is_main:
    ckpt.atomic_write_json(summary_path, summary)
  return summary


def _write_failure(cfg: dict, message: str) -> None:
  from experiments.checkpoint import atomic_write_json
  out = pathlib.Path(cfg["out"])
  if out.exists():
    atomic_write_json(out / "summary.json", {"status": "diverged", "error": message})


def main(argv=None) -> int:
  parser = build_parser()
  args = vars(parser.parse_args(argv))
  if args.get("distributed"):
    import jax
    # Reads the coordinator address, process count and id from the cluster
    # environment (TPU pods, SLURM, ...) or from JAX_COORDINATOR_ADDRESS etc.
    jax.distributed.initialize()
  try:
    cfg = resolve_config(args)
    summary = run(cfg)
  except ConfigError as e:
    parser.error(str(e))  # exits with code 2
  except NonFiniteLoss as e:
    _write_failure(cfg, str(e))
    print(f"error: {e}", file=sys.stderr)
    return 3
  except ValueError as e:  # bad dataset folders, checkpoint mismatch, ...
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({k: summary.get(k) for k in (
      "status", "epochs", "train_loss", "test_acc", "images_per_sec",
      "compile_seconds_estimate")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
