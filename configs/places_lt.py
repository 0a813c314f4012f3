"""Places-LT (Liu et al. 2019): 365 scene classes, 62,500 training images (4,980 .. 5 per class), 7,300
val (20 per class) and 36,500 test (100 per class), from Places365-Standard images and the published lists,
with the published protocol's ImageNet-pretrained ResNet-152.

  python launch/train.py --config=configs/places_lt.py:ROOT,WEIGHTS --workdir=DIR

ROOT holds Places_LT_train.txt, Places_LT_val.txt, Places_LT_test.txt (published with OLTR,
github.com/zhmiao/OpenLongTailRecognition-OLTR) and the Places365-Standard 256x256 images at the paths
the lists give (ROOT/<path in the list>); see `bwlm_jax/data/list_source.py`. The lists are checked
against their published counts before anything trains.

WEIGHTS: an ImageNet ResNet-152 in torchvision's layout, e.g. torchvision's IMAGENET1K_V1 file
(download.pytorch.org/models/resnet152-394f9c45.pth, converted once to .safetensors where PyTorch is
installed, see `bwlm_jax/weights.py`; or read as .pth there), or timm's `resnet152.tv_in1k` (its
model.safetensors from the Hugging Face hub). OLTR and classifier-balancing (Kang et al. 2020) used a
Caffe-converted ResNet-152 whose numbers differ slightly from torchvision's.

The protocol of their Places-LT baseline (OLTR's config/Places_LT/stage_1.py): 224x224 crops, batch 128,
30 epochs, SGD 0.9, weight decay 5e-4, learning rate 0.001 for the pretrained backbone and 0.1 for the new
classifier, divided by 10 every 10 epochs. bwlm-jax has one learning rate per stage and a cosine schedule
(paper section 4.2), so naive and stage 1 fine-tune the whole network at 0.01 (cosine to 0) for 30 epochs;
stage 2 is chosen on the val list among heads on the stage-1, naive and pretrained backbones. Not run here
(no network, no GPU).
"""

import os

from bwlm_jax.config import base_config, streamed_224


def get_config(arg: str = ''):
  root, _, weights = arg.partition(',')
  config = streamed_224(base_config(), 'resnet152')
  config.data.name = 'lists'
  config.data.folder = root or None
  for split in ('train', 'val', 'test'):
    config.data.list_files[split] = os.path.join(root, f'Places_LT_{split}.txt') if root else None
  config.model.init_from = weights or None
  config.batch_size = 128
  for stage in (config.naive, config.stage1):
    stage.epochs = 30
    stage.learning_rate = 0.01
    stage.weight_decay = 5e-4
  config.stage2.epochs = 10
  if weights:
    config.stage2.grid.backbone = ('stage1', 'naive', 'pretrained')
  return config
