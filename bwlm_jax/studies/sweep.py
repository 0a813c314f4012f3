"""BWLM over alpha and lambda (the paper's Figure 4), every pair a head of one grid on one base run
(`launch/sweep.py`): a figure of fixed settings, so nothing is chosen."""

from __future__ import annotations

import os

import numpy as np

from bwlm_jax.evaluation import plots
from bwlm_jax.evaluation.report import markdown_table
from bwlm_jax.evaluation.table_rows import Row
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.studies.base import Study, StudyRun, model_row
from bwlm_jax.studies.head_variants import run_base, run_variant, run_variants_together


def _name(alpha: float, decay: float) -> str:
  return f'alpha={alpha:g},lambda={decay:g}'


class Sweep(Study):
  """BWLM over every (alpha, lambda) pair; a table per lambda and a plot against alpha. With `vectorized`,
  all pairs train as heads of one grid (one jitted step, shared features). One row per pair."""
  folder = 'sweep'
  row_label = 'setting'
  columns = ('many', 'medium', 'few', 'all')
  chooses = False

  def __init__(self, alphas: list[float], lambdas: list[float], vectorized: bool = True):
    super().__init__()
    self.alphas, self.lambdas, self.vectorized = list(alphas), list(lambdas), vectorized

  def check(self, config) -> None:
    if not self.alphas or not self.lambdas:
      raise UsageError('the sweep needs at least one alpha and one lambda value.')
    bad = [a for a in self.alphas if not 0.0 <= a <= 1.0]
    if bad:
      raise UsageError(f'alpha values must lie in [0, 1]; got {bad}.')

  def metric(self, config, dataset):
    return None

  def rows(self, run: StudyRun) -> list[Row]:
    run_base(run.config, run.workdir, run.dataset)
    # Fixed settings (a figure over alpha and lambda, not a selection): every field pinned.
    variants = {_name(a, d): {'loss': 'bfs', 'alpha': a, 'weight_decay': d} for d in self.lambdas for a in self.alphas}
    if self.vectorized:
      finished = run_variants_together(run.config, run.workdir, self.folder, variants, run.dataset)
    else:
      finished = {name: run_variant(run.config, run.workdir, self.folder, name, {**v, 'select': 'none'}, run.dataset)
                  for name, v in variants.items()}
    return [model_row(name, results, None) for name, results in finished.items()]

  def finish(self, rows: list[Row], run: StudyRun) -> None:
    grid, title = {row.name: row.test for row in rows}, self.title(run)  # a failed pair's report is {}
    figures = os.path.join(run.workdir, 'figures')
    for decay in self.lambdas:
      reports = [grid[_name(a, decay)] for a in self.alphas]
      print(markdown_table({f'alpha={a:g}': r for a, r in zip(self.alphas, reports)}, f'{title}, lambda={decay:g}'))
      if len(self.alphas) > 1 and all(reports):
        plots.save(plots.accuracy_vs_parameter(np.asarray(self.alphas), reports, 'alpha', f'{title}, lambda={decay:g}'),
                   figures, f'alpha_sweep_lambda{decay:g}')
    if len(self.alphas) == 1 and len(self.lambdas) > 1:
      alpha = self.alphas[0]
      reports = [grid[_name(alpha, d)] for d in self.lambdas]
      if all(reports):
        plots.save(plots.accuracy_vs_parameter(np.asarray(self.lambdas), reports, 'lambda',
                                               f'{title}, alpha={alpha:g}'), figures, f'lambda_sweep_alpha{alpha:g}')
