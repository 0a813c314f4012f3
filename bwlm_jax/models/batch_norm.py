"""Batch normalisation for the convolutional families: flax's `nn.BatchNorm` (the same parameters, batch
statistics and values) followed by a residual sum and an activation, in one function whose training gradient is
written out.

Why (issue 47): under autodiff of nn.BatchNorm, the sum and nn.relu, XLA:CPU recomputed values instead of reading
them back. In ResNet-32's training step each ReLU mask of the backward pass was rebuilt from every earlier block of
its stage (fusions of 20-27 operands), and each block's output was computed twice, once for the next convolution
and once for its chunked weight gradient. Here the output is stored once (an optimisation barrier) and the
backward reads the activation's mask from it: ResNet-32's step 0.54-0.59 -> 0.49-0.50 s on an Intel AVX-512 CPU.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {None: lambda z: z, 'relu': nn.relu, 'relu6': nn.relu6}  # jax.nn's: their gradients at the kinks


def _finish(normalized, residual, activation, dtype):
  """The normalised values in `dtype`, the residual added, the activation: in that order, as the families
  composed nn.BatchNorm's output with them (in bfloat16 the rounding comes before the sum and the kinks)."""
  z = normalized.astype(dtype)
  return ACTIVATIONS[activation](z if residual is None else z + residual)


def _activation_mask(y, activation):
  """Where the activation passed its input's gradient, read from its output (jax.nn's gradients: relu's
  where x > 0, relu6's where 0 < x < 6)."""
  if activation == 'relu':
    return y > 0
  return (y > 0) & (y < 6)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _train_norm(x, scale, bias, residual, epsilon, activation, dtype):
  """(activation(BatchNorm(x) + residual) in `dtype`, the batch's mean, its variance) over x's last axis."""
  return _train_norm_forward(x, scale, bias, residual, epsilon, activation, dtype)[0]


def _train_norm_forward(x, scale, bias, residual, epsilon, activation, dtype):
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(xf, axes)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(xf), axes) - jnp.square(mean))
  rstd = jax.lax.rsqrt(var + epsilon)
  y = jax.lax.optimization_barrier(_finish((xf - mean) * (rstd * scale) + bias, residual, activation, dtype))
  # The residual's own value is not needed, only a gradient of its dtype (an empty array: no work, no memory).
  residual_kind = None if residual is None else jnp.zeros((0,), residual.dtype)
  return (y, mean, var), (x, mean, rstd, scale, y if activation else None, residual_kind)


def _train_norm_backward(epsilon, activation, dtype, residuals, gradients):
  x, mean, rstd, scale, y, residual_kind = residuals
  gy, gmean, gvar = gradients
  g = gy.astype(jnp.float32)
  if activation:
    g = jnp.where(_activation_mask(y, activation), g, 0)
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  centered = x.astype(jnp.float32) - mean
  xhat = centered * rstd
  bias_gradient = jnp.sum(g, axes)
  scale_gradient = jnp.sum(g * xhat, axes)
  x_gradient = ((scale * rstd) * (g - bias_gradient / n - xhat * (scale_gradient / n))
                + gmean / n + centered * (2 * gvar / n))
  return (x_gradient.astype(x.dtype), scale_gradient, bias_gradient,
          None if residual_kind is None else g.astype(residual_kind.dtype))


_train_norm.defvjp(_train_norm_forward, _train_norm_backward)


class BatchNorm(nn.Module):
  """nn.BatchNorm over the last axis (parameters `scale`, `bias`; batch statistics `mean`, `var`; float32),
  then `residual` added and `activation` ('relu', 'relu6' or None) applied. In training the batch's
  statistics normalise and update the running ones as flax does (var = E[x^2] - E[x]^2, clipped at 0)."""
  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  activation: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, residual=None):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'BatchNorm activation must be one of {tuple(ACTIVATIONS)}, not {self.activation!r}')
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    if self.use_running_average:
      return _finish((x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias, residual,
                     self.activation, self.dtype)
    y, mean, var = _train_norm(x, scale, bias, residual, self.epsilon, self.activation, self.dtype)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
