"""Backbone features of every example of a split, each exactly once, on any number of devices and hosts.

Stage 2 trains its head on the features of the stage-2 set (cached features); evaluation scores
heads on the features of the val and test splits. Both use this one path.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from bwlm_jax.runtime import distributed
from bwlm_jax.data import device_pipeline, stream_pipeline
from bwlm_jax.data.splits import LongTailDataset
from bwlm_jax.runtime.errors import RunError
from bwlm_jax.models import DTYPES, Model, make_features_fn


class SplitFeatures:
  """split_features(variables, split) -> (features [N, D] float32, labels [N]) as NumPy arrays; with `views`
  (data.test_views) the evaluation splits' (val, test) are [N, V, D], one row per view of each image, and the
  training splits' (stage 2's cache, class means, text heads) stay the plain images'."""

  def __init__(self, model: Model, dataset: LongTailDataset, mesh: jax.sharding.Mesh, batch_size: int,
               dtype: str = 'float32', views: str = 'none'):
    self.dataset = dataset
    self.batch_size = batch_size
    self.data_sharding = distributed.batch_sharded(mesh)
    self.features_fn = make_features_fn(model, dataset.mean, dataset.std, DTYPES[dtype])
    self.views_fn = self.features_fn if views == 'none' else make_features_fn(model, dataset.mean, dataset.std,
                                                                               DTYPES[dtype], views)

  def _batches(self, split):
    dataset = self.dataset
    if dataset.in_memory:
      return device_pipeline.eval_batches(split, self.batch_size, jax.device_count())
    return stream_pipeline.eval_batches(split, batch_size=self.batch_size // jax.process_count(),
                                        image_size=dataset.image_size, mean=dataset.mean, std=dataset.std,
                                        process_index=jax.process_index(), process_count=jax.process_count(),
                                        multiple=jax.local_device_count(), transform=dataset.eval_transform)

  def __call__(self, variables: dict, split) -> tuple[np.ndarray, np.ndarray]:
    in_memory = self.dataset.in_memory
    evaluated = any(split is other for other in self.dataset.eval_splits().values())
    features_fn = self.views_fn if evaluated else self.features_fn
    features, labels = [], []
    for images, batch_labels, mask in self._batches(split):
      if in_memory:  # every process holds the same full batch
        images = jax.device_put(images, self.data_sharding)
      else:  # each process holds its own shard's batch
        images = jax.make_array_from_process_local_data(self.data_sharding, images)
      out = features_fn(variables, images)
      if jax.process_count() > 1:
        out = multihost_utils.process_allgather(out, tiled=True)
        if not in_memory:
          batch_labels = multihost_utils.process_allgather(batch_labels)
          mask = multihost_utils.process_allgather(mask)
      keep = np.asarray(mask).reshape(-1)
      features.append(np.asarray(out)[keep])
      labels.append(np.asarray(batch_labels).reshape(-1)[keep])
    features = np.concatenate(features)
    bad = int((~np.isfinite(features.reshape(len(features), -1)).all(axis=1)).sum())
    if bad:  # accuracies of NaN features would be numbers nobody can trust
      raise RunError(f'the backbone gave non-finite features for {bad} of {len(features)} examples '
                     'of a split: its parameters or statistics diverged, or the compiler miscomputed them (see '
                     'docs/PERFORMANCE.md on bfloat16 with jaxlib 0.12 on CPUs).')
    return features, np.concatenate(labels)
