"""ResNets for 32x32 inputs (He et al. 2016, section 4.2), as used by LDAM-DRW and the paper.

Three stages of n basic blocks with 16/32/64 channels and option-A (parameter-free) shortcuts:
ResNet-(6n+2), so n = 1, 3, 5 give ResNet-8, -20, -32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from bwlm_jax.models.batch_norm import BatchNorm
from bwlm_jax.models.conv import Conv
from bwlm_jax.models.family import Family, last_stage_blocks

conv_init = nn.initializers.kaiming_normal()


class BasicBlockA(nn.Module):
  """conv-BN-ReLU-conv-BN plus a shortcut that subsamples and zero-pads channels (option A)."""
  channels: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda activation: BatchNorm(not train, 0.9, 1e-5, activation, self.dtype)
    conv = lambda stride: Conv(self.channels, (3, 3), (stride, stride), padding=1, use_bias=False,
                               kernel_init=conv_init, dtype=self.dtype)
    y = norm('relu')(conv(self.stride)(x))
    y = conv(1)(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.channels:
      shortcut = x[:, ::self.stride, ::self.stride, :]
      extra = self.channels - x.shape[-1]
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return norm('relu')(y, shortcut)


class CifarResNet(nn.Module):
  """Backbone returning pooled features [B, 64]."""
  blocks_per_stage: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = Conv(16, (3, 3), padding=1, use_bias=False, kernel_init=conv_init, dtype=self.dtype)(x)
    x = BatchNorm(not train, 0.9, 1e-5, 'relu', self.dtype)(x)
    for stage, channels in enumerate((16, 32, 64)):
      for block in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlockA(channels, stride, self.dtype)(x, train)
    return jnp.mean(x, axis=(1, 2))


BLOCKS = {'resnet8': 1, 'resnet20': 3, 'resnet32': 5}  # model.name -> n (blocks per stage)
FAMILY = Family('CIFAR ResNet', tuple(BLOCKS), lambda name, options: CifarResNet(BLOCKS[name], dtype=options.dtype),
                last_modules=lambda name, params: last_stage_blocks(params), cpu_runtime='ynnpack+malloc',
                kind_cpu_runtimes=(('intel-avx512', 'malloc'),))
