"""ImageNet-LT with ResNeXt-50 32x4d at 224x224 (paper section 4.2).

The paper trains 500 epochs in all with batch 64, SGD 0.9, cosine 0.01 -> 0. Stage 1 gets 490; stage 2
is chosen on ImageNet-LT's own validation split from the default grid (its candidates train on cached
features), or is 10 epochs (Alshammari et al. 2022) where selection is off. Data: tfds `imagenet_lt`,
streamed with tf.data.
"""

from bwlm_jax.config import base_config, streamed_224


def get_config():
  config = streamed_224(base_config(), 'resnext50')
  config.data.name = 'imagenet_lt'
  config.naive.epochs = 500
  config.stage1.epochs = 490
  config.stage2.epochs = 10
  return config
