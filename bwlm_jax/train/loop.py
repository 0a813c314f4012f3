"""`train_and_evaluate`: the naive / stage-1 / stage-2 runs of a config, resumable, then evaluation."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from bwlm_jax import losses, selection, sharding
from bwlm_jax.data import LongTailDataset, device_pipeline, load_dataset, stage_train_split, stream_pipeline
from bwlm_jax.data.summary import count_summary, eval_split_lines, format_summary
from bwlm_jax.evaluate import metrics as metrics_lib
from bwlm_jax.evaluate.report import results_table, unique_path, write_json
from bwlm_jax.models import DTYPES, MODELS, LinearHead, build_backbone
from bwlm_jax.train import optim
from bwlm_jax.train.checkpoint import StageCheckpoints, check_workdir_config
from bwlm_jax.train.metric_writer import MetricWriter
from bwlm_jax.train.state import Model, TrainState
from bwlm_jax.train.steps import (HEAD_INIT, StepConfig, class_balanced_tables, make_device_train_step,
                                  head_settings_arrays, make_cached_head_step, make_features_fn,
                                  make_multihead_step, make_stream_train_step, stack_heads)

STAGE_TAGS = {'naive': 11, 'stage1': 12, 'stage2': 13}
TOP_K = 5


class Interrupted(Exception):
  """Raised when `stop_after_steps` ends a run early (after its checkpoint is saved)."""


class StepBudget:
  """How many more training steps this process may take (across stages); None = no limit.

  SIGTERM (a preempted or cancelled job) also ends the budget: the step in flight finishes, a
  checkpoint is saved and `Interrupted` is raised, so a rerun resumes from that step.
  """

  def __init__(self, steps: Optional[int]):
    self.remaining = steps
    self.terminated = False

  def spend(self) -> bool:
    """Count one step; True when the budget is used up or a SIGTERM arrived."""
    if self.terminated:
      return True
    if self.remaining is None:
      return False
    self.remaining -= 1
    return self.remaining <= 0

  def stop_on_sigterm(self):
    """Install the SIGTERM handler (main thread only); returns the previous handler to restore."""
    if threading.current_thread() is not threading.main_thread():
      return None

    def handler(signum, frame):
      del signum, frame
      print('SIGTERM: saving a checkpoint after this step, then stopping.', flush=True)
      self.terminated = True

    return signal.signal(signal.SIGTERM, handler)


def parse_stages(config) -> tuple[str, ...]:
  stages = tuple(s.strip() for s in config.stages.split(',') if s.strip())
  unknown = [s for s in stages if s not in STAGE_TAGS]
  if not stages or unknown:
    raise ValueError(f'config.stages={config.stages!r}: expected a comma-separated subset of naive,stage1,stage2.')
  order = [s for s in STAGE_TAGS if s in stages]
  return tuple(order)


def validate_config(config) -> None:
  """Every cheap check of a config, before any data is read."""
  parse_stages(config)
  if config.model.name not in MODELS:
    raise ValueError(f'unknown model.name={config.model.name!r}; expected one of {MODELS}.')
  if config.model.dtype not in DTYPES:
    raise ValueError(f'model.dtype must be one of {tuple(DTYPES)}, got {config.model.dtype!r}.')
  if config.stage2.loss not in losses.LOSSES:
    raise ValueError(f'unknown stage2.loss={config.stage2.loss!r}; expected one of {losses.LOSSES}.')
  if not 0.0 <= config.stage2.alpha <= 1.0:
    raise ValueError(f'stage2.alpha must be in [0, 1], got {config.stage2.alpha}.')
  if not 0.0 < config.stage2.beta < 1.0:
    raise ValueError(f'stage2.beta must be in (0, 1), got {config.stage2.beta}.')
  if config.stage2.gamma < 0:
    raise ValueError(f'stage2.gamma must be >= 0, got {config.stage2.gamma}.')
  if config.stage2.head_bias_init not in ('zeros', 'cb_prior'):
    raise ValueError(f"stage2.head_bias_init must be 'zeros' or 'cb_prior', got {config.stage2.head_bias_init!r}.")
  for field, allowed in (('backbone', ('stage1', 'naive')), ('train_set', ('review', 'long_tail')),
                         ('sampler', ('uniform', 'class_balanced'))):
    if config.stage2[field] not in allowed:
      raise ValueError(f'stage2.{field} must be one of {allowed}, got {config.stage2[field]!r}.')
  if config.stage2.max_norm is not None and config.stage2.max_norm <= 0:
    raise ValueError(f'stage2.max_norm must be > 0 (or None), got {config.stage2.max_norm}.')
  selection.validate(config.stage2)
  if config.stage2.loss_counts not in ('long_tail', 'stage2'):
    raise ValueError(f"stage2.loss_counts must be 'long_tail' or 'stage2', got {config.stage2.loss_counts!r}.")
  for stage in STAGE_TAGS:
    cfg = config[stage]
    if cfg.epochs < 1 or cfg.learning_rate <= 0 or cfg.weight_decay < 0:
      raise ValueError(f'{stage}: epochs must be >= 1, learning_rate > 0 and weight_decay >= 0; got '
                       f'{cfg.epochs}, {cfg.learning_rate}, {cfg.weight_decay}.')
  if config.batch_size < 1 or config.batch_size % jax.device_count():
    raise ValueError(f'batch_size={config.batch_size} must be a positive multiple of the '
                     f'{jax.device_count()} devices (the global batch is split evenly between them).')
  if config.eval_batch_size < 1 or config.eval_batch_size % jax.device_count():
    raise ValueError(f'eval_batch_size={config.eval_batch_size} must be a positive multiple of the '
                     f'{jax.device_count()} devices.')


@dataclasses.dataclass
class Runtime:
  """What every stage of one run shares."""
  config: object
  workdir: str
  dataset: LongTailDataset
  model: Model
  mesh: jax.sharding.Mesh
  writer: MetricWriter
  device_data: dict  # split name -> (images, labels) on device, for the device pipeline.
  features_fn: Optional[Callable] = None  # The jitted feature extractor, built on first use.

  @property
  def replicated(self):
    return sharding.replicated(self.mesh)

  @property
  def data_sharding(self):
    return sharding.batch_sharded(self.mesh)

  @property
  def image_shape(self):
    size = self.dataset.image_size
    return (size, size, 3)


def _stage_key(config, stage: str) -> jax.Array:
  return jax.random.fold_in(jax.random.key(config.seed), STAGE_TAGS[stage])


def _backbone_dir(config, workdir: str) -> str:
  """Checkpoints of the stage that gives stage 2 its backbone (config.stage2.backbone), in this run
  or in `config.stage1_checkpoint` (a workdir, or that stage's checkpoint directory itself)."""
  source = config.stage2.backbone
  if not config.stage1_checkpoint:
    return os.path.join(workdir, 'checkpoints', source)
  candidate = os.path.join(config.stage1_checkpoint, 'checkpoints', source)
  return candidate if os.path.isdir(candidate) else config.stage1_checkpoint


def _initial_state(rt: Runtime, stage: str, tx, backbone_state: Optional[TrainState]) -> TrainState:
  key = _stage_key(rt.config, stage)
  backbone_key, head_key = jax.random.split(jax.random.fold_in(key, HEAD_INIT))
  num_classes = rt.dataset.num_classes
  feature_dim = rt.model.feature_dim(rt.image_shape)
  if stage == 'stage2':
    # Copied: stage 2's steps donate their state, and stage 1's arrays are still evaluated later.
    frozen = jax.tree.map(jnp.copy, {'params': backbone_state.params['backbone'],
                                     'batch_stats': backbone_state.batch_stats})
    bias = -float(np.log(num_classes - 1)) if rt.config.stage2.head_bias_init == 'cb_prior' else 0.0
    head = LinearHead(num_classes, bias_init_value=bias).init(
        head_key, jnp.zeros((1, feature_dim)))['params']
    params, batch_stats = {'head': head}, {}
  else:
    backbone_params, batch_stats = rt.model.init_backbone(backbone_key, rt.image_shape)
    params = {'backbone': backbone_params, 'head': rt.model.init_head(head_key, feature_dim)}
    frozen = {}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), frozen=frozen, rng=jax.random.key_data(key))


def _loss_counts(rt: Runtime, split) -> jax.Array:
  """n_j of the balanced losses (config.stage2.loss_counts); a class with no image cannot be a label."""
  source = rt.dataset.train_counts if rt.config.stage2.loss_counts == 'long_tail' else np.bincount(
      split.labels, minlength=rt.dataset.num_classes)
  return jnp.asarray(np.maximum(source, 1), jnp.float32)


def _loss_fn(rt: Runtime, stage: str, split):
  if stage != 'stage2':
    return losses.cross_entropy
  cfg = rt.config.stage2
  counts = _loss_counts(rt, split)

  def loss_fn(logits, labels):
    return losses.stage2_loss(cfg.loss, logits, labels, counts, alpha=cfg.alpha, beta=cfg.beta, gamma=cfg.gamma)

  return loss_fn


def _optimizer(rt: Runtime, stage: str, total_steps: int, steps_per_epoch: int):
  stage_cfg = rt.config[stage]
  schedule = optim.learning_rate_schedule(stage_cfg, total_steps, steps_per_epoch)
  # Stage 2 trains only the head; the mask keeps decay on it even if more were ever trainable.
  return optim.sgd(stage_cfg, schedule, optim.head_mask if stage == 'stage2' else None), schedule


def _load_backbone_state(rt: Runtime) -> TrainState:
  """The finished state whose backbone stage 2 freezes: stage 1 (BWLM) or naive (cRT-style)."""
  source = rt.config.stage2.backbone
  directory = _backbone_dir(rt.config, rt.workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'stage 2 needs a {source} checkpoint: none at {directory}. Add {source} to '
                            f'config.stages or set config.stage1_checkpoint=WORKDIR_OF_A_{source.upper()}_RUN.')
  restored = _restore_finished(directory)
  if restored is None:
    raise ValueError(f'the {source} checkpoint in {directory} is missing or unfinished; finish {source} first.')
  state, meta = restored
  if meta['stage'] != source:
    raise ValueError(f'{directory} holds a {meta["stage"]} checkpoint, but stage2.backbone is {source!r}.')
  saved = meta['config']
  for field in ('name', 'imbalance_factor', 'max_count', 'subset_seed', 'folder'):
    if saved['data'].get(field) != rt.config.data[field]:
      raise ValueError(f'the {source} checkpoint in {directory} was trained on other data: data.{field} is '
                       f'{saved["data"].get(field)!r} there, {rt.config.data[field]!r} here.')
  if saved['model']['name'] != rt.config.model.name:
    raise ValueError(f'the {source} checkpoint in {directory} is a {saved["model"]["name"]}, not a '
                     f'{rt.config.model.name}.')
  return state


def stage_split(rt: Runtime, stage: str):
  """The training set of a stage; stage 2 trains on the review set or, if configured, the whole tail."""
  use = 'naive' if stage == 'stage2' and rt.config.stage2.train_set == 'long_tail' else stage
  return stage_train_split(rt.dataset, use, rt.config.data.subset_seed)


def _device_arrays(rt: Runtime, split_name: str, split):
  if split_name not in rt.device_data:
    rt.device_data[split_name] = (jax.device_put(jnp.asarray(split.images), rt.replicated),
                                  jax.device_put(jnp.asarray(split.labels, jnp.int32), rt.replicated))
  return rt.device_data[split_name]


def multihead_supported(config, dataset: LongTailDataset) -> bool:
  """Whether K stage-2 heads can train at once: on cached features, or on images kept on the device."""
  return (not config.stage2.augment and config.stage2.cache_features) or dataset.in_memory


def _multihead(rt: Runtime, split, head_settings: list, cfg: StepConfig) -> dict:
  """The pieces of a K-head stage 2: 'init_opt_state' and 'batches' (frozen -> a state -> (state, metrics) step)."""
  config = rt.config
  if not multihead_supported(config, rt.dataset):
    raise ValueError('training several stage-2 heads at once needs data that fits in memory, or cached '
                     'features (--config.stage2.augment=False).')
  cached = not config.stage2.augment and config.stage2.cache_features
  settings = head_settings_arrays(head_settings)
  tables = (class_balanced_tables(split.labels, rt.dataset.num_classes)
            if config.stage2.sampler == 'class_balanced' else None)
  step, init_opt_state = make_multihead_step(rt.model, settings, config.stage2, _loss_counts(rt, split), cfg,
                                             cached, rt.data_sharding, rt.replicated, tables)

  def batches(frozen):
    if cached:
      data, labels = _cached_features(rt, frozen, split)
    else:
      data, labels = _device_arrays(rt, f'train/stage2/{config.stage2.train_set}', split)
    return lambda state: step(state, data, labels)

  return {'init_opt_state': init_opt_state, 'batches': batches}


def _cached_features(rt: Runtime, frozen: dict, split):
  """The frozen backbone's features of every stage-2 training example, computed once, kept on device."""
  features, labels = split_features(rt, {'backbone': frozen['params'], 'batch_stats': frozen['batch_stats']}, split)
  return (jax.device_put(jnp.asarray(features), rt.replicated),
          jax.device_put(jnp.asarray(labels, jnp.int32), rt.replicated))


def run_stage(rt: Runtime, stage: str, budget: StepBudget, backbone_state: Optional[TrainState] = None,
              head_settings: Optional[list] = None, checkpoint_name: Optional[str] = None) -> TrainState:
  """Train one stage to its end, resuming from its latest checkpoint; returns the final state.

  With `head_settings` (stage 2 only), K heads train at once, one per setting (see
  `steps.make_multihead_step`), for as many epochs as the longest; the state then holds the K heads
  stacked on a leading axis. Checkpoints go to WORKDIR/checkpoints/<checkpoint_name or stage>.
  """
  config = rt.config
  stage_cfg = config[stage]
  split = stage_split(rt, stage)
  steps_per_epoch = device_pipeline.steps_per_epoch(len(split), config.batch_size)
  epochs = max(s['epochs'] for s in head_settings) if head_settings else stage_cfg.epochs
  total_steps = epochs * steps_per_epoch
  checkpoints = StageCheckpoints(os.path.join(rt.workdir, 'checkpoints', checkpoint_name or stage),
                                 config.keep_checkpoints)
  tx, schedule = _optimizer(rt, stage, total_steps, steps_per_epoch)
  if stage == 'stage2' and backbone_state is None:
    backbone_state = _load_backbone_state(rt)
  augment = config.stage2.augment if stage == 'stage2' else config.data.augment
  step_cfg = StepConfig(mode='head' if stage == 'stage2' else 'full', batch_size=config.batch_size,
                        steps_per_epoch=steps_per_epoch, augment=augment, mean=rt.dataset.mean,
                        std=rt.dataset.std, dtype=DTYPES[config.model.dtype],
                        max_norm=config.stage2.max_norm if stage == 'stage2' else None)
  state = _initial_state(rt, stage, tx, backbone_state)
  if head_settings is not None:
    multihead = _multihead(rt, split, head_settings, step_cfg)
    heads = {'head': stack_heads(state.params['head'], len(head_settings))}
    state = state.replace(params=heads, opt_state=multihead['init_opt_state'](heads))
  state = jax.device_put(state, rt.replicated)
  meta = checkpoints.latest_meta()
  if meta is not None:
    state, meta = checkpoints.restore_latest(state)
    if meta.get('finished'):
      print(f'{stage}: finished earlier ({meta["step"]} steps); using its checkpoint.')
      checkpoints.close()
      return state
    print(f'{stage}: resuming at step {meta["step"]} of {total_steps}.')

  if head_settings is None:
    batches = _batch_source(rt, stage, split, step_cfg, tx, _loss_fn(rt, stage, split), schedule, state.frozen,
                            int(state.step), total_steps, augment)
  else:
    batches = multihead['batches'](state.frozen)

  def record(step, finished):
    checkpoints.save(step, state, _checkpoint_meta(rt, stage, step, total_steps, finished, config.to_dict()))

  start = int(state.step)
  progress = tqdm(total=total_steps, initial=start, desc=stage, unit='step', dynamic_ncols=True,
                  mininterval=1.0, disable=jax.process_index() != 0)
  timer, images_since = time.perf_counter(), 0
  pending = None
  for step in range(start, total_steps):
    state, step_metrics = batches(state)
    images_since += config.batch_size
    progress.update(1)
    done = step + 1
    if done % config.log_every_steps == 0 or done == total_steps:
      # Metrics of the step before are read now, so the host never waits on the step it just queued.
      now = time.perf_counter()
      rate = images_since / max(now - timer, 1e-9)
      if pending is not None:
        _log(rt, stage, progress, pending, steps_per_epoch, rate)
      timer, images_since = now, 0
      pending = (done, step_metrics)
    if (config.eval_every_epochs and head_settings is None
        and done % (config.eval_every_epochs * steps_per_epoch) == 0):
      # Training curves on validation where there is one; the test split only when there is none.
      curve_split = 'val' if rt.dataset.val is not None else 'test'
      report = evaluate(rt, _variables(stage, state), rt.dataset.eval_splits()[curve_split])
      rt.writer.write(stage, done, {f'{curve_split}_accuracy': report['all'], 'epoch': done / steps_per_epoch})
    stopping = budget.spend() and done != total_steps
    if (done % config.checkpoint_every_steps == 0 or stopping) and done != total_steps:
      record(done, False)
    if stopping:
      checkpoints.close()
      progress.close()
      reason = 'on SIGTERM' if budget.terminated else 'as asked'
      raise Interrupted(f'{stage}: stopped after step {done} {reason}; rerun to resume.')
  if pending is not None:
    _log(rt, stage, progress, pending, steps_per_epoch, rate)
  progress.close()
  record(total_steps, True)
  checkpoints.close()
  return state


def _checkpoint_meta(rt: Runtime, stage: str, step: int, total_steps: int, finished: bool, config_dict: dict) -> dict:
  return {'stage': stage, 'step': step, 'total_steps': total_steps, 'finished': finished, 'config': config_dict,
          # What inference needs without loading the dataset (predict.py).
          'class_names': list(rt.dataset.class_names), 'image_size': rt.dataset.image_size,
          'mean': list(rt.dataset.mean), 'std': list(rt.dataset.std), 'center_crop': not rt.dataset.in_memory}


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
    raise ValueError(f'stage2.select=val: {reason}. Use --config.stage2.select=none to train the one configured '
                     'setting.')
  print(f'stage 2: no selection on validation ({reason}); training the configured setting '
        f'({selection.setting_label(selection.base_setting(config.stage2))}). The test split is never used to choose.')
  return False


def run_selected_stage2(rt: Runtime, budget: StepBudget, backbone_state: Optional[TrainState]):
  """Stage 2 chosen on validation: the grid trains as K heads at once (WORKDIR/checkpoints/stage2_grid),
  each head is scored on the validation split, and the best becomes the finished stage-2 checkpoint.

  Returns (the chosen head's state, the selection record without test numbers, the grid's state).
  """
  config = rt.config
  candidates = selection.candidates(config.stage2)
  print(f'stage 2: {len(candidates)} candidate settings trained as heads of one run, chosen on validation '
        f'({config.stage2.select_metric}).')
  grid_state = run_stage(rt, 'stage2', budget, backbone_state, head_settings=candidates, checkpoint_name='stage2_grid')
  heads = jax.device_get(grid_state.params['head'])
  val_features, val_labels = split_features(rt, _frozen_variables(grid_state), rt.dataset.val)
  scored = []
  for k, setting in enumerate(candidates):
    report = metrics_lib.head_report(val_features, val_labels, _head_at(heads, k), rt.dataset.train_counts, TOP_K)
    scored.append({'setting': setting, 'score': selection.score(report, config.stage2.select_metric),
                   'val': {key: value for key, value in report.items() if key != 'per_class'}})
  chosen = selection.choose(c['score'] for c in scored)
  record = {'metric': config.stage2.select_metric, 'split': 'val', 'chosen': chosen, 'candidates': scored}
  state = grid_state.replace(params=jax.tree.map(lambda leaf: leaf[chosen], grid_state.params),
                             opt_state=jax.tree.map(lambda leaf: leaf[chosen], grid_state.opt_state))
  checkpoints = StageCheckpoints(os.path.join(rt.workdir, 'checkpoints', 'stage2'), config.keep_checkpoints)
  existing = checkpoints.latest_meta()
  if existing is not None and (existing.get('selected') or {}).get('setting') != candidates[chosen]:
    checkpoints.close()
    raise ValueError(f'{rt.workdir}/checkpoints/stage2 holds a stage-2 model that is not this grid\'s choice '
                     f'({selection.setting_label(candidates[chosen])}); it is kept as it is. Use a new --workdir.')
  if existing is None:
    chosen_config = config.to_dict()
    chosen_config['stage2'].update(candidates[chosen])
    step = int(grid_state.step)
    meta = _checkpoint_meta(rt, 'stage2', step, step, True, chosen_config)
    checkpoints.save(step, state, {**meta, 'selected': {'metric': record['metric'], 'split': 'val',
                                                        'setting': candidates[chosen], 'score': scored[chosen]['score']}})
  checkpoints.close()
  print(f'stage 2: chose {selection.setting_label(candidates[chosen])} '
        f'(val {config.stage2.select_metric} {100 * scored[chosen]["score"]:.1f} %).')
  return state, record, grid_state


def _head_at(heads, k: int):
  return jax.tree.map(lambda leaf: leaf[k], heads)


def _frozen_variables(state: TrainState) -> dict:
  return {'backbone': state.frozen['params'], 'batch_stats': state.frozen['batch_stats']}


def _log(rt, stage, progress, pending, steps_per_epoch, images_per_second):
  """Write the metrics of a step queued one logging interval earlier, and the latest image rate."""
  step, step_metrics = pending
  values = {}
  for name, value in jax.device_get(step_metrics).items():
    value = np.asarray(value)
    values[name] = float(value.mean())  # K heads at once: the mean, and each head below
    if value.ndim:
      values.update({f'{name}/head{k}': float(v) for k, v in enumerate(value)})
  values['images_per_second'] = images_per_second
  values['epoch'] = step / steps_per_epoch
  rt.writer.write(stage, step, values)
  progress.set_postfix(epoch=f'{values["epoch"]:.1f}', loss=f'{values["loss"]:.3f}',
                       img_s=f'{values["images_per_second"]:.0f}', refresh=False)


def _batch_source(rt: Runtime, stage, split, step_cfg, tx, loss_fn, schedule, frozen, start_step, total_steps,
                  augment):
  """A callable state -> (state, metrics) that advances training by one step with the right batch."""
  class_balanced = stage == 'stage2' and rt.config.stage2.sampler == 'class_balanced'
  if rt.dataset.in_memory:
    tables = class_balanced_tables(split.labels, rt.dataset.num_classes) if class_balanced else None
    if stage == 'stage2' and not augment and rt.config.stage2.cache_features:
      cached_step = make_cached_head_step(rt.model, tx, loss_fn, schedule, step_cfg, rt.data_sharding,
                                          rt.replicated, tables)
      features, labels = _cached_features(rt, frozen, split)
      return lambda state: cached_step(state, features, labels)
    train_step = make_device_train_step(rt.model, tx, loss_fn, schedule, step_cfg, rt.data_sharding, rt.replicated,
                                        tables)
    images, labels = _device_arrays(rt, f'train/{stage}/{rt.config.stage2.train_set}', split)
    return lambda state: train_step(state, images, labels)

  if class_balanced:
    raise ValueError('stage2.sampler=class_balanced needs the device pipeline (data that fits in memory).')
  train_step = make_stream_train_step(rt.model, tx, loss_fn, schedule, step_cfg, rt.replicated)
  spe = step_cfg.steps_per_epoch

  def host_batches():
    for epoch in range(start_step // spe, total_steps // spe):
      first = start_step - epoch * spe if epoch == start_step // spe else 0
      yield from stream_pipeline.train_batches(
          split, global_batch=step_cfg.batch_size, image_size=rt.dataset.image_size, mean=rt.dataset.mean,
          std=rt.dataset.std, seed=rt.config.seed + STAGE_TAGS[stage], epoch=epoch, start_step=first,
          steps=spe, process_index=jax.process_index(), process_count=jax.process_count(), augment=augment)

  iterator = host_batches()

  def advance(state):
    x, labels = next(iterator)
    x = jax.make_array_from_process_local_data(rt.data_sharding, x)
    labels = jax.make_array_from_process_local_data(rt.data_sharding, labels)
    return train_step(state, x, labels)

  return advance


def _variables(stage: str, state: TrainState) -> dict:
  """Inference variables {'backbone', 'batch_stats', 'head'} of a trained state."""
  if stage == 'stage2':
    return {'backbone': state.frozen['params'], 'batch_stats': state.frozen['batch_stats'],
            'head': state.params['head']}
  return {'backbone': state.params['backbone'], 'batch_stats': state.batch_stats, 'head': state.params['head']}


def split_features(rt: Runtime, variables: dict, split) -> tuple[np.ndarray, np.ndarray]:
  """Backbone features [N, D] and labels [N] of every example of an evaluation split, exactly once."""
  if rt.features_fn is None:
    rt.features_fn = make_features_fn(rt.model, rt.dataset.mean, rt.dataset.std, DTYPES[rt.config.model.dtype])
  batch = rt.config.eval_batch_size
  if rt.dataset.in_memory:
    batches = device_pipeline.eval_batches(split, batch)
  else:
    batches = stream_pipeline.eval_batches(split, batch_size=batch // jax.process_count(),
                                           image_size=rt.dataset.image_size, mean=rt.dataset.mean, std=rt.dataset.std,
                                           process_index=jax.process_index(), process_count=jax.process_count())
  backbone = {'backbone': variables['backbone'], 'batch_stats': variables['batch_stats']}
  features, labels = [], []
  for images, batch_labels, mask in batches:
    if rt.dataset.in_memory:  # every process holds the same full batch
      out = rt.features_fn(backbone, jax.device_put(images, rt.data_sharding))
    else:  # each process holds its own shard's batch
      out = rt.features_fn(backbone, jax.make_array_from_process_local_data(rt.data_sharding, images))
    if jax.process_count() > 1:
      out = multihost_utils.process_allgather(out, tiled=True)
      batch_labels = multihost_utils.process_allgather(batch_labels) if not rt.dataset.in_memory else batch_labels
      mask = multihost_utils.process_allgather(mask) if not rt.dataset.in_memory else mask
    features.append(np.asarray(out)[np.asarray(mask).reshape(-1)])
    labels.append(np.asarray(batch_labels).reshape(-1)[np.asarray(mask).reshape(-1)])
  return np.concatenate(features), np.concatenate(labels)


def evaluate(rt: Runtime, variables: dict, split) -> dict:
  """Accuracy report of `variables` on an evaluation split."""
  features, labels = split_features(rt, variables, split)
  return metrics_lib.head_report(features, labels, variables['head'], rt.dataset.train_counts, TOP_K)


def make_runtime(config, workdir: str, dataset: Optional[LongTailDataset] = None) -> Runtime:
  """Validate `config`, load its dataset (unless given) and build the model and mesh."""
  validate_config(config)
  if dataset is None:
    dataset = load_dataset(config.data)
    print(format_summary(dataset.name, count_summary(dataset.train_counts),
                         eval_split_lines(dataset, config.data.val_per_class)))
  model = Model(build_backbone(config.model.name, config.model.dtype), LinearHead(dataset.num_classes))
  return Runtime(config, workdir, dataset, model, sharding.make_mesh(), MetricWriter(workdir), {})


def _restore_finished(directory: str):
  """(TrainState, meta) of the finished checkpoint in `directory`, or None if it has none.

  Restored without a target, so it loads whatever devices saved it.
  """
  if not os.path.isdir(directory):
    return None
  checkpoints = StageCheckpoints(directory, 1)
  meta = checkpoints.latest_meta()
  restored = None
  if meta is not None and meta.get('finished'):
    state, _ = checkpoints.restore_latest()
    restored = TrainState(**state), meta
  checkpoints.close()
  return restored


def load_finished(workdir: str, stage: str) -> tuple[dict, dict]:
  """(inference variables, meta) of the finished `stage` checkpoint in `workdir`; a clear error if absent."""
  directory = os.path.join(workdir, 'checkpoints', stage)
  restored = _restore_finished(directory)
  if restored is None:
    raise FileNotFoundError(f'{workdir} has no finished {stage} checkpoint (looked in {directory}); '
                            f'train it first with launch/train.py --config.stages={stage}.')
  state, meta = restored
  return _variables(stage, state), meta


def restore_variables(rt: Runtime, stage: str) -> dict:
  """Inference variables of a finished stage of `rt.workdir`, checked against the runtime's dataset."""
  variables, meta = load_finished(rt.workdir, stage)
  num_classes = variables['head']['dense']['kernel'].shape[-1]
  saved = meta['config']['data']['name']
  if saved != rt.config.data.name or num_classes != rt.dataset.num_classes:
    raise ValueError(f'the {stage} checkpoint in {rt.workdir} was trained on {saved} with {num_classes} classes; '
                     f'this config has {rt.config.data.name} with {rt.dataset.num_classes} classes.')
  return variables


def train_and_evaluate(config, workdir: str, *, stop_after_steps: Optional[int] = None,
                       dataset: Optional[LongTailDataset] = None) -> dict:
  """Train the configured stages in `workdir` (resuming), evaluate, write `results.json`; return it.

  `stop_after_steps` ends this process's training after that many steps (a checkpoint saved), as a
  preemption would: rerunning resumes. `dataset` skips loading when the caller has it already.
  """
  validate_config(config)
  check_workdir_config(workdir, config.to_dict(), config.allow_config_change)
  rt = make_runtime(config, workdir, dataset)
  stages = parse_stages(config)
  select = selects_stage2(config, rt.dataset)
  trained, record, grid_state = {}, None, None
  budget = StepBudget(stop_after_steps)
  previous_handler = budget.stop_on_sigterm()
  try:
    for stage in stages:
      if stage == 'stage2' and select:
        trained[stage], record, grid_state = run_selected_stage2(rt, budget, trained.get(config.stage2.backbone))
      else:
        trained[stage] = run_stage(rt, stage, budget, trained.get(config.stage2.backbone))
  finally:
    rt.writer.close()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)

  dataset = rt.dataset
  results = {
      'dataset': dataset.name,
      'class_names': list(dataset.class_names),
      'train_counts': dataset.train_counts.tolist(),
      'shot_groups': metrics_lib.shot_groups(dataset.train_counts).tolist(),
      'models': {},
      'weight_norms': {},
  }
  for stage, state in trained.items():
    variables = _variables(stage, state)
    results['models'][stage] = {name: evaluate(rt, variables, split)
                                for name, split in dataset.eval_splits().items()}
    results['weight_norms'][stage] = metrics_lib.weight_norms(jax.device_get(variables['head']['dense']['kernel']))
  if record is not None:
    results['stage2_selection'] = _selection_with_test(rt, record, grid_state)
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, 'results.json'), results)
    if record is not None:
      path = unique_path(os.path.join(workdir, 'stage2_selection.md'))
      with open(path, 'w') as f:
        f.write(selection.selection_table(results['stage2_selection'], 'stage-2 candidate') + '\n')
      print(f'stage-2 grid, validation scores and test accuracy of every candidate: {path}')
    print(results_table(results))
  return results


def _selection_with_test(rt: Runtime, record: dict, grid_state: TrainState) -> dict:
  """The selection record with each candidate's test report, computed after the choice was made."""
  features, labels = split_features(rt, _frozen_variables(grid_state), rt.dataset.test)
  heads = jax.device_get(grid_state.params['head'])
  candidates = []
  for k, candidate in enumerate(record['candidates']):
    report = metrics_lib.head_report(features, labels, _head_at(heads, k), rt.dataset.train_counts, TOP_K)
    candidates.append({**candidate, 'test': {key: value for key, value in report.items() if key != 'per_class'}})
  return {**record, 'candidates': candidates}


def train_heads_and_evaluate(config, workdir: str, head_settings: list, *,
                             dataset: Optional[LongTailDataset] = None) -> list:
  """Stage 2 with one head per setting, trained at once on shared features; evaluate each head.

  Returns one results dict per head, shaped like `train_and_evaluate`'s ({'models': {'stage2': ...},
  'weight_norms': {'stage2': ...}}), and writes them to `workdir/results.json`.
  """
  if not head_settings:
    raise ValueError('train_heads_and_evaluate needs at least one head setting.')
  validate_config(config)
  check_workdir_config(workdir, {**config.to_dict(), 'head_settings': head_settings}, config.allow_config_change)
  rt = make_runtime(config, workdir, dataset)
  try:
    state = run_stage(rt, 'stage2', StepBudget(None), head_settings=head_settings)
  finally:
    rt.writer.close()
  outputs = {name: split_features(rt, _frozen_variables(state), split) for name, split in rt.dataset.eval_splits().items()}
  heads = jax.device_get(state.params['head'])
  results = []
  for k, setting in enumerate(head_settings):
    head = _head_at(heads, k)
    reports = {name: metrics_lib.head_report(f, y, head, rt.dataset.train_counts, TOP_K)
               for name, (f, y) in outputs.items()}
    results.append({'setting': setting, 'models': {'stage2': reports},
                    'weight_norms': {'stage2': metrics_lib.weight_norms(head['dense']['kernel'])}})
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, 'results.json'), {'dataset': rt.dataset.name, 'heads': results})
  return results
