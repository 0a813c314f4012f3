"""Which backbone parameters a backbone stage trains (`naive.tune`, `stage1.tune`): light fine-tuning of a
pretrained network as one mask, in one place (big_vision's pattern: the optimizer zeroes the frozen
parameters' updates and keeps no state for them; weight decay reaches only what trains).

  full  every parameter; BatchNorm in training mode (what the backbone stages always did)
  bias  biases and normalisation scales and offsets (BitFit, Ben Zaken et al. 2022)
  last  the last stage of a CNN (ResNet's layer4; EfficientNet-Lite's last two stages and head
        convolution) or the last quarter of a ViT's blocks, with the final norm (and CLIP's projection)
  head  none of the backbone: a linear probe trained end to end (the baseline the others are measured by)
  lora  the LoRA updates beside a ViT's attention projections (model.lora_rank; Hu et al. 2022)
  adapter  the AdaptFormer bottlenecks beside a ViT's MLPs (model.adapter_dim; Chen et al. 2022)

The head always trains. Except in `full`, BatchNorm runs in inference mode: its statistics stay the
pretrained network's, which a small or rebalanced training set would otherwise pull away.
"""

from __future__ import annotations

import optax
from flax import traverse_util

from bwlm_jax.config import TUNE_MODES as MODES
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.models import family_of

TRAIN, FROZEN = 'train', 'frozen'


def trains_batch_norm(mode: str) -> bool:
  return mode == 'full'


def labels(mode: str, model_name: str, params: dict) -> dict:
  """'train' or 'frozen' for every leaf of `params` ({'backbone', 'head'}) under tuning `mode`."""
  if mode not in MODES:
    raise UsageError(f'tune must be one of {MODES}, got {mode!r}.')
  backbone = params['backbone']
  last = family_of(model_name).last_modules(model_name, backbone) if mode == 'last' else ()

  def label(path, _):
    if path[0] == 'head' or mode == 'full':
      return TRAIN
    if mode == 'bias':
      return TRAIN if path[-1] in ('bias', 'scale') else FROZEN
    if mode == 'last':
      return TRAIN if path[1] in last else FROZEN
    if mode == 'lora':
      return TRAIN if any(name.endswith('_lora') for name in path) else FROZEN
    if mode == 'adapter':
      return TRAIN if 'adapter' in path else FROZEN
    return FROZEN

  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: label(path, leaf) for path, leaf in flat.items()})


def masked(tx: optax.GradientTransformation, mode: str, model_name: str) -> optax.GradientTransformation:
  """`tx` on what `mode` trains; zero updates (and no optimizer state) for the rest, which therefore stays
  bit for bit as it came."""
  if mode == 'full':
    return tx
  return optax.multi_transform({TRAIN: tx, FROZEN: optax.set_to_zero()},
                               lambda params: labels(mode, model_name, params))
