"""Jitted, pure train and predict steps.

A 'full' step trains backbone and head (naive, stage 1); a 'head' step trains only the head on
features of the frozen backbone (stage 2): the features go through `stop_gradient`, BatchNorm runs
in inference mode, and the gradient is taken with respect to the head alone, so the backbone's
backward pass is never computed.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from bwlm_jax import losses
from bwlm_jax.data.sampling import BatchSpec, cached_batch, device_batch
from bwlm_jax.models import Model
from bwlm_jax.train import optim
from bwlm_jax.train.state import TrainState

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  mode: str  # 'full' | 'head'
  batch: BatchSpec
  max_norm: Optional[float] = None  # Head only: cap each class's weight-vector norm after the update.


def cap_class_norms(head_params, max_norm: float):
  """MaxNorm (Alshammari et al. 2022): project each class's weight vector into the ball of radius max_norm."""
  kernel = head_params['dense']['kernel']
  norms = jnp.linalg.norm(kernel, axis=0, keepdims=True)
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-12))
  return {**head_params, 'dense': {**head_params['dense'], 'kernel': kernel * scale}}


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


def make_device_train_step(model: Model, tx, loss_fn: LossFn, schedule, cfg: StepConfig, data_sharding=None,
                           state_sharding=None, sampler_tables=None):
  """step(state, images_uint8 [N,H,W,3], labels [N]) -> (state, metrics): one jitted call per step."""
  def step(state, images, labels):
    x, batch_labels = device_batch(state.rng, state.step, images, labels, cfg.batch, data_sharding, sampler_tables)
    return _forward_and_update(model, tx, loss_fn, schedule, cfg.mode, state, x, batch_labels, cfg.max_norm)

  out_shardings = None if state_sharding is None else (state_sharding, None)
  return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings)


def make_cached_head_step(model: Model, tx, loss_fn: LossFn, schedule, cfg: StepConfig, data_sharding=None,
                          state_sharding=None, sampler_tables=None):
  """step(state, features [N, D], labels [N]) -> (state, metrics): stage 2 on precomputed features.

  The batches are those of `make_device_train_step` (same indices), without the backbone's forward pass.
  """
  def step(state, features, labels):
    x, batch_labels = cached_batch(state.rng, state.step, features, labels, cfg.batch, data_sharding, sampler_tables)
    return _forward_and_update(model, tx, loss_fn, schedule, 'cached', state, x, batch_labels, cfg.max_norm)

  out_shardings = None if state_sharding is None else (state_sharding, None)
  return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings)


def make_stream_train_step(model: Model, tx, loss_fn: LossFn, schedule, cfg: StepConfig, state_sharding=None):
  """step(state, normalised images [B,H,W,3], labels [B]) -> (state, metrics), for host-fed batches."""
  def step(state, x, labels):
    return _forward_and_update(model, tx, loss_fn, schedule, cfg.mode, state, x.astype(cfg.batch.dtype), labels,
                               cfg.max_norm)

  out_shardings = None if state_sharding is None else (state_sharding, None)
  return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings)


def head_settings_arrays(settings: list[dict]) -> dict:
  """Stack per-head stage-2 settings ({'loss', 'alpha', 'beta', 'gamma', 'weight_decay', 'learning_rate',
  'epochs'})."""
  arrays = {name: jnp.asarray([float(s[name]) for s in settings], jnp.float32)
            for name in ('alpha', 'beta', 'gamma', 'weight_decay', 'learning_rate')}
  arrays['loss'] = jnp.asarray([losses.LOSSES.index(s['loss']) for s in settings], jnp.int32)
  arrays['epochs'] = jnp.asarray([int(s['epochs']) for s in settings], jnp.int32)
  return arrays


def _head_optimizer(stage_cfg, setting: dict, steps_per_epoch: int):
  """The stage-2 optimizer of one head, with its (possibly traced) learning rate, weight decay and length."""
  schedule_cfg = SimpleNamespace(learning_rate=setting['learning_rate'], warmup_epochs=stage_cfg.warmup_epochs)
  decay_cfg = SimpleNamespace(weight_decay=setting['weight_decay'], momentum=stage_cfg.momentum,
                              nesterov=stage_cfg.nesterov)
  total_steps = setting['epochs'] * steps_per_epoch
  schedule = optim.learning_rate_schedule(schedule_cfg, total_steps, steps_per_epoch)
  return optim.sgd(decay_cfg, schedule), schedule


def make_multihead_step(model: Model, settings: dict, stage_cfg, class_counts, cfg: StepConfig, cached: bool,
                        data_sharding=None, state_sharding=None, sampler_tables=None):
  """K stage-2 heads trained at once: one jitted step, features computed once and shared, vmap over heads.

  `settings` holds [K] arrays (see `head_settings_arrays`); head k follows exactly the updates it would
  get trained alone with those settings (same batches, same init). A head whose `epochs` are fewer than
  the run's has reached learning rate 0 by then and stays where it ended. Returns (step, init_opt_state)
  where step(state, data, labels) takes cached features [N, D] (cached=True) or uint8 images [N, H, W, 3].
  """
  def loss_of(logits, labels, setting):
    def one(name):
      return lambda: losses.stage2_loss(name, logits, labels, class_counts, alpha=setting['alpha'],
                                        beta=setting['beta'], gamma=setting['gamma'])
    return jax.lax.switch(setting['loss'], [one(name) for name in losses.LOSSES])

  def update_one(head_params, opt_state, setting, step, features, labels):
    tx, schedule = _head_optimizer(stage_cfg, setting, cfg.batch.steps_per_epoch)

    def objective(params):
      logits = model.logits(params['head'], features)
      return loss_of(logits, labels, setting), logits

    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(head_params)
    head_params, opt_state = _apply_gradients(tx, grads, opt_state, head_params, cfg.max_norm)
    return head_params, opt_state, _step_metrics(loss, logits, labels, schedule(step))

  def step(state, data, labels):
    if cached:
      features, batch_labels = cached_batch(state.rng, state.step, data, labels, cfg.batch, data_sharding,
                                             sampler_tables)
    else:
      x, batch_labels = device_batch(state.rng, state.step, data, labels, cfg.batch, data_sharding, sampler_tables)
      features, _ = model.features(state.frozen['params'], state.frozen['batch_stats'], x, train=False)
    features = jax.lax.stop_gradient(features)
    params, opt_state, metrics = jax.vmap(update_one, in_axes=(0, 0, 0, None, None, None))(
        state.params, state.opt_state, settings, state.step, features, batch_labels)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def init_opt_state(stacked_params):
    return jax.vmap(lambda p, s: _head_optimizer(stage_cfg, s, cfg.batch.steps_per_epoch)[0].init(p))(
        stacked_params, settings)

  out_shardings = None if state_sharding is None else (state_sharding, None)
  return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings), init_opt_state


def stack_heads(head_params, count: int):
  """`count` copies of one head's parameters along a new leading axis."""
  return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (count,) + leaf.shape), head_params)
