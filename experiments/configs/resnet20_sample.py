"""A config file to copy: ``python -m experiments.train --config experiments/configs/resnet20_sample.py``.

ResNet-20 without BatchNorm and AdamW at the paper's ResNet-20 setting (recipe
``resnet20-nobn-adamw``), on the CIFAR-10 sample shipped in the repository, for
a few CPU minutes. Flags given after ``--config`` override its values
(``--epochs 30``, ``--dataset cifar10``).
"""

from experiments.configs import Config


def get_config() -> Config:
  return Config(
      dataset="sample", model="resnet20", use_bn=False,
      optimizer="adamw", lr=1e-3, weight_decay=5e-5, convention="paper",  # the paper's (alpha, lambda)
      schedule="constant", batch_size=128, epochs=3,
      out="runs/resnet20-sample",
  )
