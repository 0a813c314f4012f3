"""The backbone's training recipe chosen on validation (`launch/recipe.py`): loss, weight decay, mixing,
augmentation, sampling and re-weighting of naive and stage 1, and the input resolution.

A candidate sets some fields of the backbone stages (`config.recipe`: each field the values to try, applied
to naive and stage 1 alike; `image_size` to config.data, so the whole run, stage 2 included, sees images of
that side) and is a whole run of `config.stages` in WORKDIR/recipe/<candidate>/: resumable,
and a finished one is never retrained. Its score is the validation score of the run's last model (with
stage 2, the head its own grid chose on val), compared with `selection.choose`, the choice every stage-2 grid
makes; the test split never chooses. A candidate's folder names only the fields it changes, so grids that
share candidates (the default, one option at a time) share their runs.

Candidates that differ only in learning rate, weight decay or label smoothing (`steps.MEMBER_FIELDS`) train
their backbone stages `recipe.backbones_at_once` at a time under `jax.vmap` (`train_together`), each member
then saved as its own run's finished checkpoint of the stage, so the rest of its run (stage 2, evaluation)
goes on as if it had trained alone.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import os
from typing import Optional

import jax
import numpy as np

from bwlm_jax import checkpoints, selection, stages
from bwlm_jax.runtime import distributed, stopping
from bwlm_jax.config import RECIPE_COMBINES, RECIPE_DATA_FIELDS, RECIPE_FIELDS, parse_stages, validate_config
from bwlm_jax.data import load_dataset, sizes_images
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.evaluation import results as results_lib
from bwlm_jax.evaluation.report import without_per_class, write_tables
from bwlm_jax.evaluation.table_rows import Row, table_inputs
from bwlm_jax.experiments import model_row, title_of
from bwlm_jax.runtime.files import make_directory, unique_path, write_json
from bwlm_jax.pipeline import check_inputs, make_context, require_validation, train_and_evaluate
from bwlm_jax.train.feeders import check_backbone_samplers
from bwlm_jax.train.interval_metrics import finite_params
from bwlm_jax.train.loop import StepBudget, run_stage
from bwlm_jax.train.steps import MEMBER_FIELDS

DEFAULT_NAME = 'as configured'


@dataclasses.dataclass(frozen=True)
class Candidate:
  """The fields one candidate changes from the config, as (field, value) pairs in RECIPE_FIELDS order."""
  changes: tuple = ()

  @property
  def name(self) -> str:
    return ', '.join(f'{field}={_shown(value)}' for field, value in self.changes) or DEFAULT_NAME

  @property
  def folder(self) -> str:
    return ','.join(f'{field}={_shown(value)}' for field, value in self.changes) or 'default'


def _shown(value) -> str:
  return f'{value:g}' if isinstance(value, float) else str(value)


def _sections(config, field: str) -> list:
  """The config sections that hold a recipe field: config.data for RECIPE_DATA_FIELDS, else every backbone stage."""
  return [config.data] if field in RECIPE_DATA_FIELDS else [config[stage] for stage in stages.BACKBONES]


def candidate_config(config, candidate: Candidate):
  """The whole run of one candidate: its changes applied where each field lives."""
  run = copy.deepcopy(config)
  for field, value in candidate.changes:
    for section in _sections(run, field):
      section[field] = value
  return run


def candidates(config) -> list[Candidate]:
  """Every candidate of config.recipe, the configured recipe first (ties keep it); duplicates once."""
  recipe = config.recipe
  unknown = sorted(set(recipe.keys()) - set(RECIPE_FIELDS) - {'combine', 'backbones_at_once'})
  if unknown:
    raise UsageError(f'recipe.{unknown[0]} is not a field a recipe varies; expected one of {RECIPE_FIELDS}.')
  if recipe.combine not in RECIPE_COMBINES:
    raise UsageError(f'recipe.combine must be one of {RECIPE_COMBINES}, got {recipe.combine!r}.')
  if not isinstance(recipe.backbones_at_once, int) or recipe.backbones_at_once < 1:
    raise UsageError(f'recipe.backbones_at_once must be a whole number >= 1, got {recipe.backbones_at_once!r}.')
  axes = {field: _values(recipe[field]) for field in RECIPE_FIELDS if recipe[field] is not None}
  empty = [field for field, values in axes.items() if not values]
  if empty:
    raise UsageError(f'recipe.{empty[0]} is empty: give at least one value, or leave it None.')
  if not axes:
    raise UsageError('config.recipe varies nothing: give some fields values to try, e.g. '
                     '--config.recipe.loss=ce,balanced_softmax.')
  if 'image_size' in axes and not sizes_images(config.data):
    raise UsageError(f'recipe.image_size: data.name={config.data.name!r} is kept in memory at its images\' own size, '
                     'so every candidate would see the same images; it applies to folders, image lists and streamed '
                     'data (data.pipeline=stream).')
  if recipe.combine == 'product':
    settings = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
  else:  # each value of each field alone, the others as configured
    settings = [{}] + [{field: value} for field, values in axes.items() for value in values]
  found = [_changes(config, setting) for setting in settings]
  ordered = sorted(set(found), key=lambda c: (bool(c.changes), found.index(c)))
  for candidate in ordered:
    try:
      validate_config(candidate_config(config, candidate))
    except UsageError as error:
      raise UsageError(f'recipe candidate {candidate.name}: {error}') from None
  return ordered


def _values(given) -> tuple:
  """A field's values; text as a flag gives it ('ce,balanced_softmax', ml_collections keeps it whole) split at
  the commas."""
  values = []
  for value in given:
    values += [part.strip() for part in value.split(',') if part.strip()] if isinstance(value, str) else [value]
  return tuple(values)


def _changes(config, setting: dict) -> Candidate:
  """The fields of `setting` whose value differs from the config's own (naive's and stage 1's, or data's)."""
  return Candidate(tuple((field, value) for field, value in setting.items()
                         if any(section[field] != value for section in _sections(config, field))))


def _last_stage(config) -> str:
  """The stage whose model scores a candidate; an error where config.stages trains no backbone."""
  run = parse_stages(config)
  if not any(stage.trains_backbone for stage in run):
    raise UsageError(f'config.stages={config.stages!r} trains no backbone: a recipe is how naive and stage 1 '
                     'train, so include at least one of them.')
  return run[-1].name


def together(config, found: list[Candidate]) -> list[list[Candidate]]:
  """The candidates whose backbones train at once, up to `recipe.backbones_at_once` a group: those whose runs
  differ only in MEMBER_FIELDS, in candidate order (a group of one is left to its own run)."""
  size = config.recipe.backbones_at_once
  by_rest = {}
  for candidate in found:
    rest = tuple(change for change in candidate.changes if change[0] not in MEMBER_FIELDS)
    by_rest.setdefault(rest, []).append(candidate)
  groups = [members[i:i + size] for members in by_rest.values() for i in range(0, len(members), size)]
  return [group for group in groups if len(group) > 1]


def _run_dir(workdir: str, candidate: Candidate) -> str:
  return os.path.join(workdir, 'recipe', candidate.folder)


@stopping.stops_on_sigterm
def train_together(config, workdir: str, group: list[Candidate], dataset, budget: Optional[StepBudget] = None):
  """Each backbone stage of `group`'s runs, the members not finished there yet, trained at once under
  `jax.vmap` (`loop.run_stage` with members; resumable) in WORKDIR/recipe/together/<hash of the members>/;
  then each member is saved as the finished checkpoint of that stage in its own run's folder, with its own
  config. A member whose parameters are not finite is not saved: its own run trains it alone and stops with
  the same error a candidate trained alone would."""
  budget = StepBudget(None) if budget is None else budget
  for stage in parse_stages(config):
    if not stage.trains_backbone:
      continue
    todo = [c for c in group if not checkpoints.is_finished(_run_dir(workdir, c), stage.name)]
    if len(todo) < 2:
      continue
    runs = [candidate_config(config, candidate) for candidate in todo]
    key = hashlib.sha256('\n'.join(c.folder for c in todo).encode()).hexdigest()[:12]
    folder = os.path.join(workdir, 'recipe', 'together', f'{stage.name}-{key}')
    if distributed.is_writer():
      make_directory(folder)
      write_json(os.path.join(folder, 'members.json'), {'stage': stage.name, 'members': [c.folder for c in todo]})
    ctx = make_context(runs[0], folder, dataset)
    check_backbone_samplers(runs[0], ctx.dataset, [stage])
    print(f'--- {stage.name} of {len(todo)} recipes at once under vmap ({folder}): '
          f'{"; ".join(c.name for c in todo)}', flush=True)
    if jax.default_backend() == 'cpu':
      print('note: on a CPU XLA runs the vmapped convolutions as grouped ones, slower than one model at a time '
            '(ResNet-8, batch 128, 32x32, K=2: 1.64 s a step against 0.33 s alone; launch/benchmark.py); '
            'recipe.backbones_at_once=1 trains these faster here.', flush=True)
    state = run_stage(ctx, stage, budget, members=[{f: run[stage.name][f] for f in MEMBER_FIELDS} for run in runs])
    finite = np.atleast_1d(jax.device_get(finite_params(state.params, stacked=True)))
    for k, (candidate, run) in enumerate(zip(todo, runs)):
      if finite[k]:
        _save_member(ctx, stage, state, k, run, _run_dir(workdir, candidate))


def _save_member(ctx, stage, state, k: int, run, run_dir: str) -> None:
  """Member k of a stacked backbone state as `run`'s finished checkpoint of `stage` in `run_dir`."""
  member = state.replace(**{name: results_lib.head_at(getattr(state, name), k)
                            for name in ('params', 'batch_stats', 'opt_state')})
  step = int(state.step)
  meta = checkpoints.checkpoint_meta(stage.name, step, step, True, run.to_dict(), ctx.dataset, ctx.fingerprint)
  store = checkpoints.StageCheckpoints(checkpoints.stage_directory(run_dir, stage.name), run.keep_checkpoints)
  try:
    store.save(step, member, meta)
  finally:
    store.close()


def run_recipes(config, workdir: str) -> list[Row]:
  """Every candidate of config.recipe trained (or reused) and chosen on validation; writes
  WORKDIR/recipe/table.{md,csv,json} and WORKDIR/recipe/chosen.json (the chosen candidate's run)."""
  last = _last_stage(config)
  found = candidates(config)
  check_inputs(config, workdir)
  datasets = {}  # by image side: candidates' data sections differ in nothing else

  def dataset_of(run):
    if run.data.image_size not in datasets:
      datasets[run.data.image_size] = load_dataset(run.data)
    return datasets[run.data.image_size]

  dataset = dataset_of(candidate_config(config, found[0]))  # a side no candidate uses is never loaded
  require_validation(dataset, 'a recipe is chosen')
  metric = config.stage2.select_metric
  for group in together(config, found):  # a group's members differ only in MEMBER_FIELDS: one image side
    train_together(config, workdir, group, dataset_of(candidate_config(config, group[0])))
  rows = []
  for index, candidate in enumerate(found):
    run_dir = _run_dir(workdir, candidate)
    print(f'--- recipe {index + 1}/{len(found)}: {candidate.name} ({run_dir})', flush=True)
    run = candidate_config(config, candidate)
    results = train_and_evaluate(run, run_dir, dataset=dataset_of(run))
    source = {'workdir': os.path.abspath(run_dir), 'stage': last}
    rows.append(model_row(candidate.name, {**results, 'source': source}, metric))
  chosen = selection.choose([row.score for row in rows])
  best = rows[chosen]
  summary = {'recipe': dict(found[chosen].changes), 'candidate': best.name, 'metric': metric, 'val_score': best.score,
             'source': best.source, 'test': without_per_class(best.test),
             'candidates': [{'recipe': dict(c.changes), 'val_score': r.score} for c, r in zip(found, rows)]}
  rows.append(Row('best on validation', 'best', best.test, setting=best.name))
  if distributed.is_writer():
    folder = os.path.join(workdir, 'recipe')
    make_directory(folder)
    write_json(unique_path(os.path.join(folder, 'chosen.json')), summary)
    reports, notes = table_inputs(rows, True)
    print(write_tables(folder, reports, f'{title_of(dataset, config)}, backbone recipes ({last} model)', 'recipe',
                       ('many', 'medium', 'few', 'all', 'top5'), notes))
  return rows
