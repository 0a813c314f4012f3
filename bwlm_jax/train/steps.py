"""Jitted, pure train and predict steps.

A 'full' step trains backbone and head (naive, stage 1); a 'head' step trains only the head on
features of the frozen backbone (stage 2): the features go through `stop_gradient`, BatchNorm runs
in inference mode, and the gradient is taken with respect to the head alone, so the backbone's
backward pass is never computed.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

import jax
import jax.numpy as jnp
import optax

from bwlm_jax.data import device_pipeline
from bwlm_jax.train.state import Model, TrainState

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

# Streams of randomness derived from a state's rng, kept apart by these tags.
DATA_ORDER, AUGMENT, HEAD_INIT = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class StepConfig:
  mode: str  # 'full' | 'head'
  batch_size: int
  steps_per_epoch: int
  augment: bool
  mean: tuple
  std: tuple
  dtype: jnp.dtype
  max_norm: Optional[float] = None  # Head only: cap each class's weight-vector norm after the update.


def cap_class_norms(head_params, max_norm: float):
  """MaxNorm (Alshammari et al. 2022): project each class's weight vector into the ball of radius max_norm."""
  kernel = head_params['dense']['kernel']
  norms = jnp.linalg.norm(kernel, axis=0, keepdims=True)
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-12))
  return {**head_params, 'dense': {**head_params['dense'], 'kernel': kernel * scale}}


def class_balanced_tables(labels: np.ndarray, num_classes: int) -> dict:
  """Lookup arrays for class-balanced sampling: example indices grouped by class, and where each class starts."""
  order = np.argsort(labels, kind='stable')
  counts = np.bincount(labels, minlength=num_classes)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  return {'order': jnp.asarray(order, jnp.int32), 'starts': jnp.asarray(starts, jnp.int32),
          'counts': jnp.asarray(counts, jnp.int32), 'present': jnp.asarray(np.flatnonzero(counts), jnp.int32)}


def class_balanced_indices(key, step, tables: dict, batch_size: int) -> jax.Array:
  """A uniformly drawn class, then a uniformly drawn example of it, for each batch slot."""
  class_key, example_key = jax.random.split(jax.random.fold_in(key, step))
  present = tables['present']
  classes = present[jax.random.randint(class_key, (batch_size,), 0, present.shape[0])]
  offsets = jnp.floor(jax.random.uniform(example_key, (batch_size,)) * tables['counts'][classes]).astype(jnp.int32)
  return tables['order'][tables['starts'][classes] + offsets]


def _apply_gradients(tx, grads, opt_state, params, max_norm: Optional[float]):
  """One optimizer update; with `max_norm`, MaxNorm on the head afterwards."""
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  if max_norm is not None:
    params = {**params, 'head': cap_class_norms(params['head'], max_norm)}
  return params, opt_state


def _step_metrics(loss, logits, labels, learning_rate) -> dict:
  return {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels), 'learning_rate': learning_rate}


def _forward_and_update(model: Model, tx: optax.GradientTransformation, loss_fn: LossFn,
                        schedule: optax.Schedule, mode: str, state: TrainState, x, labels,
                        max_norm: Optional[float] = None):
  if mode == 'cached':  # x already holds the frozen backbone's features.
    def loss_of(params):
      logits = model.logits(params['head'], x)
      return loss_fn(logits, labels), (logits, state.batch_stats)
  elif mode == 'full':
    def loss_of(params):
      features, new_stats = model.features(params['backbone'], state.batch_stats, x, train=True)
      logits = model.logits(params['head'], features)
      return loss_fn(logits, labels), (logits, new_stats)
  else:
    features, _ = model.features(state.frozen['params'], state.frozen['batch_stats'], x, train=False)
    features = jax.lax.stop_gradient(features)

    def loss_of(params):
      logits = model.logits(params['head'], features)
      return loss_fn(logits, labels), (logits, state.batch_stats)

  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  params, opt_state = _apply_gradients(tx, grads, state.opt_state, state.params,
                                       max_norm if mode != 'full' else None)
  metrics = _step_metrics(loss, logits, labels, schedule(state.step))
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
  return new_state, metrics


def step_indices(state: TrainState, num_examples: int, cfg: StepConfig, sampler_tables=None) -> jax.Array:
  """Example indices of the batch of `state.step`.

  Without `sampler_tables` an epoch is a permutation; with them (class-balanced) every slot draws a class.
  """
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), DATA_ORDER)
  if sampler_tables is not None:
    return class_balanced_indices(key, state.step, sampler_tables, cfg.batch_size)
  epoch = state.step // cfg.steps_per_epoch
  step_in_epoch = state.step % cfg.steps_per_epoch
  return device_pipeline.batch_indices(key, epoch, step_in_epoch, num_examples, cfg.batch_size)


def device_batch(state: TrainState, images, labels, cfg: StepConfig, data_sharding, sampler_tables=None):
  """The training batch of `state.step`, gathered from on-device arrays, augmented and normalised."""
  key = jax.random.wrap_key_data(state.rng)
  indices = step_indices(state, labels.shape[0], cfg, sampler_tables)
  batch_images, batch_labels = images[indices], labels[indices]
  if cfg.augment:
    aug_key = jax.random.fold_in(jax.random.fold_in(key, AUGMENT), state.step)
    batch_images = device_pipeline.random_crop_flip(aug_key, batch_images)
  x = device_pipeline.normalize(batch_images, cfg.mean, cfg.std, cfg.dtype)
  return _split_over_devices(x, batch_labels, data_sharding)


def cached_batch(state: TrainState, features, labels, cfg: StepConfig, data_sharding, sampler_tables=None):
  """The rows of precomputed features [N, D] for the batch of `state.step` (the indices of `device_batch`)."""
  indices = step_indices(state, labels.shape[0], cfg, sampler_tables)
  return _split_over_devices(features[indices], labels[indices], data_sharding)


def _split_over_devices(x, labels, data_sharding):
  if data_sharding is None:
    return x, labels
  return (jax.lax.with_sharding_constraint(x, data_sharding),
          jax.lax.with_sharding_constraint(labels, data_sharding))


def make_device_train_step(model: Model, tx, loss_fn: LossFn, schedule, cfg: StepConfig, data_sharding=None,
                           state_sharding=None, sampler_tables=None):
  """step(state, images_uint8 [N,H,W,3], labels [N]) -> (state, metrics): one jitted call per step."""
  def step(state, images, labels):
    x, batch_labels = device_batch(state, images, labels, cfg, data_sharding, sampler_tables)
    return _forward_and_update(model, tx, loss_fn, schedule, cfg.mode, state, x, batch_labels, cfg.max_norm)

  out_shardings = None if state_sharding is None else (state_sharding, None)
  return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings)


def make_cached_head_step(model: Model, tx, loss_fn: LossFn, schedule, cfg: StepConfig, data_sharding=None,
                          state_sharding=None, sampler_tables=None):
  """step(state, features [N, D], labels [N]) -> (state, metrics): stage 2 on precomputed features.

  The batches are those of `make_device_train_step` (same indices), without the backbone's forward pass.
  """
  def step(state, features, labels):
    x, batch_labels = cached_batch(state, features, labels, cfg, data_sharding, sampler_tables)
    return _forward_and_update(model, tx, loss_fn, schedule, 'cached', state, x, batch_labels, cfg.max_norm)

  out_shardings = None if state_sharding is None else (state_sharding, None)
  return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings)


def make_stream_train_step(model: Model, tx, loss_fn: LossFn, schedule, cfg: StepConfig, state_sharding=None):
  """step(state, normalised images [B,H,W,3], labels [B]) -> (state, metrics), for host-fed batches."""
  def step(state, x, labels):
    return _forward_and_update(model, tx, loss_fn, schedule, cfg.mode, state, x.astype(cfg.dtype), labels,
                               cfg.max_norm)

  out_shardings = None if state_sharding is None else (state_sharding, None)
  return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings)


def make_features_fn(model: Model, mean, std, dtype):
  """features(variables, images) -> float32 features [B, D]; uint8 images are normalised first.

  `variables` = {'backbone': params, 'batch_stats': ...}; BatchNorm runs in inference mode.
  """
  @jax.jit
  def features(variables, images):
    if images.dtype == jnp.uint8:
      x = device_pipeline.normalize(images, mean, std, dtype)
    else:
      x = images.astype(dtype)
    out, _ = model.features(variables['backbone'], variables['batch_stats'], x, train=False)
    return out.astype(jnp.float32)

  return features


def head_settings_arrays(settings: list[dict]) -> dict:
  """Stack per-head stage-2 settings ({'loss', 'alpha', 'beta', 'gamma', 'weight_decay', 'learning_rate',
  'epochs'})."""
  from bwlm_jax.losses import LOSSES
  arrays = {name: jnp.asarray([float(s[name]) for s in settings], jnp.float32)
            for name in ('alpha', 'beta', 'gamma', 'weight_decay', 'learning_rate')}
  arrays['loss'] = jnp.asarray([LOSSES.index(s['loss']) for s in settings], jnp.int32)
  arrays['epochs'] = jnp.asarray([int(s['epochs']) for s in settings], jnp.int32)
  return arrays


def _head_optimizer(stage_cfg, setting: dict, steps_per_epoch: int):
  """The stage-2 optimizer of one head, with its (possibly traced) learning rate, weight decay and length."""
  from types import SimpleNamespace
  from bwlm_jax.train import optim
  schedule_cfg = SimpleNamespace(learning_rate=setting['learning_rate'], warmup_epochs=stage_cfg.warmup_epochs)
  decay_cfg = SimpleNamespace(weight_decay=setting['weight_decay'], momentum=stage_cfg.momentum,
                              nesterov=stage_cfg.nesterov)
  total_steps = setting['epochs'] * steps_per_epoch
  schedule = optim.learning_rate_schedule(schedule_cfg, total_steps, steps_per_epoch)
  return optim.sgd(decay_cfg, schedule, optim.head_mask), schedule


def make_multihead_step(model: Model, settings: dict, stage_cfg, class_counts, cfg: StepConfig, cached: bool,
                        data_sharding=None, state_sharding=None, sampler_tables=None):
  """K stage-2 heads trained at once: one jitted step, features computed once and shared, vmap over heads.

  `settings` holds [K] arrays (see `head_settings_arrays`); head k follows exactly the updates it would
  get trained alone with those settings (same batches, same init). A head whose `epochs` are fewer than
  the run's has reached learning rate 0 by then and stays where it ended. Returns (step, init_opt_state)
  where step(state, data, labels) takes cached features [N, D] (cached=True) or uint8 images [N, H, W, 3].
  """
  from bwlm_jax import losses

  def loss_of(logits, labels, setting):
    def one(name):
      return lambda: losses.stage2_loss(name, logits, labels, class_counts, alpha=setting['alpha'],
                                        beta=setting['beta'], gamma=setting['gamma'])
    return jax.lax.switch(setting['loss'], [one(name) for name in losses.LOSSES])

  def update_one(head_params, opt_state, setting, step, features, labels):
    tx, schedule = _head_optimizer(stage_cfg, setting, cfg.steps_per_epoch)

    def objective(params):
      logits = model.logits(params['head'], features)
      return loss_of(logits, labels, setting), logits

    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(head_params)
    head_params, opt_state = _apply_gradients(tx, grads, opt_state, head_params, cfg.max_norm)
    return head_params, opt_state, _step_metrics(loss, logits, labels, schedule(step))

  def step(state, data, labels):
    if cached:
      features, batch_labels = cached_batch(state, data, labels, cfg, data_sharding, sampler_tables)
    else:
      x, batch_labels = device_batch(state, data, labels, cfg, data_sharding, sampler_tables)
      features, _ = model.features(state.frozen['params'], state.frozen['batch_stats'], x, train=False)
    features = jax.lax.stop_gradient(features)
    params, opt_state, metrics = jax.vmap(update_one, in_axes=(0, 0, 0, None, None, None))(
        state.params, state.opt_state, settings, state.step, features, batch_labels)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def init_opt_state(stacked_params):
    return jax.vmap(lambda p, s: _head_optimizer(stage_cfg, s, cfg.steps_per_epoch)[0].init(p))(
        stacked_params, settings)

  out_shardings = None if state_sharding is None else (state_sharding, None)
  return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings), init_opt_state


def stack_heads(head_params, count: int):
  """`count` copies of one head's parameters along a new leading axis."""
  return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (count,) + leaf.shape), head_params)
