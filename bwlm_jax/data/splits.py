"""Split containers: in-memory arrays, or a tf.data source read in a fixed order."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

import numpy as np

from bwlm_jax.data.eval_transform import EvalTransform


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """A split held in memory: uint8 images [N, H, W, 3] and int labels [N]."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def subset(self, indices: np.ndarray) -> 'ArraySplit':
    return ArraySplit(self.images[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True)
class StreamSplit:
  """A split read with tf.data from a source whose example order never changes.

  `make_source()` returns a `tf.data.Dataset` of `{'image': encoded bytes, 'label': int}` in a fixed
  order; `indices` are the positions of that order this split keeps (sorted), and `source_labels`
  are the labels of every position, so counts and subsets need no image reads.
  """
  make_source: Callable[[], 'tf.data.Dataset']  # noqa: F821 (tf is imported lazily)
  source_labels: np.ndarray
  indices: np.ndarray

  def __len__(self) -> int:
    return int(self.indices.shape[0])

  @property
  def labels(self) -> np.ndarray:
    return self.source_labels[self.indices]

  def subset(self, indices: np.ndarray) -> 'StreamSplit':
    return dataclasses.replace(self, indices=self.indices[indices])


Split = Union[ArraySplit, StreamSplit]


@dataclasses.dataclass(frozen=True)
class LongTailDataset:
  """A long-tailed training split with balanced evaluation splits.

  `mean` and `std` are per-channel statistics in [0, 1] pixel units used for normalisation.
  `val_source` says where `val` comes from: 'split' (the source's own), 'unused_train' (carved from
  the training images the long-tail profile leaves out), or None (no validation split).
  `train_indices` are the positions in the source's training split of the images `train` holds (what
  the training-set fingerprint hashes); None for a dataset built by hand.
  """
  name: str
  class_names: tuple[str, ...]
  train: Split
  test: Split
  val: Optional[Split]
  image_size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  val_source: Optional[str] = None
  train_indices: Optional[np.ndarray] = None
  eval_transform: Optional[EvalTransform] = None  # data.eval_transform; None: the pipeline's own

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def train_counts(self) -> np.ndarray:
    return np.bincount(self.train.labels, minlength=self.num_classes).astype(np.int64)

  @property
  def in_memory(self) -> bool:
    return isinstance(self.train, ArraySplit)

  def eval_splits(self) -> dict[str, Split]:
    splits = {'test': self.test}
    if self.val is not None:
      splits['val'] = self.val
    return splits
