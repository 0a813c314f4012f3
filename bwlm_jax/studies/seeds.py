"""A run or any study once per seed, reported as mean ± std over seeds, with paired differences.

Each seed trains in WORKDIR/seed-<s>/ (resumable and reused like any run). With `vary_subset`, the seed
also picks which images the long tail keeps (`data.subset_seed`), so the spread includes the subset.
"""

from __future__ import annotations

import copy
import os

import numpy as np

from bwlm_jax.runtime import distributed
from bwlm_jax.weights import eval_transform_of
from bwlm_jax.data import load_dataset
from bwlm_jax.runtime.errors import CandidatesFailed, UsageError
from bwlm_jax.evaluation.report import ece
from bwlm_jax.runtime.files import make_directory, unique_path, write_json, write_text
from bwlm_jax.run.training_run import train_and_evaluate
from bwlm_jax.studies.base import FAILED_FILE, Study, run_study

METRICS = ('many', 'medium', 'few', 'all', 'top5', 'ece')


def _metric(report: dict, name: str):
  return ece(report) if name == 'ece' else report.get(name)


def mean_std(values) -> dict:
  """{'mean', 'std' (sample, ddof 1; 0 for one value), 'n'} of the values that are not None; None if none."""
  values = np.asarray([v for v in values if v is not None], np.float64)
  if not values.size:
    return None
  return {'mean': float(values.mean()), 'std': float(values.std(ddof=1)) if values.size > 1 else 0.0,
          'n': int(values.size)}


def aggregate(per_seed: dict) -> dict:
  """{seed: results.json payload} -> {'models': {model: {split: {metric: mean_std}}}, 'paired': {...}}.

  'paired' gives, for every model against the first one (naive where trained), the mean ± std over
  seeds of the per-seed difference (same seed, same split), which is what a comparison should report.
  """
  seeds = list(per_seed)
  first = per_seed[seeds[0]]['models']
  summary = {'seeds': seeds, 'models': {}, 'paired': {}}
  for model, splits in first.items():
    summary['models'][model] = {
        split: {m: mean_std(_metric(per_seed[s]['models'][model][split], m) for s in seeds) for m in METRICS}
        for split in splits}
  reference = next(iter(first))
  for model, splits in first.items():
    if model == reference:
      continue
    summary['paired'][f'{model} - {reference}'] = {
        split: {m: mean_std(_difference(per_seed[s]['models'], model, reference, split, m) for s in seeds)
                for m in METRICS} for split in splits}
  return summary


def _difference(models: dict, model: str, reference: str, split: str, metric: str):
  a, b = _metric(models[model][split], metric), _metric(models[reference][split], metric)
  return None if a is None or b is None else a - b


def format_mean_std(cell) -> str:
  return '-' if cell is None else f'{100 * cell["mean"]:.1f} ± {100 * cell["std"]:.1f}'


def seeds_table(summary: dict) -> str:
  """Markdown: every model and split as mean ± std in %, then the paired differences."""
  head = '| {} | split | ' + ' | '.join(m.capitalize() if m != 'ece' else 'ECE' for m in METRICS) + ' |'
  rule = '|---' * (2 + len(METRICS)) + '|'
  lines = [head.format(f'model ({len(summary["seeds"])} seeds: {", ".join(map(str, summary["seeds"]))})'), rule]
  for block in ('models', 'paired'):
    if block == 'paired' and summary['paired']:
      lines += ['', head.format('paired difference (same seed)'), rule]
    for model, splits in summary[block].items():
      for split, cells in splits.items():
        lines.append(f'| {model} | {split} | ' + ' | '.join(format_mean_std(cells[m]) for m in METRICS) + ' |')
  return '\n'.join(lines)


def _seeded(config, seed: int, vary_subset: bool):
  run = copy.deepcopy(config)
  run.seed = seed
  if vary_subset:
    run.data.subset_seed = seed
  return run


def _check_seeds(seeds: list[int]) -> None:
  if not seeds or len(set(seeds)) != len(seeds):
    raise UsageError(f'--seeds needs distinct whole numbers, got {seeds}.')


def _write_summary(workdir: str, per_seed: dict, vary_subset: bool) -> dict:
  summary = {**aggregate(per_seed), 'vary_subset': vary_subset}
  if not distributed.is_writer():
    return summary
  table = seeds_table(summary)
  make_directory(workdir)
  write_json(unique_path(os.path.join(workdir, 'seeds.json')), summary)
  write_text(unique_path(os.path.join(workdir, 'seeds.md')), table + '\n')
  print(table)
  return summary


def train_over_seeds(config, workdir: str, seeds: list[int], vary_subset: bool = False) -> dict:
  """Train `config` once per seed in WORKDIR/seed-<s>/, then write WORKDIR/seeds.{json,md}; returns the summary."""
  _check_seeds(seeds)
  dataset = None if vary_subset else load_dataset(config.data, eval_transform_of(config))
  per_seed = {}
  for seed in seeds:
    print(f'--- seed {seed}')
    per_seed[seed] = train_and_evaluate(_seeded(config, seed, vary_subset), os.path.join(workdir, f'seed-{seed}'),
                                        dataset=dataset)
  return _write_summary(workdir, per_seed, vary_subset)


def study_over_seeds(study: Study, config, workdir: str, seeds: list[int], vary_subset: bool = False) -> dict:
  """`study` (`base.run_study`) once per seed in WORKDIR/seed-<s>/; its rows' mean ± std (`rows_over_seeds`)."""
  return rows_over_seeds(lambda seeded, folder: run_study(study, seeded, folder), config, workdir, seeds, vary_subset)


def rows_over_seeds(run_rows, config, workdir: str, seeds: list[int], vary_subset: bool = False) -> dict:
  """`run_rows(config, workdir) -> [Row]` (a study) once per seed in WORKDIR/seed-<s>/; mean ±
  std of every row over seeds (rows matched by name, whatever each seed chose) and paired differences to
  the first row, in WORKDIR/seeds.{json,md}."""
  _check_seeds(seeds)
  per_seed = {}
  for seed in seeds:
    print(f'--- seed {seed}')
    rows = run_rows(_seeded(config, seed, vary_subset), os.path.join(workdir, f'seed-{seed}'))
    per_seed[seed] = {'models': {row.name: {'test': row.test} for row in rows}}
  return _write_summary(workdir, per_seed, vary_subset)


def run(study: Study, config, workdir: str, seeds=None, vary_subset: bool = False):
  """`study` once (`base.run_study`: its rows), or once per seed (`study_over_seeds`: the summary), as the
  tools run it: where some candidates failed, `CandidatesFailed` (exit status 3) after every table is written."""
  found = run_study(study, config, workdir) if seeds is None else study_over_seeds(study, config, workdir, seeds,
                                                                                   vary_subset)
  if study.failed:
    names = ', '.join(dict.fromkeys(study.failed))
    raise CandidatesFailed(f'{len(study.failed)} candidate(s) of the {study.folder} study failed ({names}): they are '
                           f'in {os.path.join(workdir, study.folder)}/table.md as failed and never chosen; the others '
                           f'were compared and chosen as usual. A rerun does not train them again (delete a '
                           f"candidate's {FAILED_FILE} to retry).")
  return found
