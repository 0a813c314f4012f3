"""iNaturalist 2018 (tfds `i_naturalist2018`): 8,142 species with their natural long tail (437,513
training images, 1,000 .. 2 per class), ResNet-50 at 224x224 as in the long-tail literature.

  python launch/train.py --config=configs/inaturalist2018.py --workdir=DIR

As in the literature, the official validation split (24,426 images, 3 per class) is the test split (the
official test split has no labels). There is no other labelled split to choose on, so stage 2 trains the
one configured setting (stage2.select=auto says so) and the test split chooses nothing. The archives
are downloaded by tfds (about 200 GB; `tfds build i_naturalist2018` on a machine with internet, then
data.data_dir). Schedule: 90 epochs per backbone stage, batch 64, SGD 0.9, cosine from 0.01. Not run here.
"""

from bwlm_jax.config import base_config, streamed_224


def get_config():
  config = streamed_224(base_config(), 'resnet50')
  config.data.name = 'i_naturalist2018'
  config.naive.epochs = 90
  config.stage1.epochs = 90
  config.stage2.epochs = 10
  return config
