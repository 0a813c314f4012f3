"""Train the configured stages, then evaluate them: what `launch/train.py` and the experiments run.

The one module that uses both `train/` (which never evaluates) and `evaluation/` (which never trains).
"""

from __future__ import annotations

import os
from typing import Optional

import jax

from bwlm_jax import checkpoints, selection, sharding
from bwlm_jax import workdir as workdir_lib
from bwlm_jax.config import parse_stages, validate_config
from bwlm_jax.data import LongTailDataset, load_dataset
from bwlm_jax.data.summary import count_summary, eval_split_lines, format_summary
from bwlm_jax.evaluation import metrics, results as results_lib
from bwlm_jax.evaluation.report import results_table, selection_table, without_per_class
from bwlm_jax.files import write_json_keeping_earlier, write_text_keeping_earlier
from bwlm_jax.features import SplitFeatures
from bwlm_jax.fingerprint import run_fingerprint
from bwlm_jax.models import build_model, inference_variables
from bwlm_jax.train.context import TrainContext
from bwlm_jax.train.feeders import multihead_supported
from bwlm_jax.train.interval_metrics import finite_params
from bwlm_jax.train.loop import StepBudget, run_stage, sigterm_stops
from bwlm_jax.train.state import TrainState
from bwlm_jax.errors import UsageError


def check_inputs(config, workdir: str) -> None:
  """The cheap checks of a run's config and workdir path, before any data is read."""
  validate_config(config)
  workdir_lib.check_workdir_path(workdir)


def make_context(config, workdir: str, dataset: Optional[LongTailDataset] = None) -> TrainContext:
  """Load `config`'s dataset (unless given; its summary is printed) and build the model and mesh."""
  if dataset is None:
    dataset = load_dataset(config.data)
    print(format_summary(dataset.name, count_summary(dataset.train_counts),
                         eval_split_lines(dataset, config.data.val_per_class)))
  model = build_model(config.model, dataset.num_classes)
  mesh = sharding.make_mesh()
  return TrainContext(config, workdir, dataset, model, mesh,
                      SplitFeatures(model, dataset, mesh, config.eval_batch_size, config.model.dtype),
                      fingerprint=run_fingerprint(config, dataset, model))


def _curve_callback(ctx: TrainContext):
  """Training curves on the validation split where there is one; the test split only where there is none."""
  curve_split = 'val' if ctx.dataset.val is not None else 'test'

  def on_eval(stage, state):
    variables = inference_variables(stage, state)
    features, labels = ctx.split_features(variables, ctx.dataset.eval_splits()[curve_split])
    report = metrics.head_report(features, labels, variables['head'], ctx.dataset.train_counts)
    return {f'{curve_split}_accuracy': report['all']}

  return on_eval


def selects_stage2(config, dataset: LongTailDataset) -> bool:
  """Whether stage 2 is chosen on validation (config.stage2.select); a clear error where it cannot be."""
  mode = config.stage2.select
  if mode == 'none' or 'stage2' not in parse_stages(config):
    return False
  reason = None
  if dataset.val is None:
    reason = ('this dataset has no validation split (a folder needs ROOT/val/<class>/, or data.imbalance_factor '
              'with data.val_per_class > 0 to carve one)')
  elif not multihead_supported(config, dataset):
    reason = 'the candidates train as heads of one run, which needs --config.stage2.augment=False on streamed data'
  if reason is None:
    return True
  if mode == 'val':
    raise UsageError(f'stage2.select=val: {reason}. Use --config.stage2.select=none to train the one configured '
                     'setting.')
  print(f'stage 2: no selection on validation ({reason}); training the configured setting '
        f'({selection.setting_label(selection.base_setting(config.stage2))}). The test split is never used to choose.')
  return False


def run_selected_stage2(ctx: TrainContext, budget: StepBudget, backbone_state: Optional[TrainState]):
  """Stage 2 chosen on validation: the grid trains as K heads at once (WORKDIR/checkpoints/stage2_grid),
  each head is scored on the validation split, and the best becomes the finished stage-2 checkpoint.

  Returns (the chosen head's state, the selection record without test numbers, the grid's state).
  """
  config = ctx.config
  candidates = selection.candidates(config.stage2)
  print(f'stage 2: {len(candidates)} candidate settings trained as heads of one run, chosen on validation '
        f'({config.stage2.select_metric}).')
  grid_state = run_stage(ctx, 'stage2', budget, backbone_state, head_settings=candidates, checkpoint_name='stage2_grid')
  reports = results_lib.stacked_head_reports(ctx.split_features, inference_variables('stage2', grid_state),
                                             ctx.dataset.val, ctx.dataset.train_counts)
  finite = jax.device_get(finite_params(grid_state.params, stacked=True))
  scored = [{'setting': setting, 'score': selection.score(report, config.stage2.select_metric) if ok else None,
             'val': without_per_class(report)} for setting, report, ok in zip(candidates, reports, finite)]
  chosen = selection.choose(c['score'] for c in scored)
  record = {'metric': config.stage2.select_metric, 'split': 'val', 'chosen': chosen, 'candidates': scored}
  state = grid_state.replace(params=results_lib.head_at(grid_state.params, chosen),
                             opt_state=results_lib.head_at(grid_state.opt_state, chosen))
  _save_choice(ctx, state, int(grid_state.step), candidates[chosen], record['metric'], scored[chosen]['score'])
  print(f'stage 2: chose {selection.setting_label(candidates[chosen])} '
        f'(val {config.stage2.select_metric} {100 * scored[chosen]["score"]:.1f} %).')
  return state, record, grid_state


def _save_choice(ctx: TrainContext, state: TrainState, step: int, setting: dict, metric: str, score: float) -> None:
  """The chosen head as the finished stage-2 checkpoint, with the chosen settings in its config; an
  existing stage-2 model that is not this choice is kept and refused, never relabelled."""
  store = checkpoints.StageCheckpoints(checkpoints.stage_directory(ctx.workdir, 'stage2'), ctx.config.keep_checkpoints)
  try:
    existing = store.latest_meta()
    if existing is not None and (existing.get('selected') or {}).get('setting') != setting:
      raise UsageError(f'{ctx.workdir}/checkpoints/stage2 holds a stage-2 model that is not this grid\'s choice '
                       f'({selection.setting_label(setting)}); it is kept as it is. Use a new --workdir.')
    if existing is None:
      chosen_config = ctx.config.to_dict()
      chosen_config['stage2'].update(setting)
      meta = checkpoints.checkpoint_meta('stage2', step, step, True, chosen_config, ctx.dataset, ctx.fingerprint)
      store.save(step, state, {**meta, 'selected': {'metric': metric, 'split': 'val', 'setting': setting,
                                                    'score': score}})
  finally:
    store.close()


def _selection_with_test(ctx: TrainContext, record: dict, grid_state: TrainState) -> dict:
  """The selection record with each candidate's test report, computed after the choice was made."""
  reports = results_lib.stacked_head_reports(ctx.split_features, inference_variables('stage2', grid_state),
                                             ctx.dataset.test, ctx.dataset.train_counts)
  candidates = [{**candidate, 'test': without_per_class(report)}
                for candidate, report in zip(record['candidates'], reports)]
  return {**record, 'candidates': candidates}


def _refuse_relabelling(config, workdir: str, checkpoint_names: dict) -> None:
  """Before anything is written: each finished checkpoint this run would reuse ({stage: [directory
  names]}) was trained with this config's fields for its stage (else it would be relabelled)."""
  for stage, names in checkpoint_names.items():
    for name in names:
      directory = checkpoints.stage_directory(workdir, name)
      meta = checkpoints.finished_meta(directory)
      if meta is not None:
        workdir_lib.refuse_relabel(stage, directory, meta, config.to_dict())


def train_and_evaluate(config, workdir: str, *, stop_after_steps: Optional[int] = None,
                       dataset: Optional[LongTailDataset] = None) -> dict:
  """Train the configured stages in `workdir` (resuming), evaluate, write `results.json`; return it.

  `stop_after_steps` ends this process's training after that many steps (a checkpoint saved), as a
  preemption would: rerunning resumes. `dataset` skips loading when the caller has it already.
  """
  validate_config(config)
  workdir_lib.check_workdir_config(workdir, config.to_dict(), config.allow_config_change)
  _refuse_relabelling(config, workdir, {s: [s, 'stage2_grid'] if s == 'stage2' else [s] for s in parse_stages(config)})
  ctx = make_context(config, workdir, dataset)
  select = selects_stage2(config, ctx.dataset)
  if jax.process_index() == 0:
    workdir_lib.record_workdir_config(workdir, config.to_dict())
  trained, record, grid_state = {}, None, None
  with sigterm_stops(StepBudget(stop_after_steps)) as budget:
    for stage in parse_stages(config):
      backbone = trained.get(config.stage2.backbone)
      if stage == 'stage2' and select:
        trained[stage], record, grid_state = run_selected_stage2(ctx, budget, backbone)
      else:
        trained[stage] = run_stage(ctx, stage, budget, backbone, on_eval=_curve_callback(ctx))

  results = results_lib.run_results(ctx.dataset, {stage: inference_variables(stage, state)
                                                  for stage, state in trained.items()}, ctx.split_features)
  results['fingerprint'] = ctx.fingerprint
  if record is not None:
    results['stage2_selection'] = _selection_with_test(ctx, record, grid_state)
  if jax.process_index() == 0:
    results = results_lib.with_earlier_results(config, workdir, results)
    write_json_keeping_earlier(os.path.join(workdir, 'results.json'), results)
    if record is not None:
      path = os.path.join(workdir, 'stage2_selection.md')
      write_text_keeping_earlier(path, selection_table(results['stage2_selection'], 'stage-2 candidate') + '\n')
      print(f'stage-2 grid, validation scores and test accuracy of every candidate: {path}')
    print(results_table(results))
  return results


def train_heads_and_evaluate(config, workdir: str, head_settings: list, *,
                             dataset: Optional[LongTailDataset] = None) -> list:
  """Stage 2 with one head per setting, trained at once on shared features; evaluate each head.

  Returns one results dict per head, shaped like `train_and_evaluate`'s ({'models': {'stage2': ...},
  'weight_norms': {'stage2': ...}}), and writes them to `workdir/results.json`.
  """
  if not head_settings:
    raise UsageError('train_heads_and_evaluate needs at least one head setting.')
  validate_config(config)
  recorded = {**config.to_dict(), 'head_settings': head_settings}
  workdir_lib.check_workdir_config(workdir, recorded, config.allow_config_change)
  _refuse_relabelling(config, workdir, {'stage2': ['stage2']})
  ctx = make_context(config, workdir, dataset)
  if jax.process_index() == 0:
    workdir_lib.record_workdir_config(workdir, recorded)
  with sigterm_stops(StepBudget(None)) as budget:
    state = run_stage(ctx, 'stage2', budget, head_settings=head_settings)
  variables = inference_variables('stage2', state)
  by_split = {name: results_lib.stacked_head_reports(ctx.split_features, variables, split, ctx.dataset.train_counts)
              for name, split in ctx.dataset.eval_splits().items()}
  heads = jax.device_get(variables['head'])
  finite = jax.device_get(finite_params(state.params, stacked=True))
  results = []
  for k, setting in enumerate(head_settings):
    head = results_lib.head_at(heads, k)
    results.append({'setting': setting, 'finite': bool(finite[k]),
                    'models': {'stage2': {name: reports[k] for name, reports in by_split.items()}},
                    'weight_norms': {'stage2': metrics.weight_norms(head['dense']['kernel'])}})
  if jax.process_index() == 0:
    write_json_keeping_earlier(os.path.join(workdir, 'results.json'),
                               {'dataset': ctx.dataset.name, 'fingerprint': ctx.fingerprint, 'heads': results})
  return results
