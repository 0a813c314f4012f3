"""Evaluation under a test class prior other than the balanced one (a deployment's label distribution).

On a balanced test set, accuracy under a prior pi_test is the pi_test-weighted mean of per-class
accuracy. The model's logits can also be moved to that prior (logit adjustment, Menon et al. 2021):
z_c + log pi_test(c) - log pi_train(c), the Bayes-optimal change of prior for a model fitted to pi_train.
"""

from __future__ import annotations

import json
import os

import numpy as np

from bwlm_jax.runtime.errors import MissingFileError, UsageError
from bwlm_jax.evaluation.metrics import per_class_accuracy


def class_prior(spec: str, train_counts) -> np.ndarray:
  """The prior `spec` names: 'uniform', 'train' (the training class frequencies), or a JSON file holding a
  list of per-class weights (any positive scale; normalised here)."""
  counts = np.asarray(train_counts, np.float64)
  if spec == 'uniform':
    return np.full(counts.size, 1.0 / counts.size)
  if spec == 'train':
    return counts / counts.sum()
  if not os.path.isfile(spec):
    raise MissingFileError(f'--test_prior={spec}: expected uniform, train, or a JSON file with one weight per class.')
  with open(spec) as f:
    try:
      weights = np.asarray(json.load(f), np.float64)
    except (ValueError, TypeError) as err:
      raise UsageError(f'--test_prior={spec}: not a JSON list of numbers ({err}).') from None
  if weights.shape != counts.shape or (weights < 0).any() or weights.sum() <= 0:
    raise UsageError(f'--test_prior={spec}: expected {counts.size} non-negative weights (one per class, not all 0), '
                     f'got shape {weights.shape}.')
  return weights / weights.sum()


def reweighted_accuracy(predictions: np.ndarray, labels: np.ndarray, prior: np.ndarray) -> float:
  """Accuracy under `prior`: the prior-weighted mean of per-class accuracy (classes without test images
  are left out and the weights renormalised)."""
  accuracy = per_class_accuracy(predictions == labels, labels, prior.size)
  present = ~np.isnan(accuracy)
  return float((prior[present] * accuracy[present]).sum() / prior[present].sum())


def prior_shift_report(logits: np.ndarray, labels: np.ndarray, train_counts, prior: np.ndarray) -> dict:
  """Accuracy under `prior` of the model as it is, and after logit adjustment from the training prior to it."""
  counts = np.maximum(np.asarray(train_counts, np.float64), 1)
  adjusted = np.asarray(logits, np.float64) + np.log(np.maximum(prior, 1e-12)) - np.log(counts / counts.sum())
  return {'accuracy': reweighted_accuracy(np.argmax(logits, -1), labels, prior),
          'adjusted_accuracy': reweighted_accuracy(adjusted.argmax(-1), labels, prior)}
