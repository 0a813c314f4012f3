"""`bwlm_shapes`: the embedded, offline dataset, as a real tfds builder.

Preparing it draws the images procedurally (see `shapes.py`); nothing is downloaded. The train
split is balanced (300 images per class) and is made long-tailed by the same exponential profile
as CIFAR-LT, at any imbalance factor; the test split is balanced (100 per class).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from bwlm_jax.data import shapes

TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 100
_SEEDS = {'train': 20240, 'test': 20241}


class BwlmShapes(tfds.core.GeneratorBasedBuilder):
  """20 classes of procedurally drawn coloured shapes, 32x32 RGB."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: 5 shapes x 4 colours.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3)),
            'label': tfds.features.ClassLabel(names=shapes.class_names()),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
        'train': self._generate_examples('train', TRAIN_PER_CLASS),
        'test': self._generate_examples('test', TEST_PER_CLASS),
    }

  def _generate_examples(self, split: str, per_class: int):
    num_classes = len(shapes.class_names())
    images, labels = shapes.draw_split(np.full(num_classes, per_class), _SEEDS[split])
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {'image': image, 'label': int(label)}
