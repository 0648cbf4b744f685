"""Training augmentation on device: random padded crops and horizontal flips.

The standard CIFAR recipe (torchvision ``RandomCrop(32, padding=4)`` then
``RandomHorizontalFlip()``), as a pure JAX function of a key, so that it runs inside the
jitted training step (no host work per batch) and is reproducible: the same key and
images give the same batch. Each example draws its own offsets and flip.

The images are already normalised when they reach the step, so the padding value is
the normalised value of a black pixel, ``-mean / std`` per channel: what zero padding
before normalisation (torchvision's order) gives.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def crop_and_flip(key: jax.Array, images: jax.Array, *, padding: int, flip: bool,
                  pad_value: Sequence[float] | jax.Array = 0.0) -> jax.Array:
  """Random ``H x W`` crops of the padded images, each flipped with probability 1/2.

  Args:
    key: a PRNG key for this batch.
    images: ``[B, H, W, C]`` images.
    padding: pixels added on every side before cropping; 0 = no cropping.
    flip: flip each image left-right with probability 1/2.
    pad_value: the value of padded pixels, a scalar or one per channel.

  Returns:
    ``[B, H, W, C]`` augmented images, of the input's dtype.
  """
  if padding < 0:
    raise ValueError(f"padding={padding} must be >= 0")
  n, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  if padding:
    fill = jnp.broadcast_to(jnp.asarray(pad_value, images.dtype), (c,))
    padded = jnp.broadcast_to(fill, (n, h + 2 * padding, w + 2 * padding, c))
    padded = padded.at[:, padding:padding + h, padding:padding + w].set(images)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)
    images = jax.vmap(lambda image, offset: jax.lax.dynamic_slice(
        image, (offset[0], offset[1], 0), (h, w, c)))(padded, offsets)
  if flip:
    flipped = jax.random.bernoulli(flip_key, 0.5, (n,))
    images = jnp.where(flipped[:, None, None, None], images[:, :, ::-1], images)
  return images


def black_level(mean: Sequence[float], std: Sequence[float]) -> tuple[float, ...]:
  """The normalised value of a black pixel per channel, ``-mean / std``."""
  return tuple(-float(m) / float(s) for m, s in zip(mean, std))
