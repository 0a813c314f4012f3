"""`bwlm_shapes`: the embedded, offline dataset, drawn in memory.

The images are drawn procedurally (see `shapes.py`); nothing is downloaded and no TensorFlow is needed.
The train split is balanced (300 images per class) and is made long-tailed by the same exponential
profile as CIFAR-LT, at any imbalance factor; the test split is balanced (100 per class).
`embedded_tfds.py` offers the same splits as a tfds builder (what the streamed pipeline reads).

Drawing the 8,000 images takes ~2 s of Python, paid by every process that uses them, so the drawn splits are
kept in a cache folder (`CACHE_ENV`, default ~/.cache/bwlm-jax), under a name that changes with the drawing
code and NumPy's version; a missing, damaged or unwritable cache only means drawing again.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile

import numpy as np

from bwlm_jax.runtime import files
from bwlm_jax.data.synthetic import shapes
from bwlm_jax.data.splits import ArraySplit

NAME = 'bwlm_shapes'
TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 100
_SEEDS = {'train': 20240, 'test': 20241}
_PER_CLASS = {'train': TRAIN_PER_CLASS, 'test': TEST_PER_CLASS}
CACHE_ENV = 'BWLM_JAX_CACHE_DIR'  # where drawn splits are kept; 'off': draw every time


def cache_path(split: str) -> str | None:
  """The cache file of a drawn split: named by a hash of what decides its pixels (the drawing code, seeds,
  counts and NumPy's version, whose generators draw the values); None when the cache is off."""
  folder = os.environ.get(CACHE_ENV) or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'bwlm-jax')
  if folder == 'off':
    return None
  with open(shapes.__file__, 'rb') as f:
    code = f.read()
  key = hashlib.sha256(code + repr((_SEEDS[split], _PER_CLASS[split], np.__version__)).encode()).hexdigest()
  return os.path.join(folder, f'{NAME}-{split}-{key[:16]}.npz')


def _read_cached(path: str, count: int) -> tuple[np.ndarray, np.ndarray] | None:
  try:
    with np.load(path, allow_pickle=False) as arrays:
      images, labels = arrays['images'], arrays['labels']
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, cut short or damaged
    return None
  whole = (images.dtype == np.uint8 and images.shape == (count, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3)
           and labels.dtype == np.int64 and labels.shape == (count,))
  return (images, labels) if whole else None


def drawn(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The images (uint8 [N, 32, 32, 3]) and labels of 'train' or 'test' in the order they are drawn."""
  counts = np.full(len(shapes.class_names()), _PER_CLASS[split])
  path = cache_path(split)
  cached = _read_cached(path, int(counts.sum())) if path else None
  if cached is not None:
    return cached
  images, labels = shapes.draw_split(counts, _SEEDS[split])
  if path:  # a folder that cannot be written only leaves the cache empty
    files.write_cache(path, lambda file: np.savez(file, images=images, labels=labels))
  return images, labels


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
