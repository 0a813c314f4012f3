"""One stage-2 head's setting: its loss, the loss's parameters, its optimizer's, its frozen backbone and its images.

The one place that names a head's hyper-parameters. Each field says its type, the rule its values
follow and whether `stage2.grid` may vary it; from these the setting is built from the config
(`from_config`), checked (`validate`), labelled for display (`label`), stacked into [K] arrays for the
vmapped stage-2 step (`stack`) and written to results and checkpoints with `dataclasses.asdict`.
A new hyper-parameter is one field here plus its use (in `losses` or the step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax
import jax.numpy as jnp

from bwlm_jax import losses, stages
from bwlm_jax.runtime.errors import UsageError


def _field(default, rule, expected: str, *, grid: int = 0, label: str = '', static: bool = False):
  """A setting's field: `default` is config.stage2's; `rule(value)` must hold ('must be `expected`');
  `grid` > 0: stage2.grid may vary it, as the grid's axis number `grid` (the order of the candidates and of
  the label); `label`: its name on display; `static`: one value per grid of heads (not stacked: flax's
  `pytree_node=False`)."""
  return flax.struct.field(default=default, pytree_node=not static,
                           metadata={'rule': rule, 'expected': expected, 'grid': grid, 'label': label})


@flax.struct.dataclass
class HeadSetting:
  """A head's setting; the grid's heads of one backbone stacked (`stack`) hold [K] arrays instead.

  The defaults are config.stage2's (`config.base_config` copies them). weight_decay is lambda of eq.
  14-17: 0 gives the CE/CB/BS/BFS rows, > 0 the CEW/CBW/BSW/BWLM rows. The paper is silent on lr, lambda
  and epochs; our choice on Tiny-ImageNet-LT's val split (docs/REPRODUCING.md, "How the defaults were
  chosen"): a new head needs a larger lr and a smaller lambda than Alshammari et al.'s recipe for
  fine-tuning an existing head (lr 0.01, lambda 0.1, 10 epochs).
  """
  loss: str = _field('bfs', lambda v: v in losses.LOSSES, f'one of {losses.LOSSES}')
  # BFS's weight of the CB-focal term (used by BFS only: `uses`); 0.1 is the paper's suggested default.
  alpha: float = _field(0.1, lambda v: 0.0 <= v <= 1.0, 'in [0, 1]', grid=4)
  beta: float = _field(0.9999, lambda v: 0.0 < v < 1.0, 'in (0, 1)')  # Cui et al.'s reference default
  gamma: float = _field(1.0, lambda v: v >= 0, '>= 0')  # Cui et al.'s reference default
  weight_decay: float = _field(5e-4, lambda v: v >= 0, '>= 0', grid=3, label='lambda')
  learning_rate: float = _field(0.1, lambda v: v > 0, '> 0', grid=1, label='lr')
  epochs: int = _field(30, lambda v: v > 0 and int(v) == v, 'whole numbers > 0', grid=2)
  # The frozen backbone: 'stage1' (BWLM), 'naive' (classifier re-training on a one-stage model, as cRT) or
  # 'pretrained' (model.init_from's).
  backbone: str = _field(stages.STAGE1.name, lambda v: v in stages.BACKBONES + (stages.PRETRAINED,),
                         f'one of {stages.BACKBONES + (stages.PRETRAINED,)}', grid=5, static=True)
  # The images the head trains on: 'review' (Data Balanced Review's stage-2 set, the paper's) or 'long_tail'
  # (every training image). The Review set stays the default: the whole tail leads on val and test All but
  # trails on Few (docs/REPRODUCING.md, "On the 72-epoch backbone").
  train_set: str = _field(stages.STAGE2.train_set, lambda v: v in stages.HEAD_TRAIN_SETS,
                          f'one of {stages.HEAD_TRAIN_SETS}', grid=6, static=True)

  @property
  def group(self) -> tuple[str, str]:
    """What the heads that train together share: their frozen backbone and their training set."""
    return self.backbone, self.train_set

  @classmethod
  def from_config(cls, stage2_cfg) -> HeadSetting:
    """The one head that `stage2_cfg` describes, without its grid."""
    return cls(**{f.name: typed(f.name, stage2_cfg[f.name]) for f in FIELDS})


def uses(loss: str, field: str) -> bool:
  """Whether `field` changes a head trained with `loss`: alpha weighs BFS's two terms and nothing else."""
  return field != 'alpha' or loss == 'bfs'


FIELDS = dataclasses.fields(HeadSetting)
NAMES = tuple(f.name for f in FIELDS)
GRID_FIELDS = tuple(f.name for f in sorted(FIELDS, key=lambda f: f.metadata['grid']) if f.metadata['grid'])
_BY_NAME = {f.name: f for f in FIELDS}
_STATIC_DEFAULTS = {f.name: f.default for f in FIELDS if not f.metadata['pytree_node']}


def _python_type(field: str) -> type:
  kind = _BY_NAME[field].type  # a string under `from __future__ import annotations`
  return {'int': int, 'float': float, 'str': str}[kind if isinstance(kind, str) else kind.__name__]


def typed(field: str, value):
  """`value` as the type of `field` (a config may hold an int where a float is meant)."""
  return _python_type(field)(value)


def validate(stage2_cfg, grid_values) -> None:
  """Errors for stage-2 head fields that break their rule, and for grid values that do (`grid_values(field)`:
  the values stage2.grid tries, or None)."""
  for f in FIELDS:
    value = stage2_cfg[f.name]
    if not f.metadata['rule'](value):
      raise UsageError(f'stage2.{f.name} must be {f.metadata["expected"]}, got {value!r}.')
    values = grid_values(f.name) if f.metadata['grid'] else None
    if values is not None and not all(f.metadata['rule'](v) for v in values):
      hint = (f''' (several values are a tuple: "--config.stage2.grid.{f.name}=('a','b')")'''
              if any(isinstance(v, str) and ',' in v for v in values) else '')
      raise UsageError(f'stage2.grid.{f.name} values must be {f.metadata["expected"]}, got {tuple(values)}{hint}.')


def label(setting, fields=GRID_FIELDS) -> str:
  """'lr=0.1 epochs=30 lambda=0.0005 alpha=0.1' (alpha only where it is used), then 'backbone=naive' and
  'train_set=long_tail' where a head's differ from the paper's (stage 1's backbone, the Review set).
  `setting`: a HeadSetting or its dict (results; one written before a field existed holds its default)."""
  values = {**_STATIC_DEFAULTS, **(setting if isinstance(setting, Mapping) else dataclasses.asdict(setting))}
  parts = [f'{_BY_NAME[f].metadata["label"] or f}={values[f]:g}' for f in fields
           if f not in _STATIC_DEFAULTS and uses(values['loss'], f)]
  parts += [f'{f}={values[f]}' for f in fields if f in _STATIC_DEFAULTS and values[f] != _STATIC_DEFAULTS[f]]
  return ' '.join(parts)


def stack(settings: list[HeadSetting]) -> HeadSetting:
  """The settings of one grid's K heads as one setting of [K] arrays (the loss as its index in
  `losses.LOSSES`), for the vmapped step; they share their `group` (backbone and training set)."""
  groups = {s.group for s in settings}
  if len(groups) != 1:
    raise ValueError(f'the heads of one grid share their backbone and training set, got {sorted(groups)}.')

  def column(f):
    values = [getattr(s, f.name) for s in settings]
    if f.name == 'loss':
      return jnp.asarray([losses.LOSSES.index(v) for v in values], jnp.int32)
    return jnp.asarray(values, jnp.int32 if _python_type(f.name) is int else jnp.float32)

  [backbone, train_set] = groups.pop()
  return HeadSetting(**{f.name: column(f) for f in FIELDS if f.metadata['pytree_node']}, backbone=backbone,
                     train_set=train_set)
