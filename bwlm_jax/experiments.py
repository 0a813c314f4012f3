"""Experiments built from one base run: the paper's Table-2 ablation, comparison methods, alpha/lambda sweeps.

Each stage-2 variant trains in its own sub-workdir on the base run's frozen backbone (via
`stage1_checkpoint`), so every variant is resumable and a finished one is never retrained.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

import numpy as np

from bwlm_jax.data import load_dataset
from bwlm_jax.evaluate import plots
from bwlm_jax.evaluate.evaluation import model_outputs, posthoc_reports
from bwlm_jax.evaluate.report import markdown_table, unique_path, write_csv, write_json
from bwlm_jax.train.loop import make_runtime, train_and_evaluate, train_heads_and_evaluate

# The paper's Table 2: stage-2 losses without (CE, CB, BS, BFS) and with weight decay (…W, BWLM).
LOSS_ROWS = (('CE', 'ce'), ('CB', 'cb_focal'), ('BS', 'balanced_softmax'), ('BFS', 'bfs'))
DECAYED_NAMES = {'CE': 'CEW', 'CB': 'CBW', 'BS': 'BSW', 'BFS': 'BWLM'}


def ablation_variants(config) -> dict[str, dict]:
  """Row name -> stage-2 overrides, in the paper's order, then the comparison methods."""
  decay = config.stage2.weight_decay
  if decay <= 0:
    raise ValueError('the ablation compares lambda = 0 with lambda > 0: set --config.stage2.weight_decay > 0.')
  variants = {f'+{name}': {'loss': loss, 'weight_decay': 0.0} for name, loss in LOSS_ROWS}
  variants.update({f'+{DECAYED_NAMES[name]}': {'loss': loss, 'weight_decay': decay} for name, loss in LOSS_ROWS})
  # Comparison: classifier re-training (Kang et al.): CE head on the naive backbone, class-balanced
  # sampling over the whole long tail; and BWLM with MaxNorm on the head (Alshammari et al.).
  variants['cRT'] = {'loss': 'ce', 'weight_decay': 0.0, 'backbone': 'naive', 'train_set': 'long_tail',
                     'sampler': 'class_balanced'}
  variants['+BWLM+MaxNorm'] = {'loss': 'bfs', 'weight_decay': decay, 'max_norm': config.stage2.max_norm or 1.0}
  return variants


def _slug(name: str) -> str:
  return name.strip('+').replace('+', '_').replace('=', '').replace(',', '_') or 'base'


def run_base(config, workdir: str, dataset) -> dict:
  """Train (or resume, or reuse) the base run's naive and stage-1 models; returns its results."""
  base = copy.deepcopy(config)
  base.stages = 'naive,stage1'
  return train_and_evaluate(base, workdir, dataset=dataset)


def _stage2_config(config, workdir: str):
  variant = copy.deepcopy(config)
  variant.stages = 'stage2'
  variant.stage1_checkpoint = os.path.abspath(workdir)
  return variant


def run_variant(config, workdir: str, kind: str, name: str, overrides: dict, dataset) -> dict:
  """One stage-2 variant trained alone in WORKDIR/kind/<name>."""
  variant = _stage2_config(config, workdir)
  for field, value in overrides.items():
    variant.stage2[field] = value
  print(f'--- {kind} {name}: {overrides}')
  return train_and_evaluate(variant, os.path.join(workdir, kind, _slug(name)), dataset=dataset)


HEAD_FIELDS = ('loss', 'alpha', 'beta', 'gamma', 'weight_decay', 'learning_rate')


def run_variants_together(config, workdir: str, kind: str, variants: dict, dataset) -> dict:
  """Variants that differ only in HEAD_FIELDS, trained as K heads at once in WORKDIR/kind/heads-<digest>."""
  settings = []
  for overrides in variants.values():
    setting = {field: config.stage2[field] for field in HEAD_FIELDS}
    setting.update(overrides)
    settings.append(setting)
  digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
  print(f'--- {kind}: {len(settings)} heads at once: {", ".join(variants)}')
  results = train_heads_and_evaluate(_stage2_config(config, workdir), os.path.join(workdir, kind, f'heads-{digest}'),
                                     settings, dataset=dataset)
  return dict(zip(variants, results))


def _write_tables(out_dir: str, rows: dict, title: str, row_label: str, csv_columns: tuple) -> str:
  """table.md, table.csv (row_label + csv_columns) and table.json in out_dir (never overwritten); returns the md."""
  os.makedirs(out_dir, exist_ok=True)
  table = markdown_table(rows, title)
  with open(unique_path(os.path.join(out_dir, 'table.md')), 'w') as f:
    f.write(table + '\n')
  write_csv(unique_path(os.path.join(out_dir, 'table.csv')), [row_label, *csv_columns],
            [[name, *(report[column] for column in csv_columns)] for name, report in rows.items()])
  write_json(unique_path(os.path.join(out_dir, 'table.json')),
             {'dataset': title, 'rows': {name: {k: v for k, v in report.items() if k != 'per_class'}
                                         for name, report in rows.items()}})
  return table


def _title(dataset, config) -> str:
  imbalance = config.data.imbalance_factor
  return f'{dataset.name}' + (f' IF {imbalance:g}' if imbalance else '')


def run_ablation(config, workdir: str, vectorized: bool = True) -> dict:
  """The Table-2 grid plus comparison rows; writes table.md/.csv/.json and figures under WORKDIR/ablation.

  With `vectorized`, the eight loss x lambda rows train as eight heads at once (shared features).
  """
  variants = ablation_variants(config)
  dataset = load_dataset(config.data)
  base = run_base(config, workdir, dataset)
  rows = {'naive': base['models']['naive']['test']}
  norms = {'naive': base['weight_norms']['naive']}
  per_class = {'naive': rows['naive']['per_class']}
  together = {n: v for n, v in variants.items() if set(v) <= set(HEAD_FIELDS)} if vectorized else {}
  finished = run_variants_together(config, workdir, 'ablation', together, dataset) if together else {}
  for name, overrides in variants.items():
    results = finished.get(name) or run_variant(config, workdir, 'ablation', name, overrides, dataset)
    rows[name] = results['models']['stage2']['test']
    norms[name] = results['weight_norms']['stage2']
  per_class['BWLM'] = rows['+BWLM']['per_class']
  rt = make_runtime(config, workdir, dataset)
  naive = model_outputs(rt, 'naive')
  extra = posthoc_reports(naive['outputs'], naive['head'], dataset.train_counts)['test']
  rows[f'naive+tau-norm (tau={extra["tau_norm"]["tau"]:g})'] = extra['tau_norm']
  rows['naive+logit adjustment'] = extra['logit_adjustment']

  title = _title(dataset, config)
  table = _write_tables(os.path.join(workdir, 'ablation'), rows, title, 'method',
                        ('many', 'medium', 'few', 'all', 'top5'))
  figures = os.path.join(workdir, 'figures')
  counts = dataset.train_counts
  plots.save(plots.per_class_accuracy(per_class, counts, title), figures, 'per_class_accuracy')
  plots.save(plots.weight_norms({k: norms[k] for k in ('naive', '+CBW', '+BWLM')}, counts, title), figures,
             'weight_norms')
  plots.save(plots.class_counts(counts, title), figures, 'class_counts')
  plots.save(plots.training_curves(os.path.join(workdir, 'metrics.jsonl'), title), figures, 'training_curves')
  print(table)
  return rows


def parse_values(text: str, name: str) -> list[float]:
  values = [float(v) for v in text.split(',') if v.strip()]
  if not values:
    raise ValueError(f'--{name} needs at least one value, e.g. --{name}=0,0.1,0.5.')
  return values


def run_sweep(config, workdir: str, alphas: list[float], lambdas: list[float], vectorized: bool = True) -> dict:
  """BWLM over every (alpha, lambda) pair (Figure 4); a table per lambda and a plot against alpha.

  With `vectorized`, all pairs train as heads of one run (one jitted step, shared features).
  """
  if not alphas or not lambdas:
    raise ValueError('the sweep needs at least one alpha and one lambda value.')
  bad = [a for a in alphas if not 0.0 <= a <= 1.0]
  if bad:
    raise ValueError(f'alpha values must lie in [0, 1]; got {bad}.')
  dataset = load_dataset(config.data)
  run_base(config, workdir, dataset)
  title = _title(dataset, config)
  variants = {f'alpha={a:g},lambda={d:g}': {'loss': 'bfs', 'alpha': a, 'weight_decay': d}
              for d in lambdas for a in alphas}
  if vectorized:
    finished = run_variants_together(config, workdir, 'sweep', variants, dataset)
  else:
    finished = {name: run_variant(config, workdir, 'sweep', name, v, dataset) for name, v in variants.items()}
  grid = {name: results['models']['stage2']['test'] for name, results in finished.items()}
  for decay in lambdas:
    reports = [grid[f'alpha={a:g},lambda={decay:g}'] for a in alphas]
    rows = {f'alpha={a:g}': r for a, r in zip(alphas, reports)}
    print(markdown_table(rows, f'{title}, lambda={decay:g}'))
    if len(alphas) > 1:
      plots.save(plots.accuracy_vs_parameter(np.asarray(alphas), reports, 'alpha', f'{title}, lambda={decay:g}'),
                 os.path.join(workdir, 'figures'), f'alpha_sweep_lambda{decay:g}')
  if len(alphas) == 1 and len(lambdas) > 1:
    reports = [grid[f'alpha={alphas[0]:g},lambda={d:g}'] for d in lambdas]
    plots.save(plots.accuracy_vs_parameter(np.asarray(lambdas), reports, 'lambda', f'{title}, alpha={alphas[0]:g}'),
               os.path.join(workdir, 'figures'), f'lambda_sweep_alpha{alphas[0]:g}')
  _write_tables(os.path.join(workdir, 'sweep'), grid, title, 'setting', ('many', 'medium', 'few', 'all'))
  return grid
