r"""The training loop: :func:`run` trains one :class:`~experiments.configs.default.Config`.

Writes to ``cfg.out``:

- ``config.json``: the configuration; ``resolved_config.json``: plus what it
  resolved to (optax weight decay, parameter count, step implementation,
  convolution and BatchNorm kernels, with why; ``precision`` float32 or
  bfloat16 is a field of both);
- ``metrics.jsonl``: one JSON object per epoch (``epoch``, ``train_loss``,
  ``train_acc``, ``test_loss`` and ``test_acc`` (every ``eval_every`` epochs
  and at the last), ``val_*`` with a validation split, ``lr``, ``epoch_seconds``, ``wall_seconds``, ``images_per_sec``,
  the spread of the update magnitudes ``update_iqr_octaves`` /
  ``update_within_one_octave`` / ``update_median_log2`` and the pooled
  histogram ``update_log2_hist`` from :func:`proxopt.track_update_scales`
  (``update_hist_of``: of the Adam direction ``log2|m_hat / (sqrt(v_hat) +
  eps)|`` for the Adam aliases, as in the paper, else of the whole step), and
  ``nonfinite_skips`` with ``skip_nonfinite``);
- ``test_predictions.npz`` with ``save_predictions``: the per-example
  predicted class and label of the latest test evaluation, and its epoch;
- ``summary.json``: final metrics, status, compile time, throughput, precision;
- ``checkpoints/``: the train state after the last finished epoch (Orbax,
  restored by tree path, :mod:`experiments.training.checkpoint`).

Rerunning the same config resumes from the checkpoint (after a crash or a
SIGKILL); the batches (a permutation per ``(seed, epoch)``) and the
augmentation (``fold_in(key, step)``) are pure functions of the position, so
the final metrics are bit-identical to an uninterrupted run on CPU. With a
constant step size, a larger ``epochs`` extends a finished run. A non-finite
loss stops the run (:class:`NonFiniteLoss`, detected at the next logging
point) keeping the last good checkpoint; ``skip_nonfinite`` skips such steps
(``optax.apply_if_finite``) and counts them.

Metrics stay on the device between logging points (every ``log_every`` steps
and at the end of each epoch; :mod:`experiments.training.metrics`). With
several JAX devices the batch is sharded over all of them and the state
replicated (``jax.sharding``); multi-host: every process trains its slice,
process 0 writes the files.
"""

from __future__ import annotations

import io
import json
import pathlib
import sys
import time

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

import proxopt
from experiments.configs.default import Config, ConfigError, step_choice
from experiments.files import write_bytes, write_json
from experiments.input_pipeline import eval_batches, load_dataset, steps_per_epoch, train_batches
from experiments.models import count_params, make_model
from experiments.training import train_step as step_lib
from experiments.training import metrics as metrics_lib
from experiments.training import run_dir
from experiments.training.checkpoint import Checkpointer
from experiments.training.optimizer import (
    build_optimizer, current_lr, histogram_of, optax_weight_decay)

TIME_KEYS = ("epoch_seconds", "wall_seconds", "images_per_sec")


class StepUnavailable(ConfigError):
  """A kernel was asked for that cannot run here; the message names the flag and the fix."""


class NonFiniteLoss(RuntimeError):
  """The loss became NaN/Inf; the run stopped keeping the last checkpoint."""


def _device_mesh():
  n = jax.device_count()
  return None if n == 1 else jax.make_mesh((n,), ("data",))


def _global_batch(x: np.ndarray, sharding):
  """This process's slice of a global batch as a sharded array (multi-host)."""
  if sharding is None or jax.process_count() == 1:
    return x
  per = x.shape[0] // jax.process_count()
  local = x[jax.process_index() * per:(jax.process_index() + 1) * per]
  return jax.make_array_from_process_local_data(sharding, local, x.shape)


def _find_if_finite_state(opt_state):
  found = [x for x in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ApplyIfFiniteState))
           if isinstance(x, optax.ApplyIfFiniteState)]
  return found[0] if found else None


def _write_predictions(path: pathlib.Path, epoch: int, predictions: np.ndarray,
                       labels: np.ndarray) -> None:
  """The per-example test predictions of one evaluation (atomically): what a
  paired comparison of two runs needs (McNemar, per-example disagreements)."""
  buf = io.BytesIO()
  np.savez(buf, epoch=np.int32(epoch), predictions=predictions.astype(np.uint8 if
           predictions.max(initial=0) < 256 else np.int32), labels=np.asarray(labels))
  write_bytes(path, buf.getvalue())


_PLAIN = {"impl": "plain", "conv": "xla", "batch_norm": "flax", "relu": "xla"}


def check_step(cfg: Config) -> None:
  """Raises :class:`StepUnavailable` (a :class:`ConfigError`) when ``--step
  kernels...`` cannot be honoured: the package does not import, or an option
  is not one of its own (:func:`experiments.kernels.check_step_options`).
  Called before anything is written."""
  kind, options = step_choice(cfg.step)
  if kind != "kernels":
    return
  try:
    from experiments import kernels
  except ImportError as e:
    raise StepUnavailable(
        f"--step {cfg.step} needs the CPU speed layer experiments.kernels, which does "
        f"not import here ({e}); use --step auto or plain.") from None
  try:
    kernels.check_step_options(options)
  except ValueError as e:
    raise StepUnavailable(str(e)) from None


def make_steps(cfg: Config, model, tx, mesh):
  """``(train_step, eval_step, info)``: the one place the CPU speed layer is reached.

  ``cfg.step``: ``"kernels[:OPTIONS]"``, or ``"auto"`` on a CPU backend with
  the package importable, gives :func:`experiments.kernels.make_steps`; else
  the plain step of :mod:`experiments.training.train_step`. ``info``: what
  the step's kernels resolved to and why (recorded in the run's files).
  """
  kind, options = step_choice(cfg.step)
  why = {"plain": "plain step: --step plain", "kernels": None,
         "auto": None if jax.default_backend() == "cpu" else
         f"plain step: backend {jax.default_backend()!r}"}[kind]
  if why is None:
    try:
      from experiments import kernels
    except ImportError as e:
      if kind == "kernels":
        raise StepUnavailable(
            f"--step {cfg.step} needs the CPU speed layer experiments.kernels, which does "
            f"not import here ({e}); use --step auto or plain.") from None
      why = f"plain step: experiments.kernels not importable ({e})"
  if why is not None:
    kw = dict(mesh=mesh, precision=cfg.precision)
    train_step = step_lib.make_train_step(
        model, tx, loss_multiplier=cfg.loss_multiplier, augment=cfg.augment, **kw)
    info = {f"step_{k}": v for k, v in _PLAIN.items()}
    info.update({f"step_{k}_reason": why for k in ("conv", "batch_norm", "relu")})
    return train_step, step_lib.make_eval_step(model, **kw), info
  try:
    train_step, eval_step = kernels.make_steps(
        model, tx, loss_multiplier=cfg.loss_multiplier, augment=cfg.augment, mesh=mesh,
        precision=cfg.precision, options=options)
  except kernels.OneDNNUnavailable as e:  # conv/batch_norm onednn where it cannot be built
    raise StepUnavailable(
        f"{e} Or pass --step kernels:conv=xla,batch_norm=flax, or --step plain.") from None
  info = {f"step_{k}": getattr(train_step, k) for k in _PLAIN}
  info.update({f"step_{k}_reason": getattr(train_step, f"{k}_reason")
               for k in ("conv", "batch_norm", "relu")})
  return train_step, eval_step, info


def keep_freed_host_memory() -> str:
  """glibc keeps freed memory on a CPU backend (:mod:`experiments.kernels.host_memory`);
  call before the first JAX computation."""
  try:
    from experiments import kernels
  except ImportError as e:
    return f"default (experiments.kernels not importable: {e})"
  return kernels.keep_freed_host_memory()


def _host_memory_status() -> str:
  try:
    from experiments.kernels import host_memory
  except ImportError as e:
    return f"default (experiments.kernels not importable: {e})"
  return host_memory.status()


def write_failure(cfg: Config, message: str) -> None:
  out = pathlib.Path(cfg.out)
  if out.exists():
    write_json(out / "summary.json", {"status": "diverged", "error": message})


def run(cfg: Config, log=print) -> dict:
  """Trains according to a resolved ``cfg``; returns the summary dict."""
  # Multi-host: every process trains (its slice of each global batch); only
  # process 0 writes files. The output directory must be shared storage, or
  # at least process 0's, which holds the checkpoint used to resume.
  is_main = jax.process_index() == 0
  check_step(cfg)
  out = run_dir.prepare(cfg) if is_main else pathlib.Path(cfg.out)
  summary_path = out / "summary.json"
  if summary_path.exists():
    summary = json.loads(summary_path.read_text())
    if summary.get("status") == "complete" and summary.get("epochs", 0) >= cfg.epochs:
      log(f"{out}: already complete (final test_acc {summary.get('test_acc')}).")
      return summary

  ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir,
                    train_subset=cfg.train_subset, val_size=cfg.val_size)
  if cfg.test_subset:
    # Test sets may be grouped by class: a fixed random subset, not the head.
    perm = np.random.default_rng(0).permutation(len(ds.test))
    ds.test = ds.test.take(np.sort(perm[:cfg.test_subset]))
  n_dev = jax.device_count()
  bs = cfg.batch_size
  if bs % n_dev:
    raise ConfigError(
        f"--batch-size {bs} must be divisible by the {n_dev} devices; use a multiple of {n_dev}.")
  eval_bs = -(-cfg.eval_batch_size // n_dev) * n_dev
  spe = steps_per_epoch(len(ds.train), bs)
  if spe == 0:
    raise ConfigError(
        f"--batch-size {bs} exceeds the {len(ds.train)} training images; lower it.")

  model = make_model(cfg.model, num_classes=ds.num_classes, use_bn=cfg.use_bn,
                     seed=cfg.init_seed, zero_init_residual=cfg.zero_init_residual)
  tx, plateau, learning_rate = build_optimizer(cfg, spe)
  mesh = _device_mesh()
  data_sharding = NamedSharding(mesh, P("data")) if mesh is not None else None
  put = lambda x: _global_batch(x, data_sharding)
  state = step_lib.create_train_state(model, tx, seed=cfg.seed, mesh=mesh)
  train_step, eval_step, step_info = make_steps(cfg, model, tx, mesh)

  resolved = dict(cfg.to_dict(), optax_weight_decay=optax_weight_decay(cfg),
                  num_params=count_params(model), num_classes=ds.num_classes,
                  steps_per_epoch=spe, train_size=len(ds.train),
                  test_size=len(ds.test), devices=n_dev, **step_info,
                  host_memory=_host_memory_status())
  if is_main:
    if not (out / "config.json").exists():
      write_json(out / "config.json", cfg.to_dict())
    write_json(out / "resolved_config.json", resolved)

  checkpointer = Checkpointer(out / "checkpoints")
  start_epoch, wall_before = 0, 0.0
  if checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(state)
    state = jax.device_put(state, NamedSharding(mesh, P()) if mesh is not None
                           else jax.devices()[0])
    start_epoch, wall_before = meta["epoch"], meta["wall_seconds"]
    log(f"{out}: resuming after epoch {start_epoch} (step {meta['step']}).")
  rows = run_dir.read_metrics(out, start_epoch)

  first_step_s = None
  per_step_s: list[float] = []  # per-step time of each logging interval
  t_run = time.perf_counter()
  global_step = start_epoch * spe
  stop_reason = None
  for epoch in range(start_epoch + 1, cfg.epochs + 1):
    t_epoch = time.perf_counter()
    acc = metrics_lib.init()
    bar = tqdm(total=spe, desc=f"epoch {epoch}/{cfg.epochs}", unit="step",
               disable=(None if cfg.progress is None else not cfg.progress), leave=False,
               file=sys.stderr)
    t_mark, steps_since = time.perf_counter(), 0

    def logging_point(where: str) -> dict:
      """Reads the device sums (a host sync) and stops on a non-finite loss."""
      nonlocal t_mark, steps_since
      m = metrics_lib.read(acc)
      now = time.perf_counter()
      if steps_since:
        per_step_s.append((now - t_mark) / steps_since)
      t_mark, steps_since = now, 0
      if m["first_nonfinite_step"] >= 0:
        bar.close()
        raise NonFiniteLoss(
            f"non-finite loss at epoch {epoch}, step {m['first_nonfinite_step'] + 1}: "
            f"stopped. The last good checkpoint (epoch {epoch - 1}) is kept in "
            f"{checkpointer.directory if epoch > 1 else '(none: failed in epoch 1)'}. "
            "Lower --lr / --loss-multiplier, or pass --skip-nonfinite to skip such steps.")
      if m["max_consecutive_skips"] > cfg.max_consecutive_skips:
        bar.close()
        raise NonFiniteLoss(
            f"{m['max_consecutive_skips']} consecutive non-finite steps in epoch {epoch} "
            f"(by {where}): stopped (--max-consecutive-skips {cfg.max_consecutive_skips}). "
            "The last good checkpoint is kept.")
      bar.set_postfix(loss=f"{m['loss']:.3f}")
      return m

    for images, labels in train_batches(ds.train, bs, cfg.seed, epoch - 1):
      state, m = train_step(state, put(images), put(labels))
      if first_step_s is None:  # one sync: compile time + one step
        jax.block_until_ready(m)
        first_step_s = time.perf_counter() - t_mark
        t_mark = time.perf_counter()
      else:
        steps_since += 1
      fin = _find_if_finite_state(state.opt_state) if cfg.skip_nonfinite else None
      acc = metrics_lib.accumulate(acc, m, np.int32(global_step),
                                   fin.notfinite_count if fin is not None else 0)
      global_step += 1
      bar.update(1)
      if global_step % cfg.log_every == 0:
        logging_point(f"step {global_step}")
      if cfg.max_steps and global_step >= cfg.max_steps:
        stop_reason = "max_steps"
        break
    epoch_metrics = logging_point(f"the end of epoch {epoch}")
    bar.close()
    epoch_s = time.perf_counter() - t_epoch
    row = {"epoch": epoch, "step": global_step, "train_loss": epoch_metrics["loss"],
           "train_acc": epoch_metrics["accuracy"]}
    last_epoch = epoch == cfg.epochs or stop_reason is not None
    if epoch % cfg.eval_every == 0 or last_epoch:
      ev = metrics_lib.evaluate(eval_step, state, eval_batches(ds.test, eval_bs), put,
                                predictions=cfg.save_predictions)
      row["test_loss"], row["test_acc"] = ev[:2]
      if cfg.save_predictions and is_main:
        _write_predictions(out / "test_predictions.npz", epoch, ev[2], ds.test.labels)
    if ds.val is not None:
      row["val_loss"], row["val_acc"] = metrics_lib.evaluate(
          eval_step, state, eval_batches(ds.val, eval_bs), put)
    row["lr"] = current_lr(learning_rate, plateau, state.opt_state, global_step)
    if cfg.update_hist:
      s = proxopt.update_scale_summary(state.opt_state)
      hist = proxopt.update_scale_histogram(state.opt_state)
      pooled = sum(h["counts"] for h in hist["leaves"].values())
      row.update(update_hist_of=histogram_of(cfg.optimizer),
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
    n_img = epoch_metrics["count"] * bs
    row.update(epoch_seconds=epoch_s, wall_seconds=wall,
               images_per_sec=n_img / epoch_s if epoch_s > 0 else float("nan"))
    rows.append(row)
    if stop_reason is None:  # a partial epoch has no checkpoint
      checkpointer.save(epoch, state, {"epoch": epoch, "step": global_step,
                                       "wall_seconds": wall})
    if is_main:
      run_dir.write_metrics(out, rows)
    msg = (f"epoch {epoch}: train_loss {row['train_loss']:.4f} train_acc "
           f"{row['train_acc']:.3f}")
    if "test_acc" in row:
      msg += f" test_loss {row['test_loss']:.4f} test_acc {row['test_acc']:.3f}"

    if ds.val is not None:
      msg += f" val_acc {row['val_acc']:.3f}"
    log(msg + f" lr {row['lr']:.3g} ({epoch_s:.1f}s)")
    if stop_reason:
      break
  checkpointer.close()
  if stop_reason == "max_steps":
    # A partial epoch has no checkpoint: save the state for inspection.
    final = Checkpointer(out / "final_state")
    final.save(global_step, state, {"epoch": rows[-1]["epoch"] if rows else 0,
                                    "step": global_step})
    final.close()

  last = rows[-1] if rows else {}
  med = float(np.median(per_step_s)) if per_step_s else None
  summary = {
      "status": "complete" if stop_reason is None else stop_reason,
      "epochs": last.get("epoch", 0), "steps": global_step,
      **{k: last.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc",
                                  "val_loss", "val_acc") if k in last},
      "best_test_acc": max((r["test_acc"] for r in rows if "test_acc" in r), default=None),
      "first_step_seconds": first_step_s, "median_step_seconds": med,
      # The first step = compile + one step (an estimate of compile time).
      "compile_seconds_estimate": (first_step_s - med) if (first_step_s and med) else None,
      "images_per_sec": (bs / med) if med else None,
      "wall_seconds": last.get("wall_seconds"), "num_params": resolved["num_params"],
      **{k: step_info[k] for k in ("step_impl", "step_conv", "step_batch_norm", "step_relu")},
      "precision": cfg.precision, "devices": n_dev,
      "host_memory": _host_memory_status(),
  }
  if is_main:
    write_json(summary_path, summary)
  return summary
