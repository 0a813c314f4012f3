"""models/pooling.py: max pooling's values are flax's and its gradient is XLA's select-and-scatter's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bwlm_jax.models.pooling import max_pool


@pytest.mark.parametrize('shape, window, strides, padding', [
    ((3, 13, 11, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),  # torchvision ResNets' stem pool, odd sizes
    ((2, 8, 8, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 9, 7, 2), (2, 2), (2, 2), ((0, 0), (0, 0))),
    ((2, 6, 7, 2), (3, 2), (1, 1), ((1, 1), (0, 1))),
])
def test_max_pool_is_flaxs_and_its_gradient_goes_to_each_windows_first_maximum(shape, window, strides, padding):
  rng = np.random.default_rng(5)
  # After a ReLU and on a coarse grid: many windows hold their maximum twice or more (ties decide the gradient).
  x = jnp.asarray(np.round(np.maximum(rng.standard_normal(shape), 0) * 2) / 2, jnp.float32)
  want_y, want_vjp = jax.vjp(lambda x: nn.max_pool(x, window, strides, padding), x)
  got_y, got_vjp = jax.vjp(lambda x: max_pool(x, window, strides, padding), x)
  np.testing.assert_array_equal(got_y, want_y)
  np.testing.assert_array_equal(jax.jit(max_pool, static_argnums=(1, 2, 3))(x, window, strides, padding), want_y)
  g = jnp.asarray(rng.standard_normal(want_y.shape), jnp.float32)
  np.testing.assert_allclose(got_vjp(g)[0], want_vjp(g)[0], rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_by_hand():
  # One 3x3 window over a 3x3 image with its maximum 5 twice: the first in row order takes the gradient.
  x = jnp.asarray([[1.0, 5.0, 2.0], [5.0, 0.0, 3.0], [4.0, 1.0, 2.0]]).reshape(1, 3, 3, 1)
  gradient = jax.grad(lambda x: 7.0 * max_pool(x, (3, 3), (1, 1), ((0, 0), (0, 0))).sum())(x)
  np.testing.assert_array_equal(gradient[0, :, :, 0], [[0, 7, 0], [0, 0, 0], [0, 0, 0]])
