"""Quickstart: the embedded dataset (20 classes, IF 50), a ResNet-8, minutes on 2 CPU cores.

Shortened schedules (not the paper's 320 epochs) so that naive CE and BWLM both finish quickly.
"""

from bwlm_jax.config import base_config


def get_config():
  config = base_config()
  config.data.name = 'embedded'
  config.data.imbalance_factor = 50.0
  config.model.name = 'resnet8'
  config.naive.epochs = 30
  config.naive.learning_rate = 0.05
  config.stage1.epochs = 30
  config.stage1.learning_rate = 0.05
  config.stage2.epochs = 10
  config.stage2.learning_rate = 0.05
  config.checkpoint_every_steps = 200
  return config
