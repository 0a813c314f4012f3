"""Procedural 32x32 RGB images of coloured shapes: the content of the embedded dataset.

A class is a (shape, colour) pair. Each image varies the shape's position, scale, rotation and
brightness, draws it on a random textured background with distractor blobs and adds pixel noise,
so the task is learnable but not trivial. Everything is a pure function of the seed.
"""

from __future__ import annotations

import numpy as np
from bwlm_jax.runtime.errors import UsageError

IMAGE_SIZE = 32
SHAPES = ('disc', 'square', 'triangle', 'ring', 'cross')
# Hues in [0, 1); saturated colours that stay apart after brightness jitter.
COLOURS = {'red': 0.0, 'yellow': 0.15, 'green': 0.33, 'cyan': 0.5, 'blue': 0.63, 'magenta': 0.83}
DEFAULT_COLOURS = ('red', 'green', 'blue', 'yellow')


def class_attributes(colours=DEFAULT_COLOURS) -> tuple[tuple[int, int], ...]:
  """(shape index, colour index) of each label, walking the shape x colour grid by diagonals.

  The order matters because the long-tail profile follows label order: along diagonals, the head
  half of the classes already shows every shape and every colour, and the tail classes are new
  combinations of them, which is what a backbone trained on the head can transfer to.
  """
  return tuple((s, (s + d) % len(colours)) for d in range(len(colours)) for s in range(len(SHAPES)))


def class_names(colours=DEFAULT_COLOURS) -> tuple[str, ...]:
  """Class names in label order, e.g. 'red_disc'."""
  return tuple(f'{colours[c]}_{SHAPES[s]}' for s, c in class_attributes(colours))


def _hue_to_rgb(hue: float, value: float) -> np.ndarray:
  """Fully saturated HSV colour as float RGB in [0, 1]."""
  k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
  return value * (1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, scale: float, angle: float) -> np.ndarray:
  """Boolean mask of `shape` centred at the origin of the (xx, yy) grid."""
  cos, sin = np.cos(angle), np.sin(angle)
  u = (cos * xx + sin * yy) / scale
  v = (-sin * xx + cos * yy) / scale
  if shape == 'disc':
    return u * u + v * v <= 1.0
  if shape == 'square':
    return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
  if shape == 'triangle':
    return (v <= 0.75) & (v >= -0.9 + 1.6 * np.abs(u) * 1.1)
  if shape == 'ring':
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.35)
  if shape == 'cross':
    return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
  raise UsageError(f'unknown shape {shape!r}; expected one of {SHAPES}.')


def draw_image(label: int, rng: np.random.Generator, colours=DEFAULT_COLOURS) -> np.ndarray:
  """One uint8 [32, 32, 3] image of class `label`."""
  shape_index, colour_index = class_attributes(colours)[label]
  shape = SHAPES[shape_index]
  hue = COLOURS[colours[colour_index]]
  coords = np.arange(IMAGE_SIZE, dtype=np.float64)
  yy, xx = np.meshgrid(coords, coords, indexing='ij')

  # Background: a dim random gradient plus smaller blobs of random colour as distractors.
  base = rng.uniform(0.05, 0.45, size=3)
  slope = rng.uniform(-0.01, 0.01, size=(2, 3))
  image = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
  for _ in range(rng.integers(1, 4)):
    cx, cy = rng.uniform(0, IMAGE_SIZE, size=2)
    radius = rng.uniform(1.0, 3.0)
    blob = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
    image[blob] = _hue_to_rgb(rng.uniform(), rng.uniform(0.3, 0.8))

  scale = rng.uniform(5.0, 10.0)
  cx, cy = rng.uniform(scale + 1, IMAGE_SIZE - scale - 1, size=2)
  mask = _shape_mask(shape, xx - cx, yy - cy, scale, rng.uniform(0, 2 * np.pi))
  colour = _hue_to_rgb((hue + rng.normal(0.0, 0.03)) % 1.0, rng.uniform(0.5, 1.0))
  image[mask] = colour

  image = image + rng.normal(0.0, 0.08, size=image.shape)
  return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def draw_split(counts_per_class, seed: int, colours=DEFAULT_COLOURS):
  """Images and labels with `counts_per_class[c]` examples of class c, in a seeded shuffled order."""
  labels = np.repeat(np.arange(len(counts_per_class)), counts_per_class)
  order_rng = np.random.default_rng([seed, 0])
  labels = labels[order_rng.permutation(labels.size)]
  rng = np.random.default_rng([seed, 1])
  images = np.stack([draw_image(int(y), rng, colours) for y in labels]) if labels.size else (
      np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
  return images, labels.astype(np.int64)
