"""Light fine-tuning of a pretrained backbone compared on validation (`launch/tune.py`): every tuning mode
and loss of `config.tuning`, each with its learning rate and length chosen on the validation split, beside
the frozen backbone's heads (BWLM's grid, the CE linear probe, cRT) on the same weights.

A candidate is a naive-stage run from `model.init_from` with `naive.tune`, `naive.loss`,
`naive.learning_rate` and `naive.epochs` set (WORKDIR/tuning/<mode>-<loss>[-<head start>]/<setting>/):
resumable, and a finished one is never retrained. Each (mode, loss, head start) row is the candidate with
the best validation score (`selection.choose`, the choice every stage-2 grid makes); the test split never
chooses. The frozen rows train as one grid of heads on cached features (`experiments.run_variants_together`);
LP-FT rows start from the head chosen for the frozen BWLM row.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os

from bwlm_jax import checkpoints, head_setting, selection, stages
from bwlm_jax.runtime import distributed
from bwlm_jax.config import HEAD_INITS, validate_config
from bwlm_jax.data import load_dataset
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.evaluation.report import write_tables
from bwlm_jax.evaluation.table_rows import Row, table_inputs
from bwlm_jax.experiments import model_row, run_variant, run_variants_together, title_of
from bwlm_jax.pipeline import check_inputs, require_validation, train_and_evaluate

# The frozen backbone's rows: the BWLM grid (the default stage 2), a CE linear probe and cRT.
FROZEN_ROWS = {
    'BWLM (frozen)': {'backbone': stages.PRETRAINED},
    'CE linear probe (frozen)': {'loss': 'ce', 'weight_decay': 0.0, 'backbone': stages.PRETRAINED},
    'cRT (frozen)': {'loss': 'ce', 'weight_decay': 0.0, 'backbone': stages.PRETRAINED, 'train_set': 'long_tail',
                     'sampler': 'class_balanced'},
}


# How each head start (`config.HEAD_INITS`) is named in the table.
HEAD_START_NAMES = {'random': '', 'class_means': ' (class means)', 'stage2_head': ' (LP-FT)'}


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


def _candidates(config, bwlm_head: str) -> list[Candidate]:
  return [Candidate(mode, loss, start, bwlm_head if start == 'stage2_head' else '')
          for start, mode, loss in itertools.product(config.tuning.head_inits, config.tuning.modes,
                                                     config.tuning.losses)]


def _head_from(source: dict) -> str:
  """`head_from` for the head a results 'source' names: a grid's head as DIRECTORY:K, else the workdir."""
  if 'checkpoint' in source:
    return f'{checkpoints.stage_directory(source["workdir"], source["checkpoint"])}:{source["head"]}'
  return source['workdir']


def _check(config) -> None:
  if not config.model.init_from:
    raise UsageError('tuning compares ways of fine-tuning pretrained weights: set --config.model.init_from.')
  for field in ('modes', 'losses', 'head_inits', 'learning_rate', 'epochs'):
    if not config.tuning[field]:
      raise UsageError(f'tuning.{field} is empty: give at least one value.')
  unknown = [start for start in config.tuning.head_inits if start not in HEAD_INITS]
  if unknown:
    raise UsageError(f'tuning.head_inits: {unknown[0]!r} is not one of {HEAD_INITS}.')
  for candidate in _candidates(config, 'the frozen BWLM row'):
    validate_config(candidate_config(config, candidate, config.tuning.learning_rate[0], config.tuning.epochs[0]))


def tuned_row(config, workdir: str, candidate: Candidate, dataset, metric: str) -> Row:
  """One candidate row: every (learning rate, epochs) of config.tuning trained, the best on validation."""
  trained = []
  for learning_rate, epochs in itertools.product(config.tuning.learning_rate, config.tuning.epochs):
    setting = f'lr={learning_rate:g} epochs={epochs}'
    run_dir = os.path.join(workdir, 'tuning', candidate.folder, setting.replace(' ', '_').replace('=', ''))
    print(f'--- tuning {candidate.name}: {setting}')
    results = train_and_evaluate(candidate_config(config, candidate, learning_rate, epochs), run_dir,
                                 dataset=dataset)
    source = {'workdir': os.path.abspath(run_dir), 'stage': stages.NAIVE.name}
    trained.append(dataclasses.replace(model_row(candidate.name, {**results, 'source': source}, metric),
                                       setting=setting))
  return trained[selection.choose([row.score for row in trained])]


def run_tuning(config, workdir: str) -> list[Row]:
  """The frozen rows and every (mode, loss) row, each chosen on validation; writes WORKDIR/tuning/table.*."""
  _check(config)
  check_inputs(config, workdir)
  dataset = load_dataset(config.data)
  require_validation(dataset, 'tuning chooses every row')
  metric = config.stage2.select_metric
  stage2 = copy.deepcopy(config)
  stage2.stage2.select = 'val'
  head_fields = set(head_setting.NAMES)
  together = {name: o for name, o in FROZEN_ROWS.items() if set(o) <= head_fields}  # one grid, shared features
  frozen = run_variants_together(stage2, workdir, 'tuning', together, dataset, metric)
  for name, overrides in FROZEN_ROWS.items():
    if name not in together:  # cRT: another training set and sampler
      frozen[name] = run_variant(stage2, workdir, 'tuning', name, overrides, dataset)
  rows = [model_row(name, frozen[name], metric) for name in FROZEN_ROWS]
  for candidate in _candidates(config, _head_from(frozen['BWLM (frozen)']['source'])):
    rows.append(tuned_row(config, workdir, candidate, dataset, metric))
  best = rows[selection.choose([row.score for row in rows])]
  rows.append(Row('best on validation', 'best', best.test, setting=best.name))
  if distributed.is_writer():
    reports, notes = table_inputs(rows, True)
    print(write_tables(os.path.join(workdir, 'tuning'), reports, title_of(dataset, config) + ', from '
                       f'{os.path.basename(config.model.init_from)}', 'method', ('many', 'medium', 'few', 'all', 'top5'),
                       notes))
  return rows

