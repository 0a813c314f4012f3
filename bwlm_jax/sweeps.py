"""BWLM over alpha and lambda (the paper's Figure 4), every pair a head of one grid on one base run."""

from __future__ import annotations

import os

import numpy as np

from bwlm_jax.runtime import distributed
from bwlm_jax.data import load_dataset
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.evaluation import plots
from bwlm_jax.evaluation.report import markdown_table, write_tables
from bwlm_jax.evaluation.table_rows import Row
from bwlm_jax.experiments import run_base, run_variant, run_variants_together, title_of
from bwlm_jax.pipeline import check_inputs


def run_sweep(config, workdir: str, alphas: list[float], lambdas: list[float], vectorized: bool = True
              ) -> list[Row]:
  """BWLM over every (alpha, lambda) pair (Figure 4); a table per lambda and a plot against alpha.

  With `vectorized`, all pairs train as heads of one grid (one jitted step, shared features). Returns one
  row per pair ('alpha=A,lambda=L').
  """
  if not alphas or not lambdas:
    raise UsageError('the sweep needs at least one alpha and one lambda value.')
  bad = [a for a in alphas if not 0.0 <= a <= 1.0]
  if bad:
    raise UsageError(f'alpha values must lie in [0, 1]; got {bad}.')
  check_inputs(config, workdir)
  dataset = load_dataset(config.data)
  run_base(config, workdir, dataset)
  title = title_of(dataset, config)
  # Fixed settings (a figure over alpha and lambda, not a selection): every field pinned.
  variants = {f'alpha={a:g},lambda={d:g}': {'loss': 'bfs', 'alpha': a, 'weight_decay': d, 'select': 'none'}
              for d in lambdas for a in alphas}
  if vectorized:
    finished = run_variants_together(config, workdir, 'sweep', {n: {k: v for k, v in o.items() if k != 'select'}
                                                                for n, o in variants.items()}, dataset)
  else:
    finished = {name: run_variant(config, workdir, 'sweep', name, v, dataset) for name, v in variants.items()}
  grid = {name: results['models']['stage2']['test'] for name, results in finished.items()}
  if distributed.is_writer():
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
    write_tables(os.path.join(workdir, 'sweep'), grid, title, 'setting', ('many', 'medium', 'few', 'all'))
  return [Row(name, 'model', report, source=finished[name]['source']) for name, report in grid.items()]
