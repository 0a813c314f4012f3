"""ResNet-10/18/34/50/101/152 and ResNeXt-50 32x4d for 224x224 inputs (He et al. 2016; Xie et al. 2017), layer
for layer torchvision's (stride on the bottleneck's 3x3, "v1.5"), so that its weights load
(`models/torch_layout.py`)."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
from bwlm_jax.models import torch_layout
from bwlm_jax.models.batch_norm import BatchNorm
from bwlm_jax.models.conv import Conv
from bwlm_jax.models.family import Family, last_stage_blocks
from bwlm_jax.models.pooling import max_pool

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _norm(train: bool, dtype, activation=None):
  return BatchNorm(not train, 0.9, 1e-5, activation, dtype)


def _shortcut_sum(x, y, channels: int, stride: int, train: bool, dtype):
  """relu(BN(y) + shortcut): the block's last BatchNorm with the sum and ReLU after it; a shortcut that changes
  the shape is a 1x1 convolution and a BatchNorm of its own, which takes the sum (the modules' order, and so
  their names, as torchvision's)."""
  if x.shape[-1] == channels and stride == 1:
    return _norm(train, dtype, 'relu')(y, x)
  y = _norm(train, dtype)(y)
  x = Conv(channels, (1, 1), stride, use_bias=False, kernel_init=conv_init, dtype=dtype)(x)
  return _norm(train, dtype, 'relu')(x, y)


class BasicBlock(nn.Module):
  channels: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = Conv(self.channels, (3, 3), self.stride, padding=1, use_bias=False, kernel_init=conv_init,
             dtype=self.dtype)(x)
    y = _norm(train, self.dtype, 'relu')(y)
    y = Conv(self.channels, (3, 3), padding=1, use_bias=False, kernel_init=conv_init, dtype=self.dtype)(y)
    return _shortcut_sum(x, y, self.channels, self.stride, train, self.dtype)


class Bottleneck(nn.Module):
  """1x1 - 3x3 (grouped for ResNeXt) - 1x1 with 4x expansion; stride on the 3x3 (torchvision's v1.5)."""
  channels: int
  stride: int
  groups: int = 1
  width_per_group: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    width = int(self.channels * self.width_per_group / 64) * self.groups
    out_channels = self.channels * 4
    y = Conv(width, (1, 1), use_bias=False, kernel_init=conv_init, dtype=self.dtype)(x)
    y = _norm(train, self.dtype, 'relu')(y)
    y = Conv(width, (3, 3), self.stride, padding=1, feature_group_count=self.groups, use_bias=False,
             kernel_init=conv_init, dtype=self.dtype)(y)
    y = _norm(train, self.dtype, 'relu')(y)
    y = Conv(out_channels, (1, 1), use_bias=False, kernel_init=conv_init, dtype=self.dtype)(y)
    return _shortcut_sum(x, y, out_channels, self.stride, train, self.dtype)


# Blocks per stage of each network (torchvision's), and whether its blocks are bottlenecks.
LAYOUTS = {'resnet10': ((1, 1, 1, 1), False), 'resnet18': ((2, 2, 2, 2), False), 'resnet34': ((3, 4, 6, 3), False),
           'resnet50': ((3, 4, 6, 3), True), 'resnet101': ((3, 4, 23, 3), True), 'resnet152': ((3, 8, 36, 3), True),
           'resnext50': ((3, 4, 6, 3), True)}


class ImageNetResNet(nn.Module):
  """Backbone returning pooled features (8 * base_channels for basic blocks, 32 * base_channels for
  bottlenecks: 512 and 2048 at torchvision's width, base_channels = 64)."""
  stage_sizes: Sequence[int]
  bottleneck: bool
  groups: int = 1
  width_per_group: int = 64
  dtype: Any = jnp.float32
  base_channels: int = 64

  @nn.compact
  def __call__(self, x, train: bool):
    x = Conv(self.base_channels, (7, 7), 2, padding=3, use_bias=False, kernel_init=conv_init, dtype=self.dtype)(x)
    x = _norm(train, self.dtype, 'relu')(x)
    x = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    for stage, size in enumerate(self.stage_sizes):
      for block in range(size):
        stride = 2 if stage > 0 and block == 0 else 1
        channels = self.base_channels * 2 ** stage
        if self.bottleneck:
          x = Bottleneck(channels, stride, self.groups, self.width_per_group, self.dtype)(x, train)
        else:
          x = BasicBlock(channels, stride, self.dtype)(x, train)
    return jnp.mean(x, axis=(1, 2))


def _build(name: str, options) -> ImageNetResNet:
  stage_sizes, bottleneck = LAYOUTS[name]
  grouped = {'groups': 32, 'width_per_group': 4} if name == 'resnext50' else {}
  return ImageNetResNet(stage_sizes, bottleneck=bottleneck, dtype=options.dtype, **grouped)


def _reference_class(name: str, config_model: dict, num_classes: int, image_size: int) -> str:
  del config_model, image_size
  return f"torchvision.models.{'resnext50_32x4d' if name == 'resnext50' else name}(num_classes={num_classes})"


FAMILY = Family('ImageNet ResNet', tuple(LAYOUTS), _build, last_modules=lambda name, params: last_stage_blocks(params),
                layout=lambda name, backbone: torch_layout.resnet_layout(backbone, *LAYOUTS[name]),
                reference_class=_reference_class,
                kind_cpu_runtimes=(('avx2', 'no-ynnpack'), ('intel-avx512', 'hugepages')))
