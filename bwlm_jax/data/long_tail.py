"""Long-tail profiles, Data Balanced Review and shot groups (paper sections 3.2, 4.1-4.2)."""

from __future__ import annotations

import numpy as np
from bwlm_jax.runtime.errors import UsageError

# Shot-group thresholds on training counts (Liu et al. 2019, used by the paper's section 4.2).
MANY_ABOVE = 100
FEW_BELOW = 20
SHOT_GROUPS = ('many', 'medium', 'few')


def long_tail_counts(num_classes: int, max_count: int, imbalance_factor: float) -> np.ndarray:
  """Per-class counts of the exponential profile, in label order.

  `n_i = int(max_count * (1 / IF) ** (i / (C - 1)))`, truncated as in the LDAM-DRW construction
  of CIFAR-LT. IF = 1 keeps every class at `max_count`.
  """
  if num_classes < 1:
    raise UsageError(f'num_classes must be >= 1, got {num_classes}.')
  if max_count < 1:
    raise UsageError(f'max_count must be >= 1, got {max_count}.')
  if not imbalance_factor >= 1:
    raise UsageError(
        f'imbalance_factor must be >= 1 (max count / min count), got {imbalance_factor}.')
  if num_classes == 1:
    return np.array([max_count], dtype=np.int64)
  ratio = 1.0 / float(imbalance_factor)
  return np.array(
      [int(max_count * ratio ** (i / (num_classes - 1.0))) for i in range(num_classes)],
      dtype=np.int64)


def head_tail_order(counts: np.ndarray) -> np.ndarray:
  """Class indices sorted by count, descending; ties keep label order."""
  counts = np.asarray(counts)
  return np.argsort(-counts, kind='stable')


def balanced_review_counts(counts) -> tuple[np.ndarray, np.ndarray]:
  """Data Balanced Review (paper eq. 2): per-class counts of the stage-1 and stage-2 sets.

  With classes sorted by count (descending) and m = C // 2, stage 1 takes every sample of the m head
  classes, and stage 2 takes each head class subsampled to n_{m+1} (the count of the first tail
  class) plus every tail sample. Both arrays are in the class order of `counts`.
  """
  counts = np.asarray(counts, dtype=np.int64)
  if counts.ndim != 1 or counts.size < 2:
    raise UsageError(
        f'Data Balanced Review needs per-class counts of at least 2 classes, got shape {counts.shape}.')
  if (counts < 0).any():
    raise UsageError(f'class counts must be >= 0, got {counts.tolist()}.')
  order = head_tail_order(counts)
  m = counts.size // 2
  head, tail = order[:m], order[m:]
  first_tail_count = counts[tail[0]]
  stage1 = np.zeros_like(counts)
  stage1[head] = counts[head]
  stage2 = counts.copy()
  stage2[head] = first_tail_count
  return stage1, stage2


def shot_groups(counts) -> np.ndarray:
  """'many' (> 100), 'medium' (20..100 inclusive) or 'few' (< 20) per class, from training counts."""
  counts = np.asarray(counts)
  groups = np.where(counts > MANY_ABOVE, 'many', np.where(counts >= FEW_BELOW, 'medium', 'few'))
  return groups.astype('<U6')


def subsample_per_class(labels: np.ndarray, target_counts: np.ndarray, seed: int) -> np.ndarray:
  """Sorted indices of a fixed-seed random subset holding `target_counts[c]` samples of class c.

  Each class draws from its own generator (seeded by (seed, class)), so the samples kept for one
  class do not depend on the other classes' targets.
  """
  labels = np.asarray(labels)
  target_counts = np.asarray(target_counts, dtype=np.int64)
  kept = []
  for c, target in enumerate(target_counts):
    members = np.flatnonzero(labels == c)
    if target > members.size:
      raise UsageError(
          f'class {c} has {members.size} samples but {target} were requested; lower the '
          'imbalance factor or max_count.')
    if target == 0:
      continue
    rng = np.random.default_rng([seed, c])
    kept.append(np.sort(rng.choice(members, size=int(target), replace=False)))
  if not kept:
    return np.zeros((0,), dtype=np.int64)
  return np.sort(np.concatenate(kept)).astype(np.int64)
