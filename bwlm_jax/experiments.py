"""Experiments built from one base run: the paper's Table-2 ablation and comparison methods (the alpha/lambda
sweep, `sweeps.py`, builds on the same base run and variants).

Each stage-2 variant trains in its own sub-workdir on the base run's frozen backbone (via
`stage1_checkpoint`), so every variant is resumable and a finished one is never retrained. Where
the dataset has a validation split, every stage-2 row chooses its own settings from
`config.stage2.grid` on it, and the table says what was chosen.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os

from bwlm_jax import checkpoints, head_setting, selection, stages
from bwlm_jax.runtime import distributed
from bwlm_jax.data import load_dataset
from bwlm_jax.evaluation import plots
from bwlm_jax.evaluation.workdir_reports import posthoc_reports, saved_model_features
from bwlm_jax.evaluation.report import without_per_class, write_tables
from bwlm_jax.evaluation.table_rows import Row, by_name, table_inputs
from bwlm_jax.runtime.files import make_directory, unique_path, write_json
from bwlm_jax.head_setting import HeadSetting
from bwlm_jax.pipeline import check_inputs, selection_metric, train_and_evaluate, train_rows_and_evaluate
from bwlm_jax.runtime.errors import UsageError

# The paper's Table 2: stage-2 losses without (CE, CB, BS, BFS) and with weight decay (…W, BWLM).
LOSS_ROWS = (('CE', 'ce'), ('CB', 'cb_focal'), ('BS', 'balanced_softmax'), ('BFS', 'bfs'))
DECAYED_NAMES = {'CE': 'CEW', 'CB': 'CBW', 'BS': 'BSW', 'BFS': 'BWLM'}


def ablation_variants(config) -> dict[str, dict]:
  """Row name -> stage-2 overrides, in the paper's order, then the comparison methods.

  A plain key sets a stage-2 field (and pins it: the grid does not vary it); 'grid.X' sets the
  values the grid tries for X. The decayed rows try the grid's positive lambdas.
  """
  grid = config.stage2.grid.weight_decay
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


def _slug(name: str) -> str:
  slug = name.strip('+').replace('+', '_').replace('=', '').replace(',', '_')
  return slug.replace(' (', '_').replace(')', '').replace(' ', '_') or 'base'


def run_base(config, workdir: str, dataset) -> dict:
  """Train (or resume, or reuse) the base run's naive and stage-1 models, saying first which it must train
  (most of the time of an ablation or sweep on a new workdir); returns its results."""
  base = copy.deepcopy(config)
  base.stages = 'naive,stage1'
  missing = [stage for stage in ('naive', 'stage1') if not checkpoints.is_finished(workdir, stage)]
  if missing:
    epochs = ', '.join(f'{stage} {config[stage].epochs} epochs' for stage in missing)
    print(f'base models: {workdir} has no finished {" and ".join(missing)}; training them first ({epochs}), '
          'then the variants on their backbones.', flush=True)
  return train_and_evaluate(base, workdir, dataset=dataset)


def variant_config(config, workdir: str, overrides: dict):
  """A stage-2-only config on `workdir`'s backbones with `overrides` applied (see `ablation_variants`)."""
  variant = copy.deepcopy(config)
  variant.stages = 'stage2'
  variant.stage1_checkpoint = os.path.abspath(workdir)
  for field, value in overrides.items():
    if not field.startswith('grid.'):
      variant.stage2[field] = value
      if field in head_setting.GRID_FIELDS:
        variant.stage2.grid[field] = None  # pinned
  for field, value in overrides.items():
    if field.startswith('grid.'):
      variant.stage2.grid[field[len('grid.'):]] = value
  return variant


def run_variant(config, workdir: str, kind: str, name: str, overrides: dict, dataset) -> dict:
  """One stage-2 variant trained alone in WORKDIR/kind/<name> (chosen on validation where there is one)."""
  print(f'--- {kind} {name}: {overrides}')
  variant_dir = os.path.join(workdir, kind, _slug(name))
  results = train_and_evaluate(variant_config(config, workdir, overrides), variant_dir, dataset=dataset)
  return {**results, 'source': {'workdir': variant_dir, 'stage': 'stage2'}}


def run_variants_together(config, workdir: str, kind: str, variants: dict, dataset, metric=None) -> dict:
  """Variants that differ only in their heads (their settings or backbone), trained as one grid of heads in
  WORKDIR/kind/heads-<digest> (`pipeline.train_rows_and_evaluate`).

  With a selection `metric`, each variant contributes every candidate of its grid, and its result is the
  candidate with the best validation score (with 'stage2_selection' saying which); else one head per variant.
  """
  rows = {}
  for name, overrides in variants.items():
    stage2 = variant_config(config, workdir, overrides).stage2
    rows[name] = selection.candidates(stage2) if metric else [HeadSetting.from_config(stage2)]
  settings = [dataclasses.asdict(setting) for options in rows.values() for setting in options]
  digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
  heads_dir = os.path.join(workdir, kind, f'heads-{digest}')
  print(f'--- {kind}: {len(settings)} heads at once: {", ".join(variants)}')
  return train_rows_and_evaluate(variant_config(config, workdir, {}), heads_dir, rows, metric, dataset=dataset)


def chosen_label(results: dict, stage: str) -> str:
  """The setting validation chose for `stage`'s row; '' for a row that chose none (the base run's
  results carry its own stage-2 choice, which is not the naive row's)."""
  record = results.get('stage2_selection')
  if not stages.get(stage).trains_heads or not record:
    return ''
  return head_setting.label(record['candidates'][record['chosen']]['setting'])


def title_of(dataset, config) -> str:
  imbalance = config.data.imbalance_factor
  return f'{dataset.name}' + (f' IF {imbalance:g}' if imbalance else '')


def run_ablation(config, workdir: str, vectorized: bool = True) -> list[Row]:
  """The Table-2 grid plus comparison rows; writes table.md/.csv/.json and figures under WORKDIR/ablation.

  With `vectorized`, the rows that differ only in their heads (each with its validation grid) train as one
  grid of heads on shared features. With a validation split, the table adds each row's validation score
  and chosen settings, and a 'best on validation' row; `ablation/best.json` names that model
  (`predict.py --stage=best` uses it). Returns the rows in table order.
  """
  check_inputs(config, workdir)
  variants = ablation_variants(config)
  dataset = load_dataset(config.data)
  base = run_base(config, workdir, dataset)
  metric = selection_metric(variant_config(config, workdir, {}), dataset)
  head_fields = set(head_setting.NAMES) | {f'grid.{f}' for f in head_setting.GRID_FIELDS}
  together = {n: v for n, v in variants.items() if set(v) <= head_fields} if vectorized else {}
  trained = run_variants_together(config, workdir, 'ablation', together, dataset, metric) if together else {}
  for name, overrides in variants.items():
    if name not in trained:
      trained[name] = run_variant(config, workdir, 'ablation', name, overrides, dataset)
  results = {'naive': {**base, 'source': {'workdir': os.path.abspath(workdir), 'stage': 'naive'}},
             **{name: trained[name] for name in variants}}
  rows = [model_row(name, r, metric) for name, r in results.items()]
  rows += _posthoc_rows(config, workdir, dataset, metric)
  if metric is not None:
    rows.append(_best_row(rows, metric, workdir, dataset))
  else:
    print('ablation: no validation split, so no settings are chosen and no best model is named.')
  if distributed.is_writer():
    title = title_of(dataset, config)
    reports, notes = table_inputs(rows, metric is not None)
    table = write_tables(os.path.join(workdir, 'ablation'), reports, title, 'method',
                         ('many', 'medium', 'few', 'all', 'top5'), notes)
    _ablation_figures(by_name(rows), workdir, title, dataset.train_counts)
    print(table)
  return rows


def model_row(name: str, results: dict, metric) -> Row:
  """The row of a trained model (`train_and_evaluate`'s results with a 'source')."""
  stage = results['source']['stage']
  report = results['models'][stage]
  return Row(name, 'model', report['test'], setting=chosen_label(results, stage), val=report.get('val'),
             score=_val_score(report.get('val'), metric),
             source=results['source'], weight_norms=results['weight_norms'][stage])


def _val_score(val_report, metric):
  """A row's validation score, or None where nothing is selected or the row has no val report."""
  return selection.score(val_report, metric) if metric and val_report else None


def _posthoc_rows(config, workdir: str, dataset, metric) -> list[Row]:
  """tau-norm and logit adjustment of the naive model, each temperature chosen on validation."""
  naive = saved_model_features(config, workdir, 'naive', dataset)
  extra = posthoc_reports(naive['outputs'], naive['head'], dataset.train_counts)
  rows = []
  for method, name in (('tau_norm', 'naive+tau-norm'), ('logit_adjustment', 'naive+logit adjustment')):
    tau, val = extra['test'][method]['tau'], extra.get('val', {}).get(method)
    rows.append(Row(name, 'posthoc', extra['test'][method], setting=f'tau={tau:g}', val=val,
                    score=_val_score(val, metric),
                    source={'workdir': os.path.abspath(workdir), 'stage': 'naive',
                            'posthoc': {'method': method, 'tau': tau}}))
  return rows


def _best_row(rows: list[Row], metric: str, workdir: str, dataset) -> Row:
  """The row with the best validation score (`selection.choose`), recorded in WORKDIR/ablation/best.json."""
  best = rows[selection.choose([row.score for row in rows])]
  if distributed.is_writer():
    make_directory(os.path.join(workdir, 'ablation'))
    write_json(unique_path(os.path.join(workdir, 'ablation', 'best.json')),
               {'method': best.label, 'metric': metric, 'val_score': best.score, 'source': best.source,
                'train_counts': dataset.train_counts.tolist(), 'test': without_per_class(best.test)})
  return Row('best on validation', 'best', best.test, setting=best.name)


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
