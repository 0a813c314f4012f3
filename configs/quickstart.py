"""Quickstart: the embedded dataset (20 classes, IF 50), a ResNet-8, minutes on 2 CPU cores.

Shortened schedules (not the paper's 320 epochs), with weight decays re-tuned for them on the
embedded set: 5e-4 for the 30-epoch backbones, lambda = 0.01 for the 20-epoch stage 2 (the paper's
0.1 shrinks this small head too fast in so few steps). lr 0.05 instead of 0.01 for the same reason.
"""

from bwlm_jax.config import base_config


def get_config():
  config = base_config()
  config.data.name = 'embedded'
  config.data.imbalance_factor = 50.0
  config.model.name = 'resnet8'
  for stage in (config.naive, config.stage1):
    stage.epochs = 30
    stage.learning_rate = 0.05
    stage.weight_decay = 5e-4
  config.stage2.epochs = 20
  config.stage2.learning_rate = 0.05
  config.stage2.weight_decay = 0.01
  config.checkpoint_every_steps = 200
  config.eval_every_epochs = 5  # test accuracy along training, for the training-curve figure
  return config
