"""Development check, not part of the suite: CLIP's tokenizer, text tower and zero-shot classifier here against
open_clip at full size (ViT-B-16 with GELU, ViT-B-32-quickgelu), random weights, CLIP's own vocabulary. Needs two
interpreters: one with torch and open_clip, one with bwlm_jax; they exchange files in DIR.

  TORCH_PY tests/data/compare_clip_text.py torch DIR    # open_clip: whole-CLIP weights, tokens, text embeddings,
                                                         # zero-shot classifier of 1000 ImageNet class names
  python   tests/data/compare_clip_text.py jax DIR      # the same here (DIR/bpe_simple_vocab_16e6.txt.gz, copied
                                                         # from open_clip's package by the torch side)

The texts: 'a photo of a {}.' for the 1000 ImageNet classes (first lemma of timm's imagenet_synset_to_lemma.txt),
then accents, HTML entities, CJK, an emoji, a text longer than the context and an empty one. Every weight of the
random model is moved by noise so that each one matters.
"""

import json
import os
import shutil
import sys

import numpy as np

MODELS = {'clip_vit_b16': 'ViT-B-16', 'clip_vit_b32_quickgelu': 'ViT-B-32-quickgelu'}
TEMPLATES = ('a photo of a {}.', 'a bad photo of the {}.', 'an origami {}.')
EXTRA = ["It's 42 Café &amp; naïve   don't", 'ÆØÅ ñ 東京 🙂 x' * 3, 'word ' * 100, '']


def torch_side(folder: str) -> None:
  import open_clip
  import timm
  import torch
  from open_clip.zero_shot_classifier import build_zero_shot_classifier
  from safetensors.torch import save_file
  lemmas = os.path.join(os.path.dirname(timm.__file__), 'data', '_info', 'imagenet_synset_to_lemma.txt')
  with open(lemmas) as file:
    names = [line.split('\t')[1].split(',')[0].strip() for line in file][:1000]
  texts = [f'a photo of a {name}.' for name in names] + EXTRA
  shutil.copy(open_clip.tokenizer.default_bpe(), folder)
  tokens = open_clip.tokenize(texts)
  for ours, name in MODELS.items():
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    with torch.no_grad():
      for parameter in model.parameters():
        parameter.add_(0.02 * torch.randn_like(parameter))
      embeddings = model.encode_text(tokens[:64])
      classifier = build_zero_shot_classifier(model, open_clip.get_tokenizer(name), names[:100], TEMPLATES,
                                              num_classes_per_batch=20)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, f'{ours}.safetensors'))
    np.savez(os.path.join(folder, f'{ours}.npz'), embeddings=embeddings.numpy(), classifier=classifier.numpy())
  np.save(os.path.join(folder, 'tokens.npy'), tokens.numpy())
  json.dump({'texts': texts, 'names': names[:100]}, open(os.path.join(folder, 'texts.json'), 'w'))
  print(f'{folder}: {len(texts)} texts, {", ".join(MODELS.values())} (open_clip {open_clip.__version__})')


def jax_side(folder: str) -> None:
  import jax
  from bwlm_jax.models import clip_text
  from bwlm_jax.text import zero_shot
  from bwlm_jax.text.tokenizer import ClipTokenizer
  from bwlm_jax.weights import read_state_dict
  info = json.load(open(os.path.join(folder, 'texts.json')))
  merges = os.path.join(folder, 'bpe_simple_vocab_16e6.txt.gz')
  tokens = ClipTokenizer.from_file(merges)(info['texts'])
  expected_tokens = np.load(os.path.join(folder, 'tokens.npy'))
  print(f'tokens: {int((tokens == expected_tokens).all(1).sum())} of {len(tokens)} rows equal to open_clip.tokenize')
  with open(os.path.join(folder, 'templates.txt'), 'w') as file:
    file.write('\n'.join(TEMPLATES) + '\n')
  for ours in MODELS:
    path = os.path.join(folder, f'{ours}.safetensors')
    expected = np.load(os.path.join(folder, f'{ours}.npz'))
    spec = clip_text.TEXT_SPECS[ours]
    params, _ = clip_text.from_state_dict(read_state_dict(path), spec, path)
    embeddings = np.asarray(jax.jit(lambda p, t: clip_text.TextTransformer(spec).apply({'params': p}, t))(
        params, expected_tokens[:64]))
    worst = np.abs(embeddings - expected['embeddings']).max()
    model_cfg = {'name': ours, 'text_from': path, 'tokenizer': merges, 'prompts': os.path.join(folder, 'templates.txt')}
    classifier, _ = zero_shot.class_embeddings(model_cfg, info['names'])
    print(f'{ours}: encode_text max |difference| {worst:.2e} (embeddings up to '
          f'{np.abs(expected["embeddings"]).max():.2f}); zero-shot classifier of {len(info["names"])} classes x '
          f'{len(TEMPLATES)} templates max |difference| {np.abs(classifier - expected["classifier"].T).max():.2e}')


if __name__ == '__main__':
  side, directory = sys.argv[1], sys.argv[2]
  os.makedirs(directory, exist_ok=True)
  torch_side(directory) if side == 'torch' else jax_side(directory)
