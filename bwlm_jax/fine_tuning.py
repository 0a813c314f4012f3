"""Light fine-tuning of a pretrained backbone compared on validation (`launch/tune.py`): every tuning mode
and loss of `config.tuning`, each with its learning rate and length chosen on the validation split, beside
the frozen backbone's heads (BWLM's grid, the CE linear probe, cRT) on the same weights.

A candidate is a naive-stage run from `model.init_from` with `naive.tune`, `naive.loss`,
`naive.learning_rate` and `naive.epochs` set (WORKDIR/tuning/<mode>-<loss>/<setting>/): resumable, and a
finished one is never retrained. Each (mode, loss) row is the candidate with the best validation score
(`selection.choose`, the choice every stage-2 grid makes); the test split never chooses. The frozen rows
train as one grid of heads on cached features (`experiments.run_variants_together`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os

from bwlm_jax import distributed, head_setting, selection, stages
from bwlm_jax.config import validate_config
from bwlm_jax.data import load_dataset
from bwlm_jax.errors import UsageError
from bwlm_jax.evaluation.report import write_tables
from bwlm_jax.evaluation.table_rows import Row, table_inputs
from bwlm_jax.experiments import model_row, run_variant, run_variants_together, title_of
from bwlm_jax.pipeline import check_inputs, train_and_evaluate

# The frozen backbone's rows: the BWLM grid (the default stage 2), a CE linear probe and cRT.
FROZEN_ROWS = {
    'BWLM (frozen)': {'backbone': stages.PRETRAINED},
    'CE linear probe (frozen)': {'loss': 'ce', 'weight_decay': 0.0, 'backbone': stages.PRETRAINED},
    'cRT (frozen)': {'loss': 'ce', 'weight_decay': 0.0, 'backbone': stages.PRETRAINED, 'train_set': 'long_tail',
                     'sampler': 'class_balanced'},
}


def candidate_config(config, mode: str, loss: str, learning_rate: float, epochs: int):
  """The naive-stage run of one tuned candidate."""
  candidate = copy.deepcopy(config)
  candidate.stages = stages.NAIVE.name
  candidate.naive.tune, candidate.naive.loss = mode, loss
  candidate.naive.learning_rate, candidate.naive.epochs = learning_rate, epochs
  return candidate


def _check(config) -> None:
  if not config.model.init_from:
    raise UsageError('tuning compares ways of fine-tuning pretrained weights: set --config.model.init_from.')
  for field in ('modes', 'losses', 'learning_rate', 'epochs'):
    if not config.tuning[field]:
      raise UsageError(f'tuning.{field} is empty: give at least one value.')
  for mode, loss in itertools.product(config.tuning.modes, config.tuning.losses):
    validate_config(candidate_config(config, mode, loss, config.tuning.learning_rate[0], config.tuning.epochs[0]))


def tuned_row(config, workdir: str, mode: str, loss: str, dataset, metric: str) -> Row:
  """One (mode, loss): every (learning rate, epochs) of config.tuning trained, the best on validation."""
  trained = []
  for learning_rate, epochs in itertools.product(config.tuning.learning_rate, config.tuning.epochs):
    setting = f'lr={learning_rate:g} epochs={epochs}'
    run_dir = os.path.join(workdir, 'tuning', f'{mode}-{loss}', setting.replace(' ', '_').replace('=', ''))
    print(f'--- tuning {mode} {loss}: {setting}')
    results = train_and_evaluate(candidate_config(config, mode, loss, learning_rate, epochs), run_dir,
                                 dataset=dataset)
    source = {'workdir': os.path.abspath(run_dir), 'stage': stages.NAIVE.name}
    trained.append(dataclasses.replace(model_row(f'{mode} + {loss}', {**results, 'source': source}, metric),
                                       setting=setting))
  return trained[selection.choose([row.score for row in trained])]


def run_tuning(config, workdir: str) -> list[Row]:
  """The frozen rows and every (mode, loss) row, each chosen on validation; writes WORKDIR/tuning/table.*."""
  _check(config)
  check_inputs(config, workdir)
  dataset = load_dataset(config.data)
  if dataset.val is None:
    raise UsageError('tuning chooses every row on the validation split, which this dataset lacks (a folder '
                     'needs ROOT/val/<class>/, or data.imbalance_factor with data.val_per_class > 0).')
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
  for mode, loss in itertools.product(config.tuning.modes, config.tuning.losses):
    rows.append(tuned_row(config, workdir, mode, loss, dataset, metric))
  best = rows[selection.choose([row.score for row in rows])]
  rows.append(Row('best on validation', 'best', best.test, setting=best.name))
  if distributed.is_writer():
    reports, notes = table_inputs(rows, True)
    print(write_tables(os.path.join(workdir, 'tuning'), reports, title_of(dataset, config) + ', from '
                       f'{os.path.basename(config.model.init_from)}', 'method', ('many', 'medium', 'few', 'all', 'top5'),
                       notes))
  return rows

