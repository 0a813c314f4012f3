"""Accuracy metrics from predictions: top-1 and top-5, per class, and by shot group (absent groups are None; classes
without a training image also apart, as 'unseen'); with logits, their calibration too."""

from __future__ import annotations

from typing import Optional

import numpy as np

from bwlm_jax.data.long_tail import SHOT_GROUPS, shot_groups  # noqa: F401 (re-exported)
from bwlm_jax.evaluation.calibration import calibration_report
from bwlm_jax.evaluation.posthoc import top_k
from bwlm_jax.models import head_logits

TOP_K = 5  # every report also gives top-5 accuracy


def per_class_accuracy(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Fraction correct per class; NaN for a class with no evaluation example."""
  hits = np.bincount(labels, weights=correct.astype(np.float64), minlength=num_classes)
  totals = np.bincount(labels, minlength=num_classes)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(totals > 0, hits / np.maximum(totals, 1), np.nan)


def group_accuracy(class_accuracy: np.ndarray, train_counts: np.ndarray) -> dict[str, Optional[float]]:
  """Mean per-class accuracy over each shot group (the usual Many/Medium/Few protocol).

  A group with no class (or none evaluated) is None, never 0.
  """
  groups = shot_groups(train_counts)
  result = {}
  for group in SHOT_GROUPS:
    values = class_accuracy[(groups == group) & ~np.isnan(class_accuracy)]
    result[group] = float(values.mean()) if values.size else None
  return result


def unseen_accuracy(class_accuracy: np.ndarray, train_counts: np.ndarray) -> dict[str, Optional[float]]:
  """{'unseen': mean per-class accuracy over the classes without a training image (data.unseen_classes; None
  where none is evaluated)} where there are such classes (they count as Few too), else {}."""
  unseen = np.asarray(train_counts) == 0
  if not unseen.any():
    return {}
  values = class_accuracy[unseen & ~np.isnan(class_accuracy)]
  return {'unseen': float(values.mean()) if values.size else None}


def accuracy_report(top_k_predictions: np.ndarray, labels: np.ndarray, train_counts: np.ndarray) -> dict:
  """All / Many / Medium / Few top-1 accuracy, top-5, and per-class top-1 accuracy.

  `top_k_predictions` is [N, k] with the best class first. "All" is the accuracy over all examples
  (equal to the mean per-class accuracy on a balanced test set).
  """
  train_counts = np.asarray(train_counts)
  num_classes = int(train_counts.size)
  top_k_predictions = np.asarray(top_k_predictions).reshape(len(labels), -1)
  correct = top_k_predictions[:, 0] == labels
  class_accuracy = per_class_accuracy(correct, labels, num_classes)
  top5 = (top_k_predictions[:, :TOP_K] == labels[:, None]).any(-1)
  return {
      'all': float(correct.mean()),
      **group_accuracy(class_accuracy, train_counts),
      **unseen_accuracy(class_accuracy, train_counts),
      'top5': float(top5.mean()),
      'num_examples': int(labels.size),
      'per_class': [None if np.isnan(a) else float(a) for a in class_accuracy],
  }


def logits_report(logits: np.ndarray, labels: np.ndarray, train_counts) -> dict:
  """`accuracy_report` of logits plus their calibration (ECE, NLL, Brier; `calibration.calibration_report`)."""
  return {**accuracy_report(top_k(logits, TOP_K), labels, train_counts),
          'calibration': calibration_report(logits, labels, train_counts)}


def head_report(features: np.ndarray, labels: np.ndarray, head_params: dict, train_counts) -> dict:
  """`logits_report` of the model's linear head applied to backbone features."""
  return logits_report(head_logits(head_params, features), labels, train_counts)


def weight_norms(head_kernel: np.ndarray) -> list[float]:
  """L2 norm of each class's classifier weight vector (kernel is [features, classes])."""
  return np.linalg.norm(np.asarray(head_kernel, np.float64), axis=0).tolist()
