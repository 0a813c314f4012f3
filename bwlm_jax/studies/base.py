"""What every study shares: candidates trained in their own resumable sub-workdirs, a row per model, the one
choice on validation, its record and the tables.

A study (`ablation`, `sweep`, `recipe`, `tune`) is a `Study`: its folder in the workdir, the checks of its
whole grid and the rows it trains or reuses (`rows`). `run_study` does the rest the same way for each: the
grid and the run's config checked before any data is read, the dataset, the metric, the rows, the best row on
validation (`selection.choose`, the choice every stage-2 grid makes; the test split never chooses) recorded in
WORKDIR/<folder>/best.json, and the tables. `seeds.py` runs any study once per seed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from bwlm_jax import head_setting, selection, stages
from bwlm_jax.weights import eval_transform_of
from bwlm_jax.data import LongTailDataset, load_dataset
from bwlm_jax.evaluation.report import without_per_class, write_tables
from bwlm_jax.evaluation.table_rows import Row, table_inputs
from bwlm_jax.run.training_run import check_inputs, require_validation, train_and_evaluate
from bwlm_jax.runtime import distributed
from bwlm_jax.runtime.cli import one_line
from bwlm_jax.runtime.errors import RunError, SaveError, UsageError, WriteError
from bwlm_jax.runtime.files import make_directory, read_json, unique_path, write_json
from bwlm_jax.workdir import config_differences

COLUMNS = ('many', 'medium', 'few', 'all', 'top5')  # the columns of a study's table.csv
FAILED_FILE = 'failed.json'  # in a candidate's run folder: why it failed, so a rerun does not train it again


@dataclasses.dataclass
class StudyRun:
  """What a study's rows are made from: the base config, the workdir, the dataset and the metric validation
  chooses by (None: nothing is chosen)."""
  config: object
  workdir: str
  dataset: LongTailDataset
  metric: Optional[str]

  def folder(self, name: str) -> str:
    return os.path.join(self.workdir, name)


class Study:
  """One study: override `rows` (and `check`, `metric`, `title`, `finish` where the study differs)."""
  folder = ''  # WORKDIR/<folder>/: the study's sub-workdirs, tables and best.json
  row_label = 'method'  # the first column of table.csv
  columns = COLUMNS
  chooses = True  # a 'best on validation' row and best.json, where there is a metric

  def __init__(self):
    self.failed = []  # the candidates that failed in this study's runs (every seed's), by name

  def check(self, config) -> None:
    """Every check of the study's grid, before anything is read or trained (a bad value is one error naming
    the study's own field)."""

  def load(self, config) -> LongTailDataset:
    return load_dataset(config.data, eval_transform_of(config))

  def metric(self, config, dataset: LongTailDataset) -> Optional[str]:
    """The validation metric the study chooses by; the default requires a validation split."""
    require_validation(dataset, f'the {self.folder} study chooses')
    return config.stage2.select_metric

  def rows(self, run: StudyRun) -> list[Row]:
    raise NotImplementedError

  def title(self, run: StudyRun) -> str:
    return title_of(run.dataset, run.config)

  def record(self, best: Row, rows: list[Row], run: StudyRun) -> dict:
    """What best.json adds to the chosen row's record."""
    del best, rows, run
    return {}

  def finish(self, rows: list[Row], run: StudyRun) -> None:
    """Figures and extra tables, after the tables (the writing process only)."""


def run_study(study: Study, config, workdir: str) -> list[Row]:
  """`study` on `config` in `workdir`: its rows, the best on validation and the tables; returns the rows."""
  study.check(config)
  check_inputs(config, workdir)
  dataset = study.load(config)
  run = StudyRun(config, workdir, dataset, study.metric(config, dataset))
  rows = study.rows(run)
  study.failed += [row.name for row in rows if row.kind == 'failed']
  if study.chooses and run.metric is not None:
    rows.append(best_row(study, rows, run))
  elif study.chooses:
    print(f'{study.folder}: no validation split, so no settings are chosen and no best model is named.')
  if distributed.is_writer():
    reports, notes = table_inputs(rows, run.metric is not None)
    print(write_tables(run.folder(study.folder), reports, study.title(run), study.row_label, study.columns, notes))
    study.finish(rows, run)
  return rows


def best_row(study: Study, rows: list[Row], run: StudyRun) -> Row:
  """The row with the best validation score, recorded in WORKDIR/<folder>/best.json (`predict.py
  --stage=best` reads it)."""
  best = best_of(rows)
  if distributed.is_writer():
    make_directory(run.folder(study.folder))
    write_json(unique_path(os.path.join(run.folder(study.folder), 'best.json')),
               {'method': best.label, 'metric': run.metric, 'val_score': best.score, 'source': best.source,
                'train_counts': run.dataset.train_counts.tolist(), 'test': without_per_class(best.test),
                **study.record(best, rows, run)})
  return Row('best on validation', 'best', best.test, setting=best.name)


def best_of(rows: list[Row]) -> Row:
  """The row `selection.choose` takes by validation score: ties keep the earliest, a diverged one never."""
  return rows[selection.choose([row.score for row in rows])]


def train_candidate(config, run_dir: str, dataset, name: str, stage: str, metric: Optional[str],
                    setting: str = '') -> Row:
  """One candidate: `config`'s run trained (or resumed, or reused) in `run_dir`; its row is `stage`'s model,
  or a failed row where it diverged or could not run (`run_or_failure`)."""
  results = run_or_failure(config, run_dir, dataset)
  row = model_row(name, {**results, 'source': {'workdir': os.path.abspath(run_dir), 'stage': stage}}, metric)
  return dataclasses.replace(row, setting=setting) if setting and row.kind != 'failed' else row


def run_or_failure(config, run_dir: str, dataset) -> dict:
  """`train_and_evaluate`'s results of `config` in `run_dir`, or {'failed': why} where the run diverged or could
  not go on. The reason is kept in RUN_DIR/failed.json with the config, so a rerun of the same candidate
  reports it again without training it (delete the file to try again); a failed save or write still stops."""
  path = os.path.join(run_dir, FAILED_FILE)
  if os.path.isfile(path):
    earlier = read_json(path, 'the record of a failed candidate', f'Delete {path} to train the candidate again.')
    if not config_differences(earlier.get('config', {}), config.to_dict()):
      print(f'{run_dir}: failed earlier ({earlier["error"]}); not trained again (delete {path} to retry).', flush=True)
      return {'failed': earlier['error']}
  try:
    return train_and_evaluate(config, run_dir, dataset=dataset)
  except (SaveError, WriteError):
    raise
  except RunError as error:
    reason = one_line(error)
    print(f'{run_dir}: this candidate failed ({reason}); the study goes on without it.', flush=True)
    if distributed.is_writer():
      make_directory(run_dir)
      write_json(path, {'error': reason, 'config': config.to_dict()})
    return {'failed': reason}


def model_row(name: str, results: dict, metric: Optional[str]) -> Row:
  """The row of a trained model (`train_and_evaluate`'s results with a 'source'), or of a failed one."""
  if 'failed' in results:
    return Row(name, 'failed', {}, setting=f'failed: {results["failed"]}', source=results.get('source', {}))
  stage = results['source']['stage']
  report = results['models'][stage]
  return Row(name, 'model', report['test'], setting=chosen_label(results, stage), val=report.get('val'),
             score=val_score(report.get('val'), metric), source=results['source'],
             weight_norms=results['weight_norms'][stage])


def chosen_label(results: dict, stage: str) -> str:
  """The setting validation chose for `stage`'s row; '' for a row that chose none (the base run's results
  carry its own stage-2 choice, which is not the naive row's)."""
  record = results.get('stage2_selection')
  if not stages.get(stage).trains_heads or not record:
    return ''
  return head_setting.label(record['candidates'][record['chosen']]['setting'])


def val_score(val_report: Optional[dict], metric: Optional[str]) -> Optional[float]:
  """A row's validation score, or None where nothing is selected or the row has no val report."""
  return selection.score(val_report, metric) if metric and val_report else None


def title_of(dataset, config) -> str:
  imbalance = config.data.imbalance_factor
  return f'{dataset.name}' + (f' IF {imbalance:g}' if imbalance else '')


def grid_values(grid, field: str, study: str, none_keeps: bool = False) -> Optional[tuple]:
  """A study's grid field as a tuple of values, read one way for every study: on the command line
  `--STUDY.FIELD=v1,v2` (ml_collections keeps text whole: 'ce,balanced_softmax' is split at its commas here;
  numbers arrive as a tuple). With `none_keeps`, None (`--STUDY.FIELD=None`) means "as configured" and gives
  None; an empty field, or None where a field needs values, is an error naming `study.field`."""
  given = grid[field]
  given = given if isinstance(given, (tuple, list)) else (given,)
  if all(value is None for value in given) and given:
    if none_keeps:
      return None
    raise UsageError(f'{study}.{field}=None: this field needs values, e.g. --{study}.{field}=V1,V2.')
  if any(value is None for value in given):
    raise UsageError(f'{study}.{field}={tuple(given)} mixes None with values: give the values, or None alone.')
  values = []
  for value in given:
    values += [part.strip() for part in value.split(',') if part.strip()] if isinstance(value, str) else [value]
  if not values:
    raise UsageError(f'{study}.{field} is empty: give at least one value.')
  return tuple(values)
