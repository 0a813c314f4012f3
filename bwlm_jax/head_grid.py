"""Stage 2's one path: a grid of heads trained at once on each frozen backbone, scored on validation,
one head chosen per row.

Every stage 2 goes through `run_grid`: a run with nothing to select is a grid of one head; a run that
selects is the grid of `stage2.grid` (one row); the ablation and the sweep put several rows in one
grid. The heads of one backbone train together (features shared); a backbone is one more grid
dimension (`stage2.grid.backbone`). The test split never chooses: candidates are scored on validation
only, and test reports are made after the choice.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from bwlm_jax import checkpoints, selection, stages
from bwlm_jax.evaluation import results as results_lib
from bwlm_jax.evaluation.report import without_per_class
from bwlm_jax.models import inference_variables
from bwlm_jax.train.context import TrainContext
from bwlm_jax.train.interval_metrics import finite_params
from bwlm_jax.train.loop import StepBudget, run_heads
from bwlm_jax.train.state import TrainState, backbone_directory, load_backbone_state


@dataclasses.dataclass
class Grid:
  """Trained candidates: `settings[i]` is head `index[i]` of the grid of its backbone, `states[backbone]`."""
  rows: list[str]  # the row each candidate competes in
  settings: list[dict]  # selection.HEAD_FIELDS of each candidate
  states: dict[str, TrainState]
  index: list[int]
  finite: list[bool]
  scores: Optional[list] = None  # validation scores (None: diverged, or nothing selected)
  val_reports: Optional[list] = None
  chosen: dict = dataclasses.field(default_factory=dict)  # row -> candidate
  metric: Optional[str] = None

  def members(self, row: str) -> list[int]:
    """The candidates that compete in `row`, in grid order."""
    return [i for i, r in enumerate(self.rows) if r == row]

  def head_state(self, i: int) -> TrainState:
    """Candidate i alone: its head (parameters and optimizer state) on its frozen backbone."""
    state = self.states[self.settings[i]['backbone']]
    return state.replace(params=results_lib.head_at(state.params, self.index[i]),
                         opt_state=results_lib.head_at(state.opt_state, self.index[i]))

  def reports(self, ctx: TrainContext, split, candidates=None) -> dict:
    """{candidate: report on `split`} of `candidates` (default: all); each backbone's features computed once."""
    candidates = range(len(self.settings)) if candidates is None else candidates
    reports = {}
    for backbone, state in self.states.items():
      members = [i for i in candidates if self.settings[i]['backbone'] == backbone]
      if members:
        variables = inference_variables(stages.STAGE2, state)
        heads = [self.index[i] for i in members]
        reports.update(zip(members, results_lib.stacked_head_reports(ctx.split_features, variables, split,
                                                                     ctx.dataset.train_counts, heads)))
    return reports

  def source(self, i: int) -> dict:
    """Where candidate i is saved: head `head` of the grid checkpoint `checkpoint` of stage 2."""
    return {'stage': stages.STAGE2.name, 'checkpoint': stages.grid_checkpoint(self.settings[i]['backbone']),
            'head': self.index[i]}

  def record(self, row: str) -> dict:
    """The selection record of `row` (no test numbers): metric, split, chosen, every candidate's score."""
    members = self.members(row)
    candidates = [{'setting': self.settings[i], 'score': self.scores[i] if self.scores else None,
                   'val': without_per_class(self.val_reports[i]) if self.val_reports else None} for i in members]
    return {'metric': self.metric, 'split': 'val' if self.metric else None,
            'chosen': members.index(self.chosen[row]), 'candidates': candidates}


def available(ctx: TrainContext, trained: dict, settings: list) -> list:
  """The settings whose backbone this run trained or can load finished (from the workdir or
  `stage1_checkpoint`); the others are named on the terminal and left out."""
  def ready(backbone):
    if backbone == stages.PRETRAINED:
      return ctx.pretrained is not None
    return backbone in trained or checkpoints.finished_meta(backbone_directory(ctx.config, ctx.workdir,
                                                                               backbone)) is not None
  missing = [b for b in dict.fromkeys(s['backbone'] for s in settings) if not ready(b)]
  kept = [s for s in settings if s['backbone'] not in missing]
  if missing and kept:
    print(f'stage 2: no finished {" or ".join(missing)} backbone here, so the grid leaves out its '
          f'{len(settings) - len(kept)} candidates (add it to config.stages to train it).')
  return kept if kept else settings  # with none ready, loading names what is missing


def backbone_states(ctx: TrainContext, trained: dict, settings: list) -> dict:
  """{backbone: finished state} of every backbone the settings name: trained in this run, or loaded from
  the workdir (or `stage1_checkpoint`)."""
  needed = dict.fromkeys(s['backbone'] for s in settings)
  return {b: trained[b] if b in trained else _pretrained_state(ctx) if b == stages.PRETRAINED
          else load_backbone_state(ctx.config, ctx.workdir, b) for b in needed}


def _pretrained_state(ctx: TrainContext) -> TrainState:
  """model.init_from's backbone as the state stage 2 freezes (only its backbone and statistics are read)."""
  return TrainState(step=None, params={'backbone': ctx.pretrained['params']},
                    batch_stats=ctx.pretrained['batch_stats'], opt_state=None, frozen={}, rng=None)


def train_grid(ctx: TrainContext, budget: StepBudget, rows: list, settings: list, backbones: dict) -> Grid:
  """Train every candidate: the heads of each backbone as one grid (WORKDIR/checkpoints/stage2_grid[_naive])."""
  states, index = {}, [0] * len(settings)
  for backbone, backbone_state in backbones.items():
    members = [i for i, s in enumerate(settings) if s['backbone'] == backbone]
    for k, i in enumerate(members):
      index[i] = k
    states[backbone] = run_heads(ctx, budget, backbone_state, [settings[i] for i in members],
                                 stages.grid_checkpoint(backbone))
  finite = {b: jax.device_get(finite_params(state.params, stacked=True)) for b, state in states.items()}
  return Grid(list(rows), list(settings), states, index,
              [bool(finite[s['backbone']][k]) for s, k in zip(settings, index)])


def choose(ctx: TrainContext, grid: Grid, metric: Optional[str]) -> Grid:
  """Choose one candidate per row: the best validation score under `metric` (`selection.choose`: ties keep
  the earliest, a diverged head is never chosen); with `metric` None, each row must hold one candidate."""
  if metric is None:
    for row in dict.fromkeys(grid.rows):
      [grid.chosen[row]] = grid.members(row)
    return grid
  grid.metric = metric
  reports = grid.reports(ctx, ctx.dataset.val)
  grid.val_reports = [reports[i] for i in range(len(grid.settings))]
  grid.scores = [selection.score(report, metric) if ok else None
                 for report, ok in zip(grid.val_reports, grid.finite)]
  for row in dict.fromkeys(grid.rows):
    members = grid.members(row)
    grid.chosen[row] = members[selection.choose([grid.scores[i] for i in members])]
  return grid


def run_grid(ctx: TrainContext, budget: StepBudget, rows: list, settings: list, trained: dict,
             metric: Optional[str]) -> Grid:
  """Train the candidates (`rows[i]`, `settings[i]`) and choose one per row on validation (`choose`)."""
  grid = train_grid(ctx, budget, rows, settings, backbone_states(ctx, trained, settings))
  return choose(ctx, grid, metric)


def selection_with_test(ctx: TrainContext, grid: Grid, row: str) -> dict:
  """`row`'s selection record with each candidate's test report, computed after the choice was made."""
  record = grid.record(row)
  members = grid.members(row)
  tests = grid.reports(ctx, ctx.dataset.test, members)
  return {**record, 'candidates': [{**c, 'test': without_per_class(tests[i])}
                                   for c, i in zip(record['candidates'], members)]}

