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
      'stage1_total': int(stage1.sum()),
      'first_tail_count': int(counts[first_tail]),
      'stage2_total': int(stage2.sum()),
  }


def format_summary(name: str, summary: dict, eval_sizes: dict | None = None) -> str:
  groups = summary['classes_per_group']
  lines = [
      f'dataset {name}: {summary["num_classes"]} classes, {summary["train_total"]:,} training images '
      f'(max {summary["max_count"]}, min {summary["min_count"]}, max/min {summary["imbalance_factor"]:g})',
      f'  classes many/medium/few: {groups["many"]} / {groups["medium"]} / {groups["few"]}',
      f'  Data Balanced Review: stage 1 {summary["stage1_total"]:,} images; stage 2 '
      f'{summary["stage2_total"]:,} images (head classes subsampled to n_(m+1) = {summary["first_tail_count"]})',
  ]
  for split, size in (eval_sizes or {}).items():
    lines.append(f'  {split}: {size:,} images')
  return '\n'.join(lines)
