"""Places-LT (Liu et al. 2019): 365 scene classes, 62,500 training images (4,980 .. 5 per class), 7,300
val (20 per class) and 36,500 test (100 per class), from Places365-Standard images and the published lists.

  python launch/train.py --config=configs/places_lt.py:ROOT --workdir=DIR

ROOT holds Places_LT_train.txt, Places_LT_val.txt, Places_LT_test.txt (published with OLTR,
github.com/zhmiao/OpenLongTailRecognition-OLTR) and the Places365-Standard 256x256 images at the paths
the lists give (ROOT/<path in the list>); see `bwlm_jax/data/list_source.py`. The lists are checked
against their published counts before anything trains. Published Places-LT tables start from an
ImageNet-pretrained ResNet-152 (OLTR); bwlm-jax has no pretrained weights, so this trains ResNet-50 from
scratch at 224x224 (streamed), 90 epochs per backbone stage, batch 64, SGD 0.9, cosine from 0.01, and
chooses stage 2 on the val list: compare its rows with each other, not with those tables. Not run here.
"""

import os

from bwlm_jax.config import base_config, streamed_224


def get_config(root: str = ''):
  config = streamed_224(base_config(), 'resnet50')
  config.data.name = 'lists'
  config.data.folder = root or None
  for split in ('train', 'val', 'test'):
    config.data.list_files[split] = os.path.join(root, f'Places_LT_{split}.txt') if root else None
  config.naive.epochs = 90
  config.stage1.epochs = 90
  config.stage2.epochs = 10
  return config
