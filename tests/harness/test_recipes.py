"""Recipes: the paper's table, its conversion to optax values, and the CLI resolution."""

import pytest

from experiments import train
from experiments.configs import recipes
from experiments.configs.recipes import PAPER_TABLE, RECIPES, get_recipe
from experiments.training.optimizer import optax_weight_decay


def test_resnet110_adamw_converts_to_weight_decay_0_2():
  r = get_recipe("resnet110-nobn-adamw")
  assert (r.paper_alpha, r.paper_lambda) == (5e-4, 1e-4)
  assert r.lr == 5e-4
  assert r.weight_decay == pytest.approx(0.2, rel=1e-12)


def test_adam_l2_lambda_is_kept_as_is():
  r = get_recipe("resnet218-nobn-adam_l2")
  assert (r.paper_alpha, r.paper_lambda, r.weight_decay) == (5e-4, 5e-3, 5e-3)


def test_adamprox_uses_adamw_settings_everywhere():
  for name, r in RECIPES.items():
    if r.optimizer == "adamprox":
      w = RECIPES[name.replace("adamprox", "adamw")]
      assert (r.paper_alpha, r.paper_lambda, r.weight_decay) == (
          w.paper_alpha, w.paper_lambda, w.weight_decay)


def test_table_rows_and_values():
  # 10 rows; adam_l2 in all, adamw/adamprox in all but DenseNet-BC with BN.
  assert len(PAPER_TABLE) == 10
  assert len(RECIPES) == 10 + 2 * 9
  assert "densenet_bc100-bn-adamw" not in RECIPES
  expect = {  # name: (alpha, lambda, optax weight decay), by hand from the paper's table
      "resnet20-nobn-adamw": (1e-3, 5e-5, 0.05),
      "resnet44-nobn-adamw": (5e-4, 5e-5, 0.1),
      "resnet56-nobn-adam_l2": (5e-4, 5e-4, 5e-4),
      "resnet110-bn-adamw": (5e-3, 0.0, 0.0),
      "densenet_bc100-nobn-adamw": (1e-3, 5e-5, 0.05),
      "densenet_bc100-nobn-adam_l2": (5e-4, 1e-3, 1e-3),
      "resnet110-nobn-x10-adam_l2": (1e-3, 5e-3, 5e-3),
      "resnet110-nobn-x100-adam_l2": (1e-4, 1e-1, 1e-1),
      "resnet110-nobn-x100-adamw": (5e-4, 1e-4, 0.2),
  }
  for name, (a, lam, wd) in expect.items():
    r = get_recipe(name)
    assert (r.paper_alpha, r.paper_lambda) == (a, lam), name
    assert r.weight_decay == pytest.approx(wd, rel=1e-12), name
  assert get_recipe("resnet110-nobn-x100-adamw").loss_multiplier == 100
  assert get_recipe("densenet_bc100-bn-adam_l2").dataset == "cifar100"
  assert get_recipe("densenet_bc100-bn-adam_l2").use_bn


def test_paper_scale_protocol():
  cfg = get_recipe("resnet56-nobn-adamw").config("paper")
  assert cfg.epochs == 300 and cfg.batch_size == 128
  assert cfg.schedule == "constant" and cfg.convention == "paper"
  assert cfg.dataset == "cifar10" and cfg.use_bn is False
  quick = get_recipe("resnet56-nobn-adamw").config("quick")
  assert quick.dataset == "sample" and quick.epochs == recipes.QUICK_EPOCHS
  assert get_recipe("densenet_bc100-nobn-adamw").config("quick").train_subset == 2000
  with pytest.raises(ValueError, match="quick, paper"):
    get_recipe("resnet56-nobn-adamw").config("huge")
  # A recipe is a Config: the same type the CLI resolves to.
  from experiments.configs.default import Config
  assert isinstance(cfg, Config) and cfg.recipe == "resnet56-nobn-adamw"


def test_cli_recipe_resolves_and_flags_override():
  cfg = train.config_from_argv(
      ["--recipe", "resnet110-nobn-adamw", "--budget", "quick", "--epochs", "1"])
  assert cfg.model == "resnet110" and cfg.use_bn is False
  assert cfg.lr == 5e-4 and cfg.weight_decay == 1e-4
  assert cfg.convention == "paper" and cfg.epochs == 1
  assert optax_weight_decay(cfg) == pytest.approx(0.2)
  cfg = train.config_from_argv(["--recipe", "resnet110-nobn-x100-adam_l2"])
  assert cfg.loss_multiplier == 100 and cfg.epochs == 300
  assert optax_weight_decay(cfg) == 1e-1


def test_unknown_recipe_lists_choices():
  with pytest.raises(ValueError, match="resnet20-nobn-adamw.*resnet110-nobn-x100-adamprox"):
    get_recipe("resnet20-adamw")


def test_markdown_table_has_every_recipe():
  md = recipes.table_markdown()
  assert all(name in md for name in RECIPES)
  assert "| resnet110-nobn-adamw | 0.0005 | 0.0001 | 0.0005 | 0.2 | 1 |" in md
