"""Batch feeders: for each data pipeline, a callable state -> (state, metrics) that takes one training step.

- device: images kept on the device, batches gathered inside the jitted step;
- cached: stage 2 without augmentation, the head trained on the frozen backbone's features, computed once;
- stream: host-fed tf.data batches (data too large for the device);
- heads: K stage-2 heads at once (see `steps.make_multihead_step`), on cached features or device images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bwlm_jax.config import stage_tag
from bwlm_jax.data import stream_pipeline
from bwlm_jax.data.sampling import BatchSpec, class_balanced_tables
from bwlm_jax.models import inference_variables
from bwlm_jax.train.steps import (StepConfig, head_settings_arrays, make_cached_head_step, make_device_train_step,
                                  make_multihead_step, make_stream_train_step)
from bwlm_jax.errors import UsageError


def multihead_supported(config, dataset) -> bool:
  """Whether K stage-2 heads can train at once: on cached features, or on images kept on the device."""
  return uses_cached_features(config) or dataset.in_memory


def uses_cached_features(config) -> bool:
  return not config.stage2.augment and config.stage2.cache_features


def _device_arrays(ctx, name: str, split):
  """A training split's images and labels on the device, put there once per run."""
  if name not in ctx.device_arrays:
    ctx.device_arrays[name] = (jax.device_put(jnp.asarray(split.images), ctx.replicated),
                               jax.device_put(jnp.asarray(split.labels, jnp.int32), ctx.replicated))
  return ctx.device_arrays[name]


def train_split_name(config, stage: str) -> str:
  """The key of a stage's training split: stage 2's depends on stage2.train_set, the others' do not."""
  return f'train/stage2/{config.stage2.train_set}' if stage == 'stage2' else f'train/{stage}'


def _cached_features(ctx, state, split):
  """The frozen backbone's features of every stage-2 training example, computed once, kept on device."""
  features, labels = ctx.split_features(inference_variables('stage2', state), split)
  return (jax.device_put(jnp.asarray(features), ctx.replicated),
          jax.device_put(jnp.asarray(labels, jnp.int32), ctx.replicated))


def _sampler_tables(ctx, stage: str, split):
  if stage == 'stage2' and ctx.config.stage2.sampler == 'class_balanced':
    return class_balanced_tables(split.labels, ctx.dataset.num_classes)
  return None


def single_head_feeder(ctx, stage: str, split, step_cfg: StepConfig, tx, loss_fn, schedule, state, total_steps: int):
  """The feeder of one model (naive, stage 1, or one stage-2 head), starting from `state`."""
  config = ctx.config
  tables = _sampler_tables(ctx, stage, split)
  if ctx.dataset.in_memory:
    if stage == 'stage2' and uses_cached_features(config):
      cached_step = make_cached_head_step(ctx.model, tx, loss_fn, schedule, step_cfg, ctx.data_sharding,
                                          ctx.replicated, tables)
      features, labels = _cached_features(ctx, state, split)
      return lambda state: cached_step(state, features, labels)
    train_step = make_device_train_step(ctx.model, tx, loss_fn, schedule, step_cfg, ctx.data_sharding,
                                        ctx.replicated, tables)
    images, labels = _device_arrays(ctx, train_split_name(config, stage), split)
    return lambda state: train_step(state, images, labels)

  if tables is not None:
    raise UsageError('stage2.sampler=class_balanced needs the device pipeline (data that fits in memory).')
  train_step = make_stream_train_step(ctx.model, tx, loss_fn, schedule, step_cfg, ctx.replicated)
  batches = _stream_batches(ctx, stage, split, step_cfg.batch, int(state.step), total_steps)

  def advance(state):
    x, labels = next(batches)
    x = jax.make_array_from_process_local_data(ctx.data_sharding, x)
    labels = jax.make_array_from_process_local_data(ctx.data_sharding, labels)
    return train_step(state, x, labels)

  return advance


def _stream_batches(ctx, stage: str, split, spec: BatchSpec, start_step: int, total_steps: int):
  """This process's share of each global batch from `start_step` on; epoch e is the same on a rerun."""
  spe, dataset = spec.steps_per_epoch, ctx.dataset
  for epoch in range(start_step // spe, total_steps // spe):
    first = start_step - epoch * spe if epoch == start_step // spe else 0
    yield from stream_pipeline.train_batches(
        split, global_batch=spec.batch_size, image_size=dataset.image_size, mean=dataset.mean, std=dataset.std,
        seed=ctx.config.seed + stage_tag(stage), epoch=epoch, start_step=first, steps=spe,
        process_index=jax.process_index(), process_count=jax.process_count(), augment=spec.augment)


def multihead_parts(ctx, split, head_settings: list, step_cfg: StepConfig, class_counts) -> dict:
  """The pieces of a K-head stage 2: 'init_opt_state' (stacked params -> optimizer states) and
  'feeder' (the state to start from -> the feeder)."""
  config = ctx.config
  if not multihead_supported(config, ctx.dataset):
    raise UsageError('training several stage-2 heads at once needs data that fits in memory, or cached '
                     'features (--config.stage2.augment=False).')
  cached = uses_cached_features(config)
  step, init_opt_state = make_multihead_step(ctx.model, head_settings_arrays(head_settings), config.stage2,
                                             class_counts, step_cfg, cached, ctx.data_sharding, ctx.replicated,
                                             _sampler_tables(ctx, 'stage2', split))

  def feeder(state):
    if cached:
      data, labels = _cached_features(ctx, state, split)
    else:
      data, labels = _device_arrays(ctx, train_split_name(config, 'stage2'), split)
    return lambda state: step(state, data, labels)

  return {'init_opt_state': init_opt_state, 'feeder': feeder}
