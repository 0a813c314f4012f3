"""Stage 2's one path: a grid of heads trained at once on each frozen backbone, scored on validation,
one head chosen per row.

Every stage 2 goes through `run_grid`: a run with nothing to select is a grid of one head; a run that
selects is the grid of `stage2.grid` (one row); the ablation and the sweep put several rows in one
grid. The heads of one backbone and training set train together (features shared); the backbone and the
training set are grid dimensions too (`stage2.grid.backbone`, `stage2.grid.train_set`). The test split never
chooses: candidates are scored on validation only, and test reports are made after the choice.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from bwlm_jax import checkpoints, selection, stages
from bwlm_jax.evaluation import results as results_lib
from bwlm_jax.evaluation.report import without_per_class
from bwlm_jax.head_setting import HeadSetting
from bwlm_jax.models import inference_variables
from bwlm_jax.train.context import TrainContext
from bwlm_jax.train.interval_metrics import finite_params
from bwlm_jax.train.loop import StepBudget, run_heads
from bwlm_jax.train.state import TrainState, backbone_directory, load_backbone_state


@dataclasses.dataclass
class Candidate:
  """One head of the grid: the row it competes in, its setting, its index among its group's heads (those of
  its backbone and training set, `HeadSetting.group`), and what validation said of it (filled by `choose`)."""
  row: str
  setting: HeadSetting
  head: int
  finite: bool = True
  score: Optional[float] = None  # validation score (None: diverged, or nothing selected)
  val: Optional[dict] = None  # validation report


@dataclasses.dataclass
class Grid:
  """Trained candidates; candidate i is head `candidates[i].head` of `states[its setting's group]`."""
  candidates: list[Candidate]
  states: dict[tuple[str, str], TrainState]
  chosen: dict = dataclasses.field(default_factory=dict)  # row -> index of its chosen candidate
  metric: Optional[str] = None

  def members(self, row: str) -> list[int]:
    """The candidates that compete in `row`, in grid order."""
    return [i for i, c in enumerate(self.candidates) if c.row == row]

  def head_state(self, i: int) -> TrainState:
    """Candidate i alone: its head (parameters and optimizer state) on its frozen backbone."""
    candidate = self.candidates[i]
    state = self.states[candidate.setting.group]
    return state.replace(params=results_lib.head_at(state.params, candidate.head),
                         opt_state=results_lib.head_at(state.opt_state, candidate.head))

  def reports(self, ctx: TrainContext, split, members=None) -> dict:
    """{candidate: report on `split`} of `members` (default: all); each group's features computed once."""
    members = range(len(self.candidates)) if members is None else members
    reports = {}
    for group, state in self.states.items():
      mine = [i for i in members if self.candidates[i].setting.group == group]
      if mine:
        variables = inference_variables(stages.STAGE2, state)
        heads = [self.candidates[i].head for i in mine]
        reports.update(zip(mine, results_lib.stacked_head_reports(ctx.split_features, variables, split,
                                                                  ctx.dataset.train_counts, heads)))
    return reports

  def source(self, i: int) -> dict:
    """Where candidate i is saved: head `head` of the grid checkpoint `checkpoint` of stage 2."""
    candidate = self.candidates[i]
    return {'stage': stages.STAGE2.name, 'checkpoint': stages.grid_checkpoint(*candidate.setting.group),
            'head': candidate.head}

  def record(self, row: str) -> dict:
    """The selection record of `row` (no test numbers): metric, split, chosen, every candidate's score."""
    members = self.members(row)
    candidates = [{'setting': dataclasses.asdict(c.setting), 'score': c.score,
                   'val': without_per_class(c.val) if c.val is not None else None}
                  for c in (self.candidates[i] for i in members)]
    return {'metric': self.metric, 'split': 'val' if self.metric else None,
            'chosen': members.index(self.chosen[row]), 'candidates': candidates}


def available(ctx: TrainContext, trained: dict, settings: list[HeadSetting]) -> list[HeadSetting]:
  """The settings whose backbone this run trained or can load finished (from the workdir or
  `stage1_checkpoint`); the others are named on the terminal and left out."""
  def ready(backbone):
    if backbone == stages.PRETRAINED:
      return ctx.pretrained is not None
    return backbone in trained or checkpoints.finished_meta(backbone_directory(ctx.config, ctx.workdir,
                                                                               backbone)) is not None
  missing = [b for b in dict.fromkeys(s.backbone for s in settings) if not ready(b)]
  kept = [s for s in settings if s.backbone not in missing]
  if missing and kept:
    print(f'stage 2: no finished {" or ".join(missing)} backbone here, so the grid leaves out its '
          f'{len(settings) - len(kept)} candidates (add it to config.stages to train it).')
  return kept if kept else settings  # with none ready, loading names what is missing


def backbone_states(ctx: TrainContext, trained: dict, settings: list[HeadSetting]) -> dict:
  """{backbone: finished state} of every backbone the settings name: trained in this run, or loaded from
  the workdir (or `stage1_checkpoint`)."""
  needed = dict.fromkeys(s.backbone for s in settings)
  return {b: trained[b] if b in trained else _pretrained_state(ctx) if b == stages.PRETRAINED
          else load_backbone_state(ctx.config, ctx.workdir, b) for b in needed}


def _pretrained_state(ctx: TrainContext) -> TrainState:
  """model.init_from's backbone as the state stage 2 freezes (only its backbone and statistics are read)."""
  return TrainState(step=None, params={'backbone': ctx.pretrained['params']},
                    batch_stats=ctx.pretrained['batch_stats'], opt_state=None, frozen={}, rng=None)


def train_grid(ctx: TrainContext, budget: StepBudget, rows: list, settings: list[HeadSetting],
               backbones: dict) -> Grid:
  """Train every candidate: the heads of each backbone and training set as one grid
  (WORKDIR/checkpoints/stage2_grid[_naive][_long_tail], `stages.grid_checkpoint`)."""
  heads = {g: [i for i, s in enumerate(settings) if s.group == g] for g in dict.fromkeys(s.group for s in settings)}
  candidates = [Candidate(row, setting, heads[setting.group].index(i))
                for i, (row, setting) in enumerate(zip(rows, settings))]
  states = {g: run_heads(ctx, budget, backbones[g[0]], [settings[i] for i in members], stages.grid_checkpoint(*g))
            for g, members in heads.items()}
  finite = {g: jax.device_get(finite_params(state.params, stacked=True)) for g, state in states.items()}
  for c in candidates:
    c.finite = bool(finite[c.setting.group][c.head])
  return Grid(candidates, states)


def choose(ctx: TrainContext, grid: Grid, metric: Optional[str]) -> Grid:
  """Choose one candidate per row: the best validation score under `metric` (`selection.choose`: ties keep
  the earliest, a diverged head is never chosen); with `metric` None, each row must hold one candidate."""
  rows = dict.fromkeys(c.row for c in grid.candidates)
  if metric is None:
    for row in rows:
      [grid.chosen[row]] = grid.members(row)
    return grid
  grid.metric = metric
  for i, report in grid.reports(ctx, ctx.dataset.val).items():
    candidate = grid.candidates[i]
    candidate.val = report
    candidate.score = selection.score(report, metric) if candidate.finite else None
  for row in rows:
    members = grid.members(row)
    grid.chosen[row] = members[selection.choose([grid.candidates[i].score for i in members])]
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

