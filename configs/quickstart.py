"""Quickstart: the embedded dataset (20 classes, IF 50), a ResNet-8, minutes on 2 CPU cores.

Shortened schedules (not the paper's 320 epochs): 30-epoch backbones at lr 0.05 and weight decay
5e-4; stage 2 is chosen on the validation split (carved from the images the long tail leaves unused)
from the default grid, as in every config.
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
  config.checkpoint_every_steps = 200
  config.eval_every_epochs = 5  # validation accuracy along training, for the training-curve figure
  return config
