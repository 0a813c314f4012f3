"""LIFT (Shi et al., ICML 2024, "Long-Tail Learning with Foundation Model: Heavy Fine-Tuning Hurts") as bwlm-jax
runs it: CLIP's image tower with an AdaptFormer bottleneck beside every block's MLP, its head started from the
classes' text embeddings (zero-shot CLIP) as a cosine classifier, trained with the logit-adjusted loss, evaluated
with five crops.

  python launch/train.py --config=configs/lift.py:SOURCE,CLIP_FILE[,MODEL] --workdir=DIR
  python launch/tune.py  --config=configs/lift.py:SOURCE,CLIP_FILE --workdir=DIR --tuning.zero_shot=True \
      --tuning.modes=adapter --tuning.losses=balanced_softmax --tuning.head_inits=text,stage2_head \
      --tuning.learning_rate=0.01 --tuning.epochs=10
      # rows: BWLM's frozen heads, the CE probe, cRT, zero-shot CLIP, LIFT (text start), LP-FT; chosen on val

SOURCE: an image folder ROOT (ROOT/train/<class>/, ROOT/test/<class>/, optional ROOT/val/<class>/), or
imagenet_lt, places_lt=ROOT (the Places-LT lists and images under ROOT, configs/places_lt.py), inaturalist2018,
cifar100 (CIFAR-100-LT, IF 100). CLIP_FILE: a whole CLIP checkpoint (image and text towers; its tokenizer
beside it or model.tokenizer). MODEL: clip_vit_b16 (default; `_quickgelu` for OpenAI's weights) or another
CLIP model.name. Class words: the source's label names; ImageNet-LT's and WordNet-id folders need
data.class_names_file (e.g. timm's imagenet_synset_to_lemma.txt).

LIFT's recipe, each value from the paper and its code: AdaptFormer in every block, bottleneck width
2^floor(log2(C / 24)) (32 for ImageNet-LT, 8 for Places-LT, 256 for iNaturalist 2018, 4 for CIFAR-100), the rest
of CLIP frozen; SGD, momentum 0.9, learning rate 0.01, weight decay 5e-4, batch 128, cosine schedule, 10 epochs (20
for iNaturalist 2018); the logit-adjusted loss with tau 1 (balanced softmax here: the same loss); random-resized
crop and flip (the streamed pipeline's augmentation); the cosine classifier with scale 25 started from the text
embeddings of 'a photo of a {}.'; five crops at evaluation (the image resized to 248/224 of its side).
Where bwlm-jax differs: validation (not the test split) is what any choice is made on; Many / Medium / Few
are > 100 / 20-100 / < 20 training images, as LIFT's.
"""

import math
import os

from bwlm_jax.config import base_config, streamed_224

# SOURCE -> (data.name, number of classes)
SOURCES = {'imagenet_lt': ('imagenet_lt', 1000), 'inaturalist2018': ('i_naturalist2018', 8142),
           'cifar100': ('cifar100', 100), 'places_lt': ('lists', 365)}


def adapter_width(num_classes: int) -> int:
  """LIFT's AdaptFormer bottleneck: 2^floor(log2(C / 24)), at least 1."""
  return 2 ** max(0, math.floor(math.log2(num_classes / 24)))


def get_config(arg: str = ''):
  source, clip_file, model = (arg.split(',') + ['', '', ''])[:3]
  config = streamed_224(base_config(), model or 'clip_vit_b16')
  name, _, root = source.partition('=')
  if name in SOURCES:
    config.data.name, num_classes = SOURCES[name]
    if name == 'places_lt':
      config.data.folder = root or None
      for split in ('train', 'val', 'test'):
        config.data.list_files[split] = os.path.join(root, f'Places_LT_{split}.txt') if root else None
    if name == 'cifar100':
      config.data.imbalance_factor = 100.0
  else:  # an image folder: its classes are its training folders
    config.data.name, config.data.folder = 'folder', source or None
    train = os.path.join(source, 'train')
    num_classes = len([d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d))]) \
        if source and os.path.isdir(train) else 24
  config.model.init_from = clip_file or None
  config.model.head, config.model.head_scale = 'cosine', 25.0
  config.model.adapter_dim = adapter_width(num_classes)
  config.data.test_views = 'five_crop'
  config.batch_size = 128
  config.stages = 'naive'
  naive = config.naive
  naive.tune, naive.loss, naive.head_init = 'adapter', 'balanced_softmax', 'text'
  naive.epochs = 20 if name == 'inaturalist2018' else 10
  naive.learning_rate, naive.weight_decay, naive.momentum = 0.01, 5e-4, 0.9
  config.stage2.backbone = 'pretrained'  # the tuning study's frozen rows: heads on CLIP's own features
  return config
