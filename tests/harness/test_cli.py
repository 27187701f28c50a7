"""The command line is generated from Config: every field is a flag that sets
it, the spellings running jobs and records use still parse, a recipe's values
survive unless a flag overrides them, and a --config file is a starting point."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from experiments import train
from experiments.configs import Config, ConfigError

# A valid non-default value per type (each field set alone must still validate).
_VALUES = {int: "3", float: "0.5", str: None}
_STR_VALUES = {"dataset": "cifar100", "data_dir": "/tmp/tfds", "model": "resnet56",
               "optimizer": "adamprox", "convention": "paper", "schedule": "cosine",
               "regularizer": "none", "step": "kernels:impl=blockwise,conv=xla",
               "precision": "bfloat16", "recipe": "resnet20-nobn-adamw",
               "budget": "quick", "out": "/tmp/elsewhere"}


def _flag(f: dataclasses.Field) -> str:
  return "--" + f.metadata.get("flag", f.name).replace("_", "-")


@pytest.mark.parametrize("field", dataclasses.fields(Config), ids=lambda f: f.name)
def test_every_config_field_is_a_flag_that_sets_it(field):
  kind = next(t for t in typing.get_args(typing.get_type_hints(Config)[field.name])
              or (typing.get_type_hints(Config)[field.name],) if t is not type(None))
  argv = ["--out", "/tmp/x"] if field.name != "out" else []
  if field.name == "budget":
    argv += ["--recipe", "resnet20-nobn-adamw"]
  if kind is bool:
    value = not field.default
    argv.append(_flag(field) if value else "--no-" + _flag(field)[2:])
  else:
    text = _STR_VALUES.get(field.name) or _VALUES[kind]
    if field.name == "momentum":
      text = "0.5"
    argv += [_flag(field), text]
    value = kind(text)
  cfg = train.config_from_argv(argv)
  assert getattr(cfg, field.name) == value
  assert field.metadata["help"]  # every flag says what it does


def test_the_spellings_of_running_jobs_and_records_parse():
  # The depth and published-settings studies' command lines (experiments/study/).
  cfg = train.config_from_argv([
      "--recipe", "resnet20-nobn-adam_l2", "--budget", "paper", "--dataset", "npz:data",
      "--epochs", "100", "--train-subset", "10000", "--val-size", "2000", "--eval-every", "5",
      "--save-predictions", "--seed", "1", "--init-seed", "2", "--out", "runs/x",
      "--no-progress", "--test-subset", "500"])
  assert (cfg.recipe, cfg.budget, cfg.epochs, cfg.train_subset, cfg.val_size, cfg.eval_every,
          cfg.save_predictions, cfg.seed, cfg.init_seed, cfg.progress, cfg.test_subset) == (
              "resnet20-nobn-adam_l2", "paper", 100, 10000, 2000, 5, True, 1, 2, False, 500)
  cfg = train.config_from_argv([
      "--model", "resnet56", "--no-bn", "--optimizer", "adamw", "--lr", "5e-4",
      "--weight-decay", "5e-5", "--convention", "paper", "--schedule", "constant",
      "--zero-init-residual", "--out", "runs/y"])
  assert (cfg.use_bn, cfg.zero_init_residual, cfg.lr) == (False, True, 5e-4)
  assert train.config_from_argv(["--bn", "--out", "o"]).use_bn is True


def test_a_recipe_keeps_its_values_unless_a_flag_overrides_them():
  base = train.config_from_argv(["--recipe", "resnet110-nobn-adamw", "--out", "o"])
  assert (base.model, base.use_bn, base.lr, base.epochs) == ("resnet110", False, 5e-4, 300)
  over = train.config_from_argv(["--recipe", "resnet110-nobn-adamw", "--epochs", "7",
                                 "--out", "o"])
  assert over.epochs == 7 and over.lr == base.lr and over.use_bn is False


def test_a_config_file_is_a_starting_point(tmp_path):
  cfg = train.config_from_argv(["--config", "experiments/configs/resnet20_sample.py",
                                "--epochs", "5"])
  assert (cfg.model, cfg.use_bn, cfg.optimizer, cfg.epochs) == ("resnet20", False, "adamw", 5)
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config():\n  return {'model': 'resnet20'}\n")
  with pytest.raises(ConfigError, match=r"--config .*bad.py: get_config\(\) must .*return an "
                     r"experiments.configs.Config, got dict"):
    train.config_from_argv(["--config", str(bad)])
  with pytest.raises(ConfigError, match="--config and --recipe"):
    train.config_from_argv(["--config", "experiments/configs/resnet20_sample.py",
                            "--recipe", "resnet20-nobn-adamw"])
