"""A dataset's long-tail facts: totals, shot groups and Data Balanced Review sizes."""

from __future__ import annotations

import numpy as np

from bwlm_jax.data.long_tail import SHOT_GROUPS, balanced_review_counts, head_tail_order, shot_groups


def count_summary(counts) -> dict:
  """Totals of the long tail and of both Data Balanced Review stages, from per-class counts."""
  counts = np.asarray(counts, dtype=np.int64)
  stage1, stage2 = balanced_review_counts(counts)
  groups = shot_groups(counts)
  first_tail = head_tail_order(counts)[counts.size // 2]
  nonzero = counts[counts > 0]
  return {
      'num_classes': int(counts.size),
      'train_total': int(counts.sum()),
      'max_count': int(counts.max()),
      'min_count': int(counts.min()),
      'imbalance_factor': float(nonzero.max() / nonzero.min()),
      'classes_per_group': {g: int((groups == g).sum()) for g in SHOT_GROUPS},
      'unseen_classes': int((counts == 0).sum()),
      'stage1_total': int(stage1.sum()),
      'first_tail_count': int(counts[first_tail]),
      'stage2_total': int(stage2.sum()),
  }


def format_summary(name: str, summary: dict, eval_lines: tuple = ()) -> str:
  groups = summary['classes_per_group']
  lines = [
      f'dataset {name}: {summary["num_classes"]} classes, {summary["train_total"]:,} training images '
      f'(max {summary["max_count"]}, min {summary["min_count"]}, max/min {summary["imbalance_factor"]:g})',
      f'  classes many/medium/few: {groups["many"]} / {groups["medium"]} / {groups["few"]}',
      f'  Data Balanced Review: stage 1 {summary["stage1_total"]:,} images; stage 2 '
      f'{summary["stage2_total"]:,} images (head classes subsampled to n_(m+1) = {summary["first_tail_count"]})',
  ]
  if summary['unseen_classes']:
    lines.insert(2, f'  classes without a training image (unseen; counted as few too): {summary["unseen_classes"]}')
  return '\n'.join(lines + [f'  {line}' for line in eval_lines])


_VAL_SOURCES = {'split': "the source's own validation split",
                'unused_train': 'drawn from the training images the long tail leaves unused'}


def eval_split_lines(dataset, val_per_class: int) -> list[str]:
  """One line per evaluation split: its size, per-class range, and for a carved validation split the
  classes that got fewer than `val_per_class` images; or why there is no validation split."""
  lines = []
  for split_name, split in dataset.eval_splits().items():
    per_class = np.bincount(split.labels, minlength=dataset.num_classes)
    line = f'{split_name}: {len(split):,} images ({per_class.min()}-{per_class.max()} per class)'
    if split_name == 'val':
      line += f', {_VAL_SOURCES[dataset.val_source]}'
      short = np.flatnonzero(per_class < val_per_class) if dataset.val_source == 'unused_train' else []
      if len(short):
        shown = ', '.join(f'{dataset.class_names[c]} {per_class[c]}' for c in short[:5])
        has, gets = ('class has', 'gets') if len(short) == 1 else ('classes have', 'get')
        line += (f'; {len(short)} {has} fewer than {val_per_class} unused images and {gets} what there is '
                 f'({shown}{", ..." if len(short) > 5 else ""})')
    lines.append(line)
  if dataset.val is None:
    lines.append('val: none (no ROOT/val/ or source validation split, and no long-tail profile to carve one '
                 'from): nothing can be selected on validation; the test split is never used for it.')
  return lines
