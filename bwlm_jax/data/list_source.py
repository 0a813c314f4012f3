"""Image lists: an image root plus list files of '<path relative to the root> <label>' lines, the form in
which Places-LT (and ImageNet-LT, iNaturalist-LT) are published.

Published lists whose file name we know are checked against their published counts, so a truncated or
different copy fails before training instead of giving numbers nobody can compare.
"""

from __future__ import annotations

import os

import numpy as np

from bwlm_jax.runtime.errors import MissingFileError, UsageError

# Counts of the published Places-LT lists (Liu et al. 2019): images, and for train classes and the
# largest and smallest class.
PUBLISHED = {
    'Places_LT_train.txt': {'images': 62_500, 'classes': 365, 'max': 4_980, 'min': 5},
    'Places_LT_val.txt': {'images': 7_300, 'classes': 365, 'max': 20, 'min': 20},
    'Places_LT_test.txt': {'images': 36_500, 'classes': 365, 'max': 100, 'min': 100},
}
HOW_TO_GET = ('Places-LT: the list files Places_LT_{train,val,test}.txt are published with OLTR (Liu et al., '
              'CVPR 2019, github.com/zhmiao/OpenLongTailRecognition-OLTR); the images are Places365-Standard '
              '(places2.csail.mit.edu: the 256x256 train and val images). Put the lists where '
              'data.list_files names them and the images under data.folder so that ROOT/<path in the list> exists.')


def read_list(list_file: str, root: str) -> tuple[list[str], np.ndarray]:
  """(image paths under `root`, labels) of a list file; a malformed line is an error naming file and line."""
  if not os.path.isfile(list_file):
    raise MissingFileError(f'list file {list_file!r} does not exist. {HOW_TO_GET}')
  paths, labels = [], []
  try:
    with open(list_file, encoding='utf-8') as f:
      lines = f.readlines()
  except (OSError, UnicodeDecodeError) as err:
    raise UsageError(f'list file {list_file!r} cannot be read as text ({err}).') from None
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != 2 or not parts[1].lstrip('-').isdigit() or int(parts[1]) < 0:
      raise UsageError(f'{list_file}:{number}: expected "<relative image path> <label >= 0>", got {line.strip()!r}.')
    paths.append(os.path.join(root, parts[0].lstrip('/')))
    labels.append(int(parts[1]))
  if not paths:
    raise UsageError(f'list file {list_file!r} has no images.')
  return paths, np.asarray(labels, np.int64)


def check_published_counts(list_file: str, labels: np.ndarray) -> None:
  """For a list file with a published name: its image count, class count and largest / smallest class."""
  published = PUBLISHED.get(os.path.basename(list_file))
  if published is None:
    return
  counts = np.bincount(labels)
  found = {'images': int(labels.size), 'classes': int((counts > 0).sum()), 'max': int(counts.max()),
           'min': int(counts[counts > 0].min())}
  wrong = [f'{key} {found[key]:,} (published {value:,})' for key, value in published.items() if found[key] != value]
  if wrong:
    raise UsageError(f'{list_file} is not the published list: {", ".join(wrong)}. {HOW_TO_GET}')


def class_names(paths: list[str], labels: np.ndarray, num_classes: int) -> tuple[str, ...]:
  """Each label's name: the folder its training images sit in where that is one name per label (Places365
  paths end in <class>/<image>), else 'class_<label>'."""
  folders = {}
  for path, label in zip(paths, labels.tolist()):
    folders.setdefault(label, set()).add(os.path.basename(os.path.dirname(path)))
  names = [next(iter(folders[c])) if len(folders.get(c, ())) == 1 else f'class_{c}' for c in range(num_classes)]
  return tuple(names) if len(set(names)) == num_classes else tuple(f'class_{c}' for c in range(num_classes))


def list_splits(cfg) -> tuple[tuple[str, ...], dict]:
  """(class names, {split: (paths, labels)}) from `cfg.list_files` (train, test, optional val) under
  `cfg.folder`; every count of a published list is checked."""
  if not cfg.folder:
    raise UsageError('data.name="lists" needs data.folder=ROOT, the directory the list files\' paths start from.')
  splits = {}
  for split in ('train', 'val', 'test'):
    list_file = cfg.list_files[split]
    if list_file is None:
      if split != 'val':
        raise UsageError(f'data.name="lists" needs data.list_files.{split}=FILE. {HOW_TO_GET}')
      continue
    paths, labels = read_list(list_file, cfg.folder)
    check_published_counts(list_file, labels)
    splits[split] = (paths, labels)
  num_classes = int(max(labels.max() for _, labels in splits.values())) + 1
  return class_names(*splits['train'], num_classes), splits
