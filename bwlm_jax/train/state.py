"""The train state, its initial value for each stage, and the finished backbone stage 2 freezes."""

from __future__ import annotations

import os
import re
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from bwlm_jax import checkpoints, stages
from bwlm_jax.data.sampling import HEAD_INIT
from bwlm_jax.models.head import head_kernel, head_params, kind_of
from bwlm_jax.runtime.errors import MissingFileError, UsageError
from bwlm_jax.text import zero_shot

# Data fields a stage-2 backbone must share with the run that uses it.
_BACKBONE_DATA_FIELDS = ('name', 'imbalance_factor', 'max_count', 'subset_seed', 'folder')


@flax.struct.dataclass
class TrainState:
  """Everything a stage's training needs to continue: a pytree that orbax saves as is.

  `params`/`batch_stats` are trained; `frozen` holds stage 2's fixed backbone ({'params',
  'batch_stats'}) and is empty otherwise (it is outside `params`, so no optimizer touches it); `rng`
  is the raw key data all randomness derives from.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  frozen: Any
  rng: jax.Array


def stage_key(seed: int, stage) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), stages.get(stage).tag)


def initial_state(ctx, stage, tx, backbone_state: TrainState = None, split=None) -> TrainState:
  """Step 0 of a stage: a new backbone (or model.init_from's) and head with `tx`'s optimizer state (naive,
  stage 1; with `<stage>.head_init=class_means` the head starts from `split`'s class means, with `stage2`
  from a stage-2 head trained on the starting backbone's frozen features), or one new
  head on `backbone_state`'s frozen backbone (stage 2, whose caller stacks the grid's heads and sets
  their optimizer states; `tx` is None there)."""
  stage = stages.get(stage)
  key = stage_key(ctx.config.seed, stage)
  backbone_key, head_key = jax.random.split(jax.random.fold_in(key, HEAD_INIT))
  num_classes = ctx.dataset.num_classes
  feature_dim = ctx.model.feature_dim(ctx.image_shape)
  if stage.trains_heads:
    # Copied: stage 2's steps donate their state, and stage 1's arrays are still evaluated later.
    frozen = jax.tree.map(jnp.copy, {'params': backbone_state.params['backbone'],
                                     'batch_stats': backbone_state.batch_stats})
    bias = -float(np.log(num_classes - 1)) if ctx.config.stage2.head_bias_init == 'cb_prior' else 0.0
    head = ctx.model.head.clone(bias_init_value=bias).init(head_key, jnp.zeros((1, feature_dim)))['params']
    params, batch_stats, opt_state = {'head': head}, {}, None
  else:
    if ctx.pretrained is not None:  # copied: the steps donate their state
      backbone_params, batch_stats = jax.tree.map(jnp.copy, (ctx.pretrained['params'], ctx.pretrained['batch_stats']))
    else:
      backbone_params, batch_stats = ctx.model.init_backbone(backbone_key, ctx.image_shape)
    head = ctx.model.init_head(head_key, feature_dim)
    if ctx.config[stage.name].head_init == 'class_means':
      head = class_means_head(ctx, {'backbone': backbone_params, 'batch_stats': batch_stats}, split)
    elif ctx.config[stage.name].head_init == 'text':
      head = text_head(ctx, {'backbone': backbone_params, 'batch_stats': batch_stats}, split)
    elif ctx.config[stage.name].head_init == 'stage2_head':
      head = stage2_head(ctx.config, stage.name, num_classes, feature_dim)
    params = {'backbone': backbone_params, 'head': head}
    frozen, opt_state = {}, tx.init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=opt_state, frozen=frozen, rng=jax.random.key_data(key))


def class_means_head(ctx, backbone: dict, split) -> dict:
  """A linear head whose class c weights are the L2-normalised mean feature of class c in `split` through
  `backbone` ({'backbone', 'batch_stats'}; BatchNorm in inference mode), bias 0. A class without images
  keeps zero weights."""
  features, labels = ctx.split_features(backbone, split)
  num_classes = ctx.dataset.num_classes
  sums = np.zeros((num_classes, features.shape[1]), np.float64)
  np.add.at(sums, labels, features)
  means = sums / np.maximum(np.bincount(labels, minlength=num_classes), 1)[:, None]
  kernel = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
  return head_params(ctx.config.model.head, kernel.T, np.zeros(num_classes), ctx.config.model.head_scale)


def text_head(ctx, backbone: dict, split) -> dict:
  """The head (of model.head's kind) that starts as CLIP's zero-shot classifier of the dataset's classes on
  `backbone`'s features (`text.zero_shot.text_head`; a linear head's scale from `split`'s images)."""
  embeddings, scale = zero_shot.class_embeddings(ctx.config.model, ctx.dataset.class_names,
                                                 ctx.config.data.class_names_file or '')
  features, _ = ctx.split_features(backbone, split)
  projection = None if ctx.config.model.projection else backbone['backbone']['proj']
  return zero_shot.text_head(embeddings, scale, features, projection, ctx.config.model.head,
                             ctx.config.model.head_scale)


def stage2_head_source(config, stage: str) -> tuple[str, Optional[int], dict]:
  """(checkpoint directory, head index or None, its meta) of `<stage>.head_from`: a workdir's finished stage 2
  (its chosen head) or head K of a grid checkpoint ('DIRECTORY:K'), checked to be a head trained on the
  frozen features of this run's model.init_from and data. Reads no arrays."""
  head_from = config[stage].head_from
  field = f'{stage}.head_from={head_from!r}'
  grid = re.fullmatch(r'(.+):(\d+)', head_from)
  if grid and os.path.isdir(grid.group(1)):
    directory, index = grid.group(1), int(grid.group(2))
    on_pretrained = os.path.basename(os.path.normpath(directory)) in {
        stages.grid_checkpoint(stages.PRETRAINED, train_set) for train_set in stages.HEAD_TRAIN_SETS}
  else:
    directory, index = checkpoints.stage_directory(head_from, stages.STAGE2.name), None
  meta = checkpoints.finished_meta(directory) if os.path.isdir(directory) else None
  if meta is None:
    raise MissingFileError(f'{field}: no finished stage-2 checkpoint at {directory} (give a workdir whose '
                           'stage 2 finished, or a grid checkpoint directory and a head as DIRECTORY:K).')
  saved = meta['config']
  if index is None:
    on_pretrained = saved['stage2']['backbone'] == stages.PRETRAINED
  same_weights = os.path.realpath(saved['model'].get('init_from') or '') == os.path.realpath(
      config.model.init_from)
  if not on_pretrained or not same_weights or saved['model']['name'] != config.model.name:
    raise UsageError(f'{field}: that head was not trained on the frozen features of this run\'s backbone '
                     f'({config.model.name} from {config.model.init_from}, stage2.backbone=pretrained).')
  for data_field in _BACKBONE_DATA_FIELDS:
    if saved['data'].get(data_field) != config.data[data_field]:
      raise UsageError(f'{field}: that head was trained on other data: data.{data_field} is '
                       f'{saved["data"].get(data_field)!r} there, {config.data[data_field]!r} here.')
  return directory, index, meta


def stage2_head(config, stage: str, num_classes: int, feature_dim: int) -> dict:
  """The head `<stage>.head_init=stage2_head` starts from (`stage2_head_source`), as float32 arrays."""
  directory, index, _ = stage2_head_source(config, stage)
  head = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32),
                      checkpoints.restore_finished(directory)[0]['params']['head'])
  kernel = head_kernel(head)
  stacked = kernel.ndim == 3
  if (index is not None) != stacked or (stacked and index >= kernel.shape[0]):
    raise UsageError(f'{stage}.head_from={config[stage].head_from!r}: {directory} holds '
                     f'{kernel.shape[0] if stacked else "one"} head(s); '
                     + ('give one as DIRECTORY:K with K below that.' if stacked else 'give the workdir alone.'))
  if stacked:
    head = jax.tree.map(lambda leaf: leaf[index], head)
  if head_kernel(head).shape != (feature_dim, num_classes):
    raise UsageError(f'{stage}.head_from={config[stage].head_from!r}: that head maps {feature_dim} features to '
                     f'{head_kernel(head).shape[1]} classes, not {num_classes}.')
  if kind_of(head) != config.model.head:
    raise UsageError(f'{stage}.head_from={config[stage].head_from!r}: that head is a {kind_of(head)} head; this '
                     f'run\'s model.head is {config.model.head!r}.')
  return head


def backbone_directory(config, workdir: str, source: str) -> str:
  """Checkpoints of the `source` stage (naive or stage 1) whose backbone stage 2 freezes, in this run or in
  `config.stage1_checkpoint` (a workdir, or that stage's checkpoint directory itself)."""
  if not config.stage1_checkpoint:
    return checkpoints.stage_directory(workdir, source)
  candidate = checkpoints.stage_directory(config.stage1_checkpoint, source)
  return candidate if os.path.isdir(candidate) else config.stage1_checkpoint


def load_backbone_state(config, workdir: str, source: str) -> TrainState:
  """The finished state whose backbone stage 2 freezes: stage 1 (BWLM) or naive (cRT-style), checked
  to be of the same data and model as `config`."""
  directory = backbone_directory(config, workdir, source)
  if not os.path.isdir(directory):
    raise MissingFileError(f'stage 2 needs a {source} checkpoint: none at {directory}. Add {source} to '
                            f'config.stages or set config.stage1_checkpoint=WORKDIR_OF_A_{source.upper()}_RUN.')
  restored = checkpoints.restore_finished(directory)
  if restored is None:
    raise UsageError(f'the {source} checkpoint in {directory} is missing or unfinished; finish {source} first.')
  state, meta = restored
  if meta['stage'] != source:
    raise UsageError(f'{directory} holds a {meta["stage"]} checkpoint, but stage2.backbone is {source!r}.')
  saved = meta['config']
  for field in _BACKBONE_DATA_FIELDS:
    if saved['data'].get(field) != config.data[field]:
      raise UsageError(f'the {source} checkpoint in {directory} was trained on other data: data.{field} is '
                       f'{saved["data"].get(field)!r} there, {config.data[field]!r} here.')
  if saved['model']['name'] != config.model.name:
    raise UsageError(f'the {source} checkpoint in {directory} is a {saved["model"]["name"]}, not a '
                     f'{config.model.name}.')
  return TrainState(**state)
