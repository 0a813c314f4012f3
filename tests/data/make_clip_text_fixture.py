"""Makes tests/data/clip_text/: a small CLIP (open_clip's own classes: a 2-block text tower of width 32 over a
vocabulary of our own merges, a 1-block image tower) and what open_clip's tokenizer and `encode_text` give for a
list of texts, so that tests/test_text.py compares the tokenizer and the text tower with open_clip without torch.

  python tests/data/make_clip_text_fixture.py      # needs torch and open_clip_torch (a development venv)

The merges are learned here by plain BPE from the texts' words (not CLIP's vocabulary), written with CLIP's header
line; weights are open_clip's initialisation under a fixed seed, every tensor then moved by noise so that each one
matters to the output.
"""

import collections
import gzip
import json
import os

import numpy as np
import open_clip
import safetensors.torch
import torch
from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'clip_text')
WORDS = ('goldfish great white shark tiger shark hammerhead electric ray stingray cock hen ostrich brambling '
         'goldfinch house finch junco indigo bunting robin bulbul jay magpie chickadee water ouzel kite bald eagle '
         'vulture great grey owl fire salamander common newt eft spotted salamander axolotl bullfrog tree frog '
         'tailed frog loggerhead leatherback turtle mud turtle terrapin box turtle banded gecko').split()
TEXTS = ([f'a photo of a {w}.' for w in WORDS] + [f'a blurry photo of the {w}s' for w in WORDS[:8]]
         + ["It's 42 Café &amp; naïve   don't", 'ÆØÅ ñ 東京 🙂 x', 'shark ' * 90, '', 'THE   Eagle\tOwl'])
MERGES = 400
CLASSES = ('goldfish', 'great_white_shark', 'tiger shark', 'robin', 'bald eagle', 'tree frog')  # folder-like names
TEMPLATES = ('a photo of a {}.', 'a blurry photo of the {}.')


def learn_merges(words, count):
  """Plain BPE over the words' byte characters, '</w>' on each word's last symbol."""
  byte = bytes_to_unicode()
  corpus = collections.Counter(tuple(''.join(byte[b] for b in w.encode())) for w in words)
  corpus = collections.Counter({word[:-1] + (word[-1] + '</w>',): n for word, n in corpus.items()})
  merges = []
  while len(merges) < count:
    pairs = collections.Counter()
    for word, n in corpus.items():
      for pair in zip(word, word[1:]):
        pairs[pair] += n
    if not pairs:
      break
    best = max(sorted(pairs), key=pairs.get)
    merges.append(best)
    merged = collections.Counter()
    for word, n in corpus.items():
      out, i = [], 0
      while i < len(word):
        if word[i:i + 2] == best:
          out.append(word[i] + word[i + 1])
          i += 2
        else:
          out.append(word[i])
          i += 1
      merged[tuple(out)] += n
    corpus = merged
  return merges


def main():
  os.makedirs(OUT, exist_ok=True)
  words = [w.lower() for text in TEXTS for w in text.replace('.', ' ').split()] * 3 + WORDS
  merges = learn_merges(words, MERGES)
  merges_path = os.path.join(OUT, 'merges.txt.gz')
  with gzip.GzipFile(merges_path, 'wb', mtime=0) as file:
    # No final newline: open_clip would read the empty last line of a short file as a merge of its own.
    file.write(('#version: 0.2\n' + '\n'.join(' '.join(pair) for pair in merges)).encode())
  tokenizer = SimpleTokenizer(bpe_path=merges_path)
  torch.manual_seed(0)
  model = open_clip.model.CLIP(
      embed_dim=16, vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8,
                                                             image_size=16),
      text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=tokenizer.vocab_size, width=32, heads=2,
                                           layers=2)).eval()
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.add_(0.05 * torch.randn_like(parameter))
  tokens = tokenizer(TEXTS)
  with torch.no_grad():
    embeddings = model.encode_text(tokens)
  # open_clip's zero-shot classifier of CLASSES (underscores read as spaces, as text/classes.py reads them) over
  # TEMPLATES, and the zero-shot logits of a few image embeddings.
  from open_clip.zero_shot_classifier import build_zero_shot_classifier
  words = [name.replace('_', ' ') for name in CLASSES]
  classifier = build_zero_shot_classifier(model, tokenizer, words, TEMPLATES, num_classes_per_batch=None)
  images = torch.randn(5, 16)
  zero_shot_logits = model.logit_scale.exp() * torch.nn.functional.normalize(images, dim=-1) @ classifier
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  safetensors.torch.save_file(state, os.path.join(OUT, 'clip.safetensors'))
  np.savez(os.path.join(OUT, 'expected.npz'), tokens=tokens.numpy().astype(np.int32), embeddings=embeddings.numpy(),
           zero_shot_classifier=classifier.numpy(), images=images.numpy(),
           zero_shot_logits=zero_shot_logits.detach().numpy())
  with open(os.path.join(OUT, 'texts.json'), 'w') as file:
    json.dump({'texts': TEXTS, 'classes': CLASSES, 'templates': TEMPLATES, 'vocab_size': tokenizer.vocab_size, 'width': 32, 'depth': 2, 'heads': 2, 'embed': 16,
               'open_clip': open_clip.__version__, 'torch': torch.__version__}, file, ensure_ascii=False, indent=1)
  print(f'{OUT}: {len(merges)} merges, vocabulary {tokenizer.vocab_size}, {len(TEXTS)} texts')


if __name__ == '__main__':
  main()
