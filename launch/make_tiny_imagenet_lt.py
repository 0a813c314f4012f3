"""Build Tiny-ImageNet-LT (the real long-tailed set of docs/REPRODUCING.md) from Tiny ImageNet.

  python launch/make_tiny_imagenet_lt.py SRC OUT

SRC: the `tiny-imagenet-200/` folder (the copy with 202 classes the docs' figures come from, or the official
200-class one), or the official `tiny-imagenet-200.zip`. OUT: the set's root, written as
OUT/{train,val,test}/<wnid>/<file> (pass it as configs/tiny_imagenet_lt.py:OUT). Prints the counts and the
sha256 of the sorted file list (`bwlm_jax/data/tiny_imagenet_lt.py` gives the construction), which
docs/REPRODUCING.md states for the 202-class copy. Nothing in OUT is overwritten: OUT must be new or empty.
"""

import os
import shutil
import sys
import zipfile

from bwlm_jax.runtime import cli
from bwlm_jax.data import tiny_imagenet_lt
from bwlm_jax.runtime.errors import UsageError


class _Source:
  """Read access to a Tiny ImageNet folder or zip file, by path under `tiny-imagenet-200/`."""

  def __init__(self, path: str):
    self.zip = zipfile.ZipFile(path) if zipfile.is_zipfile(path) else None
    if self.zip is not None:
      names = self.zip.namelist()
      self.prefix = next((n[:n.index('wnids.txt')] for n in names if n.endswith('wnids.txt')), None)
      self.files = [n[len(self.prefix):] for n in names if self.prefix is not None and n.startswith(self.prefix)]
    elif os.path.isdir(path):
      self.prefix = path if os.path.exists(os.path.join(path, 'wnids.txt')) else None
      self.files = [os.path.relpath(os.path.join(d, f), path).replace(os.sep, '/')
                    for d, _, fs in os.walk(path) for f in fs] if self.prefix else []
    else:
      raise UsageError(f'{path}: neither a folder nor a zip file (expected tiny-imagenet-200/ or its .zip).')
    if self.prefix is None:
      raise UsageError(f'{path} holds no wnids.txt: expected the tiny-imagenet-200/ folder (or its zip file).')

  def read_text(self, name: str) -> str:
    if self.zip is not None:
      return self.zip.read(self.prefix + name).decode()
    with open(os.path.join(self.prefix, name)) as f:
      return f.read()

  def copy(self, name: str, target: str) -> None:
    if self.zip is not None:
      with self.zip.open(self.prefix + name) as src, open(target, 'wb') as dst:
        shutil.copyfileobj(src, dst)
    else:
      shutil.copyfile(os.path.join(self.prefix, name), target)


def build(source_path: str, out: str) -> dict:
  """Write the set under `out`; returns {'counts': {split: images}, 'sha256': of the file list}."""
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise UsageError(f'{out} exists and is not an empty folder: nothing is overwritten, choose a new OUT.')
  source = _Source(source_path)
  wnids = [line.strip() for line in source.read_text('wnids.txt').splitlines() if line.strip()]
  annotations_name = next((n for n in ('val/val_annotations.txt', 'val_annotations.txt') if n in source.files), None)
  if annotations_name is None:
    raise UsageError(f'{source_path} has no val/val_annotations.txt.')
  train_files = {}
  for name in source.files:
    parts = name.split('/')
    if len(parts) == 4 and parts[0] == 'train' and parts[2] == 'images':
      train_files.setdefault(parts[1], []).append(parts[3])
  files = tiny_imagenet_lt.plan(wnids, train_files,
                                tiny_imagenet_lt.parse_val_annotations(source.read_text(annotations_name)))
  present = set(source.files)
  missing = sorted(src for src in files.values() if src not in present)[:5]
  if missing:
    raise UsageError(f'{source_path} lacks images the construction takes, e.g. {missing}.')
  for relative, src in sorted(files.items()):
    target = os.path.join(out, relative[len(tiny_imagenet_lt.NAME) + 1:])
    os.makedirs(os.path.dirname(target), exist_ok=True)
    source.copy(src, target)
  counts = {split: sum(1 for r in files if r.split('/')[1] == split) for split in ('train', 'val', 'test')}
  return {'counts': counts, 'sha256': tiny_imagenet_lt.list_sha256(files)}


def main(argv):
  if len(argv) != 3:
    raise UsageError('usage: python launch/make_tiny_imagenet_lt.py SRC OUT (SRC: tiny-imagenet-200/ or its zip).')
  built = build(argv[1], argv[2])
  print(f'{argv[2]}: ' + ', '.join(f'{split} {n:,} images' for split, n in built['counts'].items()))
  print(f'sha256 of the sorted file list: {built["sha256"]}')


if __name__ == '__main__':
  cli.run(main)
