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

from experiments import train
from experiments.configs.default import OPTIMIZERS, SCHEDULES, Config, ConfigError
from experiments.kernels import train_step as kernel_step
from experiments.training import loop
from experiments.training import train_step as step_lib
from experiments.training.checkpoint import CheckpointMismatch, load_arrays
from experiments.training.optimizer import build_optimizer, histogram_of, optax_weight_decay


# Runs of the whole loop and CLI (subprocesses, kills, resumes): about 95 s idle on 2 cores, so
# with the long tests (`pytest -m slow`, which CI runs too).
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]

# Small and fast: 128 training images, 4 steps of 32 per epoch, 64 test images.
TINY = ["--dataset", "sample", "--model", "resnet20", "--batch-size", "32",
        "--train-subset", "128", "--test-subset", "64", "--eval-batch-size", "64",
        "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "1e-4",
        "--convention", "paper", "--step", "plain", "--no-progress"]


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
  return train.config_from_argv(TINY + list(extra) + ["--out", str(out)])


def _rows(out):
  return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def _strip_times(rows):
  return [{k: v for k, v in r.items() if k not in loop.TIME_KEYS} for r in rows]


def _subprocess(args, cache_dir, env_extra=None, timeout=600, kill_at_step=None):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu")
  env.update(env_extra or {})
  if kill_at_step is None:
    cmd = ["-m", "experiments.train", *args]
  else:
    # Fault injection from outside the production loop: the step function is
    # wrapped so that its N-th call SIGKILLs the process (no cleanup at all).
    cmd = ["-c", _KILL_SCRIPT, str(kill_at_step), *args]
  return subprocess.run([sys.executable, *cmd], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


_KILL_SCRIPT = """
import os, signal, sys
from experiments import train
from experiments.training import train_step as step_lib  # the step of --step plain (TINY)

kill_at, argv = int(sys.argv[1]), sys.argv[2:]
make = step_lib.make_train_step

def make_killing_step(*a, **k):
  step = make(*a, **k)
  calls = [0]
  def killing(*args):
    out = step(*args)
    calls[0] += 1
    if calls[0] == kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
    return out
  killing.__dict__.update(step.__dict__)  # impl, conv, batch_norm, ... as resolved
  return killing

step_lib.make_train_step = make_killing_step
sys.exit(train.main(argv))
"""


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_dir):
  """An uninterrupted 2-epoch BN run, in process."""
  out = tmp_path_factory.mktemp("ref") / "run"
  summary = loop.run(_cfg(out, "--epochs", "2"), log=lambda *_: None)
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
  again = loop.run(_cfg(out, "--epochs", "2"), log=lambda *_: None)
  assert again == summary


def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference_run, cache_dir, tmp_path):
  ref_out, _ = reference_run
  out = tmp_path / "killed"
  args = TINY + ["--epochs", "2", "--out", str(out)]
  # Killed (SIGKILL, no cleanup) at step 6 = middle of epoch 2.
  p = _subprocess(args, cache_dir, kill_at_step=6)
  assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
  assert [r["epoch"] for r in _rows(out)] == [1]
  assert not (out / "summary.json").exists()
  p = _subprocess(args, cache_dir)  # the same command again
  assert p.returncode == 0, p.stderr[-2000:]
  assert "resuming after epoch 1" in p.stdout
  assert _strip_times(_rows(out)) == _strip_times(_rows(ref_out))
  (a, meta_a), (b, meta_b) = load_arrays(out / "checkpoints"), load_arrays(ref_out / "checkpoints")
  assert meta_a["step"] == meta_b["step"] == 8
  assert sorted(a) == sorted(b) and len(a) > 100
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow  # ~100 s under load; tests/harness/test_step.py checks the step itself on 8 devices
def test_eight_devices_equal_one_device(cache_dir, tmp_path):
  # SGD with momentum: the weights move linearly in the gradients (Adam's
  # normalisation turns a last-bit difference of a near-zero gradient into a
  # full step of size lr, which made an element-wise comparison meaningless).
  extra = ["--max-steps", "2", "--epochs", "1", "--no-update-hist",
           "--optimizer", "momentum", "--lr", "0.05", "--step", "plain"]
  args = TINY + extra
  one = tmp_path / "one"
  loop.run(_cfg(one, *extra), log=lambda *_: None)
  eight = tmp_path / "eight"
  p = _subprocess(args + ["--out", str(eight)], cache_dir,
                  {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert p.returncode == 0, p.stderr[-2000:]
  assert json.loads((eight / "resolved_config.json").read_text())["devices"] == 8
  (a, _), (b, meta_b) = load_arrays(one / "final_state"), load_arrays(eight / "final_state")
  assert meta_b["step"] == 2
  for k in a:
    if True:
      # Per leaf, relative to its largest entry (as tests/harness/test_step.py). Measured:
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
  orig = loop.train_batches

  def poisoned(split, batch_size, seed, ep, start=0):
    for b, (x, y) in enumerate(orig(split, batch_size, seed, ep, start), start):
      yield x, (np.full_like(y, 10**6) if (ep, b) == (epoch, batch) else y)

  monkeypatch.setattr(loop, "train_batches", poisoned)


def _poison_step(monkeypatch, at_step):
  """NaN inputs at one step count, inside the jitted step: NaN gradients."""
  orig = step_lib.model_inputs

  def poisoned(state, images, augment_flag):
    x = orig(state, images, augment_flag)
    return jnp.where(state.step == at_step, jnp.nan, x)

  monkeypatch.setattr(step_lib, "model_inputs", poisoned)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(monkeypatch, cache_dir, tmp_path):
  _poison_labels(monkeypatch, epoch=1, batch=1)  # 0-based: the 6th step, in epoch 2
  out = tmp_path / "nan"
  with pytest.raises(loop.NonFiniteLoss, match="epoch 2, step 6.*checkpoint.*epoch 1.*--skip-nonfinite"):
    loop.run(_cfg(out, "--epochs", "3", "--no-update-hist"), log=lambda *_: None)
  assert [r["epoch"] for r in _rows(out)] == [1]
  state, meta = load_arrays(out / "checkpoints")
  assert meta["epoch"] == 1 and meta["step"] == 4
  assert all(np.isfinite(v).all() for v in state.values())


def test_skip_nonfinite_skips_and_counts(monkeypatch, cache_dir, tmp_path):
  _poison_step(monkeypatch, at_step=1)
  out = tmp_path / "skip"
  # With BatchNorm: a skipped step must leave the statistics alone too.
  summary = loop.run(_cfg(out, "--epochs", "1", "--skip-nonfinite", "--no-update-hist"),
                      log=lambda *_: None)
  assert summary["status"] == "complete"
  row = _rows(out)[0]
  assert row["nonfinite_skips"] == 1
  assert row["step"] == 4  # the skipped step still counts as a step
  assert np.isfinite(row["train_loss"]) and np.isfinite(row["test_loss"])
  ck, _ = load_arrays(out / "checkpoints")
  assert all(np.isfinite(v).all() for v in ck.values())


@pytest.mark.slow
def test_larger_epochs_extends_a_finished_constant_run(reference_run, tmp_path):
  """2 finished epochs + rerun with --epochs 3 == a 3-epoch run, bit for bit."""
  import shutil
  ref_out, _ = reference_run
  out = tmp_path / "extended"
  shutil.copytree(ref_out, out)
  summary = loop.run(_cfg(out, "--epochs", "3"), log=lambda *_: None)
  straight = tmp_path / "straight"
  loop.run(_cfg(straight, "--epochs", "3"), log=lambda *_: None)
  assert summary["status"] == "complete" and summary["epochs"] == 3
  assert _strip_times(_rows(out)) == _strip_times(_rows(straight))
  assert json.loads((out / "config.json").read_text())["epochs"] == 3
  # Fewer epochs, or any schedule that depends on the length, is another run.
  with pytest.raises(ConfigError, match="epochs"):
    loop.run(_cfg(out, "--epochs", "2"), log=lambda *_: None)
  with pytest.raises(ConfigError, match="epochs"):
    loop.run(_cfg(straight, "--epochs", "4", "--schedule", "cosine"), log=lambda *_: None)


def test_out_with_other_config_is_refused(reference_run):
  out, _ = reference_run
  with pytest.raises(ConfigError, match="different configuration.*lr.*--overwrite"):
    loop.run(_cfg(out, "--epochs", "2", "--lr", "5e-4"), log=lambda *_: None)


@pytest.mark.parametrize("flag,value,listed", [
    ("--model", "resnet19", "resnet110"),
    ("--optimizer", "lamb", "adamprox"),
    ("--schedule", "linear", "warmup_cosine"),
    ("--recipe", "nope", "resnet110-nobn-adamw"),
    ("--convention", "torch", "paper"),
    ("--dataset", "imagenet", "npz:DIR"),
    ("--step", "fast", "kernels:OPTION=VALUE"),
])
def test_unknown_choice_lists_valid_ones(flag, value, listed, capsys):
  with pytest.raises(SystemExit) as e:
    train.main([flag, value, "--out", "/nonexistent/never-created"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert value in err and listed in err


def test_unknown_kernels_option_is_refused_before_anything_is_written(tmp_path, capsys):
  # The kernels own their options' names and values: checked by the loop before the run directory.
  for step, listed in (("kernels:conv=cudnn", "auto, xla, onednn"),
                       ("kernels:fusion=off", "impl, conv, batch_norm, relu")):
    assert train.main(["--step", step, "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert f"--step {step}" in err and listed in err
  assert not (tmp_path / "never").exists()


def test_bad_numbers_name_the_flag(capsys):
  for argv, needle in ([["--lr", "-1"], "--lr"], [["--batch-size", "0"], "--batch-size"],
                       [["--regularizer", "l1"], "--reg-strength"],
                       [["--budget", "quick"], "--recipe"]):
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
               "--out", "--recipe", "--budget", "--skip-nonfinite", "--overwrite",
               "--val-size", "--regularizer", "--data-dir"):
    assert flag in text, flag


def test_every_optimizer_and_schedule_builds_and_steps():
  """Each --optimizer x a few --schedule values builds and takes a finite step."""
  params = {"w": jnp.ones((3, 3, 2, 4)), "b": jnp.ones(4)}
  grads = jax.tree.map(lambda x: 0.1 * x, params)
  combos = [(o, "constant") for o in OPTIMIZERS]
  combos += [(o, s) for o, s in zip(["adamprox", "sgdprox", "adamw", "adam_l2", "rmsprop"],
                                    SCHEDULES[1:])]
  for opt, sched in combos:
    cfg = Config(optimizer=opt, schedule=sched, weight_decay=0.1,
                 epochs=3, update_hist=True, regularizer="group_lasso",
                 reg_strength=0.01)
    tx, plateau, _ = build_optimizer(cfg, steps_per_epoch=5)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    assert all(np.isfinite(u).all() for u in jax.tree.leaves(updates)), (opt, sched)
    # Every optimizer histograms something: the Adam direction for the Adam
    # aliases, the whole step otherwise; one step covers every coordinate.
    import proxopt
    n = sum(x.size for x in jax.tree.leaves(params))
    assert proxopt.update_scale_summary(state).pooled.total == n, opt
    assert histogram_of(opt) == (
        "adam_direction" if opt in ("adam_l2", "adamw", "adamprox") else "step")
    if plateau is not None:
      state = plateau.observe(state, 1.0)
    assert (plateau is not None) == (sched == "plateau")


def test_weight_decay_conventions():
  base = Config(lr=5e-4, weight_decay=1e-4, convention="paper")
  assert optax_weight_decay(base.replace(optimizer="adamw")) == pytest.approx(0.2)
  assert optax_weight_decay(base.replace(optimizer="adamprox")) == pytest.approx(0.2)
  assert optax_weight_decay(base.replace(optimizer="adam_l2")) == 1e-4
  assert optax_weight_decay(base.replace(optimizer="adamw", convention="optax")) == 1e-4


def test_zero_init_residual_flag_reaches_the_config():
  parse = train.config_from_argv
  assert parse(["--model", "resnet56", "--no-bn"]).zero_init_residual is False
  assert parse(["--model", "resnet56", "--no-bn", "--zero-init-residual"]).zero_init_residual is True
  # a recipe keeps the paper's init unless asked
  assert parse(["--recipe", "resnet56-nobn-adamw"]).zero_init_residual is False


def test_checkpoint_of_another_model_or_optimizer_is_refused(reference_run, tmp_path):
  """Restoring goes by tree path: another depth, or another optimizer state,
  fails with a message naming the paths and the fix."""
  import shutil
  ref_out, _ = reference_run
  for extra, needle in ((["--model", "resnet32"], "params/blocks/3"),
                        (["--optimizer", "sgdw"], "opt_state")):
    out = tmp_path / extra[1]
    out.mkdir()
    shutil.copytree(ref_out / "checkpoints", out / "checkpoints")  # a foreign checkpoint
    cfg = _cfg(out, "--epochs", "2", *extra)
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(CheckpointMismatch, match=f"different model or optimizer.*{needle}.*--overwrite"):
      loop.run(cfg, log=lambda *_: None)


def test_renamed_submodule_with_same_shapes_is_refused(tmp_path):
  """Same leaf count, order and shapes, another name: by position this would
  load silently; by path it is refused."""
  import jax.numpy as jnp
  from experiments.training.checkpoint import Checkpointer
  a = {"params": {"head": {"kernel": jnp.ones((3, 3))}, "stem": {"kernel": jnp.zeros((3, 3))}}}
  b = {"params": {"head": {"kernel": jnp.ones((3, 3))}, "trunk": {"kernel": jnp.zeros((3, 3))}}}
  ck = Checkpointer(tmp_path / "c")
  ck.save(1, a, {"epoch": 1})
  with pytest.raises(CheckpointMismatch, match="missing from the checkpoint: params/trunk/kernel"):
    ck.restore(b)
  restored, meta = ck.restore(jax.tree.map(jnp.zeros_like, a))
  np.testing.assert_array_equal(restored["params"]["head"]["kernel"], 1.0)
  assert meta == {"epoch": 1}
  ck.close()


def test_metrics_are_read_only_at_logging_points(reference_run, monkeypatch, tmp_path):
  """The loop reads the device metrics once per logging point, not per step."""
  from experiments.training import metrics as metrics_lib
  reads = []
  orig = metrics_lib.read
  monkeypatch.setattr(metrics_lib, "read", lambda acc: reads.append(1) or orig(acc))
  # 8 steps, --log-every 3: reads after steps 3 and 6 and at the end of each epoch.
  loop.run(_cfg(tmp_path / "r", "--epochs", "2", "--log-every", "3"), log=lambda *_: None)
  assert len(reads) == 4


def test_fault_injection_is_not_in_the_production_loop():
  src = (REPO / "experiments" / "training" / "loop.py").read_text()
  assert "os.kill" not in src and "os.environ" not in src and "FAULT" not in src


def test_precision_flag_config_and_validation(capsys):
  from experiments.configs.default import PRECISIONS, validate
  parse = train.config_from_argv
  assert PRECISIONS == ("float32", "bfloat16")
  assert Config().precision == "float32" and parse([]).precision == "float32"
  assert parse(["--precision", "bfloat16"]).precision == "bfloat16"
  # A run saved before the field existed reads back as float32 (same run).
  old = {k: v for k, v in Config().to_dict().items() if k != "precision"}
  assert Config.from_dict(old).precision == "float32"
  assert "precision" in Config().semantic()  # it changes the numbers
  with pytest.raises(ConfigError, match=r"unknown precision 'float16'; valid choices: float32, bfloat16"):
    validate(Config(precision="float16"))
  with pytest.raises(SystemExit) as e:
    train.main(["--precision", "fp16", "--out", "/nonexistent/never-created"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "--precision" in err and "float32" in err and "bfloat16" in err
  text = " ".join(train.build_parser().format_help().split())
  assert "--precision {float32,bfloat16}" in text and "mixed precision" in text


def test_precision_bfloat16_run_records_it(monkeypatch, tmp_path):
  """One bfloat16 step through the loop (a ResNet-8 stands in for the
  ResNet-20 to keep the compile short): recorded, and checkpointed in float32."""
  from flax import nnx
  from experiments.models.resnet import ResNet
  monkeypatch.setattr(loop, "make_model", lambda name, *, num_classes, use_bn, seed, **_:
                      ResNet(8, num_classes, use_bn, rngs=nnx.Rngs(seed)))
  out = tmp_path / "bf16"
  cfg = _cfg(out, "--precision", "bfloat16", "--epochs", "1", "--train-subset", "32",
             "--test-subset", "32", "--eval-batch-size", "32", "--no-update-hist",
             "--step", "auto")
  summary = loop.run(cfg, log=lambda *_: None)
  assert summary["status"] == "complete" and summary["precision"] == "bfloat16"
  assert np.isfinite(summary["train_loss"]) and np.isfinite(summary["test_loss"])
  resolved = json.loads((out / "resolved_config.json").read_text())
  # The convolutions resolve as in float32 (oneDNN has bfloat16 kernels):
  # oneDNN when its kernels are already built in this process's cache, else XLA.
  assert resolved["precision"] == "bfloat16"
  assert ((resolved["step_conv"], resolved["step_conv_reason"])
          == kernel_step._resolve_conv_why("auto", None))
  # "auto" BatchNorm is Flax's.
  assert resolved["step_batch_norm"] == "flax"
  assert json.loads((out / "config.json").read_text())["precision"] == "bfloat16"
  arrays, _ = load_arrays(out / "checkpoints")
  assert {str(v.dtype) for v in arrays.values() if v.dtype.kind == "f"} == {"float32"}
