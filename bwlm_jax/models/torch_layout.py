"""Backbone parameters in the layout of PyTorch state dicts, both ways: the ImageNet ResNets as torchvision
(and timm) name them, EfficientNet-Lite as its PyTorch port does.

torchvision names a ResNet's tensors `conv1`, `bn1`, `layer{1-4}.{block}.conv{1,2,3}`, `.bn{1,2,3}`,
`.downsample.{0,1}` and `fc`; timm's ResNets use the same names. EfficientNet-Lite's Flax modules carry
its port's names (`_blocks_3._bn1` is `_blocks.3._bn1`), so its layers are read off the parameters.
Conv kernels are [out, in/groups, kh, kw] there and [kh, kw, in/groups, out] here; BatchNorm's weight,
bias, running_mean and running_var are scale, bias, mean and var here. The classifier (`fc`, `_fc`) is
left out when weights come in (the dataset has its own classes: big_vision's `dont_load`) and written
from the trained head when a model goes out.
"""

from __future__ import annotations

import re

import numpy as np

from bwlm_jax.errors import UsageError

_BN_FIELDS = (('weight', 'params', 'scale'), ('bias', 'params', 'bias'), ('running_mean', 'batch_stats', 'mean'),
              ('running_var', 'batch_stats', 'var'))


def _block_pairs(stage_sizes, bottleneck: bool):
  """(torch prefix, flax block name) of every residual block, in order."""
  kind = 'Bottleneck' if bottleneck else 'BasicBlock'
  index = 0
  for stage, size in enumerate(stage_sizes):
    for block in range(size):
      yield f'layer{stage + 1}.{block}', f'{kind}_{index}'
      index += 1


def _layers(stage_sizes, bottleneck: bool, has_downsample) -> list[tuple[str, tuple, str]]:
  """(torch module name, flax module path, 'conv' | 'bn') of every layer of the backbone."""
  layers = [('conv1', ('Conv_0',), 'conv'), ('bn1', ('BatchNorm_0',), 'bn')]
  convs = 3 if bottleneck else 2
  for torch_prefix, flax_block in _block_pairs(stage_sizes, bottleneck):
    for k in range(convs):
      layers.append((f'{torch_prefix}.conv{k + 1}', (flax_block, f'Conv_{k}'), 'conv'))
      layers.append((f'{torch_prefix}.bn{k + 1}', (flax_block, f'BatchNorm_{k}'), 'bn'))
    if has_downsample(flax_block):
      layers.append((f'{torch_prefix}.downsample.0', (flax_block, f'Conv_{convs}'), 'conv'))
      layers.append((f'{torch_prefix}.downsample.1', (flax_block, f'BatchNorm_{convs}'), 'bn'))
  return layers


def _get(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def _set(tree: dict, path, value) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def resnet_layers(backbone, stage_sizes, bottleneck):
  """The layers of an ImageNet ResNet (`backbone`: its variables or their shapes), torchvision's names."""
  convs = 3 if bottleneck else 2
  return _layers(stage_sizes, bottleneck, lambda block: f'Conv_{convs}' in backbone['params'][block])


def named_layers(backbone) -> list[tuple[str, tuple, str]]:
  """The layers of a backbone whose modules carry the PyTorch names (a list's `name_N` is `name.N`)."""
  layers = []

  def walk(tree, path):
    kind = 'conv' if 'kernel' in tree else 'bn' if 'scale' in tree else None
    if kind is None:
      for name, sub in tree.items():
        walk(sub, path + (name,))
    else:
      layers.append(('.'.join(re.sub(r'^(_blocks)_(\d+)$', r'\1.\2', p) for p in path), path, kind))

  walk(backbone['params'], ())
  return layers


def to_torch(backbone: dict, head: dict | None, layers, head_name: str = 'fc') -> dict[str, np.ndarray]:
  """A PyTorch state dict (NumPy arrays) of `backbone` ({'params', 'batch_stats'}, its `layers`) and, if
  given, the linear `head` as `head_name`; BatchNorm's num_batches_tracked is 0, as in a freshly built model."""
  state = {}
  for torch_name, path, kind in layers:
    if kind == 'conv':
      state[f'{torch_name}.weight'] = np.transpose(np.asarray(_get(backbone['params'], path)['kernel']), (3, 2, 0, 1))
      continue
    for torch_field, collection, flax_field in _BN_FIELDS:
      state[f'{torch_name}.{torch_field}'] = np.asarray(_get(backbone[collection], path)[flax_field])
    state[f'{torch_name}.num_batches_tracked'] = np.zeros((), np.int64)
  if head is not None:
    state[f'{head_name}.weight'] = np.asarray(head['dense']['kernel']).T
    state[f'{head_name}.bias'] = np.asarray(head['dense']['bias'])
  return {name: np.array(value, order='C') for name, value in state.items()}  # 0-d stays 0-d


def from_torch(state: dict, template: dict, layers, source: str, head_name: str = 'fc') -> dict:
  """{'params', 'batch_stats'} of the backbone from a PyTorch state dict, shaped like `template` (the
  backbone's own initial variables, whose `layers` these are). Every tensor must map: a key that maps
  nowhere, a missing key or a shape mismatch is one error listing them all, naming `source`.
  `head_name.*` (the old classifier) and `num_batches_tracked` are dropped."""
  state = {name[len('module.'):] if name.startswith('module.') else name: value for name, value in state.items()}
  out = {'params': {}, 'batch_stats': {}}
  used, missing, mismatched = set(), [], []
  for torch_name, path, kind in layers:
    if kind == 'conv':
      fields = [('weight', 'params', 'kernel', lambda w: np.transpose(w, (2, 3, 1, 0)))]
    else:
      fields = [(t, c, f, lambda w: w) for t, c, f in _BN_FIELDS]
    for torch_field, collection, flax_field, convert in fields:
      key = f'{torch_name}.{torch_field}'
      expected = np.shape(_get(template[collection], path)[flax_field])
      if key not in state:
        missing.append(key)
        continue
      used.add(key)
      value = convert(np.asarray(state[key], np.float32))
      if value.shape != expected:
        mismatched.append(f'{key} {tuple(np.shape(state[key]))} (expected {_torch_shape(expected, kind)})')
        continue
      _set(out[collection], path + (flax_field,), value)
  if not used:
    expected = ', '.join(f'{name}.weight' for name, _, _ in layers[:3])
    found = ', '.join(sorted(state)[:3]) or 'no tensors'
    raise UsageError(f'{source} holds none of this backbone\'s tensors (expected names like {expected}; found '
                     f'{found}): weights of another network or layout. Check model.name against the network the '
                     'weights are for.')
  unknown = sorted(k for k in state if k not in used and not k.startswith(f'{head_name}.')
                   and not k.endswith('num_batches_tracked'))
  problems = [f'{label}: {", ".join(items[:8])}' + (f' and {len(items) - 8} more' if len(items) > 8 else '')
              for label, items in (('missing', missing), ('shape mismatch', mismatched), ('unknown', unknown))
              if items]
  if problems:
    raise UsageError(f'{source} does not fit this backbone ({"; ".join(problems)}). Check model.name against '
                     'the network the weights are for.')
  return out


def _torch_shape(flax_shape, kind: str):
  return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1]) if kind == 'conv' else tuple(flax_shape)
