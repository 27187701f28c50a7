"""The PyTorch peer of the experiments' CIFAR ResNet and train step.

The same network as ``experiments.models.resnet`` (He et al., "Deep Residual
Learning for Image Recognition", CVPR 2016, Sec. 4.2): a 3x3 stem conv with 16
channels, three stages of ``n`` basic blocks with 16/32/64 channels (depth
``6n + 2``), option-A shortcuts (stride-2 subsampling plus zero channel
padding, so shortcuts have no parameters), convolutions without bias,
kaiming-normal (fan-in, ReLU gain) init of convs and of the head's weights
with a zero head bias (as ``experiments.models.resnet``), optional BatchNorm (``bn=False``
removes the BN layers and nothing else), global average pooling and a dense
head. The train step is forward, softmax cross-entropy, backward and one
``torch.optim`` Adam/AdamW step, i.e. what ``experiments.kernels.train_step`` does in JAX.
``precision="bfloat16"`` is PyTorch's usual mixed precision, the peer of the
JAX step's: ``torch.autocast(dtype=torch.bfloat16)`` around the forward pass
and the loss (convolutions and the dense layer in bfloat16), the logits cast
to float32 for the cross-entropy, float32 master weights, gradients and
optimizer state.

Used by ``python -m benchmarks.train_step`` as the reference speed, and
importable by anyone who needs the PyTorch model (``make_resnet``).

Example:
  >>> import torch
  >>> from benchmarks.torch_peer import make_resnet, param_count
  >>> param_count(make_resnet(20, bn=True))  # 0.27M, as published
  269722
  >>> param_count(make_resnet(110, bn=False))  # 1.7M
  1719866
"""

from __future__ import annotations

import time
from typing import Callable

PRECISIONS = ("float32", "bfloat16")

import torch
from torch import nn
from torch.nn import functional as F

VALID_DEPTHS = (8, 14, 20, 32, 44, 56, 110, 218)


def _conv3x3(cin: int, cout: int, stride: int) -> nn.Conv2d:
  conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
  # He et al. 2015 init, as experiments.models.resnet: normal with std
  # sqrt(2 / fan_in), fan_in = cin * 9.
  nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
  return conv


class BasicBlock(nn.Module):
  """conv-(BN)-relu-conv-(BN) + option-A shortcut, then relu."""

  def __init__(self, cin: int, cout: int, stride: int, bn: bool):
    super().__init__()
    self.conv1 = _conv3x3(cin, cout, stride)
    self.conv2 = _conv3x3(cout, cout, 1)
    self.bn1 = nn.BatchNorm2d(cout) if bn else nn.Identity()
    self.bn2 = nn.BatchNorm2d(cout) if bn else nn.Identity()
    self.stride = stride
    self.pad = cout - cin

  def shortcut(self, x: torch.Tensor) -> torch.Tensor:
    if self.stride != 1:
      x = x[:, :, :: self.stride, :: self.stride]
    if self.pad:
      # Option A: zero-pad the new channels evenly on both sides.
      x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
    return x

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
  """CIFAR ResNet of depth ``6n + 2`` with option-A shortcuts."""

  def __init__(self, depth: int, num_classes: int = 10, bn: bool = True):
    super().__init__()
    if (depth - 2) % 6 or depth < 8:
      raise ValueError(
          f"ResNet: `depth` must be 6n+2 with n >= 1 (e.g. {VALID_DEPTHS}); "
          f"got {depth}."
      )
    n = (depth - 2) // 6
    self.stem = _conv3x3(3, 16, 1)
    self.stem_bn = nn.BatchNorm2d(16) if bn else nn.Identity()
    blocks, cin = [], 16
    for stage, cout in enumerate((16, 32, 64)):
      for i in range(n):
        stride = 2 if (stage > 0 and i == 0) else 1
        blocks.append(BasicBlock(cin, cout, stride, bn))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(64, num_classes)
    nn.init.kaiming_normal_(self.head.weight, mode="fan_in",
                            nonlinearity="relu")
    nn.init.zeros_(self.head.bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.stem_bn(self.stem(x)))
    x = self.blocks(x)
    return self.head(x.mean(dim=(2, 3)))


def make_resnet(depth: int, *, bn: bool = True, num_classes: int = 10,
                seed: int = 0) -> ResNet:
  """A CIFAR ResNet-``depth`` with a fixed seed (NCHW inputs)."""
  torch.manual_seed(seed)
  return ResNet(depth, num_classes, bn)


def param_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def make_optimizer(model: nn.Module, name: str, lr: float = 1e-3,
                   weight_decay: float = 0.0,
                   impl: str = "foreach") -> torch.optim.Optimizer:
  """``torch.optim.Adam`` (L2) or ``AdamW`` with the given kernel ``impl``.

  ``impl`` is ``"foreach"``, ``"fused"`` or ``"for"`` (one loop per tensor).
  """
  classes = {"adam": torch.optim.Adam, "adam_l2": torch.optim.Adam,
             "adamw": torch.optim.AdamW}
  if name not in classes:
    raise ValueError(
        f"make_optimizer: unknown `name={name!r}`; use one of {sorted(classes)}."
    )
  if impl not in ("foreach", "fused", "for"):
    raise ValueError(
        f"make_optimizer: unknown `impl={impl!r}`; use 'foreach', 'fused' or "
        "'for'."
    )
  kwargs = dict(lr=lr, weight_decay=weight_decay)
  if impl == "fused":
    kwargs["fused"] = True
  else:
    kwargs["foreach"] = impl == "foreach"
  return classes[name](model.parameters(), **kwargs)


def make_train_step(model: nn.Module, opt: torch.optim.Optimizer,
                    precision: str = "float32"
                    ) -> Callable[[torch.Tensor, torch.Tensor], float]:
  """``step(images, labels) -> loss``: forward, CE loss, backward, update.

  ``precision="bfloat16"`` runs the forward pass and the loss under
  ``torch.autocast(<the parameters' device>, dtype=torch.bfloat16)`` with
  float32 logits for the loss; the parameters (master weights), their
  gradients and the optimizer state stay float32.
  """
  if precision not in PRECISIONS:
    raise ValueError(
        f"make_train_step: unknown `precision={precision!r}`; valid choices: "
        f"{', '.join(PRECISIONS)}."
    )
  model.train()
  device = next(model.parameters()).device.type

  def step(images: torch.Tensor, labels: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    if precision == "bfloat16":
      with torch.autocast(device, dtype=torch.bfloat16):
        loss = F.cross_entropy(model(images).float(), labels)
    else:
      loss = F.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step


def time_train_step(depth: int, bn: bool, batch: int, reps: int,
                    optimizer: str = "adamw", threads: int | None = None,
                    precision: str = "float32") -> list[float]:
  """Seconds per train step on random data (``reps`` timed, after 2 warm-up)."""
  if threads:
    torch.set_num_threads(threads)
  model = make_resnet(depth, bn=bn)
  step = make_train_step(model, make_optimizer(model, optimizer, 1e-3, 1e-4),
                         precision)
  g = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, 32, 32, generator=g)
  labels = torch.randint(0, 10, (batch,), generator=g)
  for _ in range(2):
    step(images, labels)
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    step(images, labels)
    times.append(time.perf_counter() - t0)
  return times
