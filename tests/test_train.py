"""The training CLI end to end on the embedded sample (small subsets, few steps).

Checks: a 2-epoch run whose training loss decreases and whose outputs have
the documented fields; SIGKILL mid-epoch + rerun == uninterrupted run
(bit-identical); 8 forced CPU devices == 1 device after 2 steps; NaN stop
keeping the last good checkpoint, and --skip-nonfinite counting skips; an
--out with another config is refused; bad flags list the valid choices.

Subprocesses share a persistent XLA compilation cache with this process so
each configuration compiles once.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import step as step_lib
from experiments import train

REPO = pathlib.Path(__file__).resolve().parents[1]

# Small and fast: 128 training images, 4 steps of 32 per epoch, 64 test images.
TINY = ["--dataset", "sample", "--model", "resnet20", "--batch-size", "32",
        "--train-subset", "128", "--test-subset", "64", "--eval-batch-size", "64",
        "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "1e-4",
        "--convention", "paper", "--impl", "plain", "--no-progress"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("xla_cache")
  old = {k: getattr(jax.config, k) for k in (
      "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
  jax.config.update("jax_compilation_cache_dir", str(d))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield d
  for k, v in old.items():
    jax.config.update(k, v)


def _cfg(out, *extra):
  args = vars(train.build_parser().parse_args(TINY + list(extra) + ["--out", str(out)]))
  return train.resolve_config(args)


def _rows(out):
  return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def _strip_times(rows):
  return [{k: v for k, v in r.items() if k not in train.TIME_KEYS} for r in rows]


def _subprocess(args, cache_dir, env_extra=None, timeout=600):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu")
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "experiments.train", *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_dir):
  """An uninterrupted 2-epoch BN run, in process."""
  out = tmp_path_factory.mktemp("ref") / "run"
  summary = train.run(_cfg(out, "--epochs", "2"), log=lambda *_: None)
  return out, summary


def test_two_epoch_run_loss_decreases_and_outputs(reference_run):
  out, summary = reference_run
  rows = _rows(out)
  assert [r["epoch"] for r in rows] == [1, 2]
  assert rows[1]["train_loss"] < rows[0]["train_loss"]
  for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr",
              "wall_seconds", "images_per_sec", "update_iqr_octaves",
              "update_within_one_octave", "update_log2_hist"):
    assert key in rows[0], key
  assert rows[0]["lr"] == pytest.approx(1e-3)
  # 4 steps x 268k-ish coordinates histogrammed per epoch (zeros counted apart)
  n_params = json.loads((out / "resolved_config.json").read_text())["num_params"]
  assert sum(rows[0]["update_log2_hist"]) <= 4 * n_params
  assert sum(rows[0]["update_log2_hist"]) > 0.9 * 4 * n_params
  assert summary["status"] == "complete" and summary["epochs"] == 2
  assert summary["test_acc"] == rows[-1]["test_acc"]
  cfg = json.loads((out / "config.json").read_text())
  resolved = json.loads((out / "resolved_config.json").read_text())
  assert cfg["weight_decay"] == 1e-4 and cfg["convention"] == "paper"
  assert resolved["optax_weight_decay"] == pytest.approx(1e-4 / 1e-3)
  # rerunning a complete run does nothing and returns the same summary
  again = train.run(_cfg(out, "--epochs", "2"), log=lambda *_: None)
  assert again == summary


def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference_run, cache_dir, tmp_path):
  ref_out, _ = reference_run
  out = tmp_path / "killed"
  args = TINY + ["--epochs", "2", "--out", str(out)]
  # Killed (SIGKILL, no cleanup) at step 6 = middle of epoch 2.
  p = _subprocess(args, cache_dir, {"EXPERIMENTS_FAULT_KILL_AT_STEP": "6"})
  assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
  assert [r["epoch"] for r in _rows(out)] == [1]
  assert not (out / "summary.json").exists()
  p = _subprocess(args, cache_dir)  # the same command again
  assert p.returncode == 0, p.stderr[-2000:]
  assert "resuming after epoch 1" in p.stdout
  assert _strip_times(_rows(out)) == _strip_times(_rows(ref_out))
  a, b = np.load(out / "checkpoint.npz"), np.load(ref_out / "checkpoint.npz")
  for k in a.files:
    if k != "meta":
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow  # ~100 s under load; tests/test_step.py checks the step itself on 8 devices
def test_eight_devices_equal_one_device(cache_dir, tmp_path):
  # SGD with momentum: the weights move linearly in the gradients (Adam's
  # normalisation turns a last-bit difference of a near-zero gradient into a
  # full step of size lr, which made an element-wise comparison meaningless).
  extra = ["--max-steps", "2", "--epochs", "1", "--no-update-hist",
           "--optimizer", "momentum", "--lr", "0.05"]
  args = TINY + extra
  one = tmp_path / "one"
  train.run(_cfg(one, *extra), log=lambda *_: None)
  eight = tmp_path / "eight"
  p = _subprocess(args + ["--out", str(eight)], cache_dir,
                  {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert p.returncode == 0, p.stderr[-2000:]
  assert json.loads((eight / "resolved_config.json").read_text())["devices"] == 8
  a, b = np.load(one / "final_state.npz"), np.load(eight / "final_state.npz")
  assert json.loads(str(b["meta"]))["step"] == 2
  for k in a.files:
    if k != "meta":
      # Per leaf, relative to its largest entry (as tests/test_step.py). Measured:
      # up to ~4e-4 of the leaf's scale after 2 steps, in the momentum (per-device convolutions
      # on 4 images round differently from one on 32, through 20 layers and BN).
      # A per-shard BatchNorm or a missing all-reduce should differ far more.
      scale = max(float(np.max(np.abs(a[k]))), 1e-12)
      np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-3 * scale, err_msg=k)
  ra, rb = _rows(one)[0], _rows(eight)[0]
  assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
  assert rb["test_loss"] == pytest.approx(ra["test_loss"], rel=1e-3)


def _poison_labels(monkeypatch, epoch, batch):
  """Out-of-range labels in one batch: the cross-entropy's gather yields NaN."""
  from experiments import data
  orig = data.train_batches

  def poisoned(split, batch_size, seed, ep, start=0):
    for b, (x, y) in enumerate(orig(split, batch_size, seed, ep, start), start):
      yield x, (np.full_like(y, 10**6) if (ep, b) == (epoch, batch) else y)

  monkeypatch.setattr(data, "train_batches", poisoned)


def _poison_step(monkeypatch, at_step):
  """NaN inputs at one step count, inside the jitted step: NaN gradients."""
  orig = step_lib._inputs

  def poisoned(state, images, augment_flag):
    x = orig(state, images, augment_flag)
    return jnp.where(state.step == at_step, jnp.nan, x)

  monkeypatch.setattr(step_lib, "_inputs", poisoned)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(monkeypatch, cache_dir, tmp_path):
  _poison_labels(monkeypatch, epoch=1, batch=1)  # 0-based: the 6th step, in epoch 2
  out = tmp_path / "nan"
  with pytest.raises(train.NonFiniteLoss, match="epoch 2.*checkpoint.*epoch 1.*--skip-nonfinite"):
    train.run(_cfg(out, "--epochs", "3", "--no-update-hist"), log=lambda *_: None)
  assert [r["epoch"] for r in _rows(out)] == [1]
  state, meta = np.load(out / "checkpoint.npz"), None
  meta = json.loads(str(state["meta"]))
  assert meta["epoch"] == 1 and meta["step"] == 4
  assert all(np.isfinite(state[k]).all() for k in state.files if k != "meta")


def test_skip_nonfinite_skips_and_counts(monkeypatch, cache_dir, tmp_path):
  _poison_step(monkeypatch, at_step=1)
  out = tmp_path / "skip"
  # With BatchNorm: a skipped step must leave the statistics alone too.
  summary = train.run(_cfg(out, "--epochs", "1", "--skip-nonfinite", "--no-update-hist"),
                      log=lambda *_: None)
  assert summary["status"] == "complete"
  row = _rows(out)[0]
  assert row["nonfinite_skips"] == 1
  assert row["step"] == 4  # the skipped step still counts as a step
  assert np.isfinite(row["train_loss"]) and np.isfinite(row["test_loss"])
  ck = np.load(out / "checkpoint.npz")
  assert all(np.isfinite(ck[k]).all() for k in ck.files if k != "meta")


def test_larger_epochs_extends_a_finished_constant_run(reference_run, tmp_path):
  """2 finished epochs + rerun with --epochs 3 == a 3-epoch run, bit for bit."""
  import shutil
  ref_out, _ = reference_run
  out = tmp_path / "extended"
  shutil.copytree(ref_out, out)
  summary = train.run(_cfg(out, "--epochs", "3"), log=lambda *_: None)
  straight = tmp_path / "straight"
  train.run(_cfg(straight, "--epochs", "3"), log=lambda *_: None)
  assert summary["status"] == "complete" and summary["epochs"] == 3
  assert _strip_times(_rows(out)) == _strip_times(_rows(straight))
  assert json.loads((out / "config.json").read_text())["epochs"] == 3
  # Fewer epochs, or any schedule that depends on the length, is another run.
  with pytest.raises(train.ConfigError, match="epochs"):
    train.run(_cfg(out, "--epochs", "2"), log=lambda *_: None)
  with pytest.raises(train.ConfigError, match="epochs"):
    train.run(_cfg(straight, "--epochs", "4", "--schedule", "cosine"), log=lambda *_: None)


def test_out_with_other_config_is_refused(reference_run):
  out, _ = reference_run
  with pytest.raises(train.ConfigError, match="different configuration.*lr.*--overwrite"):
    train.run(_cfg(out, "--epochs", "2", "--lr", "5e-4"), log=lambda *_: None)


@pytest.mark.parametrize("flag,value,listed", [
    ("--model", "resnet19", "resnet110"),
    ("--optimizer", "lamb", "adamprox"),
    ("--schedule", "linear", "warmup_cosine"),
    ("--recipe", "nope", "resnet110-nobn-adamw"),
    ("--convention", "torch", "paper"),
    ("--dataset", "imagenet", "npz:DIR"),
])
def test_unknown_choice_lists_valid_ones(flag, value, listed, capsys):
  with pytest.raises(SystemExit) as e:
    train.main([flag, value, "--out", "/nonexistent/never-created"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert value in err and listed in err


def test_bad_numbers_name_the_flag(capsys):
  for argv, needle in ([["--lr", "-1"], "--lr"], [["--batch-size", "0"], "--batch-size"],
                       [["--regularizer", "l1"], "--reg-strength"],
                       [["--scale", "quick"], "--recipe"]):
    with pytest.raises(SystemExit):
      train.main(argv + ["--out", "/nonexistent/never-created"])
    assert needle in capsys.readouterr().err


def test_missing_npz_dataset_says_what_is_expected(tmp_path, capsys):
  rc = train.main(["--dataset", f"npz:{tmp_path / 'nothing'}", "--out",
                   str(tmp_path / "o"), "--no-progress"])
  assert rc == 2
  err = capsys.readouterr().err
  assert "train.npz" in err and "image" in err and "--dataset sample" in err


def test_help_lists_every_issue_flag():
  text = train.build_parser().format_help()
  for flag in ("--dataset", "--model", "--no-bn", "--optimizer", "--lr",
               "--weight-decay", "--convention", "--schedule", "--epochs",
               "--batch-size", "--train-subset", "--loss-multiplier", "--seed",
               "--out", "--recipe", "--scale", "--skip-nonfinite", "--overwrite",
               "--val-size", "--regularizer", "--data-dir"):
    assert flag in text, flag


def test_every_optimizer_and_schedule_builds_and_steps():
  """Each --optimizer x a few --schedule values builds and takes a finite step."""
  params = {"w": jnp.ones((3, 3, 2, 4)), "b": jnp.ones(4)}
  grads = jax.tree.map(lambda x: 0.1 * x, params)
  combos = [(o, "constant") for o in train.OPTIMIZERS]
  combos += [(o, s) for o, s in zip(["adamprox", "sgdprox", "adamw", "adam_l2", "rmsprop"],
                                    train.SCHEDULES[1:])]
  for opt, sched in combos:
    cfg = dict(train.DEFAULTS, optimizer=opt, schedule=sched, weight_decay=0.1,
               epochs=3, update_hist=True, regularizer="group_lasso",
               reg_strength=0.01)
    tx, plateau, _ = train.build_optimizer(cfg, steps_per_epoch=5)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    assert all(np.isfinite(u).all() for u in jax.tree.leaves(updates)), (opt, sched)
    # Every optimizer histograms something: the Adam direction for the Adam
    # aliases, the whole step otherwise; one step covers every coordinate.
    import proxopt
    n = sum(x.size for x in jax.tree.leaves(params))
    assert proxopt.update_scale_summary(state).pooled.total == n, opt
    assert train.histogram_of(opt) == (
        "adam_direction" if opt in ("adam_l2", "adamw", "adamprox") else "step")
    if plateau is not None:
      state = plateau.observe(state, 1.0)
    assert (plateau is not None) == (sched == "plateau")


def test_weight_decay_conventions():
  base = dict(train.DEFAULTS, lr=5e-4, weight_decay=1e-4, convention="paper")
  assert train.optax_weight_decay(dict(base, optimizer="adamw")) == pytest.approx(0.2)
  assert train.optax_weight_decay(dict(base, optimizer="adamprox")) == pytest.approx(0.2)
  assert train.optax_weight_decay(dict(base, optimizer="adam_l2")) == 1e-4
  assert train.optax_weight_decay(dict(base, optimizer="adamw", convention="optax")) == 1e-4


def test_zero_init_residual_flag_reaches_the_config():
  from experiments import train as train_mod
  parse = lambda argv: train_mod.resolve_config(vars(train_mod.build_parser().parse_args(argv)))
  assert parse(["--model", "resnet56", "--no-bn"])["zero_init_residual"] is False
  assert parse(["--model", "resnet56", "--no-bn", "--zero-init-residual"])["zero_init_residual"] is True
  # a recipe keeps the paper's init unless asked
  assert parse(["--recipe", "resnet56-nobn-adamw"])["zero_init_residual"] is False
