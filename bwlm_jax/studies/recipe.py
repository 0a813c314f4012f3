"""The backbone's training recipe chosen on validation (`launch/recipe.py`): loss, weight decay, mixing,
augmentation, sampling and re-weighting of naive and stage 1, and the input resolution.

A candidate sets some fields of the backbone stages (the grid, `default_grid`: each field the values to try, applied
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

import ml_collections
from ml_collections import config_dict

from bwlm_jax import checkpoints, stages
from bwlm_jax.config import parse_stages, validate_config
from bwlm_jax.weights import eval_transform_of
from bwlm_jax.data import load_dataset, sizes_images
from bwlm_jax.evaluation import results as results_lib
from bwlm_jax.evaluation.table_rows import Row
from bwlm_jax.run.training_run import make_context
from bwlm_jax.runtime import distributed, stopping
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.runtime.files import make_directory, write_json
from bwlm_jax.studies.base import Study, StudyRun, grid_values, title_of, train_candidate
from bwlm_jax.train.feeders import check_backbone_samplers
from bwlm_jax.train.interval_metrics import finite_params
from bwlm_jax.train.loop import StepBudget, run_stage
from bwlm_jax.train.steps import MEMBER_FIELDS

DEFAULT_NAME = 'as configured'
# The fields a recipe may vary, and how it combines them. All but DATA_FIELDS (config.data's) are fields of
# the backbone stages, naive and stage 1.
FIELDS = ('loss', 'weight_decay', 'learning_rate', 'epochs', 'label_smoothing', 'mixup_alpha', 'cutmix_alpha',
          'mix_prob', 'randaugment_layers', 'randaugment_magnitude', 'sampler', 'drw_epoch', 'image_size')
DATA_FIELDS = ('image_size',)
COMBINES = ('product', 'one_at_a_time')


def default_grid() -> ml_collections.ConfigDict:
  """The study's candidates (`--recipe.FIELD=v1,v2` on the command line): for each field of naive and stage 1
  (and data.image_size), the values to try (None: as configured); 'one_at_a_time' tries each value alone,
  'product' every combination. Candidates that differ only in learning rate, weight decay or label smoothing
  train up to `backbones_at_once` at a time under `jax.vmap` (1: each alone; more: where the device holds K
  models and their activations)."""
  grid = ml_collections.ConfigDict({'combine': 'one_at_a_time', 'backbones_at_once': 1})
  for field in FIELDS:
    grid[field] = config_dict.placeholder(tuple)
  grid.loss, grid.label_smoothing, grid.mixup_alpha = ('balanced_softmax',), (0.1,), (0.2,)
  grid.randaugment_layers, grid.sampler = (2,), ('square_root',)
  return grid


@dataclasses.dataclass(frozen=True)
class Candidate:
  """The fields one candidate changes from the config, as (field, value) pairs in FIELDS order."""
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
  """The config sections that hold a recipe field: config.data for DATA_FIELDS, else every backbone stage."""
  return [config.data] if field in DATA_FIELDS else [config[stage] for stage in stages.BACKBONES]


def candidate_config(config, candidate: Candidate):
  """The whole run of one candidate: its changes applied where each field lives."""
  run = copy.deepcopy(config)
  for field, value in candidate.changes:
    for section in _sections(run, field):
      section[field] = value
  return run


def candidates(config, grid) -> list[Candidate]:
  """Every candidate of `grid` (`default_grid`), the configured recipe first (ties keep it); duplicates once;
  each candidate's whole run checked (an error names the candidate and the field)."""
  unknown = sorted(set(grid.keys()) - set(FIELDS) - {'combine', 'backbones_at_once'})
  if unknown:
    raise UsageError(f'recipe.{unknown[0]} is not a field a recipe varies; expected one of {FIELDS}.')
  if grid.combine not in COMBINES:
    raise UsageError(f'recipe.combine must be one of {COMBINES}, got {grid.combine!r}.')
  if not isinstance(grid.backbones_at_once, int) or grid.backbones_at_once < 1:
    raise UsageError(f'recipe.backbones_at_once must be a whole number >= 1, got {grid.backbones_at_once!r}.')
  axes = {field: grid_values(grid, field, 'recipe', none_keeps=True) for field in FIELDS if grid[field] is not None}
  axes = {field: values for field, values in axes.items() if values is not None}
  if not axes:
    raise UsageError('the recipe grid varies nothing: give some fields values to try, e.g. '
                     '--recipe.loss=ce,balanced_softmax.')
  if 'image_size' in axes and not sizes_images(config.data):
    raise UsageError(f'recipe.image_size: data.name={config.data.name!r} is kept in memory at its images\' own size, '
                     'so every candidate would see the same images; it applies to folders, image lists and streamed '
                     'data (data.pipeline=stream).')
  if grid.combine == 'product':
    settings = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
  else:  # each value of each field alone, the others as configured
    settings = [{}] + [{field: value} for field, values in axes.items() for value in values]
  found = [_changes(config, setting) for setting in settings]
  ordered = sorted(set(found), key=lambda c: (bool(c.changes), found.index(c)))
  for candidate in ordered:
    try:
      validate_config(candidate_config(config, candidate))
    except (UsageError, TypeError) as error:  # TypeError: a value of another type than the field's ('abc' epochs)
      fields = ', '.join(f'recipe.{field}' for field, _ in candidate.changes)
      raise UsageError(f'recipe candidate {candidate.name} ({fields}): {error}') from None
  return ordered


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


def together(grid, found: list[Candidate]) -> list[list[Candidate]]:
  """The candidates whose backbones train at once, up to `recipe.backbones_at_once` a group: those whose runs
  differ only in MEMBER_FIELDS, in candidate order (a group of one is left to its own run)."""
  size = grid.backbones_at_once
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
      print('note: on a CPU XLA runs the vmapped convolutions as grouped ones, several times slower than one model '
            'at a time (docs/REPRODUCING.md); recipe.backbones_at_once=1 trains these faster here.', flush=True)
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


class Recipe(Study):
  """Every candidate of `grid` (`default_grid`) trained (or reused) as a whole run of config.stages in
  WORKDIR/recipe/<changes>/, its last model's validation score compared; best.json also names the recipe."""
  folder = 'recipe'
  row_label = 'recipe'

  def __init__(self, grid=None):
    super().__init__()
    self.grid = default_grid() if grid is None else grid
    self.datasets = {}  # by image side: candidates' data sections differ in nothing else

  def check(self, config) -> None:
    self.last = _last_stage(config)
    self.found = candidates(config, self.grid)

  def load(self, config):
    return self.dataset_of(candidate_config(config, self.found[0]))  # a side no candidate uses is never loaded

  def dataset_of(self, run):
    if run.data.image_size not in self.datasets:
      self.datasets[run.data.image_size] = load_dataset(run.data, eval_transform_of(run))
    return self.datasets[run.data.image_size]

  def rows(self, run: StudyRun) -> list[Row]:
    for group in together(self.grid, self.found):  # a group's members differ only in MEMBER_FIELDS: one side
      train_together(run.config, run.workdir, group, self.dataset_of(candidate_config(run.config, group[0])))
    rows = []
    for index, candidate in enumerate(self.found):
      run_dir = _run_dir(run.workdir, candidate)
      print(f'--- recipe {index + 1}/{len(self.found)}: {candidate.name} ({run_dir})', flush=True)
      config = candidate_config(run.config, candidate)
      rows.append(train_candidate(config, run_dir, self.dataset_of(config), candidate.name, self.last, run.metric))
    return rows

  def record(self, best: Row, rows: list[Row], run: StudyRun) -> dict:
    return {'recipe': dict(self.found[rows.index(best)].changes),
            'candidates': [{'recipe': dict(c.changes), 'val_score': r.score} for c, r in zip(self.found, rows)]}

  def title(self, run: StudyRun) -> str:
    return f'{title_of(run.dataset, run.config)}, backbone recipes ({self.last} model)'
