"""CIFAR-100-LT with ResNet-32, the paper's recipe (section 4.2).

Pick the imbalance factor with a config argument: `--config=configs/cifar100_lt.py:100`
(10, 50, 100 or 200 in the paper; any value >= 1 works), or `--config.data.imbalance_factor`.
"""

from bwlm_jax.config import base_config


def get_config(imbalance_factor: str = '100'):
  config = base_config()
  config.data.name = 'cifar100'
  config.data.imbalance_factor = float(imbalance_factor)
  config.model.name = 'resnet32'
  return config
