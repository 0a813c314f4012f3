"""Reading tfds datasets: preparation checks with clear errors, arrays for small sets, streams for big ones."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from typing import Optional

import numpy as np

from bwlm_jax.runtime import files, process_setup
from bwlm_jax.data.splits import ArraySplit, StreamSplit
from bwlm_jax.runtime.errors import RunError, UsageError

# Hosts that tfds downloads these datasets from; probed before a download so that a machine
# without network fails in seconds instead of retrying for minutes.
DOWNLOAD_HOSTS = {'cifar10': 'www.cs.toronto.edu', 'cifar100': 'www.cs.toronto.edu',
                  'i_naturalist2018': 'ml-inat-competition-datasets.s3.amazonaws.com'}
MANUAL_DATASETS = ('imagenet_lt',)


class DatasetNotPreparedError(RunError):
  """A tfds dataset is not on disk and cannot be prepared here."""


def _tfds():
  """Deferred: importing TF is slow, and the in-memory path never needs it."""
  return process_setup.tensorflow_datasets('a tfds source (data.name=cifar10, cifar100, imagenet_lt, '
                                           'i_naturalist2018, or the embedded set streamed)')


def host_reachable(host: str, timeout_s: float = 5.0) -> bool:
  """Whether a TCP connection to `host`:443 opens within `timeout_s`."""
  try:
    with socket.create_connection((host, 443), timeout=timeout_s):
      return True
  except OSError:
    return False


def _offline_help(name: str, data_dir: str) -> str:
  return (f'To prepare it offline, run `tfds build {name} --data_dir=DIR` on a machine with internet '
          f'and copy DIR/{name} into {data_dir} (or point --config.data.data_dir at DIR).')


def prepared_builder(name: str, data_dir: Optional[str], download: bool):
  """A tfds builder whose data is on disk, preparing it if allowed; raises a clear error otherwise."""
  tfds = _tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as err:
    raise UsageError(f'tfds has no dataset named {name!r}: {err}') from None
  if builder.is_prepared():
    return builder
  where = builder.data_dir
  if name in MANUAL_DATASETS:
    manual_dir = os.path.join(os.path.dirname(os.path.dirname(where)), 'downloads', 'manual')
    if not download:
      raise DatasetNotPreparedError(
          f'{name} is not prepared in {where} and data.download is False. It is built from the '
          f'ImageNet-2012 archives placed in the tfds manual directory ({manual_dir}); see README.')
    try:
      builder.download_and_prepare()
    except Exception as err:  # tfds raises several types here; all mean the same to the user.
      raise DatasetNotPreparedError(
          f'Could not prepare {name} in {where}: {err}\nPlace the ImageNet-2012 archives '
          f'(ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar) in {manual_dir}; see README.') from err
    return builder
  if not download:
    raise DatasetNotPreparedError(
        f'{name} is not prepared in {where} and data.download is False. ' + _offline_help(name, where))
  host = DOWNLOAD_HOSTS.get(name)
  if host is not None and not host_reachable(host):
    raise DatasetNotPreparedError(
        f'{name} is not prepared in {where} and its download host {host} cannot be reached (no network?). '
        + _offline_help(name, where))
  builder.download_and_prepare()
  return builder


def class_names(builder, label_key: str = 'label') -> tuple[str, ...]:
  return tuple(builder.info.features[label_key].names)


def read_arrays(builder, split: str, label_key: str = 'label') -> ArraySplit:
  """Every example of a split as uint8 images and int64 labels, in the split's stored order."""
  tfds = _tfds()
  dataset = builder.as_dataset(split=split, shuffle_files=False)
  images, labels = [], []
  # Iterated in batches: `batch_size=-1` crashes inside tfds.testing.mock_data.
  for batch in tfds.as_numpy(dataset.map(lambda ex: (ex['image'], ex[label_key])).batch(1024)):
    images.append(batch[0])
    labels.append(batch[1])
  if not labels:
    raise UsageError(f'split {split!r} of {builder.name} is empty.')
  return ArraySplit(np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int64))


def stream_split(builder, split: str, label_key: str = 'label') -> StreamSplit:
  """A split read lazily: encoded images stay on disk, only labels are read now (or from their cache)."""
  tfds = _tfds()

  def make_source():
    dataset = builder.as_dataset(
        split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()})
    return dataset.map(lambda ex: {'image': ex['image'], 'label': ex[label_key]})

  source_labels = split_labels(builder, split, label_key)
  return StreamSplit(make_source, source_labels, np.arange(source_labels.size))


def split_labels(builder, split: str, label_key: str = 'label') -> np.ndarray:
  """The labels of a split in stored order. Reading them touches every record (all of ImageNet-LT's
  images), so they are cached next to the prepared files, keyed by those files' names, sizes and times."""
  prepared = sorted(name for name in (os.listdir(builder.data_dir) if os.path.isdir(builder.data_dir) else [])
                    if name.startswith(f'{builder.name}-{split}.'))
  cache = None
  if prepared:  # prepared on disk (not mocked): the cache can be keyed by the files
    stats = []
    for name in prepared:
      info = os.stat(os.path.join(builder.data_dir, name))
      stats.append((name, info.st_size, info.st_mtime_ns))
    key = hashlib.sha1(json.dumps([split, label_key, stats]).encode()).hexdigest()[:16]
    cache = os.path.join(builder.data_dir, f'bwlm-labels-{split}-{key}.npy')
    if os.path.exists(cache):
      return np.load(cache)
  tfds = _tfds()
  labels_only = builder.as_dataset(
      split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()})
  batches = [batch for batch in tfds.as_numpy(labels_only.map(lambda ex: ex[label_key]).batch(4096))]
  if not batches:
    raise UsageError(f'split {split!r} of {builder.name} is empty.')
  labels = np.concatenate(batches).astype(np.int64)
  if cache and (error := files.write_cache(cache, lambda file: np.save(file, labels))):
    print(f'note: labels of {builder.name} {split} not cached ({error}); the next run reads them again.')
  return labels
