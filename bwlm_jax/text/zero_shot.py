"""CLIP's zero-shot classifier (Radford et al. 2021) and the head it starts (LIFT's semantic initialisation, Shi et
al. 2024): each class's prompts through the text tower of the whole CLIP file, each embedding L2-normalised,
averaged over the templates and normalised again; an image's zero-shot logits are
logit_scale * <image embedding / |image embedding|, class embedding>.

A linear head on the image tower's features starts as that classifier (`text_head`): its class-c weights are the
class embedding times logit_scale / m, m the mean norm of the training images' embeddings (mapped back through
the image tower's `proj` where the head sits on the features before it). It predicts what zero-shot CLIP
predicts, image for image, and its logits are zero-shot CLIP's for an image of embedding norm m.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from bwlm_jax.models import clip_text
from bwlm_jax.models.head import COSINE_SCALE, head_params
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.text import classes
from bwlm_jax.text.tokenizer import ClipTokenizer
from bwlm_jax.weights import read_state_dict

TOKENIZER_FILES = ('bpe_simple_vocab_16e6.txt.gz', 'tokenizer.json')  # open_clip's, a hub checkpoint's
MISSING_SCALE = 100.0  # OpenAI CLIP's trained logit scale, for a file without logit_scale
TEXT_BATCH = 256


def text_file(model_cfg) -> str:
  """The whole CLIP file whose text tower is read: model.text_from, else model.init_from."""
  path = model_cfg.get('text_from') or model_cfg.get('init_from') or ''
  if not path or not os.path.isfile(path):
    raise UsageError(f'a text head or zero-shot classifier reads the text tower of a whole CLIP file: set '
                     f'model.text_from (or model.init_from) to one; got {path!r}.')
  return path


def tokenizer_file(model_cfg) -> str:
  """model.tokenizer, else the tokenizer file beside the CLIP file (open_clip's merges list, a hub tokenizer.json)."""
  if model_cfg.get('tokenizer'):
    return model_cfg['tokenizer']
  folder = os.path.dirname(os.path.abspath(text_file(model_cfg)))
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  raise UsageError(f'model.tokenizer is not set and {folder} holds no {" or ".join(TOKENIZER_FILES)}: give '
                   "model.tokenizer=PATH (open_clip's bpe_simple_vocab_16e6.txt.gz, or the tokenizer.json beside a "
                   'hub checkpoint).')


def check(model_cfg, names_file: str = '') -> None:
  """The cheap checks, before anything is read or written: a CLIP model, its file, the tokenizer, the prompts,
  the class-name file."""
  clip_text.text_spec(model_cfg['name'])
  ClipTokenizer.from_file(tokenizer_file(model_cfg))
  classes.templates(model_cfg.get('prompts') or classes.DEFAULT_TEMPLATE)
  if names_file:
    classes.read_name_map(names_file)


def class_embeddings(model_cfg, class_names, names_file: str = '') -> tuple[np.ndarray, float]:
  """([C, embed] unit class embeddings, logit scale) of the classes called `class_names` by the data source."""
  path = text_file(model_cfg)
  spec = clip_text.text_spec(model_cfg['name'])
  params, scale = clip_text.from_state_dict(read_state_dict(path), spec, path)
  tokenizer = ClipTokenizer.from_file(tokenizer_file(model_cfg))
  if tokenizer.vocab_size != spec.vocab:
    raise UsageError(f'tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens; the text tower of {path} '
                     f'reads {spec.vocab}: a tokenizer of another model.')
  texts = classes.prompts(classes.class_words(class_names, names_file),
                          classes.templates(model_cfg.get('prompts') or classes.DEFAULT_TEMPLATE))
  flat = tokenizer([t for per_class in texts for t in per_class], spec.context)
  tower = jax.jit(lambda p, tokens: clip_text.TextTransformer(spec).apply({'params': p}, tokens))
  embedded = np.concatenate([np.asarray(tower(params, jnp.asarray(flat[i:i + TEXT_BATCH])))
                             for i in range(0, len(flat), TEXT_BATCH)]).astype(np.float64)
  embedded /= np.linalg.norm(embedded, axis=1, keepdims=True)
  means = embedded.reshape(len(texts), -1, embedded.shape[-1]).mean(axis=1)
  return means / np.linalg.norm(means, axis=1, keepdims=True), (MISSING_SCALE if scale is None else scale)


def zero_shot_logits(image_embeddings, class_embeddings_, scale: float) -> np.ndarray:
  """logit_scale * cosine(image embedding, class embedding): [N, C]."""
  images = np.asarray(image_embeddings, np.float64)
  images = images / np.linalg.norm(images, axis=1, keepdims=True)
  return scale * images @ np.asarray(class_embeddings_, np.float64).T


def text_head(class_embeddings_, scale: float, features, projection=None, kind: str = 'linear',
              head_scale: float = COSINE_SCALE) -> dict:
  """The head of `kind` that starts as the zero-shot classifier on `features` [N, D] (the head's training images);
  `projection` [D, embed]: the image tower's proj, when the features are before it. A linear head's weights are
  the class embeddings times logit_scale / (the mean embedding norm); a cosine head's are the class embeddings
  (mapped through proj), with its own scale `head_scale` (LIFT's 25): the same predictions as zero-shot CLIP on
  projected features."""
  directions = np.asarray(class_embeddings_, np.float64).T
  embedded = np.asarray(features, np.float64)
  if projection is not None:
    embedded = embedded @ np.asarray(projection, np.float64)
    directions = np.asarray(projection, np.float64) @ directions
  if kind == 'cosine':
    return head_params('cosine', directions, np.zeros(directions.shape[1]), head_scale)
  mean_norm = float(np.linalg.norm(embedded, axis=1).mean())
  return head_params('linear', directions * (scale / max(mean_norm, 1e-12)), np.zeros(directions.shape[1]))
