r"""The paper's published best settings as named recipes.

Zhuang, Liu, Cutkosky, Orabona (TMLR 2022), CIFAR experiments: 300 epochs,
batch 128, constant step size, random crop + flip, weight decay on every
parameter. In the paper's convention ``alpha`` is the base step size and
``lambda`` decays by ``lambda * eta_t`` per step, so the optax/PyTorch
``weight_decay`` of AdamW (and AdamProx) is ``lambda / alpha``; Adam-L2's
``lambda`` is the L2 coefficient, the same number in every convention.
Each recipe keeps the paper's ``(alpha, lambda)`` next to the converted optax
values. AdamProx was not tuned in the paper: its recipes use AdamW's settings.

Names: ``<model>-<bn|nobn>[-x<loss multiplier>]-<optimizer>``, e.g.
``resnet110-nobn-adamw`` or ``resnet110-nobn-x100-adam_l2``. Budgets
(``--budget``):

- ``paper``: the published protocol (above);
- ``quick``: fits a CPU in minutes: CIFAR-10 recipes use the embedded
  ``sample`` dataset, CIFAR-100 recipes a 2000-image subset of CIFAR-100, for
  ``QUICK_EPOCHS`` epochs; everything else (model, optimizer, alpha, lambda,
  loss multiplier) as in ``paper``.

Example:
  >>> from experiments.configs.recipes import get_recipe
  >>> r = get_recipe("resnet110-nobn-adamw")
  >>> r.paper_alpha, r.paper_lambda, round(r.weight_decay, 12)
  (0.0005, 0.0001, 0.2)
  >>> r.config("quick").epochs, r.config("quick").dataset
  (3, 'sample')
"""

from __future__ import annotations

import dataclasses

from experiments.configs.default import BUDGETS, Config

QUICK_EPOCHS = 3


@dataclasses.dataclass(frozen=True)
class Recipe:
  name: str
  model: str
  use_bn: bool
  dataset: str
  optimizer: str  # adam_l2 | adamw | adamprox
  paper_alpha: float
  paper_lambda: float
  loss_multiplier: float

  @property
  def lr(self) -> float:
    return self.paper_alpha

  @property
  def weight_decay(self) -> float:
    """The optax/PyTorch coefficient: lambda/alpha if decoupled, else lambda."""
    if self.optimizer == "adam_l2":
      return self.paper_lambda
    return self.paper_lambda / self.paper_alpha

  def config(self, budget: str = "paper") -> Config:
    """The training :class:`~experiments.configs.default.Config` of this recipe."""
    if budget not in BUDGETS:
      raise ValueError(f"unknown budget {budget!r}; valid choices: {', '.join(BUDGETS)}.")
    cfg = dict(
        model=self.model, use_bn=self.use_bn, optimizer=self.optimizer,
        lr=self.paper_alpha, weight_decay=self.paper_lambda, convention="paper",
        loss_multiplier=self.loss_multiplier, schedule="constant",
        batch_size=128, epochs=300, dataset=self.dataset, train_subset=None,
    )
    if budget == "quick":
      cfg["epochs"] = QUICK_EPOCHS
      if self.dataset == "cifar10":
        cfg["dataset"] = "sample"
      else:
        cfg["train_subset"] = 2000
    return Config(recipe=self.name, budget=budget, **cfg)

  def row(self) -> dict:
    return dict(
        name=self.name, model=self.model, bn=self.use_bn, dataset=self.dataset,
        optimizer=self.optimizer, loss_multiplier=self.loss_multiplier,
        paper_alpha=self.paper_alpha, paper_lambda=self.paper_lambda,
        optax_learning_rate=self.lr, optax_weight_decay=self.weight_decay,
    )


# (model, BN, dataset, loss multiplier, Adam-L2 (alpha, lambda), AdamW (alpha, lambda)):
# the paper's table of best settings; None = not published.
PAPER_TABLE = (
    ("resnet20", False, "cifar10", 1, (1e-3, 5e-4), (1e-3, 5e-5)),
    ("resnet44", False, "cifar10", 1, (5e-4, 5e-4), (5e-4, 5e-5)),
    ("resnet56", False, "cifar10", 1, (5e-4, 5e-4), (5e-4, 5e-5)),
    ("resnet110", False, "cifar10", 1, (1e-3, 5e-4), (5e-4, 1e-4)),
    ("resnet218", False, "cifar10", 1, (5e-4, 5e-3), (5e-4, 5e-5)),
    ("resnet110", True, "cifar10", 1, (5e-3, 0.0), (5e-3, 0.0)),
    ("densenet_bc100", False, "cifar100", 1, (5e-4, 1e-3), (1e-3, 5e-5)),
    ("densenet_bc100", True, "cifar100", 1, (5e-3, 0.0), None),
    ("resnet110", False, "cifar10", 10, (1e-3, 5e-3), (5e-4, 1e-4)),
    ("resnet110", False, "cifar10", 100, (1e-4, 1e-1), (5e-4, 1e-4)),
)

# The paper's grid for the sweeps.
PAPER_ALPHAS = (5e-5, 1e-4, 5e-4, 1e-3, 5e-3)
PAPER_LAMBDAS = (0.0, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2)


def _build() -> dict[str, Recipe]:
  out = {}
  for model, bn, data, mult, l2, w in PAPER_TABLE:
    stem = f"{model}-{'bn' if bn else 'nobn'}" + (f"-x{mult}" if mult != 1 else "")
    settings = {"adam_l2": l2, "adamw": w, "adamprox": w}
    for opt, ab in settings.items():
      if ab is None:
        continue
      name = f"{stem}-{opt}"
      out[name] = Recipe(name, model, bn, data, opt, ab[0], ab[1], float(mult))
  return out


RECIPES: dict[str, Recipe] = _build()


def get_recipe(name: str) -> Recipe:
  if name not in RECIPES:
    raise ValueError(
        f"unknown recipe {name!r}; valid choices: {', '.join(RECIPES)}."
    )
  return RECIPES[name]


def table_markdown() -> str:
  """The recipes as a markdown table (paper and optax values side by side)."""
  lines = ["| recipe | alpha | lambda (paper) | optax lr | optax weight_decay | loss x |",
           "|---|---|---|---|---|---|"]
  for r in RECIPES.values():
    lines.append(f"| {r.name} | {r.paper_alpha:g} | {r.paper_lambda:g} | {r.lr:g} "
                 f"| {r.weight_decay:g} | {r.loss_multiplier:g} |")
  return "\n".join(lines)

