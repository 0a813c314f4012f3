"""What makes a result comparable: the exact training set (per-class counts and a hash of the image
indices), the backbone and its size, the global batch, the devices, and the library versions.

Recorded in every `results.json` and checkpoint meta; `summarize_data.py` prints the training-set part.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from typing import Optional

import numpy as np

LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow', 'tensorflow-datasets', 'numpy',
             'ml-collections')


def training_set_hash(dataset) -> Optional[str]:
  """sha256 of the training split: the dataset name, then each kept image's position in the source's
  training split with its label (int64, in order). One different index gives another hash."""
  if dataset.train_indices is None:
    return None
  digest = hashlib.sha256(dataset.name.encode())
  digest.update(np.asarray(dataset.train_indices, np.int64).tobytes())
  digest.update(np.asarray(dataset.train.labels, np.int64).tobytes())
  return digest.hexdigest()


def construction(data_cfg) -> str:
  """How the training set was made, in words (what to compare with another repository's subset)."""
  if data_cfg.imbalance_factor is None:
    return 'the source\'s own training split, unchanged (its natural distribution)'
  return (f'exponential profile n_i = int(n_max * (1/{data_cfg.imbalance_factor:g})^(i/(C-1))) over label order, '
          f'then a seeded random choice of n_i images per class (data.subset_seed={data_cfg.subset_seed}); '
          'the common CIFAR-LT construction (as in LDAM-DRW) in kind, but which images a class keeps depends '
          'on the seed and the generator, so compare subsets by this hash, not by name')


def versions(libraries=LIBRARIES) -> dict[str, Optional[str]]:
  """Python's version and each installed library's (None where it is not installed)."""
  found = {'python': platform.python_version()}
  for name in libraries:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def run_fingerprint(config, dataset, model) -> dict:
  """The fingerprint of a run (see the module docstring); `model` is the run's `models.Model`."""
  import jax
  image_shape = (dataset.image_size, dataset.image_size, 3)
  return {
      'train_counts': dataset.train_counts.tolist(),
      'train_indices_sha256': training_set_hash(dataset),
      'construction': construction(config.data),
      'backbone': config.model.name,
      'parameters': model.parameter_count(image_shape),
      'global_batch': config.batch_size,
      'devices': {'kind': jax.devices()[0].device_kind, 'count': jax.device_count(),
                  'processes': jax.process_count()},
      'versions': versions(),
  }
