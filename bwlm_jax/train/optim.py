"""SGD with momentum, a cosine schedule and weight decay masked to the parameters it may touch."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(stage_cfg, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Cosine from `learning_rate` to 0 over the stage (paper 4.2), after optional linear warm-up."""
  warmup = stage_cfg.warmup_epochs * steps_per_epoch
  cosine = optax.cosine_decay_schedule(stage_cfg.learning_rate, max(total_steps - warmup, 1))
  if warmup <= 0:
    return cosine
  ramp = optax.linear_schedule(0.0, stage_cfg.learning_rate, warmup)
  return optax.join_schedules([ramp, cosine], [warmup])


def head_mask(params):
  """True for the parameters of the classifier head ('head' subtree), False elsewhere."""
  return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[0], 'key', None) == 'head', params)


def sgd(stage_cfg, schedule: optax.Schedule, decay_mask=None) -> optax.GradientTransformation:
  """PyTorch-style SGD: g + wd * p, then momentum, then -lr.

  `weight_decay` is therefore PyTorch's `weight_decay` (the gradient of (wd / 2) * ||p||^2), applied
  only where `decay_mask` is True (all trainable parameters when None).
  """
  return optax.chain(
      optax.add_decayed_weights(stage_cfg.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=stage_cfg.momentum or None, nesterov=stage_cfg.nesterov),
  )
