"""The linear classifier head every model shares."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class LinearHead(nn.Module):
  """The classifier: logits = features @ W + b, computed in float32."""
  num_classes: int
  bias_init_value: float = 0.0

  @nn.compact
  def __call__(self, features):
    return nn.Dense(self.num_classes, bias_init=nn.initializers.constant(self.bias_init_value),
                    dtype=jnp.float32, name='dense')(features.astype(jnp.float32))
