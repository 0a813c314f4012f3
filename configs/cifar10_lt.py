"""CIFAR-10-LT with ResNet-32; the paper's CIFAR recipe. IF by argument: `configs/cifar10_lt.py:100`."""

from bwlm_jax.config import base_config


def get_config(imbalance_factor: str = '100'):
  config = base_config()
  config.data.name = 'cifar10'
  config.data.imbalance_factor = float(imbalance_factor)
  config.model.name = 'resnet32'
  return config
