"""Backbone parameters in the layout of PyTorch state dicts, both ways: the ImageNet ResNets as torchvision
(and timm) name them; EfficientNet-Lite as its PyTorch port does; ViT, DeiT and DINOv2 as timm does; CLIP's
image tower as OpenAI CLIP and open_clip do (`visual.*`).

torchvision names a ResNet's tensors `conv1`, `bn1`, `layer{1-4}.{block}.conv{1,2,3}`, `.bn{1,2,3}`,
`.downsample.{0,1}` and `fc`; timm's ResNets use the same names. The other networks' Flax modules carry
their source's names (`_blocks_3._bn1` is `_blocks.3._bn1`), so their layers are read off the parameters.
Conv kernels are [out, in/groups, kh, kw] there and [kh, kw, in/groups, out] here, linear weights [out, in]
there and [in, out] here; BatchNorm's weight, bias, running_mean and running_var and LayerNorm's weight
and bias are scale, bias, mean and var here. The classifier (`fc`, `_fc`, `head`) is left out when weights
come in (the dataset has its own classes: big_vision's `dont_load`) and written from the trained head when
a model goes out.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np

from bwlm_jax.runtime.errors import UsageError

# Parameters holding a position embedding: resampled when the weights' grid is not the model's.
POSITION_EMBEDDINGS = ('pos_embed', 'positional_embedding')


def is_added(module_name: str) -> bool:
  """Whether a module is one light fine-tuning adds (LoRA, adapter): in no source's layout."""
  return module_name.endswith('_lora') or module_name == 'adapter'


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one backbone's variables are named in its PyTorch state dict."""
  layers: list  # (torch module name, flax module path, kind) of every layer
  head: str = 'fc'  # the classifier's module name
  prefix: str = ''  # what the backbone's keys start with in a whole model's state dict (CLIP: 'visual.')
  prefix_tokens: int = 0  # rows of the position embedding before its grid (a class token's)
  other_part: tuple = ()  # (key, what): a file with this key and none under `prefix` is another part


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


def resnet_layout(backbone, stage_sizes, bottleneck) -> Layout:
  """The layout of an ImageNet ResNet (`backbone`: its variables or their shapes), torchvision's names."""
  convs = 3 if bottleneck else 2
  return Layout(_layers(stage_sizes, bottleneck, lambda block: f'Conv_{convs}' in backbone['params'][block]))


def named_layers(backbone, rules=((r'^(_blocks)_(\d+)$', r'\1.\2'),), skip=lambda name: False
                 ) -> list[tuple[str, tuple, str]]:
  """The layers of a backbone whose modules carry the PyTorch names; `rules` ((pattern, replacement) on
  each module name) turn a Flax list's `name_N` into `name.N`. A module with a kernel is a conv (4-d) or a
  linear layer, one with a scale a BatchNorm (it has statistics) or a LayerNorm; any other array is a
  parameter of its own ('param'; 'pos' for a position embedding, which is resampled on the way in).
  Modules for which `skip(name)` holds are in no state dict (light fine-tuning's additions)."""
  layers = []

  def torch_name(path):
    names = []
    for name in path:
      for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
      names.append(name)
    return '.'.join(names)

  def walk(tree, path):
    if 'kernel' in tree:
      layers.append((torch_name(path), path, 'conv' if np.ndim(tree['kernel']) == 4 else 'linear'))
    elif 'scale' in tree:
      stats = backbone.get('batch_stats', {})
      for name in path:
        stats = stats.get(name, {}) if isinstance(stats, dict) else {}
      layers.append((torch_name(path), path, 'bn' if stats else 'ln'))
    else:
      for name, sub in tree.items():
        if isinstance(sub, dict):
          if not skip(name):
            walk(sub, path + (name,))
        else:
          kind = 'pos' if name in POSITION_EMBEDDINGS else 'param'
          layers.append((torch_name(path + (name,)), path + (name,), kind))

  walk(backbone['params'], ())
  return layers


def vit_layout(backbone, spec) -> Layout:
  """The layout of a ViT (`models/vit.py`; `spec` its Spec): timm's names, or open_clip's under `visual.`
  beside a linear `head` of its own. timm's position embedding covers the class token unless the network
  has registers (its no_embed_class); CLIP's always does."""
  if spec.family == 'clip':
    rules = ((r'^resblocks_(\d+)$', r'transformer.resblocks.\1'),)
    return Layout(named_layers(backbone, rules, is_added), head='head', prefix='visual.', prefix_tokens=1,
                  other_part=('token_embedding.weight', "CLIP's text tower"))
  return Layout(named_layers(backbone, ((r'^blocks_(\d+)$', r'blocks.\1'),), is_added), head='head',
                prefix_tokens=0 if spec.registers else 1)


def _fields(name: str, path, kind: str, template: dict):
  """(torch key, collection, flax path, to flax, to torch) of each tensor of one layer."""
  if kind in ('param', 'pos'):
    return [(name, 'params', path, _same, _same)]
  if kind == 'bn':
    return [(f'{name}.{t}', c, path + (f,), _same, _same) for t, c, f in _BN_FIELDS]
  if kind == 'ln':
    return [(f'{name}.weight', 'params', path + ('scale',), _same, _same),
            (f'{name}.bias', 'params', path + ('bias',), _same, _same)]
  # torch.nn.MultiheadAttention holds its input projection as in_proj_weight / in_proj_bias, no submodule.
  sep = '_' if name.endswith('.in_proj') else '.'
  fields = [(f'{name}{sep}weight', 'params', path + ('kernel',)) + (
      (_conv_in, _conv_out) if kind == 'conv' else (np.transpose, np.transpose))]
  if 'bias' in _get(template['params'], path):
    fields.append((f'{name}{sep}bias', 'params', path + ('bias',), _same, _same))
  return fields


def _same(value):
  return value


def _conv_in(value):
  return np.transpose(value, (2, 3, 1, 0))


def _conv_out(value):
  return np.transpose(value, (3, 2, 0, 1))


def to_torch(backbone: dict, head: dict | None, layout: Layout) -> dict[str, np.ndarray]:
  """A PyTorch state dict (NumPy arrays) of `backbone` ({'params', 'batch_stats'}) in `layout` and, if
  given, the linear `head` as `layout.head`; BatchNorm's num_batches_tracked is 0, as in a freshly built model."""
  state = {}
  for name, path, kind in layout.layers:
    for key, collection, leaf, _, out in _fields(name, path, kind, backbone):
      state[layout.prefix + key] = out(np.asarray(_get(backbone[collection], leaf)))
    if kind == 'bn':
      state[f'{layout.prefix}{name}.num_batches_tracked'] = np.zeros((), np.int64)
  if head is not None:
    state[f'{layout.head}.weight'] = np.asarray(head['dense']['kernel']).T
    state[f'{layout.head}.bias'] = np.asarray(head['dense']['bias'])
  return {name: np.array(value, order='C') for name, value in state.items()}  # 0-d stays 0-d


def _backbone_keys(state: dict, layout: Layout) -> dict:
  """The state dict's backbone tensors, without `layout.prefix` (or DataParallel's `module.`)."""
  state = {name[len('module.'):] if name.startswith('module.') else name: value for name, value in state.items()}
  if layout.prefix and any(name.startswith(layout.prefix) for name in state):
    # A whole model (CLIP's text tower beside its image tower): the tower is read, the rest left.
    return {name[len(layout.prefix):]: value for name, value in state.items() if name.startswith(layout.prefix)}
  return state


def from_torch(state: dict, template: dict, layout: Layout, source: str) -> dict:
  """{'params', 'batch_stats'} of the backbone from a PyTorch state dict, shaped like `template` (the
  backbone's own initial variables, whose layout `layout` is). Every tensor must map: a key that maps
  nowhere, a missing key or a shape mismatch is one error listing them all, naming `source`. The old
  classifier (`layout.head`), `num_batches_tracked` and the other towers of a whole model are dropped; a
  position embedding of another grid is resampled (`resample_position_embedding`)."""
  if layout.other_part and layout.other_part[0] in state and not any(k.startswith(layout.prefix) for k in state):
    raise UsageError(f'{source} is {layout.other_part[1]} ({layout.other_part[0]}), not an image tower: give the '
                     f'whole CLIP model or its {layout.prefix}* tensors.')
  state = _backbone_keys(state, layout)
  out = {'params': {}, 'batch_stats': {}}
  used, missing, mismatched = set(), [], []
  for name, path, kind in layout.layers:
    for key, collection, leaf, convert, out_of in _fields(name, path, kind, template):
      expected = tuple(np.shape(_get(template[collection], leaf)))
      if key not in state:
        missing.append(key)
        continue
      used.add(key)
      value = convert(np.asarray(state[key], np.float32))
      if kind == 'pos' and value.shape != expected and value.ndim == len(expected):
        value = resample_position_embedding(value, expected, layout.prefix_tokens)
      if value.shape != expected:
        torch_shape = out_of(np.broadcast_to(np.float32(0), expected)).shape  # a view: nothing allocated
        mismatched.append(f'{key} {tuple(np.shape(state[key]))} (expected {torch_shape})')
        continue
      _set(out[collection], leaf, value)
  if not used:
    expected = ', '.join(_fields(*layer, template)[0][0] for layer in layout.layers[:3])
    found = ', '.join(sorted(state)[:3]) or 'no tensors'
    raise UsageError(f'{source} holds none of this backbone\'s tensors (expected names like {expected}; found '
                     f'{found}): weights of another network or layout. Check model.name against the network the '
                     'weights are for.')
  unknown = sorted(k for k in state if k not in used and not k.startswith(f'{layout.head}.')
                   and not k.endswith('num_batches_tracked'))
  problems = [f'{label}: {", ".join(items[:8])}' + (f' and {len(items) - 8} more' if len(items) > 8 else '')
              for label, items in (('missing', missing), ('shape mismatch', mismatched), ('unknown', unknown))
              if items]
  if problems:
    raise UsageError(f'{source} does not fit this backbone ({"; ".join(problems)}). Check model.name against '
                     'the network the weights are for.')
  return out


def resample_position_embedding(value: np.ndarray, shape: tuple, prefix_tokens: int) -> np.ndarray:
  """A position embedding ([1,] tokens, width) of one square grid resampled to `shape`'s grid, its first
  `prefix_tokens` rows (the class token's) kept: bicubic with antialiasing, as timm's
  `resample_abs_pos_embed` and open_clip's `resize_pos_embed` do (jax.image.resize equals torch's
  interpolate(mode='bicubic', antialias=True) to 4e-7)."""
  rows, width = value.shape[-2:]
  old, new = math.isqrt(rows - prefix_tokens), math.isqrt(shape[-2] - prefix_tokens)
  if old * old != rows - prefix_tokens or new * new != shape[-2] - prefix_tokens or width != shape[-1]:
    return value  # not a square grid of this width: reported as a shape mismatch
  flat = value.reshape(rows, width)
  grid = flat[prefix_tokens:].reshape(old, old, width)
  grid = np.asarray(jax.image.resize(grid, (new, new, width), 'bicubic', antialias=True), np.float32)
  return np.concatenate([flat[:prefix_tokens], grid.reshape(new * new, width)]).reshape(shape)
