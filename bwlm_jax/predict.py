"""Classify image files with a trained model: top-k class names and probabilities."""

from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np

from bwlm_jax.checkpoints import load_finished
from bwlm_jax.runtime.files import read_json
from bwlm_jax.stages import NAMES as STAGES
from bwlm_jax.data import images
from bwlm_jax.data.folder_source import IMAGE_EXTENSIONS
from bwlm_jax.data.eval_transform import EvalTransform, from_record, image_view
from bwlm_jax.evaluation import posthoc
from bwlm_jax.evaluation.results import head_at
from bwlm_jax.models import DTYPES, build_model, head_logits, make_features_fn
from bwlm_jax.runtime.errors import MissingFileError, UsageError


def image_paths(inputs: list[str]) -> list[str]:
  """Files named directly, plus the image files inside named folders (sorted); missing paths are errors."""
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
      if not found:
        raise UsageError(f'folder {item!r} has no image files ({", ".join(IMAGE_EXTENSIONS)}).')
      paths += found
    elif os.path.isfile(item):
      paths.append(item)
    else:
      raise MissingFileError(f'{item!r} is neither an image file nor a folder.')
  return paths


def load_image(path: str, size: int, center_crop: bool, transform: Optional[EvalTransform] = None) -> np.ndarray:
  """uint8 [size, size, 3], preprocessed as the model's evaluation split was (`transform`, data.eval_transform;
  else the pipeline's own: `center_crop` for a streamed one); an unreadable file is an error."""
  return image_view(images.open_rgb(path), size, transform, streamed=center_crop)


def best_model(workdir: str, study: str = '') -> dict:
  """The model a study named best on validation: the newest best*.json of WORKDIR/<study>/ (an ablation, a
  tuning table, a recipe search); without `study`, of the one study folder the workdir holds."""
  folders = [study] if study else sorted(f for f in (os.listdir(workdir) if os.path.isdir(workdir) else [])
                                         if _choices(os.path.join(workdir, f)))
  found = _choices(os.path.join(workdir, folders[0])) if len(folders) == 1 else []
  if len(folders) > 1:
    raise UsageError(f'{workdir} holds several studies\' choices ({", ".join(folders)}): say which with '
                     f'--stage=best:{folders[0]}.')
  if not found:
    where = f'{study}/best.json' if study else 'study with a best.json'
    raise MissingFileError(f'{workdir} has no {where}: run a study on it first (launch/ablation.py, tune.py or '
                           'recipe.py name the best model on the validation split).')
  return read_json(max(found, key=os.path.getmtime), 'the model a study chose on validation',
                   'Rerun the study on the workdir (its finished runs are reused) to write it anew.')


def _choices(folder: str) -> list[str]:
  return [os.path.join(folder, f) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
          if f.startswith('best') and f.endswith('.json')]


def check_stage(stage: str, allow_best: bool = True) -> None:
  allowed = STAGES + (('best', 'best:STUDY') if allow_best else ())
  if stage not in allowed and not (allow_best and stage.startswith('best:') and stage[len('best:'):]):
    raise UsageError(f'--stage={stage}: expected one of {", ".join(allowed)}.')


def predict_files(workdir: str, stage: str, paths: list[str], top_k: int = 5, batch_size: int = 64):
  """([(path, [(class name, probability), ...])] for each readable file, best class first;
  [(path, why)] for each file that could not be read as an image): one bad file costs only itself.

  `stage` 'best' (or 'best:STUDY') uses the model a study chose on validation in `workdir` (a head of a
  K-head run, a candidate's run, or the naive model with a post-hoc correction included).
  """
  check_stage(stage)
  head_index, posthoc_spec, train_counts, checkpoint = None, None, None, None
  if stage.startswith('best'):
    best = best_model(workdir, stage.partition(':')[2])
    source = best['source']
    workdir, stage = source['workdir'], source['stage']
    head_index, posthoc_spec, train_counts = source.get('head'), source.get('posthoc'), best['train_counts']
    checkpoint = source.get('checkpoint')  # a grid of heads (older ablations saved theirs as stage2)
  variables, meta = load_finished(workdir, stage, checkpoint)
  if head_index is not None:  # one head of the stacked K heads
    variables['head'] = head_at(variables['head'], head_index)
  config = meta['config']
  names = meta['class_names']
  if top_k > len(names):
    raise UsageError(f'--top_k={top_k} is more than the {len(names)} classes of the {stage} model.')
  model = build_model(config['model'], len(names))
  features_fn = make_features_fn(model, tuple(meta['mean']), tuple(meta['std']), DTYPES[config['model']['dtype']],
                                 config['data'].get('test_views', 'none'))  # the views the model was evaluated with
  transform = from_record(meta.get('eval_transform'))
  loaded, unreadable = [], []
  for path in paths:
    try:
      loaded.append((path, load_image(path, meta['image_size'], meta['center_crop'], transform)))
    except UsageError as err:
      unreadable.append((path, str(err)))
  if not loaded:
    return [], unreadable
  paths, pixels = [path for path, _ in loaded], np.stack([array for _, array in loaded])
  head = jax.device_get(variables['head'])
  features = np.concatenate([np.asarray(features_fn(variables, pixels[i:i + batch_size]))
                             for i in range(0, len(pixels), batch_size)])
  logits = (head_logits(head, features) if posthoc_spec is None else
            posthoc.posthoc_logits(features, head, posthoc_spec['method'], posthoc_spec['tau'], train_counts))
  probabilities = np.exp(logits - logits.max(-1, keepdims=True))
  probabilities /= probabilities.sum(-1, keepdims=True)
  best = posthoc.top_k(logits, top_k)
  return [(path, [(names[c], float(probabilities[i, c])) for c in best[i]]) for i, path in enumerate(paths)], unreadable
