"""Long-tail profile, Data Balanced Review and shot groups against the exact tables of NOTES.md."""

import numpy as np
import pytest

from bwlm_jax.data import balanced_review_counts, long_tail_counts, shot_groups
from bwlm_jax.data.long_tail import subsample_per_class
from bwlm_jax.data.summary import count_summary

# (classes, n_max, IF) -> train total, many/medium/few, stage-1 total, n_(m+1), stage-2 total.
TABLE = [
    (100, 500, 10, 19573, (69, 31, 0), 14925, 156, 12448),
    (100, 500, 50, 12608, (41, 41, 18), 11092, 69, 4966),
    (100, 500, 100, 10847, (35, 35, 30), 9901, 48, 3346),
    (100, 500, 200, 9502, (30, 31, 39), 8910, 34, 2292),
    (10, 5000, 100, 12406, (8, 2, 0), 11515, 387, 2826),
]


@pytest.mark.parametrize('classes,n_max,imbalance,total,groups,stage1,first_tail,stage2', TABLE)
def test_cifar_lt_tables(classes, n_max, imbalance, total, groups, stage1, first_tail, stage2):
  counts = long_tail_counts(classes, n_max, imbalance)
  summary = count_summary(counts)
  assert summary['train_total'] == total
  assert tuple(summary['classes_per_group'].values()) == groups
  assert summary['stage1_total'] == stage1
  assert summary['first_tail_count'] == first_tail
  assert summary['stage2_total'] == stage2


def test_profile_truncates_and_is_monotone():
  counts = long_tail_counts(100, 500, 100)
  assert counts[0] == 500 and counts[-1] == 5
  assert counts[50] == int(500 * 0.01 ** (50 / 99))  # truncation, not rounding: 48.
  assert (np.diff(counts) <= 0).all()
  assert (long_tail_counts(5, 7, 1) == 7).all()


@pytest.mark.parametrize('imbalance', [0.5, 0.0, -3, float('nan')])
def test_profile_rejects_imbalance_below_one(imbalance):
  with pytest.raises(ValueError, match='imbalance_factor must be >= 1'):
    long_tail_counts(10, 100, imbalance)


def test_review_counts_follow_class_order_not_label_order():
  counts = np.array([5, 40, 12, 90, 7, 30])  # head = classes 3, 1, 5; first tail = class 2 (12).
  stage1, stage2 = balanced_review_counts(counts)
  np.testing.assert_array_equal(stage1, [0, 40, 0, 90, 0, 30])
  np.testing.assert_array_equal(stage2, [5, 12, 12, 12, 7, 12])


def test_review_odd_class_count_uses_floor_half():
  stage1, stage2 = balanced_review_counts(np.array([50, 40, 30, 20, 10]))  # m = 2
  np.testing.assert_array_equal(stage1, [50, 40, 0, 0, 0])
  np.testing.assert_array_equal(stage2, [30, 30, 30, 20, 10])


def test_review_needs_two_classes():
  with pytest.raises(ValueError, match='at least 2 classes'):
    balanced_review_counts(np.array([10]))


def test_shot_group_boundaries_and_empty_group():
  groups = shot_groups(np.array([101, 100, 20, 19, 0]))
  assert groups.tolist() == ['many', 'medium', 'medium', 'few', 'few']
  summary = count_summary(long_tail_counts(100, 500, 10))
  assert summary['classes_per_group']['few'] == 0


def test_subsample_is_deterministic_and_exact():
  labels = np.random.default_rng(0).integers(0, 4, size=400)
  targets = np.array([30, 20, 10, 5])
  first = subsample_per_class(labels, targets, seed=3)
  again = subsample_per_class(labels, targets, seed=3)
  other = subsample_per_class(labels, targets, seed=4)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  np.testing.assert_array_equal(np.bincount(labels[first], minlength=4), targets)
  assert (np.diff(first) > 0).all()


def test_subsample_per_class_draws_do_not_depend_on_other_classes():
  labels = np.repeat(np.arange(3), 50)
  a = subsample_per_class(labels, np.array([10, 10, 10]), seed=1)
  b = subsample_per_class(labels, np.array([10, 25, 3]), seed=1)
  np.testing.assert_array_equal(a[labels[a] == 0], b[labels[b] == 0])


def test_subsample_too_many_requested():
  with pytest.raises(ValueError, match='class 1 has 2 samples but 5 were requested'):
    subsample_per_class(np.array([0, 0, 0, 1, 1]), np.array([1, 5]), seed=0)
