"""A family of backbones as one record (`Family`): the model names it builds and everything the rest of the
library asks of them (building, weights layouts in and out, the input the usual weights expect, the reference
class an export loads into, which light-tuning modes and pools it takes, its patch size). Each model file
declares its family once; `registry.py` lists them, and config checks, building, weights and the tuning masks
read the record instead of testing a model name against a list; the launch scripts set the CPU runtime it names."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, Optional

import jax.numpy as jnp
from flax import traverse_util

# The input ImageNet weights expect (torchvision's and timm's ResNets, DeiT, DINOv2): [0, 1] pixels so normalised.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}  # model.dtype -> the compute dtype
# The light-tuning modes (naive.tune, stage1.tune) every family takes (train/trainable.py); a ViT adds its own.
BASE_TUNE_MODES = ('full', 'bias', 'last', 'head')


@dataclasses.dataclass(frozen=True)
class Options:
  """The fields of config.model a backbone is built with, beside its name."""
  dtype: Any = jnp.float32
  pool: str = 'token'
  projection: bool = True
  lora_rank: int = 0
  adapter_dim: int = 0


def imagenet_statistics(name: str) -> tuple[tuple, tuple]:
  del name
  return IMAGENET_MEAN, IMAGENET_STD


def no_patches(name: str) -> int:
  del name
  return 0


@dataclasses.dataclass(frozen=True)
class Family:
  """One family of backbones, declared in its model file."""
  name: str  # named in errors
  models: tuple[str, ...]  # the model.name values it builds
  build: Callable[[str, Options], Any]  # (model.name, options) -> the flax backbone
  last_modules: Callable[[str, dict], tuple[str, ...]]  # (model.name, backbone params) -> what tune=last trains
  input_statistics: Callable[[str], tuple[tuple, tuple]] = imagenet_statistics  # of its usual weights
  layout: Optional[Callable[[str, dict], Any]] = None  # (model.name, backbone) -> torch_layout.Layout; None: none
  reference_class: Optional[Callable[[str, dict, int, int], str]] = None  # (name, config.model, classes, side)
  tune_modes: tuple[str, ...] = BASE_TUNE_MODES
  pools: tuple[str, ...] = ('token',)  # model.pool values it takes ('token' means its own pooling)
  added_modules: tuple[str, ...] = ()  # config.model fields that add modules to it (lora_rank, adapter_dim)
  patch_size: Callable[[str], int] = no_patches
  check_metadata: Optional[Callable[[str, dict, str], None]] = None  # (name, metadata beside weights, its path)
  # The CPU settings its steps and feature passes run fastest with in the least memory, measured per family
  # (a runtime.process_setup.CPU_RUNTIMES name; docs/PERFORMANCE.md, "CPU settings per family"), and where
  # another measured better on a kind of CPU (models.conv.cpu_kind), (kind, that one) for it.
  cpu_runtime: str = 'plain'
  kind_cpu_runtimes: tuple[tuple[str, str], ...] = ()


def last_stage_blocks(backbone_params: dict) -> tuple[str, ...]:
  """A ResNet's last stage: the highest-numbered blocks until the width changes (what tune=last trains)."""
  blocks = sorted((n for n in backbone_params if re.fullmatch(r'(BasicBlockA?|Bottleneck)_\d+', n)),
                  key=lambda n: int(n.split('_')[-1]))
  width = _block_width(backbone_params[blocks[-1]])
  return tuple(b for b in blocks if _block_width(backbone_params[b]) == width)


def _block_width(block: dict) -> int:
  return max(leaf.shape[-1] for path, leaf in traverse_util.flatten_dict(block).items() if path[-1] == 'kernel')
