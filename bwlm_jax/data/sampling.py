"""Which examples form each training batch, and gathering them from arrays kept on the device.

Pure functions of a step's random key and step number, so they run inside the jitted train step and
a resumed run draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bwlm_jax.data import device_pipeline, randaugment

# Streams of randomness derived from a train state's rng, kept apart by these tags.
DATA_ORDER, AUGMENT, HEAD_INIT, MIXING = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """How a stage's training batches are drawn and prepared."""
  batch_size: int
  steps_per_epoch: int
  augment: bool
  mean: tuple
  std: tuple
  dtype: jnp.dtype
  randaugment: tuple = (0, 0.0)  # (layers, magnitude) of RandAugment after the crop and flip; 0 layers = off


def class_balanced_tables(labels: np.ndarray, num_classes: int) -> dict:
  """Lookup arrays for class-balanced sampling: example indices grouped by class, and where each class starts."""
  order = np.argsort(labels, kind='stable')
  counts = np.bincount(labels, minlength=num_classes)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  return {'order': jnp.asarray(order, jnp.int32), 'starts': jnp.asarray(starts, jnp.int32),
          'counts': jnp.asarray(counts, jnp.int32), 'present': jnp.asarray(np.flatnonzero(counts), jnp.int32)}


def sampler_tables(sampler: str, labels: np.ndarray, num_classes: int, epochs: int):
  """The tables of a sampler (`config.SAMPLERS`; None for 'uniform', each example once per epoch). The others
  draw a class with probability p_c, then a uniform example of it: p_c uniform over the classes for
  'class_balanced' (`class_balanced_tables` alone), proportional to n_c^(1/2) for 'square_root' (Mahajan et
  al. 2018), and for 'progressive' (Kang et al. 2020) linear from instance-balanced (n_c / N) at the first
  epoch to class-balanced at the last of `epochs` (tables 'start', 'end')."""
  if sampler == 'uniform':
    return None
  tables = class_balanced_tables(labels, num_classes)
  if sampler == 'class_balanced':
    return tables
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  present = (counts > 0) / (counts > 0).sum()
  start = {'square_root': np.sqrt(counts) / np.sqrt(counts).sum(), 'progressive': counts / counts.sum()}[sampler]
  end = start if sampler == 'square_root' else present
  return {**tables, 'start': jnp.asarray(start, jnp.float32), 'end': jnp.asarray(end, jnp.float32),
          'last_epoch': max(epochs - 1, 1)}


def class_balanced_indices(key, step, tables: dict, batch_size: int, steps_per_epoch: int = 1) -> jax.Array:
  """A class drawn for each batch slot (uniformly, or from the tables' p_c at this step's epoch), then a
  uniformly drawn example of it."""
  class_key, example_key = jax.random.split(jax.random.fold_in(key, step))
  if 'start' in tables:
    progress = jnp.minimum((step // steps_per_epoch) / tables['last_epoch'], 1.0)
    probabilities = tables['start'] + (tables['end'] - tables['start']) * progress
    classes = jax.random.categorical(class_key, jnp.log(probabilities), shape=(batch_size,))
  else:
    present = tables['present']
    classes = present[jax.random.randint(class_key, (batch_size,), 0, present.shape[0])]
  offsets = jnp.floor(jax.random.uniform(example_key, (batch_size,)) * tables['counts'][classes]).astype(jnp.int32)
  return tables['order'][tables['starts'][classes] + offsets]


def step_indices(rng, step, num_examples: int, spec: BatchSpec, sampler_tables=None) -> jax.Array:
  """Example indices of the batch of `step` (`rng`: a train state's raw key data).

  Without `sampler_tables` an epoch is a permutation; with them (class-balanced) every slot draws a class.
  """
  key = jax.random.fold_in(jax.random.wrap_key_data(rng), DATA_ORDER)
  if sampler_tables is not None:
    return class_balanced_indices(key, step, sampler_tables, spec.batch_size, spec.steps_per_epoch)
  epoch = step // spec.steps_per_epoch
  step_in_epoch = step % spec.steps_per_epoch
  return device_pipeline.batch_indices(key, epoch, step_in_epoch, num_examples, spec.batch_size)


def device_batch(rng, step, images, labels, spec: BatchSpec, data_sharding, sampler_tables=None):
  """The training batch of `step`, gathered from on-device arrays, augmented and normalised."""
  indices = step_indices(rng, step, labels.shape[0], spec, sampler_tables)
  batch_images, batch_labels = images[indices], labels[indices]
  aug_key = augment_key(rng, step)
  if spec.augment:
    batch_images = device_pipeline.random_crop_flip(aug_key, batch_images)
  if spec.randaugment[0]:
    batch_images = randaugment.randaugment(randaugment_key(rng, step), batch_images, *spec.randaugment)
  x = device_pipeline.normalize(batch_images, spec.mean, spec.std, spec.dtype)
  return split_over_devices(x, batch_labels, data_sharding)


def augment_key(rng, step) -> jax.Array:
  """The key of `step`'s crop and flip."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(rng), AUGMENT), step)


def randaugment_key(rng, step) -> jax.Array:
  """The key of `step`'s RandAugment, for device-kept and streamed batches alike."""
  return jax.random.fold_in(augment_key(rng, step), 1)


def cached_batch(rng, step, features, labels, spec: BatchSpec, data_sharding, sampler_tables=None):
  """The rows of precomputed features [N, D] for the batch of `step` (the indices of `device_batch`)."""
  indices = step_indices(rng, step, labels.shape[0], spec, sampler_tables)
  return split_over_devices(features[indices], labels[indices], data_sharding)


def split_over_devices(x, labels, data_sharding):
  if data_sharding is None:
    return x, labels
  return (jax.lax.with_sharding_constraint(x, data_sharding),
          jax.lax.with_sharding_constraint(labels, data_sharding))
