"""Stage-2 settings chosen on the validation split: the candidate grid, the score and the choice.

The test split never enters here: candidates are scored on validation reports only, and test
reports are attached to the table after the choice is made.
"""

from __future__ import annotations

import itertools

import numpy as np
from bwlm_jax import stages
from bwlm_jax.errors import RunError, UsageError

SELECT_MODES = ('auto', 'val', 'none')
SELECT_METRICS = ('balanced_accuracy', 'accuracy')
# Stage-2 fields a grid may vary: each combination trains as one head of the grid of its backbone (the heads
# of one backbone train at once, on shared features).
GRID_FIELDS = ('learning_rate', 'epochs', 'weight_decay', 'alpha', 'backbone')
# Every field that defines one head: its loss, the loss's parameters, its optimizer and its frozen backbone.
HEAD_FIELDS = ('loss', 'alpha', 'beta', 'gamma', 'weight_decay', 'learning_rate', 'epochs', 'backbone')


def validate(stage2_cfg) -> None:
  """Errors for a selection config that cannot work, raised before any data is read."""
  if stage2_cfg.select not in SELECT_MODES:
    raise UsageError(f'stage2.select must be one of {SELECT_MODES}, got {stage2_cfg.select!r}.')
  if stage2_cfg.select_metric not in SELECT_METRICS:
    raise UsageError(f'unknown stage2.select_metric={stage2_cfg.select_metric!r}; expected one of {SELECT_METRICS}.')
  for field in GRID_FIELDS:
    values = grid_values(stage2_cfg, field)
    if values is None:
      continue
    if len(values) == 0:
      raise UsageError(f'stage2.grid.{field} is empty: the grid has no candidate. Give at least one value, '
                       f'or None to use stage2.{field}.')
    if field == 'backbone':
      allowed = stages.BACKBONES + (stages.PRETRAINED,)
      if not set(values) <= set(allowed):
        raise UsageError(f'stage2.grid.backbone values must be among {allowed}, got {tuple(values)}.')
      continue
    if field == 'alpha' and not all(0.0 <= v <= 1.0 for v in values):
      raise UsageError(f'stage2.grid.alpha values must lie in [0, 1], got {tuple(values)}.')
    if field == 'weight_decay' and min(values) < 0:
      raise UsageError(f'stage2.grid.weight_decay values must be >= 0, got {tuple(values)}.')
    if field in ('learning_rate', 'epochs') and min(values) <= 0:
      raise UsageError(f'stage2.grid.{field} values must be > 0, got {tuple(values)}.')
    if field == 'epochs' and any(int(v) != v for v in values):
      raise UsageError(f'stage2.grid.epochs values must be whole numbers, got {tuple(values)}.')


def grid_values(stage2_cfg, field: str):
  """The values `stage2.grid.<field>` tries, or None (keep stage2.<field>). `--config.stage2.grid.X=None` on
  the command line arrives as (None,) for these tuple fields: it means None too."""
  values = stage2_cfg.grid[field]
  if values is None or (isinstance(values, (tuple, list)) and len(values) and all(v is None for v in values)):
    return None
  if isinstance(values, (tuple, list)) and any(v is None for v in values):
    raise UsageError(f'stage2.grid.{field}={tuple(values)} mixes None with values: give the values, or None alone.')
  return values


def base_setting(stage2_cfg) -> dict:
  """The one head that `stage2_cfg` describes, without a grid."""
  setting = {field: stage2_cfg[field] for field in HEAD_FIELDS}
  setting['epochs'] = int(setting['epochs'])
  return setting


def candidates(stage2_cfg, fixed=()) -> list[dict]:
  """Head settings of the stage-2 grid, in a fixed order.

  Every combination of `stage2_cfg.grid` values; a grid field left None, or named in `fixed`, keeps
  `stage2_cfg`'s own value. alpha varies only for the BFS loss (the other losses ignore it);
  stage2.backbone=pretrained pins the backbone (the grid's trained backbones are not mixed in).
  """
  base = base_setting(stage2_cfg)
  axes = {}
  for field in GRID_FIELDS:
    values = grid_values(stage2_cfg, field)
    if values is None or field in fixed or (field == 'alpha' and base['loss'] != 'bfs') or (
        field == 'backbone' and base['backbone'] == stages.PRETRAINED):
      values = (base[field],)
    axes[field] = tuple(dict.fromkeys(_typed(field, v) for v in values))
  return [{**base, **dict(zip(axes, combination))} for combination in itertools.product(*axes.values())]


def _typed(field: str, value):
  return int(value) if field == 'epochs' else str(value) if field == 'backbone' else float(value)


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


def setting_label(setting: dict, fields=GRID_FIELDS) -> str:
  """'lr=0.1 epochs=30 lambda=0.0005 alpha=0.1' (alpha only for BFS), then 'backbone=naive' for a head on
  the naive backbone (the paper's stage-1 backbone goes without saying)."""
  names = {'learning_rate': 'lr', 'weight_decay': 'lambda'}
  parts = [f'{names.get(f, f)}={setting[f]:g}' for f in fields
           if f != 'backbone' and (f != 'alpha' or setting['loss'] == 'bfs')]
  if 'backbone' in fields and setting.get('backbone', stages.STAGE1.name) != stages.STAGE1.name:
    parts.append(f'backbone={setting["backbone"]}')
  return ' '.join(parts)

