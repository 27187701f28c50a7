r"""The CIFAR ResNet of He et al. (2016), Section 4.2, in Flax NNX.

Depth ``6n + 2``: a 3x3 stem conv (16 channels), three stages of ``n`` basic
blocks with 16, 32, 64 channels (the first block of stages 2 and 3 has stride
2), global average pooling and a dense head. Shortcuts are option A: the
identity, or, where the shape changes, a stride-2 subsample padded with zero
channels (no parameters). Convolutions have no bias and use Kaiming-normal
initialisation (fan-in, gain sqrt(2), untruncated: ``torch.nn.init.kaiming_normal_``).
``use_bn=False`` removes the BatchNorm layers and changes nothing else, as
in Zhuang et al. (2022); with ``zero_init_residual=False`` (the default) the
network is the paper's.

``zero_init_residual=True`` (a deviation, for short runs) sets the last conv
of every residual branch *whose shortcut is the identity* to zero, so those
blocks start as the identity (plus ReLU): without BN, the
Kaiming-initialised branches otherwise add up their variance block after
block (initial logits of order 10^2-10^3 for ResNet-44/56), and deep BN-free
nets stay near chance for hundreds of steps. The first block of stages 2 and
3 keeps its drawn conv: its option-A shortcut brings zeros into the new
channels, so a zero branch there would leave those channels at exactly 0
after the ReLU, where its gradient is 0, and every weight that writes into
them would never receive a gradient (up to 64% of the parameters: the defect
of issue #22). The other weights are the same draws as without it (the
random stream is consumed identically).

The model is exposed as ``stem``, ``blocks`` (an ``nnx.List`` of blocks, each
callable on its own) and ``head`` so that a train step can run the network one
block at a time without touching these definitions.

Parameter counts (10 classes): ResNet-20 0.27M, -32 0.46M, -44 0.66M,
-56 0.85M, -110 1.7M, -218 3.4M (He et al., Table 6).

Reference: He, Zhang, Ren, Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# torch.nn.init.kaiming_normal_ defaults: fan_in, gain^2 = 2, plain normal.
kaiming_normal = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# PyTorch's BatchNorm2d defaults (momentum 0.1 there = 0.9 decay here).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv3x3(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(
      cin, cout, (3, 3), strides=stride, padding=((1, 1), (1, 1)),
      use_bias=False, kernel_init=kaiming_normal, rngs=rngs,
  )


def batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  del rngs  # BN starts at scale 1, bias 0: it needs no randomness.
  # A throwaway stream, so that adding/removing BN does not shift the random
  # stream of the convs: with and without BN start from identical weights.
  return nnx.BatchNorm(
      features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=nnx.Rngs(0)
  )


class Stem(nnx.Module):
  """conv3x3(3 -> 16) [-> BN] -> ReLU."""

  def __init__(self, cin: int, cout: int, use_bn: bool, *, rngs: nnx.Rngs):
    self.conv = conv3x3(cin, cout, 1, rngs)
    self.bn = batch_norm(cout, rngs) if use_bn else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv(x)
    if self.bn is not None:
      h = self.bn(h)
    return jax.nn.relu(h)


def shortcut_option_a(x: jax.Array, cout: int, stride: int) -> jax.Array:
  """Identity, or stride-`stride` subsample + zero channel padding (He et al., option A)."""
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  extra = cout - x.shape[-1]
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  return x


class BasicBlock(nnx.Module):
  """relu(conv-[BN]-relu-conv-[BN](x) + shortcut(x))."""

  def __init__(
      self, cin: int, cout: int, stride: int, use_bn: bool, *,
      zero_init_residual: bool = False, rngs: nnx.Rngs,
  ):
    self.cout = cout
    self.stride = stride
    self.conv1 = conv3x3(cin, cout, stride, rngs)
    self.bn1 = batch_norm(cout, rngs) if use_bn else None
    self.conv2 = conv3x3(cout, cout, 1, rngs)
    if zero_init_residual and self.has_identity_shortcut(cin, cout, stride):
      # Drawn, then zeroed: the rest of the random stream stays the same.
      # Only where the shortcut is the identity: see the module docstring.
      self.conv2.kernel.value = jnp.zeros_like(self.conv2.kernel.value)
    self.bn2 = batch_norm(cout, rngs) if use_bn else None

  @staticmethod
  def has_identity_shortcut(cin: int, cout: int, stride: int) -> bool:
    """Whether the option-A shortcut is the identity (else it pads zero channels)."""
    return stride == 1 and cin == cout

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(x)
    if self.bn1 is not None:
      h = self.bn1(h)
    h = jax.nn.relu(h)
    h = self.conv2(h)
    if self.bn2 is not None:
      h = self.bn2(h)
    return jax.nn.relu(h + shortcut_option_a(x, self.cout, self.stride))


class Head(nnx.Module):
  """Global average pool -> dense layer (Kaiming-normal weights, zero bias)."""

  def __init__(self, features: int, num_classes: int, *, rngs: nnx.Rngs):
    self.fc = nnx.Linear(
        features, num_classes, kernel_init=kaiming_normal, rngs=rngs
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc(jnp.mean(x, axis=(1, 2)))


RESNET_DEPTHS = (20, 32, 44, 56, 110, 218)


class ResNet(nnx.Module):
  """CIFAR ResNet of depth ``6n + 2``; input NHWC float, output logits.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> model = ResNet(20, 10, use_bn=False, rngs=nnx.Rngs(0))
    >>> len(model.blocks), model(jnp.zeros((2, 32, 32, 3))).shape
    (9, (2, 10))
  """

  def __init__(
      self,
      depth: int,
      num_classes: int = 10,
      use_bn: bool = True,
      *,
      zero_init_residual: bool = False,
      rngs: nnx.Rngs,
  ):
    if depth < 8 or (depth - 2) % 6:
      raise ValueError(
          f"ResNet: `depth` must be 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, "
          f"110, 218), got {depth!r}."
      )
    n = (depth - 2) // 6
    self.depth = depth
    self.use_bn = use_bn
    self.stem = Stem(3, 16, use_bn, rngs=rngs)
    blocks = []
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
      for i in range(n):
        stride = 2 if (stage > 0 and i == 0) else 1
        blocks.append(BasicBlock(cin, cout, stride, use_bn,
                                 zero_init_residual=zero_init_residual, rngs=rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.head = Head(64, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.stem(x)
    for block in self.blocks:
      h = block(h)
    return self.head(h)
