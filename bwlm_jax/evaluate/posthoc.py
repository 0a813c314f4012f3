"""Logits from features and a linear head, and the post-hoc corrections compared with BWLM.

tau-normalisation (Kang et al. 2020) rescales each class's weight vector; logit adjustment (Menon
et al. 2021) subtracts tau * log prior. Both work on stored features, so they cost no training.
"""

from __future__ import annotations

import numpy as np


def linear_logits(features: np.ndarray, head_params: dict) -> np.ndarray:
  """features @ W + b for a LinearHead's parameters ({'dense': {'kernel', 'bias'}})."""
  dense = head_params['dense']
  return np.asarray(features, np.float32) @ np.asarray(dense['kernel'], np.float32) + np.asarray(
      dense['bias'], np.float32)


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest logits per row, best first (k is capped at the class count)."""
  k = min(k, logits.shape[-1])
  part = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
  order = np.argsort(-np.take_along_axis(logits, part, -1), axis=-1, kind='stable')
  return np.take_along_axis(part, order, -1)


def tau_normalized_logits(features: np.ndarray, kernel: np.ndarray, tau: float) -> np.ndarray:
  """Kang et al.'s tau-normalised classifier: w_c / ||w_c||^tau, bias dropped."""
  kernel = np.asarray(kernel, np.float64)
  norms = np.linalg.norm(kernel, axis=0, keepdims=True)
  return (np.asarray(features, np.float64) @ (kernel / np.power(np.maximum(norms, 1e-12), tau))).astype(np.float32)


def logit_adjusted(logits: np.ndarray, train_counts, tau: float = 1.0) -> np.ndarray:
  """Menon et al.'s post-hoc logit adjustment: z_c - tau * log(pi_c), pi = training class prior."""
  counts = np.maximum(np.asarray(train_counts, np.float64), 1e-12)
  return (np.asarray(logits, np.float64) - tau * np.log(counts / counts.sum())).astype(np.float32)


def choose_tau(scores_for_tau, taus) -> tuple[float, float]:
  """(best tau, its accuracy) from `scores_for_tau(tau) -> accuracy`; ties keep the smaller tau."""
  taus = list(taus)
  if not taus:
    raise ValueError('choose_tau needs at least one candidate tau.')
  accuracies = [scores_for_tau(t) for t in taus]
  best = int(np.argmax(accuracies))
  return float(taus[best]), float(accuracies[best])
