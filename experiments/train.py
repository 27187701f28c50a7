r"""Train a CIFAR model: ``python -m experiments.train [--recipe NAME] [--flags]``.

Every flag is a field of :class:`experiments.config.Config` (defaults there);
``--recipe`` starts from a paper recipe (``python -m experiments.configs``
lists them) and ``--budget quick|paper`` picks its length. The loop is
:func:`experiments.training.loop.run`; see it for the files written to
``--out``. Exit codes: 0 done, 2 bad input (the message names the flag and the
fix), 3 non-finite loss.
"""

from __future__ import annotations

import argparse
import json
import sys

from experiments.config import (
    BATCH_NORMS, BUDGETS, CONVS, IMPLS, OPTIMIZERS, PRECISIONS, RELUS, SCHEDULES, Config,
    ConfigError)
from experiments.configs import resolve
from experiments.kernels.onednn import OneDNNUnavailable
from experiments.models import MODELS
from experiments.training.loop import NonFiniteLoss, run, write_failure

_D = Config()


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m experiments.train",
      description="Train a CIFAR ResNet/DenseNet with AdamW, Adam-L2, AdamProx "
      "or another optimizer (Zhuang et al., TMLR 2022). Resumable.",
      argument_default=argparse.SUPPRESS)
  a = p.add_argument
  a("--recipe", help="a paper recipe (python -m experiments.configs lists them); "
    "explicit flags override its values")
  a("--budget", choices=BUDGETS, help="a recipe's length: paper (published protocol, "
    "default) or quick (CPU minutes)")
  a("--dataset", help=f"cifar10 | cifar100 | npz:DIR | sample (default {_D.dataset})")
  a("--data-dir", dest="data_dir", help="tensorflow-datasets data_dir")
  a("--model", help=f"one of {', '.join(MODELS)} (default {_D.model})")
  a("--no-bn", dest="use_bn", action="store_false", help="remove BatchNorm layers")
  a("--bn", dest="use_bn", action="store_true", help="keep BatchNorm (default)")
  a("--zero-init-residual", dest="zero_init_residual", action="store_true",
    help="ResNets: zero the last conv of every residual branch (trains deep no-BN "
    "nets in short runs; not the paper's init)")
  a("--optimizer", help=f"one of {', '.join(OPTIMIZERS)} (default {_D.optimizer})")
  a("--lr", type=float, help=f"base learning rate alpha (default {_D.lr:g})")
  a("--weight-decay", dest="weight_decay", type=float,
    help="decay coefficient in --convention units (default 0); for adam_l2/"
    "sgd_l2 the L2 coefficient; for the classic optimizers a decoupled decay")
  a("--convention", help="optax: per-step decay lr_t*wd; paper: lambda*lr_t/alpha "
    f"(default {_D.convention})")
  a("--momentum", type=float,
    help=f"momentum of sgd_l2/sgdw/sgdprox/momentum (default {_D.momentum:g})")
  a("--schedule", help=f"one of {', '.join(SCHEDULES)} (default {_D.schedule})")
  a("--step-every", dest="step_every", type=int,
    help="schedule=step: epochs between decays (default epochs//3)")
  a("--decay-factor", dest="decay_factor", type=float,
    help=f"schedule=step/plateau: multiplier per decay (default {_D.decay_factor:g})")
  a("--warmup-epochs", dest="warmup_epochs", type=float,
    help="schedule=warmup_cosine: warm-up length (default 5%% of the run)")
  a("--patience", type=int,
    help=f"schedule=plateau: epochs without improvement (default {_D.patience})")
  a("--epochs", type=int, help=f"default {_D.epochs}")
  a("--batch-size", dest="batch_size", type=int,
    help=f"global batch size (default {_D.batch_size})")
  a("--eval-batch-size", dest="eval_batch_size", type=int,
    help=f"default {_D.eval_batch_size}")
  a("--eval-every", dest="eval_every", type=int,
    help="epochs between test-set evaluations; the last epoch is always evaluated and "
    f"the validation split every epoch (default {_D.eval_every})")
  a("--save-predictions", dest="save_predictions", action="store_true",
    help="write test_predictions.npz (per-example predicted class and label) at "
    "every test evaluation: the paired comparison of two runs needs them")
  a("--train-subset", dest="train_subset", type=int, help="train on N images only")
  a("--test-subset", dest="test_subset", type=int,
    help="evaluate on a fixed random N test images")
  a("--val-size", dest="val_size", type=int,
    help="hold out N training images as a validation split (default 0)")
  a("--loss-multiplier", dest="loss_multiplier", type=float,
    help="multiply the loss (the paper's test: 10, 100; default 1)")
  a("--seed", type=int, help=f"data order and augmentation seed (default {_D.seed})")
  a("--init-seed", dest="init_seed", type=int,
    help="model initialisation seed (default: --seed)")
  a("--regularizer", help="extra proximal term on conv/dense kernels: none | l1 | "
    "group_lasso (per output filter/unit) (default none)")
  a("--reg-strength", dest="reg_strength", type=float, help="its lambda (default 0)")
  a("--skip-nonfinite", dest="skip_nonfinite", action="store_true",
    help="skip steps with a NaN/Inf gradient (optax.apply_if_finite) and count them")
  a("--max-consecutive-skips", dest="max_consecutive_skips", type=int,
    help="with --skip-nonfinite, stop after this many skipped steps in a row "
    f"(default {_D.max_consecutive_skips})")
  a("--no-augment", dest="augment", action="store_false", help="no crop/flip")
  a("--no-update-hist", dest="update_hist", action="store_false",
    help="do not histogram the update magnitudes")
  a("--impl", help=f"train-step implementation: {', '.join(IMPLS)} (default {_D.impl})")
  a("--conv", help=f"convolution kernels: {', '.join(CONVS)} (default auto: oneDNN "
    "on one CPU device if already built by `python -m experiments.kernels build`, "
    "else XLA; onednn builds them on first use)")
  a("--batch-norm", dest="batch_norm", choices=BATCH_NORMS,
    help="BatchNorm in train mode: auto (default: oneDNN's with oneDNN convolutions "
    "in float32, else Flax's), onednn (float32, CPU) or flax; eval always uses Flax's")
  a("--relu", choices=RELUS,
    help="ReLUs and residual adds of the ResNet stem and blocks: auto (default: fused "
    "into oneDNN's convolutions without BN, into oneDNN's BatchNorm with it, when the "
    "convolutions run on oneDNN), onednn (fused) or xla")
  a("--precision", choices=PRECISIONS,
    help="compute dtype: float32 (default), or bfloat16 mixed precision as on "
    "TPU/GPU (bfloat16 convolutions and activations; float32 weights, "
    "gradients, optimizer state, BatchNorm statistics and loss; --conv "
    "picks the convolutions as in float32)")
  a("--max-steps", dest="max_steps", type=int, help="stop after N steps in total")
  a("--log-every", dest="log_every", type=int,
    help=f"steps between host reads of the metrics (default {_D.log_every})")
  a("--out", help="output directory (default runs/<model>-<bn|nobn>-<optimizer>-s<seed>)")
  a("--overwrite", action="store_true", help="replace an --out holding another config")
  a("--distributed", action="store_true",
    help="multi-host: call jax.distributed.initialize() first (run the same "
    "command on every host)")
  a("--progress", dest="progress", action="store_true", help="force the progress bar")
  a("--no-progress", dest="progress", action="store_false", help="no progress bar")
  return p


def config_from_argv(argv) -> Config:
  """The resolved config of a command line (raises ConfigError)."""
  return resolve(vars(build_parser().parse_args(argv)))


def main(argv=None) -> int:
  parser = build_parser()
  args = vars(parser.parse_args(argv))
  if args.get("distributed"):
    import jax
    # Reads the coordinator address, process count and id from the cluster
    # environment (TPU pods, SLURM, ...) or from JAX_COORDINATOR_ADDRESS etc.
    jax.distributed.initialize()
  try:
    cfg = resolve(args)
    summary = run(cfg)
  except ConfigError as e:
    parser.error(str(e))  # exits with code 2
  except NonFiniteLoss as e:
    write_failure(cfg, str(e))
    print(f"error: {e}", file=sys.stderr)
    return 3
  except OneDNNUnavailable as e:  # --conv/--batch-norm onednn where it cannot be built
    print(f"error: {e} Or pass --conv xla (and --batch-norm flax).", file=sys.stderr)
    return 2
  except ValueError as e:  # bad dataset folders, checkpoint mismatch, ...
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({k: summary.get(k) for k in (
      "status", "epochs", "train_loss", "test_acc", "images_per_sec",
      "compile_seconds_estimate")}))
  return 0


if __name__ == "__main__":
  # Before the first JAX computation (experiments/kernels/host_memory.py):
  # the step's scratch buffer is then reused, not re-faulted every step.
  from experiments.kernels.host_memory import keep_freed_memory
  keep_freed_memory()
  sys.exit(main())
