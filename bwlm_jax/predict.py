"""Classify image files with a trained model: top-k class names and probabilities."""

from __future__ import annotations

import os

import jax
import numpy as np

from bwlm_jax.data.folder_source import IMAGE_EXTENSIONS
from bwlm_jax.data.stream_pipeline import RESIZE_RATIO
from bwlm_jax.evaluate import posthoc
from bwlm_jax.models import DTYPES, LinearHead, build_backbone
from bwlm_jax.train.loop import load_finished
from bwlm_jax.train.state import Model
from bwlm_jax.train.steps import make_features_fn


def image_paths(inputs: list[str]) -> list[str]:
  """Files named directly, plus the image files inside named folders (sorted); missing paths are errors."""
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
      if not found:
        raise ValueError(f'folder {item!r} has no image files ({", ".join(IMAGE_EXTENSIONS)}).')
      paths += found
    elif os.path.isfile(item):
      paths.append(item)
    else:
      raise FileNotFoundError(f'{item!r} is neither an image file nor a folder.')
  return paths


def load_image(path: str, size: int, center_crop: bool) -> np.ndarray:
  """uint8 [size, size, 3], preprocessed as the model's evaluation split was; unreadable files are errors."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      image = image.convert('RGB')
  except (UnidentifiedImageError, OSError) as err:
    raise ValueError(f'cannot decode image {path!r}: {err}') from None
  if center_crop:
    scale = size * RESIZE_RATIO / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
  else:
    image = image.resize((size, size), Image.BILINEAR)
  return np.asarray(image, np.uint8)


def predict_files(workdir: str, stage: str, paths: list[str], top_k: int = 5, batch_size: int = 64):
  """[(path, [(class name, probability), ...])] for each file, best class first."""
  variables, meta = load_finished(workdir, stage)
  config = meta['config']
  names = meta['class_names']
  model = Model(build_backbone(config['model']['name'], config['model']['dtype']), LinearHead(len(names)))
  features_fn = make_features_fn(model, tuple(meta['mean']), tuple(meta['std']), DTYPES[config['model']['dtype']])
  images = np.stack([load_image(p, meta['image_size'], meta['center_crop']) for p in paths])
  backbone = {'backbone': variables['backbone'], 'batch_stats': variables['batch_stats']}
  logits = np.concatenate([posthoc.linear_logits(np.asarray(features_fn(backbone, images[i:i + batch_size])),
                                                 jax.device_get(variables['head']))
                           for i in range(0, len(images), batch_size)])
  probabilities = np.exp(logits - logits.max(-1, keepdims=True))
  probabilities /= probabilities.sum(-1, keepdims=True)
  best = posthoc.top_k(logits, top_k)
  return [(path, [(names[c], float(probabilities[i, c])) for c in best[i]]) for i, path in enumerate(paths)]
