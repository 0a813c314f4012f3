"""Process set-up shared by the launch scripts."""

from __future__ import annotations

import os


def hide_gpus_from_tensorflow() -> None:
  """TensorFlow only feeds data: keep it off the GPUs so JAX gets all their memory.

  Also keeps library INFO logs (orbax, tfds) off the terminal; warnings still show.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf
  from absl import logging
  tf.config.set_visible_devices([], 'GPU')
  logging.set_verbosity(logging.WARNING)
