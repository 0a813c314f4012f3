"""What a stage's training loop calls: the jitted step and the inputs of each of its steps (a `Feed`).

A backbone stage is fed from images kept on the device (batches gathered inside the jitted step) or
from tf.data batches streamed by the host. Stage 2's grid of heads is fed one of three ways, decided
once by `stage2_feed`: cached features of the frozen backbone, device images, or streamed batches.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp

from bwlm_jax import stages
from bwlm_jax.data import stream_pipeline
from bwlm_jax.data.sampling import BatchSpec, class_balanced_tables, sampler_tables
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.models import inference_variables
from bwlm_jax.train.mixing import Mixing, Reweighting
from bwlm_jax.train.state import TrainState
from bwlm_jax.train.steps import (HeadsFeed, Members, make_device_train_step, make_heads_step,
                                  make_stream_train_step)

STAGE2_FEEDS = {
    'cached': 'features of the frozen backbone computed once (stage2.augment=False, stage2.cache_features=True)',
    'device': 'images kept on the device, through the frozen backbone every step',
    'stream': 'batches streamed with tf.data, through the frozen backbone every step',
}


def stage2_feed(config, dataset) -> str:
  """How stage 2 is fed, derived in this one place from stage2.augment, stage2.cache_features and where the
  data lives (data.pipeline, data.stream_above); an error for a combination that cannot work."""
  if not config.stage2.augment and config.stage2.cache_features:
    return 'cached'
  feed = 'device' if dataset.in_memory else 'stream'
  if feed == 'stream' and config.stage2.sampler == 'class_balanced':
    raise UsageError('stage2.sampler=class_balanced draws batches by index, which streamed data cannot do: use '
                     '--config.stage2.augment=False (cached features) or data that fits in memory.')
  return feed


def _device_arrays(ctx, name: str, split):
  """A training split's images and labels on the device, put there once per run."""
  if name not in ctx.device_arrays:
    ctx.device_arrays[name] = (jax.device_put(jnp.asarray(split.images), ctx.replicated),
                               jax.device_put(jnp.asarray(split.labels, jnp.int32), ctx.replicated))
  return ctx.device_arrays[name]


def train_split_name(stage, head_train_set: Optional[str] = None) -> str:
  """The key of a stage's training split: stage 2's depends on its heads' training set, the others' do not."""
  stage = stages.get(stage)
  return f'train/{stage.name}/{head_train_set}' if stage.trains_heads else f'train/{stage.name}'


def _cached_features(ctx, state, split):
  """The frozen backbone's features of every stage-2 training example, computed once, kept on device."""
  features, labels = ctx.split_features(inference_variables(stages.STAGE2, state), split)
  return (jax.device_put(jnp.asarray(features), ctx.replicated),
          jax.device_put(jnp.asarray(labels, jnp.int32), ctx.replicated))


@dataclasses.dataclass(frozen=True)
class Feed:
  """A stage's jitted step and its inputs: `inputs(state, total_steps)` iterates over the argument tuples of
  `step(state, *inputs) -> (state, metrics)`, one per step from `state.step` on."""
  step: Callable
  inputs: Callable[[TrainState, int], Iterator[tuple]]


def check_backbone_samplers(config, dataset, run_stages) -> None:
  """Before training: a backbone stage's class-drawn sampler needs the training images in memory."""
  for stage in run_stages:
    sampler = config[stage.name].sampler if stage.trains_backbone else 'uniform'
    if sampler != 'uniform' and not dataset.in_memory:
      raise UsageError(f'{stage.name}.sampler={sampler} draws batches by class, which streamed data cannot do: '
                       'use data that fits in memory (data.pipeline=device) or the uniform sampler.')


def backbone_feed(ctx, stage, split, spec: BatchSpec, tx, loss_fn, schedule, train_batch_norm: bool = True,
                  mixing: Mixing = Mixing(), reweighting: Optional[Reweighting] = None,
                  members: Optional[Members] = None) -> Feed:
  """The feed of a backbone stage (naive, stage 1): backbone and head trained together (K of them at once
  with `members`), on device-kept images (batches gathered inside the step, drawn by `<stage>.sampler`) or on
  streamed batches."""
  if ctx.dataset.in_memory:
    stage_cfg = ctx.config[stage.name]
    tables = sampler_tables(stage_cfg.sampler, split.labels, ctx.dataset.num_classes, stage_cfg.epochs)
    step = make_device_train_step(ctx.model, tx, loss_fn, schedule, spec, ctx.data_sharding, ctx.replicated,
                                  train_batch_norm, mixing, tables, reweighting, members)
    return Feed(step, lambda state, total_steps: itertools.repeat(
        _device_arrays(ctx, train_split_name(stage), split)))
  step = make_stream_train_step(ctx.model, tx, loss_fn, schedule, spec, ctx.replicated, train_batch_norm, mixing,
                                reweighting, members)
  return Feed(step, lambda state, total_steps: _streamed(ctx, stage, split, spec, int(state.step), total_steps))


def heads_feed(ctx, split, settings: list, spec: BatchSpec, class_counts):
  """(The feed of stage 2's grid of K heads, init_opt_state: stacked head parameters -> optimizer states).
  Its inputs are what `stage2_feed` decides: cached features (computed once, from the state's frozen
  backbone), device images or streamed batches."""
  config = ctx.config
  kind = stage2_feed(config, ctx.dataset)
  tables = (class_balanced_tables(split.labels, ctx.dataset.num_classes)
            if config.stage2.sampler == 'class_balanced' else None)
  step, init_opt_state = make_heads_step(ctx.model, settings, config.stage2, class_counts,
                                         HeadsFeed(kind, spec, tables), config.stage2.max_norm, ctx.data_sharding,
                                         ctx.replicated)

  def inputs(state, total_steps: int):
    if kind == 'stream':
      return _streamed(ctx, stages.STAGE2, split, spec, int(state.step), total_steps)
    if kind == 'cached':
      return itertools.repeat(_cached_features(ctx, state, split))
    return itertools.repeat(_device_arrays(ctx, train_split_name(stages.STAGE2, settings[0].train_set), split))

  return Feed(step, inputs), init_opt_state


def _streamed(ctx, stage, split, spec: BatchSpec, start_step: int, total_steps: int):
  """This process's share of each streamed global batch from `start_step` on, as global arrays."""
  for x, labels in _stream_batches(ctx, stage, split, spec, start_step, total_steps):
    yield (jax.make_array_from_process_local_data(ctx.data_sharding, x),
           jax.make_array_from_process_local_data(ctx.data_sharding, labels))


def _stream_batches(ctx, stage, split, spec: BatchSpec, start_step: int, total_steps: int):
  """This process's share of each global batch from `start_step` on; epoch e is the same on a rerun."""
  spe, dataset = spec.steps_per_epoch, ctx.dataset
  for epoch in range(start_step // spe, total_steps // spe):
    first = start_step - epoch * spe if epoch == start_step // spe else 0
    yield from stream_pipeline.train_batches(
        split, global_batch=spec.batch_size, image_size=dataset.image_size, mean=dataset.mean, std=dataset.std,
        seed=ctx.config.seed + stages.get(stage).tag, epoch=epoch, start_step=first, steps=spe,
        process_index=jax.process_index(), process_count=jax.process_count(), augment=spec.augment)
