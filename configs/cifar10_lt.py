"""CIFAR-10-LT with ResNet-32; the paper's CIFAR recipe. IF by argument: `configs/cifar10_lt.py:100`."""

from bwlm_jax.config import base_config


def get_config(imbalance_factor: str = '100'):
  config = base_config()
  config.data.name = 'cifar10'
  config.data.imbalance_factor = float(imbalance_factor)
  config.model.name = 'resnet32'
  # 10 classes: 200 validation images per class (1,800 in all; class 0 keeps all 5,000 in train), so
  # that choosing on validation is not decided by a handful of images.
  config.data.val_per_class = 200
  return config
