"""models/batch_norm.py: flax's BatchNorm with the activation after it and its own gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bwlm_jax.models.batch_norm import BatchNorm, _train_norm

ACTIVATE = {None: lambda z: z, 'relu': nn.relu, 'relu6': nn.relu6}


def _flaxs(train, activation, dtype):
  """The composition the families used before: nn.BatchNorm, the residual added, the activation."""
  class Reference(nn.Module):
    @nn.compact
    def __call__(self, x, residual=None):
      y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3, dtype=dtype, name='norm')(x)
      return ACTIVATE[activation](y if residual is None else y + residual)
  return Reference()


def _ours(train, activation, dtype):
  class Ours(nn.Module):
    @nn.compact
    def __call__(self, x, residual=None):
      return BatchNorm(not train, 0.9, 1e-3, activation, dtype, name='norm')(x, residual)
  return Ours()


@pytest.mark.parametrize('activation', [None, 'relu', 'relu6'])
@pytest.mark.parametrize('with_residual', [False, True])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('train', [True, False])
def test_batch_norm_is_flaxs_then_the_activation_in_values_statistics_and_gradients(activation, with_residual,
                                                                                    dtype, train):
  rng = np.random.default_rng(3)
  # Spread over the activations' kinks: relu6's upper one too (values above 6 after scale and bias).
  x = jnp.asarray(rng.standard_normal((4, 5, 3, 6), np.float32) * 2 + 1).astype(dtype)
  residual = jnp.asarray(rng.standard_normal(x.shape, np.float32)).astype(dtype) if with_residual else None
  ours, theirs = _ours(train, activation, dtype), _flaxs(train, activation, dtype)
  variables = theirs.init(jax.random.key(0), x, residual)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x, residual)) == jax.tree.map(jnp.shape, variables)
  variables = {'params': {'norm': {'scale': jnp.asarray(rng.uniform(0.5, 4, 6), jnp.float32),
                                   'bias': jnp.asarray(rng.uniform(-1, 4, 6), jnp.float32)}},
               'batch_stats': {'norm': {'mean': jnp.asarray(rng.standard_normal(6), jnp.float32),
                                        'var': jnp.asarray(rng.uniform(0.5, 2, 6), jnp.float32)}}}

  def run(module):
    def loss(params, x, residual, cotangent):
      y, updated = module.apply({**variables, 'params': params}, x, residual, mutable=['batch_stats'])
      return (y.astype(jnp.float32) * cotangent).sum(), (y, updated)
    cotangent = jnp.asarray(rng.standard_normal(x.shape, np.float32))
    arguments = (0, 1, 2) if with_residual else (0, 1)
    return jax.jit(jax.grad(loss, arguments, has_aux=True))(variables['params'], x, residual, cotangent)

  rng_state = rng.bit_generator.state
  got_gradients, (got, got_stats) = run(ours)
  rng.bit_generator.state = rng_state
  want_gradients, (want, want_stats) = run(theirs)
  assert got.dtype == want.dtype == dtype
  tolerance = 1e-6 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tolerance, atol=tolerance)
  assert 0 < np.mean(np.asarray(want.astype(np.float32)) > 0) < 1  # the activation's kinks are inside the data
  if activation == 'relu6':
    assert np.any(np.asarray(want.astype(np.float32)) == 6)
  for got_stat, want_stat in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats)):
    np.testing.assert_allclose(got_stat, want_stat, rtol=1e-6, atol=1e-6)
  scale = max(float(jnp.max(jnp.abs(leaf.astype(jnp.float32)))) for leaf in jax.tree.leaves(want_gradients))
  for got_gradient, want_gradient in zip(jax.tree.leaves(got_gradients), jax.tree.leaves(want_gradients)):
    assert got_gradient.dtype == want_gradient.dtype
    np.testing.assert_allclose(got_gradient.astype(np.float32), want_gradient.astype(np.float32),
                               atol=scale * (1e-5 if dtype == jnp.float32 else 3e-2))


def test_the_batch_statistics_outputs_have_their_own_gradients():
  """The running statistics take no gradient in training, but `_train_norm`'s mean and variance are outputs
  like any other: their gradients are autodiff's of the same formulas."""
  rng = np.random.default_rng(4)
  x, scale, bias = (jnp.asarray(rng.standard_normal(shape, np.float32)) for shape in ((6, 3, 4), (4,), (4,)))
  weights = [jnp.asarray(rng.standard_normal(shape, np.float32)) for shape in ((6, 3, 4), (4,), (4,))]

  def reference(x, scale, bias):
    mean = x.mean((0, 1))
    var = jnp.maximum(0.0, jnp.square(x).mean((0, 1)) - jnp.square(mean))
    return nn.relu((x - mean) * (jax.lax.rsqrt(var + 1e-5) * scale) + bias), mean, var

  def loss(function):
    return lambda *args: sum((out * w).sum() for out, w in zip(function(*args), weights))

  ours = jax.grad(loss(lambda x, s, b: _train_norm(x, s, b, None, 1e-5, 'relu', jnp.float32)), (0, 1, 2))
  for got, want in zip(ours(x, scale, bias), jax.grad(loss(reference), (0, 1, 2))(x, scale, bias)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_batch_norm_by_hand():
  # One channel [1, 2, 3]: mean 2, variance 2/3, so (x - 2) * sqrt(3/2); the ReLU keeps the last.
  module = BatchNorm(False, 0.9, 0.0, 'relu')
  variables = module.init(jax.random.key(0), jnp.zeros((3, 1)))
  y, updated = module.apply(variables, jnp.asarray([[1.0], [2.0], [3.0]]), mutable=['batch_stats'])
  np.testing.assert_allclose(y[:, 0], [0.0, 0.0, 1.5 ** 0.5], rtol=1e-6)
  np.testing.assert_allclose(updated['batch_stats']['mean'], [0.1 * 2], rtol=1e-6)
  np.testing.assert_allclose(updated['batch_stats']['var'], [0.9 + 0.1 * 2 / 3], rtol=1e-6)
  # Its gradient: d relu(x)/dx for the kept entry through the normalisation, by hand: the loss y[2] has
  # d/dx_i = sqrt(3/2) * (delta_i2 - 1/3 - xhat_i * xhat_2 / 3), xhat = (-1, 0, 1) * sqrt(3/2).
  gradient = jax.grad(lambda x: module.apply(variables, x, mutable=['batch_stats'])[0][2, 0])(
      jnp.asarray([[1.0], [2.0], [3.0]]))
  xhat = np.array([-1.0, 0.0, 1.0]) * np.sqrt(1.5)
  np.testing.assert_allclose(gradient[:, 0], np.sqrt(1.5) * (np.array([0, 0, 1]) - 1 / 3 - xhat * xhat[2] / 3),
                             rtol=1e-5, atol=1e-6)


def test_an_unknown_activation_is_refused():
  with pytest.raises(ValueError, match='gelu'):
    BatchNorm(False, activation='gelu').init(jax.random.key(0), jnp.zeros((2, 3)))
