"""Your own images: ROOT/train/<class>/*.jpg|png, ROOT/test/<class>/..., optional ROOT/val/<class>/...

  python launch/train.py --config=configs/image_folder.py:/data/my_images --workdir=DIR

Kept at its natural distribution; set --config.data.imbalance_factor=IF to make it long-tailed with
the CIFAR-LT profile. Images are resized to data.image_size (32 here, for ResNet-32; use 224 with
--config.model.name=resnext50 for photographs).
"""

from bwlm_jax.config import base_config


def get_config(root: str = ''):
  config = base_config()
  config.data.name = 'folder'
  config.data.folder = root or None
  config.data.image_size = 32
  config.model.name = 'resnet32'
  return config
