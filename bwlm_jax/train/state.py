"""The train state and the model bundle (backbone + head) it belongs to."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """Everything a stage's training needs to continue: a pytree that orbax saves as is.

  `params`/`batch_stats` are trained; `frozen` holds stage 2's fixed backbone ({'params',
  'batch_stats'}) and is empty otherwise; `rng` is the raw key data all randomness derives from.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  frozen: Any
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Model:
  backbone: nn.Module
  head: nn.Module

  def init_backbone(self, key, image_shape):
    variables = self.backbone.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    return variables['params'], variables.get('batch_stats', {})

  def init_head(self, key, feature_dim: int):
    return self.head.init(key, jnp.zeros((1, feature_dim), jnp.float32))['params']

  def features(self, backbone_params, batch_stats, images, train: bool):
    """(features, updated batch_stats); batch_stats only change when train is True."""
    variables = {'params': backbone_params, 'batch_stats': batch_stats}
    if train:
      features, updates = self.backbone.apply(variables, images, train=True, mutable=['batch_stats'])
      return features, updates['batch_stats']
    return self.backbone.apply(variables, images, train=False), batch_stats

  def logits(self, head_params, features):
    return self.head.apply({'params': head_params}, features)

  def feature_dim(self, image_shape) -> int:
    shapes = jax.eval_shape(lambda k: self.init_backbone(k, image_shape), jax.random.key(0))
    out = jax.eval_shape(lambda p, s: self.features(p, s, jnp.zeros((1,) + tuple(image_shape)), False)[0],
                         *shapes)
    return int(out.shape[-1])
