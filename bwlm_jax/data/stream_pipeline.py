"""tf.data pipeline for datasets too big for device memory (ImageNet-LT, big folders).

Each process reads its own shard of the split. The training order is fixed by (seed, epoch), and
a resumed run skips the batches already seen, so it sees what an uninterrupted run would.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from bwlm_jax.runtime import process_setup
from bwlm_jax.data.device_pipeline import padded_size
from bwlm_jax.data.eval_transform import STREAM_RESIZE_RATIO, EvalTransform
from bwlm_jax.data.splits import StreamSplit
from bwlm_jax.runtime.errors import UsageError

RESIZE_RATIO = STREAM_RESIZE_RATIO  # Eval: resize the shorter side to size * 256 / 224, then centre-crop.


def _tf():
  return process_setup.tensorflow('streamed data (data.pipeline=stream, or a source too large to keep in memory)')


def _keep_positions(split: StreamSplit, dataset):
  """Only the source positions in `split.indices`, in source order."""
  tf = _tf()
  keep = np.zeros(split.source_labels.size, bool)
  keep[split.indices] = True
  keep_table = tf.constant(keep)

  def kept(position, example):
    del example
    return tf.gather(keep_table, position)

  return dataset.enumerate().filter(kept)


def _decode(image_bytes):
  tf = _tf()
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _normalize(image, mean, std):
  tf = _tf()
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _train_view(image, seed, size: int):
  """Random-resized crop (scale 0.08-1, ratio 3/4-4/3) and a random flip, seeded statelessly."""
  tf = _tf()
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, crop_size)
  crop = tf.image.resize(crop, (size, size), method='bilinear')
  return tf.image.stateless_random_flip_left_right(crop, seed=seed + 1)


def _eval_view(image, size: int, transform: Optional[EvalTransform] = None):
  """The shorter side resized to size / crop_pct (the pipeline's own: 256 / 224, bilinear), the centre cropped."""
  tf = _tf()
  ratio, method = (RESIZE_RATIO, 'bilinear') if transform is None else (1 / transform.crop_pct,
                                                                         transform.interpolation)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size * ratio / tf.reduce_min(shape)
  resized = tf.image.resize(image, tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size), method=method)
  return tf.image.resize_with_crop_or_pad(resized, size, size)


def train_batches(split: StreamSplit, *, global_batch: int, image_size: int, mean, std, seed: int,
                  epoch: int, start_step: int, steps: int, process_index: int = 0,
                  process_count: int = 1, augment: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """`steps - start_step` batches of this process's share (global_batch / process_count) of epoch `epoch`.

  Every process shuffles the whole split with the same seed and then takes every process_count-th example:
  the examples of global batch k are those of a single-process run's batch k, whatever the process count,
  and each process decodes only its own.
  """
  tf = _tf()
  if global_batch % process_count:
    raise UsageError(f'batch size {global_batch} is not divisible by the {process_count} processes.')
  local_batch = global_batch // process_count
  epoch_seed = int(np.random.default_rng([seed, epoch]).integers(2**31 - 1))
  dataset = _keep_positions(split, split.make_source())
  dataset = dataset.shuffle(min(len(split), 50_000), seed=epoch_seed, reshuffle_each_iteration=False)
  dataset = dataset.repeat().shard(process_count, process_index)

  def prepare(index, example):
    image = _decode(example['image'])
    if augment:
      view = _train_view(image, tf.stack([tf.constant(epoch_seed, tf.int64), index]), image_size)
    else:
      view = _eval_view(image, image_size)
    return _normalize(view, mean, std), tf.cast(example['label'], tf.int32)

  options = tf.data.Options()
  options.deterministic = True
  dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(local_batch, drop_remainder=True)
  dataset = dataset.skip(start_step).take(steps - start_step).prefetch(2).with_options(options)
  yield from dataset.as_numpy_iterator()


def eval_batches(split: StreamSplit, *, batch_size: int, image_size: int, mean, std, process_index: int = 0,
                 process_count: int = 1, multiple: int = 1, transform: Optional[EvalTransform] = None
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(images, labels, mask) over this process's shard once; the last batch padded and masked.

  Every process yields the same number of batches (shards differ by at most one example), padding with
  fully masked batches, so collective evaluation steps stay in lockstep.
  """
  tf = _tf()
  dataset = _keep_positions(split, split.make_source()).shard(process_count, process_index)

  def prepare(index, example):
    del index
    view = _eval_view(_decode(example['image']), image_size, transform)
    return _normalize(view, mean, std), tf.cast(example['label'], tf.int32), True

  dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.padded_batch(batch_size, padding_values=(0.0, 0, False)).prefetch(2)
  largest_shard = -(-len(split) // process_count)
  batches = 0
  for images, labels, mask in dataset.as_numpy_iterator():
    count = images.shape[0]
    # One process pads its last batch only as far as `padded_size` says; several keep one shape in lockstep.
    size = batch_size if process_count > 1 else padded_size(count, batch_size, multiple)
    if count < size:
      pad = size - count
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
      mask = np.concatenate([mask, np.zeros((pad,), bool)])
    batches += 1
    yield images, labels, mask
  for _ in range(batches, -(-largest_shard // batch_size)):
    yield (np.zeros((batch_size, image_size, image_size, 3), np.float32), np.zeros((batch_size,), np.int32),
           np.zeros((batch_size,), bool))
