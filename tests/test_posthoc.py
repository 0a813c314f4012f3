"""Post-hoc corrections against a direct NumPy transcription, and metrics on hand-made predictions."""

import numpy as np
import pytest

from bwlm_jax.evaluation import metrics, posthoc

RNG = np.random.default_rng(1)


def test_tau_norm_matches_formula_and_limits():
  features = RNG.normal(size=(6, 4))
  kernel = RNG.normal(size=(4, 3))
  head = {'dense': {'kernel': kernel, 'bias': RNG.normal(size=3)}}  # the bias is dropped
  for tau in (0.0, 0.5, 1.0):
    expected = np.stack([features @ (kernel[:, c] / np.linalg.norm(kernel[:, c]) ** tau) for c in range(3)], -1)
    np.testing.assert_allclose(posthoc.tau_normalized_logits(features, head, tau), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(posthoc.tau_normalized_logits(features, head, 0.0), features @ kernel, rtol=1e-5,
                             atol=1e-6)


def test_posthoc_logits_use_the_models_head():
  features = RNG.normal(size=(6, 4)).astype(np.float32)
  head = {'dense': {'kernel': RNG.normal(size=(4, 3)).astype(np.float32),
                    'bias': RNG.normal(size=3).astype(np.float32)}}
  counts = np.array([50, 5, 1])
  plain = features @ head['dense']['kernel'] + head['dense']['bias']
  np.testing.assert_allclose(posthoc.posthoc_logits(features, head, 'logit_adjustment', 1.0, counts),
                             plain - np.log(counts / counts.sum()), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='post-hoc method'):
    posthoc.posthoc_logits(features, head, 'temperature', 1.0, counts)


def test_logit_adjustment_matches_formula():
  logits = RNG.normal(size=(5, 3))
  counts = np.array([100, 10, 1])
  expected = logits - 0.7 * np.log(counts / counts.sum())
  np.testing.assert_allclose(posthoc.logit_adjusted(logits, counts, 0.7), expected, rtol=1e-5)


def test_an_unseen_class_is_adjusted_as_one_image():
  # Without the floor, log(0) would lift a class without training images above every other.
  logits = RNG.normal(size=(5, 3))
  np.testing.assert_allclose(posthoc.logit_adjusted(logits, np.array([100, 10, 0]), 1.0),
                             posthoc.logit_adjusted(logits, np.array([100, 10, 1]), 1.0))


def test_top_k_orders_best_first():
  logits = np.array([[0.1, 0.9, 0.5, 0.3], [4.0, 3.0, 2.0, 1.0]])
  np.testing.assert_array_equal(posthoc.top_k(logits, 3), [[1, 2, 3], [0, 1, 2]])
  assert posthoc.top_k(logits, 10).shape == (2, 4)


def test_choose_tau_picks_the_best_and_needs_candidates():
  assert posthoc.choose_tau(lambda t: -(t - 0.4) ** 2, [0.0, 0.2, 0.4, 0.6]) == (0.4, 0.0)
  with pytest.raises(ValueError):
    posthoc.choose_tau(lambda t: t, [])


def test_accuracy_report_on_hand_made_predictions():
  train_counts = np.array([200, 50, 5])  # many, medium, few
  labels = np.array([0, 0, 1, 1, 2, 2])
  top = np.array([[0, 1], [1, 0], [1, 2], [1, 0], [0, 2], [1, 0]])
  report = metrics.accuracy_report(top, labels, train_counts)
  assert report['all'] == pytest.approx(3 / 6)
  assert (report['many'], report['medium'], report['few']) == (0.5, 1.0, 0.0)
  assert report['top5'] == pytest.approx(5 / 6)
  assert report['per_class'] == [0.5, 1.0, 0.0]
  assert 'unseen' not in report  # every class has training images


def test_classes_without_training_images_are_reported_apart():
  train_counts = np.array([200, 0, 5, 0])  # many, unseen (few), few, unseen (few)
  labels = np.array([0, 1, 1, 2, 3, 3, 3])
  top = np.array([[0], [1], [0], [0], [3], [3], [2]])
  report = metrics.accuracy_report(top, labels, train_counts)
  assert report['unseen'] == pytest.approx((1 / 2 + 2 / 3) / 2)
  assert report['few'] == pytest.approx((1 / 2 + 0 + 2 / 3) / 3) and report['many'] == 1.0
  assert metrics.accuracy_report(top[:4], labels[:4], np.array([200, 1, 5, 0]))['unseen'] is None  # none tested


def test_empty_group_is_none_and_missing_class_is_skipped():
  train_counts = np.array([300, 150, 30])  # many, many, medium: no few class
  labels = np.array([0, 1])  # class 2 has no test example here
  report = metrics.accuracy_report(np.array([[0], [0]]), labels, train_counts)
  assert report['few'] is None
  assert report['medium'] is None  # its only class (2) has no test example
  assert report['many'] == 0.5
  assert report['per_class'][2] is None


def test_weight_norms_per_class():
  kernel = np.array([[3.0, 0.0], [4.0, 2.0]])
  assert metrics.weight_norms(kernel) == [5.0, 2.0]
