"""Backbones (features) and linear classifier heads, built by name, and the Model bundle of both."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from bwlm_jax.models.bundle import Model, head_logits, inference_variables, make_features_fn  # noqa: F401
from bwlm_jax.models.head import LinearHead  # noqa: F401
from bwlm_jax.models import efficientnet_lite
from bwlm_jax.models.efficientnet_lite import SCALES as EFFICIENTNET_LITE_SCALES, EfficientNetLite
from bwlm_jax.models.resnet_cifar import CifarResNet
from bwlm_jax.models.resnet_imagenet import LAYOUTS, ImageNetResNet
from bwlm_jax.models.vit import SPECS as VIT_SPECS, VisionTransformer
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.config import DTYPE_NAMES, MODELS

DTYPES = dict(zip(DTYPE_NAMES, (jnp.float32, jnp.bfloat16)))


def build_backbone(name: str, dtype: str = 'float32', pool: str = 'token', projection: bool = True,
                   lora_rank: int = 0, adapter_dim: int = 0) -> nn.Module:
  """The backbone `name` computing in `dtype`; the other fields of config.model apply to the ViTs."""
  if dtype not in DTYPES:
    raise UsageError(f'model.dtype must be one of {tuple(DTYPES)}, got {dtype!r}.')
  compute = DTYPES[dtype]
  cifar_blocks = {'resnet8': 1, 'resnet20': 3, 'resnet32': 5}
  if name in cifar_blocks:
    return CifarResNet(cifar_blocks[name], dtype=compute)
  if name in LAYOUTS:
    stage_sizes, bottleneck = LAYOUTS[name]
    grouped = {'groups': 32, 'width_per_group': 4} if name == 'resnext50' else {}
    return ImageNetResNet(stage_sizes, bottleneck=bottleneck, dtype=compute, **grouped)
  if name in EFFICIENTNET_LITE_SCALES:
    width, depth = EFFICIENTNET_LITE_SCALES[name]
    timm_own = efficientnet_lite.family(name) == 'timm_'  # PyTorch padding and BatchNorm eps
    return EfficientNetLite(width, depth, dtype=compute, same=not timm_own, epsilon=1e-5 if timm_own else 1e-3)
  if name in VIT_SPECS:
    return VisionTransformer(VIT_SPECS[name], pool=pool, projection=projection, dtype=compute, lora_rank=lora_rank,
                             adapter_dim=adapter_dim)
  raise UsageError(f'unknown model.name={name!r}; expected one of {MODELS}.')


def build_model(model_cfg, num_classes: int) -> Model:
  """The backbone `model_cfg` names (config.model or its dict; a run's recorded before a field existed
  has its default) with a head for `num_classes`."""
  backbone = build_backbone(model_cfg['name'], model_cfg['dtype'], model_cfg.get('pool', 'token'),
                            model_cfg.get('projection', True), model_cfg.get('lora_rank', 0),
                            model_cfg.get('adapter_dim', 0))
  return Model(backbone, LinearHead(num_classes))

