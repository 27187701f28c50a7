"""Augmentation and normalisation of CIFAR batches, on the device.

Jittable functions of a PRNG key, called inside the train step
(:mod:`experiments.training.train_step`) so that the host only ships uint8
batches: random crop of the 4-pixel zero-padded image and a random horizontal
flip, then per-channel standardisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# CIFAR-10 per-channel statistics of the training set (images in [0, 1]).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def normalize(images: jax.Array) -> jax.Array:
  """uint8/float images in [0, 255] -> float32, per-channel standardised."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(CIFAR_MEAN)) / jnp.asarray(CIFAR_STD)


def augment(rng: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Random crop of the ``pad``-zero-padded image and random horizontal flip.

  ``images``: (B, H, W, C) uint8. Returns normalised float32 (B, H, W, C).
  Padding is applied to the raw pixels (zeros = black), as torchvision's
  ``RandomCrop(32, padding=4)`` does before ``Normalize``.
  """
  b, h, w, c = images.shape
  k_crop, k_flip = jax.random.split(rng)
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  crops = jax.vmap(
      lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))
  )(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  crops = jnp.where(flip[:, None, None, None], crops[:, :, ::-1, :], crops)
  return normalize(crops)
