"""Calibration of predicted probabilities: expected calibration error, negative log-likelihood, Brier
score (all examples and per shot group), reliability bins, and temperature scaling fitted on validation.

ECE uses 15 equal-width confidence bins over [0, 1] (Guo et al. 2017): the top-1 confidence of each
example falls in bin b when b/15 < confidence <= (b+1)/15 (confidence 0 goes to the first bin), and
ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|.
"""

from __future__ import annotations

import numpy as np

from bwlm_jax.data.long_tail import SHOT_GROUPS, shot_groups

ECE_BINS = 15
# Temperatures tried by `fit_temperature`: a log-spaced grid wide enough for under- and over-confident
# heads, refined once around the best value.
_TEMPERATURES = np.geomspace(0.05, 20.0, 121)


def softmax(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  exp = np.exp(shifted)
  return exp / exp.sum(-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
  """Mean negative log-likelihood of the true class."""
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return float(-log_probs[np.arange(labels.size), labels].mean())


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
  """Per equal-width bin: example count, accuracy and mean confidence (None where the bin is empty)."""
  index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
  out = []
  for b in range(bins):
    mask = index == b
    count = int(mask.sum())
    out.append({'count': count, 'accuracy': float(correct[mask].mean()) if count else None,
                'confidence': float(confidence[mask].mean()) if count else None})
  return out


def expected_calibration_error(bins: list[dict]) -> float:
  total = sum(b['count'] for b in bins)
  return float(sum(b['count'] * abs(b['accuracy'] - b['confidence']) for b in bins if b['count']) / max(total, 1))


def _scores(probabilities: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
  confidence = probabilities.max(-1)
  correct = probabilities.argmax(-1) == labels
  onehot = np.zeros_like(probabilities)
  onehot[np.arange(labels.size), labels] = 1.0
  bins = reliability_bins(confidence, correct)
  return {'ece': expected_calibration_error(bins), 'nll': nll(logits, labels),
          'brier': float(((probabilities - onehot) ** 2).sum(-1).mean()), 'bins': bins}


def calibration_report(logits: np.ndarray, labels: np.ndarray, train_counts) -> dict:
  """ECE (15 bins), NLL and Brier score over all examples and per shot group of the true class (None
  for an absent group), and the reliability bins of all examples."""
  labels = np.asarray(labels)
  probabilities = softmax(logits)
  report = _scores(probabilities, np.asarray(logits), labels)
  groups = shot_groups(np.asarray(train_counts))[labels]
  report['groups'] = {}
  for group in SHOT_GROUPS:
    mask = groups == group
    if mask.any():
      scores = _scores(probabilities[mask], np.asarray(logits)[mask], labels[mask])
      report['groups'][group] = {k: scores[k] for k in ('ece', 'nll', 'brier')}
    else:
      report['groups'][group] = None
  report['ece_bins'] = ECE_BINS
  return report


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
  """The temperature T > 0 that minimises the NLL of softmax(logits / T) (fit it on the validation split)."""
  logits = np.asarray(logits, np.float64)
  losses = [nll(logits / t, labels) for t in _TEMPERATURES]
  best = int(np.argmin(losses))
  low, high = _TEMPERATURES[max(best - 1, 0)], _TEMPERATURES[min(best + 1, len(_TEMPERATURES) - 1)]
  fine = np.geomspace(low, high, 41)
  return float(fine[int(np.argmin([nll(logits / t, labels) for t in fine]))])
