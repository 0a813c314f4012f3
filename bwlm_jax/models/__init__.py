"""Backbones (features) and classifier heads (linear, cosine), built by name through the family registry, and the Model
bundle of both."""

from __future__ import annotations

import flax.linen as nn

from bwlm_jax.models.bundle import Model, head_logits, inference_variables, make_features_fn  # noqa: F401
from bwlm_jax.models.family import DTYPES, Options
from bwlm_jax.models.head import COSINE_SCALE, LinearHead, make_head  # noqa: F401
from bwlm_jax.models.registry import DTYPE_NAMES, MODEL_NAMES, family_of  # noqa: F401
from bwlm_jax.runtime.errors import UsageError


def build_backbone(name: str, dtype: str = 'float32', pool: str = 'token', projection: bool = True,
                   lora_rank: int = 0, adapter_dim: int = 0) -> nn.Module:
  """The backbone `name` computing in `dtype`; the other fields of config.model apply where its family takes
  them (the ViTs)."""
  if dtype not in DTYPES:
    raise UsageError(f'model.dtype must be one of {tuple(DTYPES)}, got {dtype!r}.')
  return family_of(name).build(name, Options(DTYPES[dtype], pool, projection, lora_rank, adapter_dim))


def build_model(model_cfg, num_classes: int) -> Model:
  """The backbone `model_cfg` names (config.model or its dict; a run's recorded before a field existed
  has its default) with a head for `num_classes`."""
  backbone = build_backbone(model_cfg['name'], model_cfg['dtype'], model_cfg.get('pool', 'token'),
                            model_cfg.get('projection', True), model_cfg.get('lora_rank', 0),
                            model_cfg.get('adapter_dim', 0))
  return Model(backbone, make_head(model_cfg.get('head', 'linear'), num_classes,
                                   model_cfg.get('head_scale', COSINE_SCALE)))
