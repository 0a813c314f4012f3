"""`load_dataset`: one entry point from a data config to a `LongTailDataset`, validated up front."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from bwlm_jax import stages
from bwlm_jax.data import folder_source, list_source, tfds_source
from bwlm_jax.data.eval_transform import EvalTransform
from bwlm_jax.data.synthetic import embedded, shapes
from bwlm_jax.data.long_tail import balanced_review_counts, long_tail_counts, subsample_per_class
from bwlm_jax.data.splits import ArraySplit, LongTailDataset, Split
from bwlm_jax.runtime.errors import UsageError

DATASETS = ('embedded', 'cifar10', 'cifar100', 'imagenet_lt', 'i_naturalist2018', 'folder', 'lists')
_PROFILED = ('embedded', 'cifar10', 'cifar100')  # Balanced sources made long-tailed by the profile.
_NATURAL_TAIL = ('imagenet_lt', 'i_naturalist2018')  # tfds sources with their own long tail, streamed.
# The split each source evaluates on: iNaturalist 2018's test split has no labels, so (as in the
# literature) its validation split is the test split, and it has no other labelled split to choose on.
_TEST_SPLIT = {'i_naturalist2018': 'validation'}
# Sources whose builder always has a 'validation' split (ImageNet-LT: 20,000 images), also where the
# builder's split list is not known yet (tfds.testing.mock_data lists none).
_OWN_VALIDATION = ('imagenet_lt',)

# Per-channel normalisation statistics in [0, 1] units (the usual published values).
_STATS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'imagenet_lt': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_STATS['i_naturalist2018'] = _STATS['imagenet_lt']
IMAGENET_STATS = _STATS['imagenet_lt']
# Offsets that keep the seeds of different random choices apart.
_REVIEW_SEED_OFFSET = 1_000_003
_VAL_SEED_OFFSET = 2_000_003


def _channel_stats(split: ArraySplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and standard deviation of the pixels in [0, 1], to 4 decimals. uint8 images are counted
  per value (256 bins a channel): 20x faster than float arithmetic on every pixel, and as exact."""
  pixels = split.images.reshape(-1, 3)
  if pixels.dtype != np.uint8:
    pixels = pixels.astype(np.float64) / 255.0
    return tuple(pixels.mean(0).round(4).tolist()), tuple(pixels.std(0).round(4).tolist())
  counts = np.stack([np.bincount(pixels[:, c], minlength=256) for c in range(3)]).astype(np.float64)
  values = np.arange(256) / 255.0
  mean = counts @ values / len(pixels)
  std = np.sqrt((counts * (values - mean[:, None]) ** 2).sum(1) / len(pixels))
  return tuple(mean.round(4).tolist()), tuple(std.round(4).tolist())


def _long_tail_indices(train: Split, num_classes: int, imbalance_factor: float,
                       max_count: Optional[int], seed: int, class_names) -> np.ndarray:
  """Indices of a fixed-seed random `long_tail_counts(...)[c]` samples of each class c."""
  available = np.bincount(train.labels, minlength=num_classes)
  if max_count is None:
    max_count = int(available.min())
  targets = long_tail_counts(num_classes, max_count, imbalance_factor)
  short = np.flatnonzero(targets > available)
  if short.size:
    c = int(short[0])
    raise UsageError(
        f'class {class_names[c]!r} has {available[c]} training images but the long-tail profile '
        f'(IF {imbalance_factor}, max_count {max_count}) needs {targets[c]}; lower data.max_count.')
  return subsample_per_class(train.labels, targets, seed)


def validation_indices(labels: np.ndarray, kept: np.ndarray, num_classes: int, per_class: int,
                       seed: int) -> np.ndarray:
  """Sorted indices of a balanced validation split drawn from the examples that `kept` leaves out.

  Each class gets `per_class` examples, or all of its unused ones where it has fewer (the class the
  long-tail profile keeps whole gets none). A fixed-seed random choice, disjoint from `kept`.
  """
  unused = np.setdiff1d(np.arange(labels.size), kept)
  available = np.bincount(labels[unused], minlength=num_classes)
  if per_class > available.max():
    raise UsageError(f'data.val_per_class={per_class} is more than any class can give: at most '
                     f'{int(available.max())} training images per class are left out of the long tail; set '
                     f'--config.data.val_per_class to at most that, or to 0 for no validation split.')
  chosen = subsample_per_class(labels[unused], np.minimum(available, per_class), seed + _VAL_SEED_OFFSET)
  return unused[chosen]


def _check_eval_classes(train: Split, eval_split: Split, split_name: str, class_names) -> None:
  missing = sorted(set(np.unique(eval_split.labels).tolist()) - set(np.unique(train.labels).tolist()))
  if missing:
    names = [class_names[c] for c in missing[:10]]
    raise UsageError(f'the {split_name} split has {len(missing)} classes that the train split lacks, '
                     f'e.g. {names}; set --config.data.unseen_classes=True to evaluate classes without training '
                     "images (zero-shot CLIP, head_init='text').")


def _check_all_seen(train: Split, class_names, what: str) -> None:
  """One line naming the classes without a training image, for what needs every class to have some."""
  unseen = np.flatnonzero(np.bincount(train.labels, minlength=len(class_names)) == 0)
  if unseen.size:
    raise UsageError(f'{what}, and {unseen.size} classes have no training image (data.unseen_classes), e.g. '
                     f'{[class_names[c] for c in unseen[:5]]}.')


def _validate(cfg) -> None:
  if cfg.name not in DATASETS:
    raise UsageError(f'unknown dataset data.name={cfg.name!r}; expected one of {DATASETS}.')
  if cfg.imbalance_factor is not None and not cfg.imbalance_factor >= 1:
    raise UsageError(f'data.imbalance_factor must be >= 1 (max / min class count), got {cfg.imbalance_factor}.')
  if cfg.name == 'folder' and not cfg.folder:
    raise UsageError('data.name="folder" needs data.folder=ROOT with ROOT/train/<class>/ and ROOT/test/<class>/.')
  if cfg.name in _PROFILED and cfg.imbalance_factor is None:
    raise UsageError(f'data.imbalance_factor is required for {cfg.name} (e.g. 100).')
  if cfg.name in _NATURAL_TAIL and cfg.imbalance_factor is not None:
    raise UsageError(f'{cfg.name} has its own long tail; leave data.imbalance_factor unset (None).')
  if cfg.val_per_class < 0:
    raise UsageError(f'data.val_per_class must be >= 0 (0: no validation split carved), got {cfg.val_per_class}.')
  if cfg.pipeline not in ('auto', 'device', 'stream'):
    raise UsageError(f'data.pipeline must be auto, device or stream, got {cfg.pipeline!r}.')


def _load_embedded(cfg):
  """(class names, train, test, val, image size, stats) of the embedded set: drawn in memory, or read through
  its tfds builder when streamed (the same examples in the same order)."""
  if cfg.pipeline == 'stream':
    from bwlm_jax.data.synthetic import embedded_tfds  # noqa: F401  (registers the builder)
    return _load_tfds(cfg)
  train = embedded.split_arrays('train')
  return tuple(shapes.class_names()), train, embedded.split_arrays('test'), None, shapes.IMAGE_SIZE, \
      _channel_stats(train)


def _load_tfds(cfg):
  """(class names, train, test, val, image size, stats) of a tfds source."""
  builder = tfds_source.prepared_builder(
      embedded.NAME if cfg.name == 'embedded' else cfg.name, cfg.data_dir, cfg.download)
  names = tfds_source.class_names(builder)
  stream = _streams_tfds(cfg)
  read = tfds_source.stream_split if stream else tfds_source.read_arrays
  test_split = _TEST_SPLIT.get(cfg.name, 'test')
  train, test = read(builder, 'train'), read(builder, test_split)
  has_val = test_split != 'validation' and ('validation' in builder.info.splits or cfg.name in _OWN_VALIDATION)
  val = read(builder, 'validation') if has_val else None
  image_size = cfg.image_size if stream else int(train.images.shape[1])
  stats = _STATS.get(cfg.name) or (IMAGENET_STATS if stream else _channel_stats(train))
  return names, train, test, val, image_size, stats


def _streams_tfds(cfg) -> bool:
  return cfg.pipeline == 'stream' or (cfg.pipeline == 'auto' and cfg.name in _NATURAL_TAIL)


def sizes_images(cfg) -> bool:
  """Whether cfg.image_size sets the images' side: folders and image lists are resized (or, streamed, cropped)
  to it, streamed tfds sources cropped; tfds sources and the embedded set kept in memory have their own size."""
  return cfg.name in ('folder', 'lists') or _streams_tfds(cfg)


def _load_folder(cfg, transform: Optional[EvalTransform]):
  """(class names, train, test, val, image size, stats) of an image folder or of image lists; the evaluation
  splits kept in memory decoded by `transform` (data.eval_transform; None: resized whole)."""
  if cfg.name == 'lists':
    names, lists = list_source.list_splits(cfg)
  else:
    names, paths, labels = folder_source.list_split(
        cfg.folder, 'train', folder_source.every_class(cfg.folder) if cfg.unseen_classes else None)
    lists = {'train': (paths, labels)}
    for split in ('test', 'val'):
      if split == 'val' and not os.path.isdir(os.path.join(cfg.folder, split)):
        continue
      _, split_paths, split_labels = folder_source.list_split(cfg.folder, split, names)
      lists[split] = (split_paths, split_labels)
  stream = cfg.pipeline == 'stream' or (cfg.pipeline == 'auto' and len(lists['train'][0]) > cfg.stream_above)
  if stream:
    splits = {k: folder_source.stream_split(*v) for k, v in lists.items()}
    stats = IMAGENET_STATS
  else:
    splits = {k: folder_source.read_arrays(*v, cfg.image_size, None if k == 'train' else transform)
              for k, v in lists.items()}
    stats = _channel_stats(splits['train'])
  return names, splits['train'], splits['test'], splits.get('val'), cfg.image_size, stats


def load_dataset(cfg, eval_transform: Optional[EvalTransform] = None) -> LongTailDataset:
  """The long-tailed dataset that `cfg` (a `config.data` section) describes, its evaluation images made by
  `eval_transform` (`weights.eval_transform_of(config)`: data.eval_transform resolved; None: the pipeline's own).

  CIFAR and the embedded set are made long-tailed at `cfg.imbalance_factor`; ImageNet-LT keeps
  its own long tail; a folder keeps its natural distribution unless an imbalance factor is set.

  Validation: the source's own split (ImageNet-LT's, a folder's ROOT/val/) when it has one; else,
  for a source made long-tailed here, `cfg.val_per_class` images per class drawn from those the
  profile leaves unused (the training counts stay the standard ones); else none.
  """
  _validate(cfg)
  if cfg.name in ('folder', 'lists'):
    names, train, test, val, image_size, stats = _load_folder(cfg, eval_transform)
  elif cfg.name == 'embedded':
    names, train, test, val, image_size, stats = _load_embedded(cfg)
  else:
    names, train, test, val, image_size, stats = _load_tfds(cfg)
  val_source = 'split' if val is not None else None
  kept = np.arange(len(train))
  if cfg.imbalance_factor is not None:
    _check_all_seen(train, names, 'data.imbalance_factor draws a long-tail profile over every class')
    kept = _long_tail_indices(train, len(names), cfg.imbalance_factor, cfg.max_count, cfg.subset_seed, names)
    if val is None and cfg.val_per_class > 0:
      val = train.subset(validation_indices(train.labels, kept, len(names), cfg.val_per_class, cfg.subset_seed))
      val_source = 'unused_train'
    train = train.subset(kept)
  for split_name, split in (('test', test), ('val', val)):
    if split is not None and not cfg.unseen_classes:
      _check_eval_classes(train, split, split_name, names)
  return LongTailDataset(cfg.name, tuple(names), train, test, val, int(image_size),
                         tuple(stats[0]), tuple(stats[1]), val_source, kept, eval_transform)


def stage_indices(labels: np.ndarray, num_classes: int, stage, seed: int) -> np.ndarray:
  """Sorted indices of the training examples that `stage` uses (`Stage.train_set`: the whole long tail, or
  Data Balanced Review's stage-1 or stage-2 set)."""
  train_set = stages.get(stage).train_set
  if train_set == 'long_tail':
    return np.arange(labels.size)
  stage1, stage2 = balanced_review_counts(np.bincount(labels, minlength=num_classes))
  if train_set == 'head_classes':
    return np.flatnonzero(stage1[labels] > 0)
  return subsample_per_class(labels, stage2, seed + _REVIEW_SEED_OFFSET)


def stage_train_split(dataset: LongTailDataset, stage: str, seed: int) -> Split:
  """The training split of `stage`: the full long tail, the stage-1 head set, or the stage-2 rebalanced set."""
  indices = stage_indices(dataset.train.labels, dataset.num_classes, stage, seed)
  if indices.size == 0:
    raise UsageError(f'the {stage} training set of {dataset.name} is empty: with classes sorted by count, '
                     'the first tail class has no images (more than half the classes have none).')
  return dataset.train.subset(indices)
