"""Stage-2 settings chosen on the validation split: the candidate grid, the score and the choice.

The test split never enters here: candidates are scored on validation reports only, and test
reports are attached to the table after the choice is made.
"""

from __future__ import annotations

import itertools

import numpy as np
from bwlm_jax import head_setting, stages
from bwlm_jax.runtime.errors import RunError, UsageError
from bwlm_jax.head_setting import GRID_FIELDS, HeadSetting

SELECT_MODES = ('auto', 'val', 'none')
SELECT_METRICS = ('balanced_accuracy', 'accuracy')


def validate(stage2_cfg) -> None:
  """Errors for a head or selection config that cannot work, raised before any data is read."""
  if stage2_cfg.select not in SELECT_MODES:
    raise UsageError(f'stage2.select must be one of {SELECT_MODES}, got {stage2_cfg.select!r}.')
  if stage2_cfg.select_metric not in SELECT_METRICS:
    raise UsageError(f'unknown stage2.select_metric={stage2_cfg.select_metric!r}; expected one of {SELECT_METRICS}.')
  for field in GRID_FIELDS:
    values = grid_values(stage2_cfg, field)
    if values is not None and len(values) == 0:
      raise UsageError(f'stage2.grid.{field} is empty: the grid has no candidate. Give at least one value, '
                       f'or None to use stage2.{field}.')
  head_setting.validate(stage2_cfg, lambda field: grid_values(stage2_cfg, field))


def grid_values(stage2_cfg, field: str):
  """The values `stage2.grid.<field>` tries, or None (keep stage2.<field>). `--config.stage2.grid.X=None` on
  the command line arrives as (None,) for these tuple fields: it means None too."""
  values = stage2_cfg.grid[field]
  if values is None or (isinstance(values, (tuple, list)) and len(values) and all(v is None for v in values)):
    return None
  if isinstance(values, (tuple, list)) and any(v is None for v in values):
    raise UsageError(f'stage2.grid.{field}={tuple(values)} mixes None with values: give the values, or None alone.')
  return values


def candidates(stage2_cfg, fixed=()) -> list[HeadSetting]:
  """Head settings of the stage-2 grid, in a fixed order.

  Every combination of `stage2_cfg.grid` values; a grid field left None, or named in `fixed`, keeps
  `stage2_cfg`'s own value. A field the loss does not use (`head_setting.uses`) does not vary;
  stage2.backbone=pretrained pins the backbone (the grid's trained backbones are not mixed in).
  """
  base = HeadSetting.from_config(stage2_cfg)
  axes = {}
  for field in GRID_FIELDS:
    values = grid_values(stage2_cfg, field)
    if values is None or field in fixed or not head_setting.uses(base.loss, field) or (
        field == 'backbone' and base.backbone == stages.PRETRAINED):
      values = (getattr(base, field),)
    axes[field] = tuple(dict.fromkeys(head_setting.typed(field, v) for v in values))
  return [base.replace(**dict(zip(axes, combination))) for combination in itertools.product(*axes.values())]


def score(report: dict, metric: str) -> float:
  """The selection score of a validation report: mean per-class accuracy (balanced) or overall accuracy.

  Classes without validation images (the class the long tail keeps whole) are left out of the mean.
  """
  if metric == 'balanced_accuracy':
    per_class = np.asarray([np.nan if a is None else a for a in report['per_class']], np.float64)
    return float(np.nanmean(per_class))
  if metric == 'accuracy':
    return float(report['all'])
  raise UsageError(f'unknown selection metric {metric!r}; expected one of {SELECT_METRICS}.')


def choose(scores) -> int:
  """Index of the best score; ties keep the earliest candidate; a diverged candidate (score None or not
  finite) is never chosen."""
  scores = np.asarray([np.nan if s is None else s for s in scores], np.float64)
  if not scores.size:
    raise UsageError('nothing to choose from: the grid has no candidate.')
  if not np.isfinite(scores).any():
    raise RunError('nothing to choose from: every candidate diverged (non-finite parameters); lower the '
                   'learning rates of stage2.grid.')
  return int(np.nanargmax(np.where(np.isfinite(scores), scores, np.nan)))
