"""The loss family of the paper (section 3.3): CE, balanced softmax, class-balanced focal and BFS.

Backbone stages train with cross-entropy; each stage-2 head with the loss its setting names.

Every loss takes logits [B, C] and labels: integers [B], or soft targets [B, C] (each row a distribution:
mixup, CutMix, label smoothing; `train/mixing.py`), and returns the mean over the batch. For soft targets
q each loss is the expectation over c ~ q of its integer form with label c (for mixup, lambda L(y_i) +
(1 - lambda) L(y_j), as in the mixup paper's code). Computation is in float32 and in log space, so logits
of magnitude 1e4 stay finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from bwlm_jax.runtime.errors import UsageError

LOSSES = ('ce', 'cb_focal', 'balanced_softmax', 'bfs')


def _soft(logits: jax.Array, labels: jax.Array) -> bool:
  return labels.ndim == logits.ndim


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean of -log softmax(z)[y] (of -sum_c q_c log softmax(z)_c for soft targets q)."""
  logits = logits.astype(jnp.float32)
  if _soft(logits, labels):
    return optax.softmax_cross_entropy(logits, labels.astype(jnp.float32)).mean()
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def balanced_softmax(logits: jax.Array, labels: jax.Array, class_counts: jax.Array) -> jax.Array:
  """Balanced softmax (Ren et al. 2020; paper eq. 9-10): cross-entropy of z + log n."""
  log_prior = jnp.log(jnp.asarray(class_counts, jnp.float32))
  return cross_entropy(logits.astype(jnp.float32) + log_prior, labels)


def class_balanced_weights(class_counts: jax.Array, beta) -> jax.Array:
  """Cui et al.'s (1 - beta) / (1 - beta ** n_j), normalised to sum to C.

  A class with no samples (n_j = 0) gets weight 0 before normalisation (it cannot be a label).
  """
  counts = jnp.asarray(class_counts, jnp.float32)
  beta = jnp.asarray(beta, jnp.float32)
  # 1 - beta ** n = -expm1(n * log(beta)) keeps precision for beta close to 1.
  effective = -jnp.expm1(counts * jnp.log(beta))
  raw = jnp.where(counts > 0, (1.0 - beta) / jnp.where(counts > 0, effective, 1.0), 0.0)
  return raw * counts.shape[0] / raw.sum()


def class_balanced_focal(logits: jax.Array, labels: jax.Array, class_counts: jax.Array, beta,
                         gamma) -> jax.Array:
  """Class-balanced sigmoid focal loss (Cui et al. 2019, their reference code; paper eq. 6-8).

  Per sample: w_y * sum_j (1 - p_t,j) ** gamma * BCE_j, with the modulator computed as
  exp(-gamma * (onehot * z + softplus(-z))).
  """
  logits = logits.astype(jnp.float32)
  class_weights = class_balanced_weights(class_counts, beta)
  if _soft(logits, labels):
    return _soft_class_balanced_focal(logits, labels.astype(jnp.float32), class_weights, gamma)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(logits, onehot)
  modulator = jnp.exp(-gamma * (onehot * logits + jax.nn.softplus(-logits)))
  per_sample = (modulator * bce).sum(-1)
  return (class_weights[labels] * per_sample).mean()


def _soft_class_balanced_focal(logits, targets, class_weights, gamma):
  """E_{c ~ q}[w_c focal(z, c)] in O(B C): with label c the focal sum is S + P_c - N_c, where N_j =
  sigma(z_j)^gamma softplus(z_j) is class j's term as a negative, P_j = (1 - sigma(z_j))^gamma softplus(-z_j)
  its term as the positive, and S = sum_j N_j."""
  negative = jnp.exp(-gamma * jax.nn.softplus(-logits)) * jax.nn.softplus(logits)
  positive = jnp.exp(-gamma * jax.nn.softplus(logits)) * jax.nn.softplus(-logits)
  weighted = targets * class_weights
  per_sample = weighted.sum(-1) * negative.sum(-1) + (weighted * (positive - negative)).sum(-1)
  return per_sample.mean()


def balanced_focal_softmax(logits: jax.Array, labels: jax.Array, class_counts: jax.Array, alpha, beta,
                           gamma) -> jax.Array:
  """BFS (paper eq. 11): alpha * CB focal + (1 - alpha) * balanced softmax, literally.

  The two terms have different scales (a sum over C sigmoid terms vs. one softmax CE); the paper
  combines them as written and so do we.
  """
  focal = class_balanced_focal(logits, labels, class_counts, beta, gamma)
  softmax = balanced_softmax(logits, labels, class_counts)
  return alpha * focal + (1.0 - alpha) * softmax


def head_loss(name: str, logits: jax.Array, labels: jax.Array, class_counts: jax.Array, setting) -> jax.Array:
  """The stage-2 loss `name` with the parameters a head's setting holds (`setting.alpha`, `.beta`, `.gamma`:
  a `HeadSetting`, or one head's row of the stacked grid)."""
  if name == 'ce':
    return cross_entropy(logits, labels)
  if name == 'balanced_softmax':
    return balanced_softmax(logits, labels, class_counts)
  if name == 'cb_focal':
    return class_balanced_focal(logits, labels, class_counts, setting.beta, setting.gamma)
  if name == 'bfs':
    return balanced_focal_softmax(logits, labels, class_counts, setting.alpha, setting.beta, setting.gamma)
  raise UsageError(f'unknown loss {name!r}; expected one of {LOSSES}.')


def loss_counts(stage2_cfg, long_tail_counts, stage2_labels, num_classes: int) -> jax.Array:
  """n_j of the balanced losses (`stage2.loss_counts`): the whole long tail's counts or those of the set
  stage 2 trains on. A class with no image cannot be a label, so its count is raised to 1."""
  source = (long_tail_counts if stage2_cfg.loss_counts == 'long_tail'
            else np.bincount(stage2_labels, minlength=num_classes))
  return jnp.asarray(np.maximum(source, 1), jnp.float32)

