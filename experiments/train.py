r"""Train a CIFAR model: ``python -m experiments.train [--recipe NAME] [--flags]``.

Every flag is a field of :class:`experiments.configs.Config`, generated from
it (name, type, default and help are defined once, there);
``--config FILE.py`` starts from that file's ``get_config()`` (as in Flax's
examples; ``experiments/configs/resnet20_sample.py`` is one to copy),
``--recipe`` from a paper recipe (``python -m experiments.configs``
lists them) and ``--budget quick|paper`` picks its length. The loop is
:func:`experiments.training.loop.run`; see it for the files written to
``--out``. Exit codes: 0 done, 2 bad input (the message names the flag and the
fix), 3 non-finite loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from experiments.configs import Config, ConfigError, load_config_file, resolve
from experiments.training.loop import (
    NonFiniteLoss, StepUnavailable, keep_freed_host_memory, run, write_failure)


def build_parser() -> argparse.ArgumentParser:
  """One flag per :class:`~experiments.configs.Config` field, named, typed and
  described by the field: ``--train-subset N`` sets ``train_subset``; a bool
  field ``x`` gives ``--x``/``--no-x``. Flags not given stay unset, so that a
  recipe's values survive (:func:`experiments.configs.resolve`)."""
  p = argparse.ArgumentParser(
      prog="python -m experiments.train",
      description="Train a CIFAR ResNet/DenseNet with AdamW, Adam-L2, AdamProx "
      "or another optimizer (Zhuang et al., TMLR 2022). Resumable.",
      argument_default=argparse.SUPPRESS)
  p.add_argument("--config", dest="config_file", metavar="FILE.py",
                 help="start from get_config() of this Python file (copy "
                 "experiments/configs/resnet20_sample.py); flags override it")
  types = typing.get_type_hints(Config)
  for f in dataclasses.fields(Config):
    flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
    kind = next(t for t in typing.get_args(types[f.name]) or (types[f.name],) if t is not type(None))
    help = f.metadata["help"] + ("" if f.default is None else f" (default {f.default})")
    if kind is bool:
      p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help)
    else:
      choices = f.metadata.get("choices")
      p.add_argument(flag, dest=f.name, type=kind, choices=choices, help=help,
                     metavar=None if choices else kind.__name__.upper())
  return p


def config_from_argv(argv) -> Config:
  """The resolved config of a command line (raises ConfigError)."""
  return _resolve(vars(build_parser().parse_args(argv)))


def _resolve(args: dict) -> Config:
  path = args.pop("config_file", None)
  return resolve(args, load_config_file(path) if path else None)


def main(argv=None) -> int:
  parser = build_parser()
  args = vars(parser.parse_args(argv))
  if args.get("distributed"):
    import jax
    # Reads the coordinator address, process count and id from the cluster
    # environment (TPU pods, SLURM, ...) or from JAX_COORDINATOR_ADDRESS etc.
    jax.distributed.initialize()
  try:
    cfg = _resolve(args)
    summary = run(cfg)
  except StepUnavailable as e:  # a kernel asked for that cannot run here
    print(f"error: {e}", file=sys.stderr)
    return 2
  except ConfigError as e:
    parser.error(str(e))  # exits with code 2
  except NonFiniteLoss as e:
    write_failure(cfg, str(e))
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
  # Before the first JAX computation, on a CPU backend: the step's scratch
  # buffer is then reused, not re-faulted every step (experiments.kernels).
  keep_freed_host_memory()
  sys.exit(main())
