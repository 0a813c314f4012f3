"""The embedded set as a real tfds builder (`bwlm_shapes`), for tfds users and the streamed pipeline: the
examples of `embedded.drawn`, keyed by their drawing order, which tfds stores in `embedded.stored_order`, so
the prepared builder reads as `embedded.split_arrays`. Importing this module imports tensorflow-datasets and
registers the builder."""

from __future__ import annotations

import tensorflow_datasets as tfds

from bwlm_jax.data.synthetic import embedded, shapes


class BwlmShapes(tfds.core.GeneratorBasedBuilder):
  """20 classes of procedurally drawn coloured shapes, 32x32 RGB."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: 5 shapes x 4 colours.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=embedded.__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3)),
            'label': tfds.features.ClassLabel(names=shapes.class_names()),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in ('train', 'test')}

  def _generate_examples(self, split: str):
    images, labels = embedded.drawn(split)
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {'image': image, 'label': int(label)}
