"""A user's image folder: ROOT/<split>/<class>/<image>, class names from the folder names."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from bwlm_jax.runtime import process_setup
from bwlm_jax.data import images
from bwlm_jax.data.eval_transform import EvalTransform, image_view
from bwlm_jax.data.splits import ArraySplit, StreamSplit
from bwlm_jax.runtime.errors import MissingFileError, UsageError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


def list_split(root: str, split: str, class_names=None) -> tuple[tuple[str, ...], list[str], np.ndarray]:
  """(class names, file paths, labels) of ROOT/split; labels follow sorted class-folder names, and a
  class's images may sit in subfolders of its folder (ROOT/split/<class>/<any>/<image>).

  Files whose extension is not an image's are left out and counted in a printed message. With
  `class_names` given (the train split's), a class folder unknown to it is an error.
  """
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise MissingFileError(f'image folder split {split_dir!r} does not exist; expected '
                            f'{root}/{split}/<class>/<image files>.')
  found = _class_folders(split_dir)
  if not found:
    raise UsageError(f'{split_dir!r} has no class folders; expected {split_dir}/<class>/<image files>.')
  if class_names is None:
    class_names = tuple(found)
  else:
    unknown = sorted(set(found) - set(class_names))
    if unknown:
      raise UsageError(f'{split_dir!r} has classes that the train split lacks: {unknown}; '
                       '--config.data.unseen_classes=True makes them classes of the model (zero-shot CLIP, '
                       "head_init='text').")
  paths, labels, skipped = [], [], []
  for label, name in enumerate(class_names):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue  # An evaluation split may lack a class; the train split too, with data.unseen_classes.
    files = _files_under(class_dir)
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    skipped += [f for f in files if not f.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
      raise UsageError(f'class folder {class_dir!r} has no image files ({", ".join(IMAGE_EXTENSIONS)}).')
    paths += images
    labels += [label] * len(images)
  if skipped:
    print(f'image folder {split_dir}: left out {len(skipped)} non-image files, e.g. {skipped[0]}')
  return class_names, paths, np.asarray(labels, dtype=np.int64)


def _class_folders(split_dir: str) -> list[str]:
  return sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))


def every_class(root: str, splits=('train', 'val', 'test')) -> tuple[str, ...]:
  """The sorted class-folder names of every split of ROOT that exists (`data.unseen_classes`: classes that only
  val or test hold are classes of the model too)."""
  found = set()
  for split in splits:
    if os.path.isdir(os.path.join(root, split)):
      found.update(_class_folders(os.path.join(root, split)))
  return tuple(sorted(found))


def _files_under(class_dir: str) -> list[str]:
  """Every file in a class folder, its subfolders included (the class is the first-level folder), sorted."""
  found = []
  for folder, subfolders, files in os.walk(class_dir, followlinks=True):
    subfolders.sort()
    found += [os.path.join(folder, f) for f in sorted(files) if not f.startswith('.')]
  return found


def read_arrays(paths: list[str], labels: np.ndarray, image_size: int,
                transform: Optional[EvalTransform] = None) -> ArraySplit:
  """Decode every image, resized to image_size x image_size (an evaluation split's: by `transform` when given);
  an unreadable file is an error."""
  arrays = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
  for i, path in enumerate(paths):
    arrays[i] = image_view(images.open_rgb(path), image_size, transform, streamed=False)
  return ArraySplit(arrays, labels)


def check_readable(paths: list[str]) -> None:
  """Each file checked cheaply (`images.check_file`), so that a broken file fails before training, not mid-epoch."""
  for path in paths:
    images.check_file(path)


def stream_split(paths: list[str], labels: np.ndarray) -> StreamSplit:
  """Files read and decoded by tf.data at iteration time."""
  check_readable(paths)

  def make_source():
    tf = process_setup.tensorflow('streamed image folders (data.pipeline=stream)')
    files = tf.data.Dataset.from_tensor_slices((paths, labels))
    return files.map(lambda path, label: {'image': tf.io.read_file(path), 'label': label})

  return StreamSplit(make_source, labels, np.arange(labels.size))
