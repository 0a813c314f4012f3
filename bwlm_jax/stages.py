"""The stages a run can train, as values: what each one trains on, with which loss, which parameters.

Everything that differs between stages is read from this table (the loop, the feeders, the state,
the losses); nothing else compares stage names. The names stay the keys of the config sections, the
checkpoint directories and `results.json`.
"""

from __future__ import annotations

import dataclasses

from bwlm_jax.runtime.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  tag: int  # folded into the seed: keeps the stage's random streams apart from the others'
  # 'long_tail' (every training image), 'head_classes' (Data Balanced Review's stage-1 set) or 'review'
  # (its stage-2 set: stage 2's default; each head's own is `HeadSetting.train_set`, one of HEAD_TRAIN_SETS).
  train_set: str
  # False: new heads on a frozen backbone (the grid of heads, trained with `stage2.loss` per head);
  # True: backbone and head trained together with cross-entropy.
  trains_backbone: bool
  summary: str
  # Whether evaluation adds the post-hoc corrections (tau-norm, logit adjustment) of a one-stage model.
  posthoc_corrected: bool = False

  @property
  def trains_heads(self) -> bool:
    return not self.trains_backbone

  def __str__(self) -> str:
    return self.name


NAIVE = Stage('naive', 11, 'long_tail', True, 'one-stage cross-entropy on the whole long tail', True)
STAGE1 = Stage('stage1', 12, 'head_classes', True, 'cross-entropy on the head classes (Data Balanced Review)')
STAGE2 = Stage('stage2', 13, 'review', False, 'new heads on a frozen backbone, on the rebalanced set')
STAGES = (NAIVE, STAGE1, STAGE2)
NAMES = tuple(stage.name for stage in STAGES)
# The stages that train a backbone stage 2 can freeze (`stage2.backbone`), and the backbone of
# `model.init_from` as it comes (no stage trains it).
BACKBONES = tuple(stage.name for stage in STAGES if stage.trains_backbone)
PRETRAINED = 'pretrained'
# The sets a stage-2 head can train on: Data Balanced Review's, or the whole long tail.
HEAD_TRAIN_SETS = (STAGE2.train_set, NAIVE.train_set)


def get(name) -> Stage:
  """The stage called `name` (a Stage is returned as it is)."""
  if isinstance(name, Stage):
    return name
  for stage in STAGES:
    if stage.name == name:
      return stage
  raise UsageError(f'unknown stage {name!r}; expected one of {", ".join(NAMES)}.')


def grid_checkpoint(backbone: str, train_set: str = STAGE2.train_set) -> str:
  """Checkpoint directory of the grid of stage-2 heads trained on `backbone`'s features of `train_set`."""
  name = 'stage2_grid' if backbone == STAGE1.name else f'stage2_grid_{backbone}'
  return name if train_set == STAGE2.train_set else f'{name}_{train_set}'
