"""Model registry: ``make_model(name, num_classes=..., use_bn=..., seed=...)``."""

from __future__ import annotations

from flax import nnx

from experiments.models.densenet import DenseNetBC
from experiments.models.resnet import RESNET_DEPTHS, ResNet

MODELS = tuple(f"resnet{d}" for d in RESNET_DEPTHS) + ("densenet_bc100",)


def make_model(
    name: str, *, num_classes: int = 10, use_bn: bool = True, seed: int = 0,
    zero_init_residual: bool = False,
) -> nnx.Module:
  """Builds a model by name, initialised from ``seed``.

  ``zero_init_residual`` (ResNets only) zeroes the last conv of every
  residual branch whose shortcut is the identity; see :mod:`experiments.models.resnet`.

  Example:
    >>> from experiments.models import make_model
    >>> make_model("resnet20", num_classes=10, use_bn=False, seed=0).depth
    20
  """
  if name not in MODELS:
    raise ValueError(
        f"unknown model {name!r}; valid choices: {', '.join(MODELS)}."
    )
  rngs = nnx.Rngs(seed)
  if name.startswith("resnet"):
    return ResNet(int(name[len("resnet"):]), num_classes, use_bn,
                  zero_init_residual=zero_init_residual, rngs=rngs)
  if zero_init_residual:
    raise ValueError(f"zero_init_residual applies to the ResNets, not {name!r}.")
  return DenseNetBC(100, num_classes, use_bn, growth=12, rngs=rngs)


def count_params(model: nnx.Module) -> int:
  """Number of trainable scalars (``nnx.Param`` leaves)."""
  import jax
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ["MODELS", "DenseNetBC", "ResNet", "count_params", "make_model"]
