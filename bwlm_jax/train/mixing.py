"""Soft training targets for the backbone stages, made inside the jitted step: mixup (Zhang et al. 2018),
CutMix (Yun et al. 2019) and label smoothing (Szegedy et al. 2016).

One mixing ratio per batch, lambda ~ Beta(alpha, alpha); image i is mixed with image B-1-i of the same
(shuffled) batch. CutMix pastes a box of about 1 - lambda of the image and then sets lambda to the share
of pixels actually kept (the box is clipped at the borders). With both alphas > 0 each batch takes one of
the two at even odds, and `prob` of the batches are mixed at all. The targets are
lambda * q(y_i) + (1 - lambda) * q(y_{B-1-i}) with q the label-smoothed one-hot vector.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Mixing:
  """A backbone stage's `mixup_alpha`, `cutmix_alpha`, `mix_prob` and `label_smoothing`."""
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  prob: float = 1.0
  label_smoothing: float = 0.0

  @classmethod
  def from_config(cls, stage_cfg) -> 'Mixing':
    return cls(float(stage_cfg.mixup_alpha), float(stage_cfg.cutmix_alpha), float(stage_cfg.mix_prob),
               float(stage_cfg.label_smoothing))

  @property
  def mixes(self) -> bool:
    return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

  @property
  def active(self) -> bool:
    """Whether the targets are other than the integer labels."""
    return self.mixes or self.label_smoothing > 0


def smoothed_targets(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """(1 - smoothing) * one_hot(labels) + smoothing / C, float32 [B, C]."""
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + smoothing / num_classes


def cutmix_box(key: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """(mask [H, W], True inside the pasted box; the share of pixels outside it): a box of sides
  floor(H sqrt(1 - lam)) x floor(W sqrt(1 - lam)) centred at a uniform pixel, clipped at the borders."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = jnp.floor(height * ratio).astype(jnp.int32), jnp.floor(width * ratio).astype(jnp.int32)
  y_key, x_key = jax.random.split(key)
  cy = jax.random.randint(y_key, (), 0, height)
  cx = jax.random.randint(x_key, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  mask = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  kept = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
  return mask, kept


@dataclasses.dataclass(frozen=True)
class Reweighting:
  """Deferred re-weighting (Cao et al. 2019, LDAM-DRW): from `start_step` on, example i's loss is weighted by
  its class's weight w (Cui et al.'s class-balanced weights), normalised as PyTorch's weighted cross-entropy
  (sum_i w_i l_i / sum_i w_i) that the reference code uses."""
  start_step: int
  class_weights: jax.Array


def reweighted(targets: jax.Array, step: jax.Array, reweighting: Reweighting) -> jax.Array:
  """Targets [B, C] whose rows are scaled by B w_i / sum_j w_j from the start step on (w_i = q_i . w for soft
  targets q_i). Every loss of the family is linear in its targets (`losses`), so the mean loss on these is
  exactly the weighted mean of the losses on the original targets."""
  weights = targets @ reweighting.class_weights
  scale = weights * weights.shape[0] / weights.sum()
  return jnp.where(step >= reweighting.start_step, targets * scale[:, None], targets)


def mix(key: jax.Array, x: jax.Array, labels: jax.Array, num_classes: int, mixing: Mixing):
  """(mixed images [B, H, W, C] in x's dtype, soft targets [B, num_classes])."""
  targets = smoothed_targets(labels, num_classes, mixing.label_smoothing)
  if not mixing.mixes:
    return x, targets
  apply_key, switch_key, mixup_key, cutmix_key, box_key = jax.random.split(key, 5)
  partner_x, partner_targets = x[::-1], targets[::-1]
  mixed = jax.random.uniform(apply_key) < mixing.prob
  if mixing.mixup_alpha > 0 and mixing.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(switch_key) < 0.5
  else:
    use_cutmix = jnp.asarray(mixing.cutmix_alpha > 0)
  mixup_lam = (jax.random.beta(mixup_key, mixing.mixup_alpha, mixing.mixup_alpha)
               if mixing.mixup_alpha > 0 else jnp.float32(1.0))
  cutmix_lam = (jax.random.beta(cutmix_key, mixing.cutmix_alpha, mixing.cutmix_alpha)
                if mixing.cutmix_alpha > 0 else jnp.float32(1.0))
  mask, kept = cutmix_box(box_key, cutmix_lam, x.shape[1], x.shape[2])
  lam = jnp.where(mixed, jnp.where(use_cutmix, kept, mixup_lam), 1.0).astype(jnp.float32)
  blended = (lam * x.astype(jnp.float32) + (1.0 - lam) * partner_x.astype(jnp.float32)).astype(x.dtype)
  pasted = jnp.where(mask[None, :, :, None], partner_x, x)
  out = jnp.where(mixed, jnp.where(use_cutmix, pasted, blended), x)
  return out, lam * targets + (1.0 - lam) * partner_targets
