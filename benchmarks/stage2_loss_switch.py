"""What the stage-2 step pays for choosing each head's loss with a batched `lax.switch`.

Under `jax.vmap` the heads' loss index is batched, so the switch computes every loss of the family for every
head and selects each head's own. This times the cached-features step of K heads (all cross-entropy) with the
whole family as branches against the same step with cross-entropy as the only branch.

  python benchmarks/stage2_loss_switch.py [--heads=144] [--classes=100] [--dim=64] [--batch=128]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from bwlm_jax import losses
from bwlm_jax.data.sampling import BatchSpec
from bwlm_jax.head_setting import HeadSetting
from bwlm_jax.models import LinearHead, Model
from bwlm_jax.models.resnet_cifar import CifarResNet
from bwlm_jax.train.state import TrainState
from bwlm_jax.train.steps import HeadsFeed, make_heads_step, stacked_copies


def time_step(family: tuple, args, repeats: int = 5, steps: int = 50) -> float:
  """Best time of `steps` steps (ms per step) with `family` as the switch's branches."""
  real = losses.LOSSES
  losses.LOSSES = family
  try:
    model = Model(CifarResNet(1), LinearHead(args.classes))
    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.normal(size=(4 * args.batch, args.dim)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, args.classes, 4 * args.batch), jnp.int32)
    counts = jnp.asarray(np.maximum(np.bincount(np.asarray(labels), minlength=args.classes), 1), jnp.float32)
    spec = BatchSpec(args.batch, 4, False, (0.0,) * 3, (1.0,) * 3, jnp.float32)
    settings = [HeadSetting(loss='ce', learning_rate=float(lr)) for lr in np.linspace(0.01, 0.3, args.heads)]
    stage_cfg = type('Stage2', (), {'momentum': 0.9, 'nesterov': False, 'warmup_epochs': 0})
    step, init_opt_state = make_heads_step(model, settings, stage_cfg, counts, HeadsFeed('cached', spec))
    head = LinearHead(args.classes).init(jax.random.key(0), jnp.zeros((1, args.dim)))['params']
    params = {'head': stacked_copies(head, args.heads)}
    state = TrainState(jnp.zeros((), jnp.int32), params, {}, init_opt_state(params), {},
                       jax.random.key_data(jax.random.key(1)))
    state, _ = step(state, features, labels)  # compile
    best = float('inf')
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = step(state, features, labels)
      jax.block_until_ready(metrics)
      best = min(best, (time.perf_counter() - start) / steps * 1e3)
    return best
  finally:
    losses.LOSSES = real


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name, default in (('heads', 144), ('classes', 100), ('dim', 64), ('batch', 128)):
    parser.add_argument(f'--{name}', type=int, default=default)
  args = parser.parse_args()
  family = time_step(losses.LOSSES, args)
  alone = time_step(('ce',), args)
  print(f'{args.heads} heads, batch {args.batch}, {args.classes} classes, features {args.dim} '
        f'({jax.devices()[0].platform}): switch over {len(losses.LOSSES)} losses {family:.2f} ms/step, '
        f'cross-entropy alone {alone:.2f} ms/step ({family / alone:.2f}x)')


if __name__ == '__main__':
  main()
