"""The paper's Table-2 ablation and the comparison methods, from one base run (`launch/ablation.py`).

Each stage-2 row trains on the base run's frozen backbones (`head_variants`): the rows that differ only in
their heads as one grid, the others each in its own sub-workdir, all resumable. Where the dataset has a
validation split, every stage-2 row chooses its own settings from `config.stage2.grid` on it, and the
table says what was chosen.
"""

from __future__ import annotations

import os

from bwlm_jax import selection, stages
from bwlm_jax.evaluation import plots
from bwlm_jax.evaluation.table_rows import Row, by_name
from bwlm_jax.evaluation.workdir_reports import posthoc_reports, saved_model_features
from bwlm_jax.run.training_run import selection_metric
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.studies.base import Study, StudyRun, model_row, val_score
from bwlm_jax.studies.head_variants import run_base, run_variants, variant_config

# The paper's Table 2: stage-2 losses without (CE, CB, BS, BFS) and with weight decay (…W, BWLM).
LOSS_ROWS = (('CE', 'ce'), ('CB', 'cb_focal'), ('BS', 'balanced_softmax'), ('BFS', 'bfs'))
DECAYED_NAMES = {'CE': 'CEW', 'CB': 'CBW', 'BS': 'BSW', 'BFS': 'BWLM'}


def ablation_variants(config) -> dict[str, dict]:
  """Row name -> stage-2 overrides (`head_variants.variant_config`), in the paper's order, then the
  comparison methods. The decayed rows try the grid's positive lambdas."""
  grid = selection.grid_values(config.stage2, 'weight_decay')  # None also as --config...weight_decay=None gives it
  positive = tuple(v for v in (grid if grid is not None else ()) if v > 0)
  decay = config.stage2.weight_decay if config.stage2.weight_decay > 0 else (positive or (0.0,))[0]
  if decay <= 0:
    raise UsageError('the ablation compares lambda = 0 with lambda > 0: set --config.stage2.weight_decay > 0 '
                     '(or a positive value in stage2.grid.weight_decay).')
  decayed = {'weight_decay': decay, 'grid.weight_decay': positive or None}
  paper = {'backbone': stages.STAGE1.name}  # the paper's rows keep its backbone, whatever the grid tries
  variants = {f'+{name}': {'loss': loss, 'weight_decay': 0.0, **paper} for name, loss in LOSS_ROWS}
  variants.update({f'+{DECAYED_NAMES[name]}': {'loss': loss, **decayed, **paper} for name, loss in LOSS_ROWS})
  # Comparison: classifier re-training (Kang et al.): CE head on the naive backbone, class-balanced
  # sampling over the whole long tail; BWLM with MaxNorm on the head (Alshammari et al.); and the
  # BWLM head on the naive backbone (what weight transfer from stage 1 adds or costs), on the Review set and on
  # the whole long tail (what Data Balanced Review adds or costs: docs/REPRODUCING.md, 72-epoch backbone).
  variants['cRT'] = {'loss': 'ce', 'weight_decay': 0.0, 'backbone': 'naive', 'train_set': 'long_tail',
                     'sampler': 'class_balanced'}
  variants['+BWLM+MaxNorm'] = {'loss': 'bfs', **decayed, 'max_norm': config.stage2.max_norm or 1.0, **paper}
  variants['BWLM (naive backbone)'] = {'loss': 'bfs', **decayed, 'backbone': 'naive'}
  variants['BWLM (naive backbone) on the whole tail'] = {**variants['BWLM (naive backbone)'], 'train_set': 'long_tail'}
  if config.model.init_from:  # the same heads on model.init_from's backbone as it came
    variants['BWLM (pretrained backbone)'] = {'loss': 'bfs', **decayed, 'backbone': stages.PRETRAINED}
    variants['cRT (pretrained backbone)'] = {**variants['cRT'], 'backbone': stages.PRETRAINED}
  return variants


class Ablation(Study):
  """The Table-2 rows plus the comparison rows; with `vectorized`, the rows that differ only in their heads
  (each with its validation grid) train as one grid of heads on shared features."""
  folder = 'ablation'

  def __init__(self, vectorized: bool = True):
    super().__init__()
    self.vectorized = vectorized

  def check(self, config) -> None:
    ablation_variants(config)

  def metric(self, config, dataset):
    return selection_metric(variant_config(config, '.', {}), dataset)

  def rows(self, run: StudyRun) -> list[Row]:
    config, workdir = run.config, run.workdir
    base = run_base(config, workdir, run.dataset)
    trained = run_variants(config, workdir, self.folder, ablation_variants(config), run.dataset, run.metric,
                           self.vectorized)
    results = {'naive': {**base, 'source': {'workdir': os.path.abspath(workdir), 'stage': 'naive'}}, **trained}
    return [model_row(name, r, run.metric) for name, r in results.items()] + _posthoc_rows(run)

  def finish(self, rows: list[Row], run: StudyRun) -> None:
    _ablation_figures(by_name(rows), run.workdir, self.title(run), run.dataset.train_counts)


def _posthoc_rows(run: StudyRun) -> list[Row]:
  """tau-norm and logit adjustment of the naive model, each temperature chosen on validation."""
  naive = saved_model_features(run.config, run.workdir, 'naive', run.dataset)
  extra = posthoc_reports(naive['outputs'], naive['head'], run.dataset.train_counts)
  rows = []
  for method, name in (('tau_norm', 'naive+tau-norm'), ('logit_adjustment', 'naive+logit adjustment')):
    tau, val = extra['test'][method]['tau'], extra.get('val', {}).get(method)
    rows.append(Row(name, 'posthoc', extra['test'][method], setting=f'tau={tau:g}', val=val,
                    score=val_score(val, run.metric),
                    source={'workdir': os.path.abspath(run.workdir), 'stage': 'naive',
                            'posthoc': {'method': method, 'tau': tau}}))
  return rows


def _ablation_figures(rows: dict, workdir: str, title: str, counts) -> None:
  figures = os.path.join(workdir, 'figures')
  plots.save(plots.per_class_accuracy({'naive': rows['naive'].test['per_class'],
                                       'BWLM': rows['+BWLM'].test['per_class']}, counts, title),
             figures, 'per_class_accuracy')
  plots.save(plots.weight_norms({k: rows[k].weight_norms for k in ('naive', '+CBW', '+BWLM')}, counts, title),
             figures, 'weight_norms')
  plots.save(plots.class_counts(counts, title), figures, 'class_counts')
  plots.save(plots.reliability_diagram({k: rows[k].test['calibration'] for k in ('naive', '+BWLM')},
                                       f'{title}, test'), figures, 'reliability')
  plots.save(plots.training_curves(os.path.join(workdir, 'metrics.jsonl'), title), figures, 'training_curves')
