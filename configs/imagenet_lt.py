"""ImageNet-LT with ResNeXt-50 32x4d at 224x224 (paper section 4.2).

The paper trains 500 epochs in all with batch 64, SGD 0.9, cosine 0.01 -> 0. Stage 1 gets 490; stage 2
is chosen on ImageNet-LT's own validation split from the default grid (its candidates train on cached
features), or is 10 epochs (Alshammari et al. 2022) where selection is off. Data: tfds `imagenet_lt`,
streamed with tf.data.
"""

from bwlm_jax.config import base_config


def get_config():
  config = base_config()
  config.data.name = 'imagenet_lt'
  config.data.image_size = 224
  config.data.pipeline = 'stream'
  config.model.name = 'resnext50'
  config.eval_batch_size = 250
  config.naive.epochs = 500
  config.stage1.epochs = 490
  config.stage2.epochs = 10
  config.checkpoint_every_steps = 2000
  return config
