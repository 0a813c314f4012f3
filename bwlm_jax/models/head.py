"""The classifier heads: linear (logits = features @ W + b) and cosine (LIFT's, Shi et al. 2024: logits =
s * <f / |f|, w_c / |w_c|> + b_c, the scale s fixed). A head's kind is in its parameter tree (`dense` or
`cosine`), so every function here works on the parameters alone: training, evaluation and inference read
one head the same way.

On a cosine head, weight decay (BWLM's lambda) does not reach the logits: they do not depend on |w_c|, and the
loss's gradient with respect to w_c is orthogonal to w_c. Decay only shrinks |w_c|, which enlarges the angle
each later step turns w_c by (its effective step size grows as 1 / |w_c|^2); the equal class norms BWLM's decay
pushes a linear head towards are built in. (tests/test_heads.py checks both.)
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

HEAD_KINDS = ('linear', 'cosine')
COSINE_SCALE = 25.0  # LIFT's logit scale


class LinearHead(nn.Module):
  """The linear classifier: logits = features @ W + b, computed in float32."""
  num_classes: int
  bias_init_value: float = 0.0

  @nn.compact
  def __call__(self, features):
    return nn.Dense(self.num_classes, bias_init=nn.initializers.constant(self.bias_init_value),
                    dtype=jnp.float32, name='dense')(features.astype(jnp.float32))


class _Cosine(nn.Module):
  num_classes: int
  scale: float
  bias_init_value: float

  @nn.compact
  def __call__(self, features):
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (features.shape[-1], self.num_classes))
    bias = self.param('bias', nn.initializers.constant(self.bias_init_value), (self.num_classes,))
    scale = self.param('scale', nn.initializers.constant(self.scale), ())
    return apply_head({'cosine': {'kernel': kernel, 'bias': bias, 'scale': scale}}, features)


class CosineHead(nn.Module):
  """The cosine classifier; its scale is held with its parameters but never trained (`apply_head` stops its
  gradient; the optimizer does not decay it: `is_fixed`)."""
  num_classes: int
  scale: float = COSINE_SCALE
  bias_init_value: float = 0.0

  @nn.compact
  def __call__(self, features):
    return _Cosine(self.num_classes, self.scale, self.bias_init_value, name='cosine')(features)


def make_head(kind: str, num_classes: int, scale: float = COSINE_SCALE, bias_init_value: float = 0.0) -> nn.Module:
  """The head module of `kind` (config.model.head)."""
  if kind == 'cosine':
    return CosineHead(num_classes, scale, bias_init_value)
  return LinearHead(num_classes, bias_init_value)


def kind_of(head_params: dict) -> str:
  return 'cosine' if 'cosine' in head_params else 'linear'


def _layer_name(head_params: dict) -> str:
  """The module holding a head's weights: `dense` (linear) or `cosine`."""
  return 'cosine' if kind_of(head_params) == 'cosine' else 'dense'


def head_kernel(head_params: dict):
  """W [D, C] of a head of either kind (stacked heads: [K, D, C])."""
  return head_params[_layer_name(head_params)]['kernel']


def with_weights(head_params: dict, kernel, bias=None) -> dict:
  """`head_params` of the same kind (and scale) with this kernel (and bias)."""
  key = _layer_name(head_params)
  layer = dict(head_params[key], kernel=kernel)
  if bias is not None:
    layer['bias'] = bias
  return {**head_params, key: layer}


def head_params(kind: str, kernel, bias, scale: Optional[float] = None) -> dict:
  """A head's parameters of `kind` from its weights (a cosine head's scale: `scale`, default LIFT's)."""
  kernel, bias = jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32)
  if kind == 'cosine':
    return {'cosine': {'kernel': kernel, 'bias': bias,
                       'scale': jnp.asarray(COSINE_SCALE if scale is None else scale, jnp.float32)}}
  return {'dense': {'kernel': kernel, 'bias': bias}}


def apply_head(head_params: dict, features):
  """Logits [N, C] (float32) of one head of either kind on features [N, D]."""
  features = features.astype(jnp.float32)
  if kind_of(head_params) == 'cosine':
    layer = head_params['cosine']
    directions = layer['kernel'] / jnp.maximum(jnp.linalg.norm(layer['kernel'], axis=0, keepdims=True), 1e-12)
    unit = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
    return jax.lax.stop_gradient(layer['scale']) * (unit @ directions) + layer['bias']
  return features @ head_params['dense']['kernel'] + head_params['dense']['bias']


def is_fixed(path) -> bool:
  """Whether a parameter (its tree path of keys) is a constant held among the parameters: a cosine head's scale,
  which weight decay must not touch."""
  names = [getattr(key, 'key', getattr(key, 'name', key)) for key in path]
  return len(names) >= 2 and names[-1] == 'scale' and names[-2] == 'cosine'
