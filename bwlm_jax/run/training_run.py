"""Train the configured stages, then evaluate them: what `launch/train.py` and the experiments run.

The one module that uses both `train/` (which never evaluates) and `evaluation/` (which never trains).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import jax

from bwlm_jax import checkpoints, head_setting, selection, stages, weights
from bwlm_jax.run import head_grid
from bwlm_jax.runtime import distributed, stopping
from bwlm_jax import workdir as workdir_lib
from bwlm_jax.config import parse_stages, validate_config
from bwlm_jax.data import LongTailDataset, load_dataset
from bwlm_jax.data.summary import count_summary, eval_split_lines, format_summary
from bwlm_jax.evaluation import metrics, results as results_lib
from bwlm_jax.evaluation.report import results_table, selection_table
from bwlm_jax.runtime.files import write_json_keeping_earlier, write_text_keeping_earlier
from bwlm_jax.features import SplitFeatures
from bwlm_jax.head_setting import HeadSetting
from bwlm_jax.fingerprint import run_fingerprint
from bwlm_jax.models import build_model, inference_variables
from bwlm_jax.models.head import head_kernel
from bwlm_jax.train.context import TrainContext
from bwlm_jax.train.feeders import STAGE2_FEEDS, check_backbone_samplers, stage2_feed
from bwlm_jax.train.loop import StepBudget, run_stage
from bwlm_jax.train.state import TrainState, stage2_head_source
from bwlm_jax.runtime.errors import UsageError


def check_inputs(config, workdir: str) -> None:
  """The cheap checks of a run's config and workdir path, before any data is read."""
  validate_config(config)
  distributed.check_same_config(config.to_dict())
  _check_init_from(config)
  for stage in parse_stages(config):
    if not stage.trains_heads and config[stage.name].head_init == 'stage2_head':
      stage2_head_source(config, stage.name)
  workdir_lib.check_workdir_path(workdir)


def _check_init_from(config) -> None:
  if config.model.init_from:
    weights.check_source(config.model.init_from)
  elif stages.PRETRAINED in (config.stage2.backbone, *(config.stage2.grid.backbone or ())):
    raise UsageError('stage2.backbone=pretrained freezes the backbone of model.init_from, which is not set: '
                     'give --config.model.init_from=WEIGHTS_FILE (or a finished workdir).')


def _normalized(config, dataset: LongTailDataset) -> LongTailDataset:
  """The dataset with the normalisation the run uses (data.normalize): with a weights file (auto), the input
  those weights expect (`weights.input_statistics`), the training set's statistics otherwise."""
  mode = config.data.normalize
  weights_file = bool(config.model.init_from) and weights.split_source(config.model.init_from)[1] is None
  if mode == 'imagenet':
    return dataclasses.replace(dataset, mean=weights.IMAGENET_MEAN, std=weights.IMAGENET_STD)
  if mode == 'auto' and weights_file:
    mean, std, source = weights.input_statistics(config.model.name, config.model.init_from)
    print(f'input normalisation: mean {", ".join(f"{v:.4g}" for v in mean)}, std '
          f'{", ".join(f"{v:.4g}" for v in std)} ({source})')
    return dataclasses.replace(dataset, mean=mean, std=std)
  return dataset


def make_context(config, workdir: str, dataset: Optional[LongTailDataset] = None) -> TrainContext:
  """Load `config`'s dataset (unless given; its summary is printed) and build the model and mesh."""
  if dataset is None:
    dataset = load_dataset(config.data, weights.eval_transform_of(config))
    if dataset.eval_transform is not None:
      print(f'evaluation images: the shorter side resized to image_size / {dataset.eval_transform.crop_pct:g} '
            f'({dataset.eval_transform.interpolation}), the centre cropped (data.eval_transform)')
    print(format_summary(dataset.name, count_summary(dataset.train_counts),
                         eval_split_lines(dataset, config.data.val_per_class)))
  dataset = _normalized(config, dataset)
  model = build_model(config.model, dataset.num_classes)
  mesh = distributed.make_mesh()
  image_shape = (dataset.image_size, dataset.image_size, 3)
  pretrained = (weights.pretrained_backbone(config.model.init_from, model, image_shape, config.model.name)
                if config.model.init_from else None)
  return TrainContext(config, workdir, dataset, model, mesh,
                      SplitFeatures(model, dataset, mesh, config.eval_batch_size, config.model.dtype,
                                    config.data.test_views),
                      fingerprint=run_fingerprint(config, dataset, model), pretrained=pretrained)


def _curve_callback(ctx: TrainContext):
  """Training curves on the validation split where there is one; the test split only where there is none."""
  curve_split = 'val' if ctx.dataset.val is not None else 'test'

  def on_eval(stage, state):
    variables = inference_variables(stage, state)
    features, labels = ctx.split_features(variables, ctx.dataset.eval_splits()[curve_split])
    report = metrics.head_report(features, labels, variables['head'], ctx.dataset.train_counts)
    return {f'{curve_split}_accuracy': report['all']}

  return on_eval


# How a dataset gets a validation split (what the errors of a missing one say).
HOW_TO_GET_VAL = 'a folder needs ROOT/val/<class>/, or data.imbalance_factor with data.val_per_class > 0'


def require_validation(dataset: LongTailDataset, what: str) -> None:
  """One error where a tool that chooses on the validation split (`what` does so) is given a dataset without one."""
  if dataset.val is None:
    raise UsageError(f'{what} on the validation split, which this dataset lacks ({HOW_TO_GET_VAL}).')


def selection_metric(config, dataset: LongTailDataset) -> Optional[str]:
  """The metric stage 2 is chosen by on validation (config.stage2.select), or None where nothing is selected;
  a clear error where selection is required and impossible. Also says how stage 2 is fed."""
  if stages.STAGE2 not in parse_stages(config):
    return None
  feed = stage2_feed(config, dataset)
  print(f'stage 2 is fed {feed}: {STAGE2_FEEDS[feed]}.')
  mode = config.stage2.select
  if mode == 'none':
    return None
  if dataset.val is not None:
    return config.stage2.select_metric
  reason = f'this dataset has no validation split ({HOW_TO_GET_VAL} to carve one)'
  if mode == 'val':
    raise UsageError(f'stage2.select=val: {reason}. Use --config.stage2.select=none to train the one configured '
                     'setting.')
  print(f'stage 2: no selection on validation ({reason}); training the configured setting '
        f'({head_setting.label(HeadSetting.from_config(config.stage2))}). The test split is never used to choose.')
  return None


def run_stage2(ctx: TrainContext, budget: StepBudget, trained: dict, metric: Optional[str]):
  """Stage 2 as a grid of heads (`head_grid.run_grid`): the grid of `stage2.grid` chosen on validation, or
  the one configured head; the chosen head becomes the finished stage-2 checkpoint.

  Returns (the chosen head's state, the grid). A finished stage 2 trained without selection (also by
  the single-head code of older versions) is used as it is, with no grid (None).
  """
  config = ctx.config
  if metric is None:
    finished = checkpoints.restore_finished(checkpoints.stage_directory(ctx.workdir, stages.STAGE2.name))
    if finished is not None:
      print(f'stage2: finished earlier ({finished[1]["step"]} steps); using its checkpoint.')
      return TrainState(**finished[0]), None
  settings = selection.candidates(config.stage2) if metric else [HeadSetting.from_config(config.stage2)]
  settings = head_grid.available(ctx, trained, settings)
  if metric:
    print(f'stage 2: {len(settings)} candidate settings trained as heads of one run per backbone and training '
          f'set, chosen on validation ({metric}).')
  grid = head_grid.run_grid(ctx, budget, [stages.STAGE2.name] * len(settings), settings, trained, metric)
  index = grid.chosen[stages.STAGE2.name]
  chosen, state = grid.candidates[index], grid.head_state(index)
  step = int(grid.states[chosen.setting.group].step)
  _save_choice(ctx, state, step, chosen.setting,
               {'metric': metric, 'split': 'val', 'setting': dataclasses.asdict(chosen.setting),
                'score': chosen.score} if metric else None)
  if metric:
    print(f'stage 2: chose {head_setting.label(chosen.setting)} (val {metric} {100 * chosen.score:.1f} %).')
  return state, grid


def _save_choice(ctx: TrainContext, state: TrainState, step: int, setting: HeadSetting,
                 selected: Optional[dict]) -> None:
  """The chosen head as the finished stage-2 checkpoint, with its settings in its config (and `selected`, the
  record of a choice on validation); an existing stage-2 model that is not this choice is kept and refused,
  never relabelled."""
  store = checkpoints.StageCheckpoints(checkpoints.stage_directory(ctx.workdir, stages.STAGE2.name),
                                       ctx.config.keep_checkpoints)
  try:
    existing = store.latest_meta()
    if existing is not None and _chosen_setting(existing) != (selected or {}).get('setting'):
      raise UsageError(f'{ctx.workdir}/checkpoints/stage2 holds a stage-2 model that is not this grid\'s choice '
                       f'({head_setting.label(setting)}); it is kept as it is. Use a new --workdir.')
    if existing is None:
      chosen_config = ctx.config.to_dict()
      chosen_config['stage2'].update(dataclasses.asdict(setting))
      meta = checkpoints.checkpoint_meta(stages.STAGE2.name, step, step, True, chosen_config, ctx.dataset,
                                         ctx.fingerprint)
      store.save(step, state, {**meta, 'selected': selected} if selected else meta)
  finally:
    store.close()


def _chosen_setting(meta: dict) -> Optional[dict]:
  """The setting a finished stage-2 checkpoint records as chosen on validation (None: not chosen); a field
  added to HeadSetting after it was saved is read from its config (where the chosen setting was applied), or
  is the default, which is what older code did."""
  if not meta.get('selected'):
    return None
  saved = meta['config']['stage2']
  return {**dataclasses.asdict(HeadSetting()), **{f: saved[f] for f in head_setting.NAMES if f in saved},
          **meta['selected']['setting']}


def _refuse_relabelling(config, workdir: str, run_stages) -> None:
  """Before anything is written: each finished checkpoint this run would reuse (a stage's, and stage 2's
  grids) was trained with this config's fields for its stage (else it would be relabelled)."""
  for stage in run_stages:
    grids = [stages.grid_checkpoint(b, t) for b in stages.BACKBONES for t in stages.HEAD_TRAIN_SETS]
    names = [stage.name] + (grids if stage.trains_heads else [])
    for name in names:
      directory = checkpoints.stage_directory(workdir, name)
      meta = checkpoints.finished_meta(directory)
      if meta is not None:
        workdir_lib.refuse_relabel(stage.name, directory, meta, config.to_dict())


@stopping.stops_on_sigterm
def train_and_evaluate(config, workdir: str, *, stop_after_steps: Optional[int] = None,
                       dataset: Optional[LongTailDataset] = None) -> dict:
  """Train the configured stages in `workdir` (resuming), evaluate, write `results.json`; return it.

  `stop_after_steps` ends this process's training after that many steps (a checkpoint saved), as a
  preemption would: rerunning resumes. `dataset` skips loading when the caller has it already.
  """
  check_inputs(config, workdir)
  workdir_lib.check_workdir_config(workdir, config.to_dict(), config.allow_config_change)
  run_stages = parse_stages(config)
  _refuse_relabelling(config, workdir, run_stages)
  ctx = make_context(config, workdir, dataset)
  metric = selection_metric(config, ctx.dataset)
  check_backbone_samplers(config, ctx.dataset, run_stages)
  if jax.process_index() == 0:
    workdir_lib.record_workdir_config(workdir, config.to_dict())
  trained, grid, budget = {}, None, StepBudget(stop_after_steps)
  for stage in run_stages:
    if stage.trains_backbone:
      trained[stage.name] = run_stage(ctx, stage, budget, on_eval=_curve_callback(ctx))
    else:
      trained[stage.name], grid = run_stage2(ctx, budget, trained, metric)

  results = results_lib.run_results(ctx.dataset, {stage: inference_variables(stage, state)
                                                  for stage, state in trained.items()}, ctx.split_features,
                                    ctx.config.data.test_views)
  results['fingerprint'] = ctx.fingerprint
  if grid is not None and grid.metric:
    results['stage2_selection'] = head_grid.selection_with_test(ctx, grid, stages.STAGE2.name)
  if jax.process_index() == 0:
    with stopping.deferred('writing results.json'):
      results = results_lib.with_earlier_results(config, workdir, results)
      write_json_keeping_earlier(os.path.join(workdir, 'results.json'), results)
      if grid is not None and grid.metric:
        path = os.path.join(workdir, 'stage2_selection.md')
        write_text_keeping_earlier(path, selection_table(results['stage2_selection'], 'stage-2 candidate') + '\n')
        print(f'stage-2 grid, validation scores and test accuracy of every candidate: {path}')
    print(results_table(results))
  return results


@stopping.stops_on_sigterm
def train_rows_and_evaluate(config, workdir: str, rows: dict, metric: Optional[str], *,
                            dataset: Optional[LongTailDataset] = None) -> dict:
  """Stage-2 rows ({name: candidate settings}) trained as one grid in `workdir` on the backbones of
  `config.stage1_checkpoint`, one head chosen per row (`head_grid.run_grid`: on validation under
  `metric`, or each row's one setting). Returns {name: a results dict like `train_and_evaluate`'s, with
  'stage2_selection' and 'source' (where the chosen head is saved)}; writes `workdir/results.json`.
  """
  names = [name for name, options in rows.items() for _ in options]
  settings = [setting for options in rows.values() for setting in options]
  if not settings:
    raise UsageError('a stage-2 grid needs at least one head setting.')
  check_inputs(config, workdir)
  recorded = {**config.to_dict(), 'head_settings': [dataclasses.asdict(s) for s in settings]}
  workdir_lib.check_workdir_config(workdir, recorded, config.allow_config_change)
  ctx = make_context(config, workdir, dataset)
  if jax.process_index() == 0:
    workdir_lib.record_workdir_config(workdir, recorded)
  grid = head_grid.run_grid(ctx, StepBudget(None), names, settings, {}, metric)
  chosen = [grid.chosen[name] for name in rows]
  by_split = {split_name: grid.reports(ctx, split, chosen) for split_name, split in ctx.dataset.eval_splits().items()}
  finished = {}
  for name, i in zip(rows, chosen):
    head = jax.device_get(grid.head_state(i).params['head'])
    finished[name] = {'models': {stages.STAGE2.name: {split: reports[i] for split, reports in by_split.items()}},
                      'weight_norms': {stages.STAGE2.name: metrics.weight_norms(head_kernel(head))},
                      'stage2_selection': grid.record(name) if metric else None,
                      'source': {'workdir': os.path.abspath(workdir), **grid.source(i)}}
  if jax.process_index() == 0:
    with stopping.deferred('writing results.json'):
      write_json_keeping_earlier(os.path.join(workdir, 'results.json'),
                                 {'dataset': ctx.dataset.name, 'fingerprint': ctx.fingerprint, 'rows': finished})
  return finished
