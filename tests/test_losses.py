"""Losses against a direct NumPy transcription of NOTES.md's formulas, plus their limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bwlm_jax import losses
from bwlm_jax.head_setting import HeadSetting

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0, 3, size=(16, 7))
LABELS = RNG.integers(0, 7, size=16)
COUNTS = np.array([500, 200, 80, 40, 20, 9, 3])


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(z, y):
  return -np_log_softmax(z)[np.arange(len(y)), y].mean()


def np_cb_focal(z, y, n, beta, gamma):
  w = (1 - beta) / (1 - beta ** n.astype(np.float64))
  w = w / w.sum() * len(n)
  onehot = np.eye(z.shape[1])[y]
  p = 1 / (1 + np.exp(-z))
  p_t = np.where(onehot == 1, p, 1 - p)
  bce = -np.log(p_t)
  per_sample = ((1 - p_t) ** gamma * bce).sum(-1)
  return (w[y] * per_sample).mean()


def test_cross_entropy_matches_numpy():
  np.testing.assert_allclose(losses.cross_entropy(LOGITS, LABELS), np_ce(LOGITS, LABELS), rtol=1e-5)


def test_balanced_softmax_matches_numpy():
  expected = np_ce(LOGITS + np.log(COUNTS), LABELS)
  np.testing.assert_allclose(losses.balanced_softmax(LOGITS, LABELS, COUNTS), expected, rtol=1e-5)


@pytest.mark.parametrize('beta,gamma', [(0.9999, 1.0), (0.99, 2.0), (0.9, 0.5)])
def test_cb_focal_matches_numpy(beta, gamma):
  expected = np_cb_focal(LOGITS, LABELS, COUNTS, beta, gamma)
  np.testing.assert_allclose(losses.class_balanced_focal(LOGITS, LABELS, COUNTS, beta, gamma), expected,
                             rtol=1e-5)


def test_cb_weights_sum_to_num_classes():
  weights = losses.class_balanced_weights(COUNTS, 0.999)
  np.testing.assert_allclose(weights.sum(), 7, rtol=1e-6)
  assert (np.diff(np.asarray(weights)) > 0).all()  # rarer classes weigh more


def test_bfs_is_the_literal_mixture():
  alpha, beta, gamma = 0.3, 0.999, 1.0
  expected = alpha * np_cb_focal(LOGITS, LABELS, COUNTS, beta, gamma) + (1 - alpha) * np_ce(
      LOGITS + np.log(COUNTS), LABELS)
  got = losses.balanced_focal_softmax(LOGITS, LABELS, COUNTS, alpha, beta, gamma)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_limits():
  cb = losses.class_balanced_focal(LOGITS, LABELS, COUNTS, 0.99, 1.0)
  bs = losses.balanced_softmax(LOGITS, LABELS, COUNTS)
  np.testing.assert_allclose(losses.balanced_focal_softmax(LOGITS, LABELS, COUNTS, 1.0, 0.99, 1.0), cb, rtol=1e-6)
  np.testing.assert_allclose(losses.balanced_focal_softmax(LOGITS, LABELS, COUNTS, 0.0, 0.99, 1.0), bs, rtol=1e-6)
  # gamma = 0 and beta -> 0: every weight is 1, so plain sigmoid cross-entropy summed over classes.
  onehot = np.eye(7)[LABELS]
  sigmoid_ce = (np.logaddexp(0, LOGITS) - onehot * LOGITS).sum(-1).mean()
  np.testing.assert_allclose(losses.class_balanced_focal(LOGITS, LABELS, COUNTS, 1e-8, 0.0), sigmoid_ce,
                             rtol=1e-5)
  # Equal counts: balanced softmax is cross-entropy.
  np.testing.assert_allclose(losses.balanced_softmax(LOGITS, LABELS, np.full(7, 37)),
                             losses.cross_entropy(LOGITS, LABELS), rtol=1e-6)


SETTING = HeadSetting(loss='bfs', alpha=0.1, beta=0.9999, gamma=1.0, weight_decay=0.0, learning_rate=0.1, epochs=1,
                      backbone='stage1')


@pytest.mark.parametrize('name', losses.LOSSES)
def test_finite_values_and_gradients_for_huge_logits(name):
  logits = jnp.asarray(RNG.choice([-1e4, 1e4], size=(8, 7)), jnp.float32)
  labels = jnp.asarray(RNG.integers(0, 7, size=8))

  def loss(z):
    return losses.head_loss(name, z, labels, COUNTS, SETTING)

  value, grad = jax.value_and_grad(loss)(logits)
  assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()
  assert np.abs(np.asarray(grad)).sum() > 0


def test_gradient_matches_finite_differences():
  z = jnp.asarray(LOGITS[:4], jnp.float32)

  def loss(x):
    return losses.balanced_focal_softmax(x, LABELS[:4], COUNTS, 0.4, 0.99, 2.0)

  grad = np.asarray(jax.grad(loss)(z))
  eps = 1e-3
  bump = np.zeros_like(LOGITS[:4]); bump[1, 2] = eps
  numeric = (loss(z + bump) - loss(z - bump)) / (2 * eps)
  np.testing.assert_allclose(grad[1, 2], numeric, rtol=2e-2, atol=1e-4)


def test_unknown_loss_name():
  with pytest.raises(ValueError, match="unknown loss 'focal'"):
    losses.head_loss('focal', LOGITS, LABELS, COUNTS, SETTING)
