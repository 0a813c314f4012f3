"""Input pipeline for datasets that fit on device: batches are gathered and augmented inside jit.

The epoch order is a pure function of (key, epoch), so a resumed run sees the batches that an
uninterrupted run would. An epoch has ceil(N / B) steps; the last batch is completed with the
first examples of the same epoch's order, so every example is seen at least once per epoch.
"""

from __future__ import annotations

import math
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from bwlm_jax.data.splits import ArraySplit

CROP_PADDING = 4


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return math.ceil(num_examples / batch_size)


def batch_indices(key: jax.Array, epoch, step_in_epoch, num_examples: int, batch_size: int) -> jax.Array:
  """Indices of one training batch: positions [s*B, (s+1)*B) of the epoch's permutation, wrapping."""
  order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  positions = (step_in_epoch * batch_size + jnp.arange(batch_size)) % num_examples
  return order[positions]


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int = CROP_PADDING) -> jax.Array:
  """Zero-pad each side by `padding`, take a random crop of the original size, flip half at random."""
  batch, height, width, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (batch,))

  def crop_one(image, offset, flip):
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(crop_one)(padded, offsets, flips)


def normalize(images: jax.Array, mean, std, dtype=jnp.float32) -> jax.Array:
  """uint8 pixels -> (x / 255 - mean) / std per channel."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


def padded_size(count: int, batch_size: int, multiple: int = 1) -> int:
  """The size a batch of `count` (<= batch_size) examples is padded to: the smallest power of two times `multiple`
  (the devices it is split over) that holds them, at most `batch_size`: a few shapes, each compiled once, and
  never much beyond the examples (18 images with an evaluation batch of 100 take 32 places, not 100)."""
  size = multiple
  while size < count:
    size *= 2
  return min(size, batch_size)


def eval_batches(split: ArraySplit, batch_size: int, multiple: int = 1
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(uint8 images, labels, mask) covering every example once; the last batch is padded (`padded_size`), mask
  False there."""
  count = len(split)
  for start in range(0, count, batch_size):
    stop = min(start + batch_size, count)
    size = padded_size(stop - start, batch_size, multiple)
    images = np.zeros((size,) + split.images.shape[1:], np.uint8)
    labels = np.zeros((size,), np.int32)
    mask = np.zeros((size,), bool)
    images[:stop - start] = split.images[start:stop]
    labels[:stop - start] = split.labels[start:stop]
    mask[:stop - start] = True
    yield images, labels, mask
