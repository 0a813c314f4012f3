"""`bwlm_shapes`: the embedded, offline dataset, drawn in memory.

The images are drawn procedurally (see `shapes.py`); nothing is downloaded and no TensorFlow is needed.
The train split is balanced (300 images per class) and is made long-tailed by the same exponential
profile as CIFAR-LT, at any imbalance factor; the test split is balanced (100 per class).
`embedded_tfds.py` offers the same splits as a tfds builder (what the streamed pipeline reads).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from bwlm_jax.data import shapes
from bwlm_jax.data.splits import ArraySplit

NAME = 'bwlm_shapes'
TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 100
_SEEDS = {'train': 20240, 'test': 20241}
_PER_CLASS = {'train': TRAIN_PER_CLASS, 'test': TEST_PER_CLASS}


def drawn(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The images (uint8 [N, 32, 32, 3]) and labels of 'train' or 'test' in the order they are drawn."""
  return shapes.draw_split(np.full(len(shapes.class_names()), _PER_CLASS[split]), _SEEDS[split])


def stored_order(split: str, count: int) -> np.ndarray:
  """The order tfds stores a generated split in: by the md5 of the split's name followed by the example's
  key (tfds' shuffler, salted with the split name). The in-memory split keeps it, so that both give the same
  example at each index, and the long-tail profile keeps the same images either way."""
  hashes = [int(hashlib.md5(f'{split}{key}'.encode()).hexdigest(), 16) for key in range(count)]
  return np.argsort(hashes, kind='stable')


@functools.cache
def split_arrays(split: str) -> ArraySplit:
  """'train' or 'test' as tfds reads it from the prepared builder: the same images and labels, same order."""
  images, labels = drawn(split)
  order = stored_order(split, labels.size)
  images, labels = images[order], labels[order].astype(np.int64)
  images.flags.writeable = labels.flags.writeable = False  # shared by every caller in this process
  return ArraySplit(images, labels)
