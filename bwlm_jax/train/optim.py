"""SGD with momentum, a cosine schedule and weight decay masked to the parameters it may touch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bwlm_jax.models.head import is_fixed


def cosine_decay(init_value, decay_steps) -> optax.Schedule:
  """`init_value * (1 + cos(pi * min(t, T) / T)) / 2`, the arithmetic of optax's cosine_decay_schedule.

  Unlike optax's, T may be a traced array: K stage-2 heads trained at once can each have their own
  length (a head whose schedule has ended keeps lr 0, so its parameters stop moving).
  """
  decay_steps = float(decay_steps) if isinstance(decay_steps, int) else jnp.maximum(decay_steps, 1.0)

  def schedule(count):
    count = jnp.minimum(count, decay_steps)
    return init_value * (0.5 * (1 + jnp.cos(jnp.pi * count / decay_steps)))

  return schedule


def learning_rate_schedule(learning_rate, total_steps, steps_per_epoch: int, warmup_epochs=0) -> optax.Schedule:
  """Cosine from `learning_rate` to 0 over the stage (paper 4.2), after optional linear warm-up.

  `learning_rate` and `total_steps` may be traced (see `cosine_decay`); the warm-up length may not.
  """
  warmup = warmup_epochs * steps_per_epoch
  length = max(total_steps - warmup, 1) if isinstance(total_steps, int) else total_steps - warmup
  cosine = cosine_decay(learning_rate, length)
  if warmup <= 0:
    return cosine
  ramp = optax.linear_schedule(0.0, learning_rate, warmup)
  return optax.join_schedules([ramp, cosine], [warmup])


def sgd(schedule: optax.Schedule, weight_decay, momentum: float, nesterov: bool) -> optax.GradientTransformation:
  """PyTorch-style SGD: g + wd * p, then momentum, then -lr.

  `weight_decay` is therefore PyTorch's `weight_decay` (the gradient of (wd / 2) * ||p||^2), on every
  trainable parameter but a constant held among them (a cosine head's scale: `models.head.is_fixed`). In stage 2
  those are the new head's alone: the frozen backbone lives outside the trained parameters
  (`TrainState.frozen`), so it can neither move nor decay.
  """
  return optax.chain(
      decayed_weights(weight_decay),
      optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov),
  )


def decayed_weights(weight_decay) -> optax.GradientTransformation:
  """optax.add_decayed_weights (g + wd * p, the same state), skipping the constants `is_fixed` names."""
  def update(updates, state, params):
    return jax.tree_util.tree_map_with_path(
        lambda path, g, p: g if is_fixed(path) else g + weight_decay * p, updates, params), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def stage_optimizer(stage_cfg, total_steps, steps_per_epoch: int, learning_rate=None, weight_decay=None):
  """(SGD, its learning-rate schedule) of a stage of `total_steps` steps (paper section 4.2): a config section's
  momentum, Nesterov and warm-up, with its learning rate and weight decay unless given (a stage-2 head's)."""
  learning_rate = stage_cfg.learning_rate if learning_rate is None else learning_rate
  weight_decay = stage_cfg.weight_decay if weight_decay is None else weight_decay
  schedule = learning_rate_schedule(learning_rate, total_steps, steps_per_epoch, stage_cfg.warmup_epochs)
  return sgd(schedule, weight_decay, stage_cfg.momentum, stage_cfg.nesterov), schedule
