"""Process set-up shared by the launch scripts."""

from __future__ import annotations

import os


def hide_gpus_from_tensorflow() -> None:
  """TensorFlow only feeds data: keep it off the GPUs so JAX gets all their memory."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
