"""Jitted, pure train steps: one step factory per kind of stage.

A backbone stage (naive, stage 1) trains backbone and head together, on device-kept or streamed
batches. Stage 2 trains a grid of K >= 1 heads on the frozen backbone's features (`make_heads_step`):
the features go through `stop_gradient`, BatchNorm runs in inference mode, and the gradient is taken
with respect to the heads alone, so the backbone's backward pass is never computed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from bwlm_jax import head_setting, losses
from bwlm_jax.data.randaugment import augmented_stream_batch
from bwlm_jax.data.sampling import MIXING, BatchSpec, cached_batch, device_batch, randaugment_key
from bwlm_jax.head_setting import HeadSetting
from bwlm_jax.models import Model
from bwlm_jax.models.head import head_kernel, with_weights
from bwlm_jax.train import optim
from bwlm_jax.train.mixing import Mixing, Reweighting, mix, reweighted
from bwlm_jax.train.state import TrainState

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cap_class_norms(head_params, max_norm: float):
  """MaxNorm (Alshammari et al. 2022): project each class's weight vector into the ball of radius max_norm."""
  kernel = head_kernel(head_params)
  norms = jnp.linalg.norm(kernel, axis=0, keepdims=True)
  return with_weights(head_params, kernel * jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-12)))


def _apply_gradients(tx, grads, opt_state, params, max_norm: Optional[float]):
  """One optimizer update; with `max_norm`, MaxNorm on the head afterwards."""
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  if max_norm is not None:
    params = {**params, 'head': cap_class_norms(params['head'], max_norm)}
  return params, opt_state


def _step_metrics(loss, logits, labels, learning_rate) -> dict:
  return {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels), 'learning_rate': learning_rate}


# What each of K backbones trained at once (`Members`) may have of its own.
MEMBER_FIELDS = ('learning_rate', 'weight_decay', 'label_smoothing')


@dataclasses.dataclass(frozen=True)
class Members:
  """K backbones of a stage trained at once under `jax.vmap` (`recipe.backbones_at_once`): one init, the same
  batches, mixing and loss, each with its own learning rate, weight decay and label smoothing (float32 [K]);
  `optimizer(learning_rate, weight_decay) -> (tx, schedule)` builds a member's optimizer from traced values."""
  learning_rate: jax.Array
  weight_decay: jax.Array
  label_smoothing: jax.Array
  optimizer: Callable


def _forward_and_update(model: Model, tx: optax.GradientTransformation, loss_fn: LossFn,
                        schedule: optax.Schedule, state: TrainState, x, labels, train_batch_norm: bool,
                        mixing: Mixing, reweighting: Optional[Reweighting], members: Optional[Members]):
  """One step of a backbone stage: backbone and head trained together (what of the backbone moves is
  `tx`'s mask, `train/tuning.py`), BatchNorm in training mode unless `train_batch_norm` is False; the
  loss on `mixing`'s soft targets where it is active, re-weighted by `reweighting` (the accuracy stays on
  the batch's own labels). With `members`, the state holds K backbones stacked on axis 0 and each takes
  this step with its own optimizer and label smoothing (`tx` and `schedule` unused): the batch and its
  mixing are drawn once, and smoothing the mixed targets equals mixing the smoothed ones (both are
  convex combinations of rows that sum to 1)."""
  targets = labels
  if mixing.active or reweighting is not None or members is not None:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), MIXING), state.step)
    shared = mixing if members is None else dataclasses.replace(mixing, label_smoothing=0.0)
    x, targets = mix(key, x, labels, model.head.num_classes, shared)

  def update(params, batch_stats, opt_state, tx, schedule, targets):
    if reweighting is not None:
      targets = reweighted(targets, state.step, reweighting)

    def loss_of(params):
      features, new_stats = model.features(params['backbone'], batch_stats, x, train=train_batch_norm)
      logits = model.logits(params['head'], features)
      return loss_fn(logits, targets), (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    params, opt_state = _apply_gradients(tx, grads, opt_state, params, None)
    return params, new_stats, opt_state, _step_metrics(loss, logits, labels, schedule(state.step))

  if members is None:
    params, new_stats, opt_state, metrics = update(state.params, state.batch_stats, state.opt_state, tx, schedule,
                                                   targets)
  else:
    def member(params, batch_stats, opt_state, learning_rate, weight_decay, smoothing):
      member_tx, member_schedule = members.optimizer(learning_rate, weight_decay)
      smoothed = targets * (1.0 - smoothing) + smoothing / targets.shape[-1]
      return update(params, batch_stats, opt_state, member_tx, member_schedule, smoothed)

    params, new_stats, opt_state, metrics = jax.vmap(member)(
        state.params, state.batch_stats, state.opt_state, members.learning_rate, members.weight_decay,
        members.label_smoothing)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
  return new_state, metrics


def make_device_train_step(model: Model, tx, loss_fn: LossFn, schedule, spec: BatchSpec, data_sharding=None,
                           state_sharding=None, train_batch_norm: bool = True, mixing: Mixing = Mixing(),
                           sampler_tables=None, reweighting: Optional[Reweighting] = None,
                           members: Optional[Members] = None):
  """step(state, images_uint8 [N,H,W,3], labels [N]) -> (state, metrics): one jitted call per step (batches
  drawn by class with `sampler_tables`, `sampling.sampler_tables`; K backbones at once with `members`)."""
  def step(state, images, labels):
    x, batch_labels = device_batch(state.rng, state.step, images, labels, spec, data_sharding, sampler_tables)
    return _forward_and_update(model, tx, loss_fn, schedule, state, x, batch_labels, train_batch_norm, mixing,
                               reweighting, members)

  out_shardings = None if state_sharding is None else (state_sharding, None)
  return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings)


def make_stream_train_step(model: Model, tx, loss_fn: LossFn, schedule, spec: BatchSpec, state_sharding=None,
                           train_batch_norm: bool = True, mixing: Mixing = Mixing(),
                           reweighting: Optional[Reweighting] = None, members: Optional[Members] = None):
  """step(state, normalised images [B,H,W,3], labels [B]) -> (state, metrics), for host-fed batches (K
  backbones at once with `members`)."""
  def step(state, x, labels):
    if spec.randaugment[0]:  # the device pipeline's operations, on the batch tf.data cropped and flipped
      x = augmented_stream_batch(randaugment_key(state.rng, state.step), x, spec.mean, spec.std, *spec.randaugment)
    return _forward_and_update(model, tx, loss_fn, schedule, state, x.astype(spec.dtype), labels, train_batch_norm,
                               mixing, reweighting, members)

  out_shardings = None if state_sharding is None else (state_sharding, None)
  return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings)


def _head_optimizer(stage_cfg, setting: HeadSetting, steps_per_epoch: int):
  """The stage-2 optimizer of one head: its (possibly traced) learning rate, weight decay and length, with
  stage 2's momentum and warm-up."""
  return optim.stage_optimizer(stage_cfg, setting.epochs * steps_per_epoch, steps_per_epoch,
                               learning_rate=setting.learning_rate, weight_decay=setting.weight_decay)


@dataclasses.dataclass(frozen=True)
class HeadsFeed:
  """How the stage-2 step gets each batch's features of the frozen backbone (`feeders.stage2_feed`)."""
  kind: str  # 'cached' (features [N, D] on device) | 'device' (uint8 images [N,H,W,3] on device) | 'stream'
  spec: BatchSpec
  sampler_tables: Optional[dict] = None  # class-balanced sampling ('cached' and 'device' only)


def _batch_features(model: Model, feed: HeadsFeed, state, data, labels, data_sharding):
  """(features of the frozen backbone, labels) of the step's batch, outside the gradient."""
  if feed.kind == 'cached':
    return cached_batch(state.rng, state.step, data, labels, feed.spec, data_sharding, feed.sampler_tables)
  if feed.kind == 'device':
    x, labels = device_batch(state.rng, state.step, data, labels, feed.spec, data_sharding, feed.sampler_tables)
  else:  # 'stream': `data` is the step's batch of normalised images
    x = data.astype(feed.spec.dtype)
  features, _ = model.features(state.frozen['params'], state.frozen['batch_stats'], x, train=False)
  return jax.lax.stop_gradient(features), labels


def make_heads_step(model: Model, settings: list[HeadSetting], stage_cfg, class_counts, feed: HeadsFeed,
                    max_norm: Optional[float] = None, data_sharding=None, state_sharding=None):
  """The stage-2 step: K heads (K >= 1, one per setting, on one frozen backbone) in one jitted call,
  features computed once per batch and shared, `jax.vmap` over the heads.

  Head k follows exactly the updates it would get trained alone with its setting (same batches, same
  init). A head whose `epochs` are fewer than the run's has reached learning rate 0 by then and stays
  where it ended. With `max_norm`, MaxNorm caps every head after each update. The heads' losses are one
  `lax.switch` on each head's loss index; under `vmap` the index is batched, so every loss of the family
  is computed for every head and the head's own is selected (cheap next to the features: [K, B, C]
  values per loss). Returns (step, init_opt_state); step(state, data, labels) takes what `feed.kind`
  names.
  """
  stacked = head_setting.stack(settings)
  branches = [functools.partial(losses.head_loss, name) for name in losses.LOSSES]

  def update_one(head_params, opt_state, setting, step, features, labels):
    tx, schedule = _head_optimizer(stage_cfg, setting, feed.spec.steps_per_epoch)

    def objective(params):
      logits = model.logits(params['head'], features)
      return jax.lax.switch(setting.loss, branches, logits, labels, class_counts, setting), logits

    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(head_params)
    head_params, opt_state = _apply_gradients(tx, grads, opt_state, head_params, max_norm)
    return head_params, opt_state, _step_metrics(loss, logits, labels, schedule(step))

  def step(state, data, labels):
    features, batch_labels = _batch_features(model, feed, state, data, labels, data_sharding)
    params, opt_state, metrics = jax.vmap(update_one, in_axes=(0, 0, 0, None, None, None))(
        state.params, state.opt_state, stacked, state.step, features, batch_labels)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def init_opt_state(stacked_params):
    return jax.vmap(lambda p, s: _head_optimizer(stage_cfg, s, feed.spec.steps_per_epoch)[0].init(p))(
        stacked_params, stacked)

  out_shardings = None if state_sharding is None else (state_sharding, None)
  return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings), init_opt_state


def stacked_copies(tree, count: int):
  """`count` copies of a pytree (a head's parameters, a backbone's state) along a new leading axis."""
  return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (count,) + jnp.shape(leaf)), tree)
