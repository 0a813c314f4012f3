"""Tiny-ImageNet-LT, the real long-tailed set the project's defaults are checked on, built from Tiny ImageNet.

The construction (`plan`), step by step, with C classes in the order of the source's `wnids.txt`:
1. one `random.Random(0)` generator for the whole build;
2. class i: its training file names sorted, shuffled in place with that generator; the first 20 are its
   val images, the rest its pool; train takes the first n_i = int(480 * (1/100) ** (i / (C - 1))) of the pool
   (480 for the first class down to 4 for the last: IF 100 before integer truncation);
3. test: every line of `val_annotations.txt` puts `val/images/<file>` into `test/<wnid>/`.
The set is the sorted list of relative paths `tiny-imagenet-lt/<split>/<wnid>/<file>`; `list_sha256`
names it (the copy of Tiny ImageNet with 202 classes gives 35,027 files, docs/REPRODUCING.md states its hash).
"""

from __future__ import annotations

import hashlib
import random

from bwlm_jax.runtime.errors import UsageError

NAME = 'tiny-imagenet-lt'
VAL_PER_CLASS = 20
MAX_COUNT, IMBALANCE = 480, 100


def class_count(i: int, num_classes: int) -> int:
  return int(MAX_COUNT * (1 / IMBALANCE) ** (i / (num_classes - 1)))


def plan(wnids: list[str], train_files: dict[str, list[str]], val_annotations: list[tuple[str, str]]) -> dict:
  """{relative path in the set: path in the source} for the whole set.

  `train_files[wnid]`: the file names of its training images (under `train/<wnid>/images/`);
  `val_annotations`: (file, wnid) of each line of `val_annotations.txt`.
  """
  if len(wnids) < 2:
    raise UsageError(f'Tiny ImageNet needs at least 2 classes in wnids.txt, found {len(wnids)}.')
  rng = random.Random(0)
  files = {}
  for i, wnid in enumerate(wnids):
    names = sorted(train_files.get(wnid, ()))
    need = VAL_PER_CLASS + class_count(i, len(wnids))
    if len(names) < need:
      raise UsageError(f'class {wnid} has {len(names)} training images; the construction needs {need} '
                       f'({VAL_PER_CLASS} val + {class_count(i, len(wnids))} train).')
    rng.shuffle(names)
    for split, chosen in (('val', names[:VAL_PER_CLASS]),
                          ('train', names[VAL_PER_CLASS:VAL_PER_CLASS + class_count(i, len(wnids))])):
      files.update({f'{NAME}/{split}/{wnid}/{name}': f'train/{wnid}/images/{name}' for name in chosen})
  known = set(wnids)
  for name, wnid in val_annotations:
    if wnid not in known:
      raise UsageError(f'val_annotations.txt names {wnid} for {name}, a class that is not in wnids.txt.')
    files[f'{NAME}/test/{wnid}/{name}'] = f'val/images/{name}'
  return files


def list_sha256(relative_paths) -> str:
  """sha256 of the sorted relative paths joined with newlines, with a final newline."""
  return hashlib.sha256(('\n'.join(sorted(relative_paths)) + '\n').encode()).hexdigest()


def parse_val_annotations(text: str) -> list[tuple[str, str]]:
  """(file, wnid) of every non-empty line of `val_annotations.txt` (file, wnid, box, tab-separated)."""
  pairs = []
  for number, line in enumerate(text.splitlines(), 1):
    if line.strip():
      fields = line.split('\t')
      if len(fields) < 2:
        raise UsageError(f'val_annotations.txt line {number} is not "<file>\\t<wnid>\\t...": {line[:80]!r}.')
      pairs.append((fields[0], fields[1]))
  return pairs
