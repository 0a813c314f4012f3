"""Light fine-tuning of a pretrained backbone compared on validation (`launch/tune.py`): every tuning mode,
loss and head start of the study's grid, each with its learning rate and length chosen on the validation
split, beside the frozen backbone's heads (BWLM's grid, the CE linear probe, cRT) on the same weights.

A candidate is a naive-stage run from `model.init_from` with `naive.tune`, `naive.loss`, `naive.head_init`,
`naive.learning_rate` and `naive.epochs` set (WORKDIR/tuning/<mode>-<loss>[-<head start>]/<setting>/):
resumable, and a finished one is never retrained. Each (mode, loss, head start) row is its candidate with the
best validation score. The frozen rows train as one grid of heads on cached features; LP-FT rows start from
the head chosen for the frozen BWLM row.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os

import ml_collections

from bwlm_jax import checkpoints, losses, stages
from bwlm_jax.config import HEAD_INITS, TUNE_MODES, validate_config
from bwlm_jax.evaluation.table_rows import Row
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.studies.base import Study, StudyRun, best_of, grid_values, model_row, title_of, train_candidate
from bwlm_jax.studies.head_variants import run_variants

# The frozen backbone's rows: the BWLM grid (the default stage 2), a CE linear probe and cRT.
FROZEN_ROWS = {
    'BWLM (frozen)': {'backbone': stages.PRETRAINED},
    'CE linear probe (frozen)': {'loss': 'ce', 'weight_decay': 0.0, 'backbone': stages.PRETRAINED},
    'cRT (frozen)': {'loss': 'ce', 'weight_decay': 0.0, 'backbone': stages.PRETRAINED, 'train_set': 'long_tail',
                     'sampler': 'class_balanced'},
}
# How each head start (`config.HEAD_INITS`) is named in the table.
HEAD_START_NAMES = {'random': '', 'class_means': ' (class means)', 'stage2_head': ' (LP-FT)',
                    'text': ' (text: zero-shot start)'}
GRID_FIELDS = ('modes', 'losses', 'head_inits', 'learning_rate', 'epochs', 'zero_shot')
ZERO_SHOT = 'zero-shot CLIP'  # the row tuning.zero_shot=True adds: CLIP's text head, untrained


def default_grid() -> ml_collections.ConfigDict:
  """The study's grid (`--tuning.FIELD=v1,v2` on the command line): every mode x loss x head start is a row;
  each row's learning rate and epochs are chosen on val from these; `zero_shot=True` adds zero-shot CLIP's row
  (a whole CLIP file: its text head, untrained). The default: LP-FT with balanced softmax,
  BitFit or the last stage, lr 0.001, 2 epochs, which validation chose on the real EfficientNet-Lite0 ImageNet
  weights (docs/REPRODUCING.md, "Light fine-tuning on real ImageNet weights")."""
  return ml_collections.ConfigDict({'modes': ('bias', 'last'), 'losses': ('balanced_softmax',),
                                    'head_inits': ('stage2_head',), 'learning_rate': (0.001,), 'epochs': (2,),
                                    'zero_shot': False})


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One row of tuned candidates: what trains, its loss and where its head starts (for 'stage2_head', the BWLM
  head chosen on the frozen backbone's cached features: `head_from`)."""
  mode: str
  loss: str
  head_init: str = 'random'
  head_from: str = ''

  @property
  def name(self) -> str:
    return f'{self.mode} + {self.loss}{HEAD_START_NAMES[self.head_init]}'

  @property
  def folder(self) -> str:
    return f'{self.mode}-{self.loss}' + ('' if self.head_init == 'random' else f'-{self.head_init}')


def candidate_config(config, candidate: Candidate, learning_rate: float, epochs: int):
  """The naive-stage run of one tuned candidate."""
  run = copy.deepcopy(config)
  run.stages = stages.NAIVE.name
  run.naive.tune, run.naive.loss = candidate.mode, candidate.loss
  run.naive.head_init, run.naive.head_from = candidate.head_init, candidate.head_from
  run.naive.learning_rate, run.naive.epochs = learning_rate, epochs
  return run


def _zero_shot_config(config):
  """Zero-shot CLIP as a run: the naive stage's text head, 0 epochs (config.py: the start itself)."""
  return candidate_config(config, Candidate('head', 'ce', 'text'), config.naive.learning_rate, 0)


def _head_from(source: dict) -> str:
  """`head_from` for the head a results 'source' names: a grid's head as DIRECTORY:K, else the workdir."""
  if 'checkpoint' in source:
    return f'{checkpoints.stage_directory(source["workdir"], source["checkpoint"])}:{source["head"]}'
  return source['workdir']


class Tune(Study):
  """The frozen rows and every (mode, loss, head start) row of `grid` (`default_grid`), each chosen on val."""
  folder = 'tuning'

  def __init__(self, grid=None):
    super().__init__()
    self.grid = default_grid() if grid is None else grid

  def values(self, field: str) -> tuple:
    return grid_values(self.grid, field, 'tuning')

  def candidates(self, bwlm_head: str) -> list[Candidate]:
    return [Candidate(mode, loss, start, bwlm_head if start == 'stage2_head' else '')
            for start, mode, loss in itertools.product(self.values('head_inits'), self.values('modes'),
                                                       self.values('losses'))]

  def settings(self) -> list[tuple[float, int]]:
    return list(itertools.product(self.values('learning_rate'), self.values('epochs')))

  def check(self, config) -> None:
    """Every value of the grid, then every candidate's whole run, before the first one trains."""
    if not config.model.init_from:
      raise UsageError('tuning compares ways of fine-tuning pretrained weights: set --config.model.init_from.')
    unknown = sorted(set(self.grid.keys()) - set(GRID_FIELDS))
    if unknown:
      raise UsageError(f'tuning.{unknown[0]} is not a field of the tuning grid; expected one of {GRID_FIELDS}.')
    for field, allowed in (('head_inits', HEAD_INITS), ('modes', TUNE_MODES), ('losses', losses.LOSSES)):
      bad = [value for value in self.values(field) if value not in allowed]
      if bad:
        raise UsageError(f'tuning.{field}: {bad[0]!r} is not one of {allowed}.')
    for field, rule, ok in (('learning_rate', '> 0', lambda v: isinstance(v, (int, float)) and v > 0),
                            ('epochs', 'a whole number >= 0 (0: the start itself)',
                             lambda v: isinstance(v, int) and v >= 0)):
      bad = [value for value in self.values(field) if not ok(value)]
      if bad:
        raise UsageError(f'tuning.{field}: {bad[0]!r} is not {rule}; every value of the grid must be.')
    for candidate in self.candidates('the frozen BWLM row'):
      for learning_rate, epochs in self.settings():
        try:
          validate_config(candidate_config(config, candidate, learning_rate, epochs))
        except UsageError as error:
          raise UsageError(f'tuning candidate {candidate.name}, lr={learning_rate:g} epochs={epochs}: '
                           f'{error}') from None
    if self.grid.zero_shot:
      try:
        validate_config(_zero_shot_config(config))
      except UsageError as error:
        raise UsageError(f'tuning.zero_shot: {error}') from None

  def rows(self, run: StudyRun) -> list[Row]:
    frozen_config = copy.deepcopy(run.config)
    frozen_config.stage2.select = 'val'
    frozen = run_variants(frozen_config, run.workdir, self.folder, FROZEN_ROWS, run.dataset, run.metric)
    rows = [model_row(name, frozen[name], run.metric) for name in FROZEN_ROWS]
    if self.grid.zero_shot:
      rows.append(train_candidate(_zero_shot_config(run.config), os.path.join(run.workdir, self.folder, 'zero-shot'),
                                  run.dataset, ZERO_SHOT, stages.NAIVE.name, run.metric, 'text head, 0 epochs'))
    bwlm = frozen['BWLM (frozen)']
    for candidate in self.candidates('' if 'failed' in bwlm else _head_from(bwlm['source'])):
      if candidate.head_init == 'stage2_head' and not candidate.head_from:  # LP-FT without its start
        rows.append(model_row(candidate.name, {'failed': 'the frozen BWLM row it starts from failed'}, run.metric))
      else:
        rows.append(self.tuned_row(run, candidate))
    return rows

  def tuned_row(self, run: StudyRun, candidate: Candidate) -> Row:
    """One candidate row: every (learning rate, epochs) of the grid trained, the best on validation."""
    trained = []
    for learning_rate, epochs in self.settings():
      setting = f'lr={learning_rate:g} epochs={epochs}'
      run_dir = os.path.join(run.workdir, self.folder, candidate.folder, setting.replace(' ', '_').replace('=', ''))
      print(f'--- tuning {candidate.name}: {setting}')
      trained.append(train_candidate(candidate_config(run.config, candidate, learning_rate, epochs), run_dir,
                                     run.dataset, candidate.name, stages.NAIVE.name, run.metric, setting))
    if all(row.kind == 'failed' for row in trained):  # the row failed: the study goes on without it
      return trained[0]
    return best_of(trained)

  def title(self, run: StudyRun) -> str:
    return title_of(run.dataset, run.config) + f', from {os.path.basename(run.config.model.init_from)}'

