"""The post-hoc corrections compared with BWLM, and top-k predictions from logits.

tau-normalisation (Kang et al. 2020) rescales each class's weight vector of the head; logit
adjustment (Menon et al. 2021) subtracts tau * log prior from its logits. Both work on stored
features and the model's own head (`models.head_logits`), so they cost no training.
"""

from __future__ import annotations

import numpy as np

from bwlm_jax.models import head_logits
from bwlm_jax.models.head import head_kernel, with_weights
from bwlm_jax.runtime.errors import UsageError


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest logits per row, best first (k is capped at the class count)."""
  k = min(k, logits.shape[-1])
  part = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
  order = np.argsort(-np.take_along_axis(logits, part, -1), axis=-1, kind='stable')
  return np.take_along_axis(part, order, -1)


def tau_normalized_head(head_params: dict, tau: float) -> dict:
  """Kang et al.'s tau-normalised classifier as head parameters: w_c / ||w_c||^tau, bias dropped (a cosine head
  keeps its kind: its logits then lose only the bias)."""
  kernel = np.asarray(head_kernel(head_params), np.float32)
  norms = np.linalg.norm(kernel, axis=0, keepdims=True)
  return with_weights(head_params, kernel / np.power(np.maximum(norms, 1e-12), tau),
                      np.zeros(kernel.shape[-1], np.float32))


def tau_normalized_logits(features: np.ndarray, head_params: dict, tau: float) -> np.ndarray:
  return head_logits(tau_normalized_head(head_params, tau), features)


def logit_adjusted(logits: np.ndarray, train_counts, tau: float = 1.0) -> np.ndarray:
  """Menon et al.'s post-hoc logit adjustment: z_c - tau * log(pi_c), pi = training class prior (a class without
  training images counted as one image, as the balanced losses count it)."""
  counts = np.maximum(np.asarray(train_counts, np.float64), 1)
  return (np.asarray(logits, np.float64) - tau * np.log(counts / counts.sum())).astype(np.float32)


def posthoc_logits(features: np.ndarray, head_params: dict, method: str, tau: float, train_counts) -> np.ndarray:
  """Logits of the head corrected by `method` ('tau_norm' or 'logit_adjustment') at temperature `tau`."""
  if method == 'tau_norm':
    return tau_normalized_logits(features, head_params, tau)
  if method == 'logit_adjustment':
    return logit_adjusted(head_logits(head_params, features), train_counts, tau)
  raise UsageError(f'unknown post-hoc method {method!r}; expected tau_norm or logit_adjustment.')


def choose_tau(scores_for_tau, taus) -> tuple[float, float]:
  """(best tau, its accuracy) from `scores_for_tau(tau) -> accuracy`; ties keep the smaller tau."""
  taus = list(taus)
  if not taus:
    raise UsageError('choose_tau needs at least one candidate tau.')
  accuracies = [scores_for_tau(t) for t in taus]
  best = int(np.argmax(accuracies))
  return float(taus[best]), float(accuracies[best])
