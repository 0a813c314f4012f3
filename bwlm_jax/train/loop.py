"""Train one stage to its end: resume from its latest checkpoint, step, log, checkpoint, stop when asked."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Optional

import jax
import numpy as np
from tqdm import tqdm

from bwlm_jax import checkpoints, losses
from bwlm_jax.data import device_pipeline, stage_train_split
from bwlm_jax.data.sampling import BatchSpec
from bwlm_jax.errors import Interrupted
from bwlm_jax.models import DTYPES
from bwlm_jax.train import feeders, optim
from bwlm_jax.train.interval_metrics import IntervalMetrics, NonFiniteWatch, finite_params
from bwlm_jax.train.metric_writer import stage_writer
from bwlm_jax.train.state import TrainState, initial_state, load_backbone_state
from bwlm_jax.train.steps import StepConfig, stack_heads

# Called every config.eval_every_epochs with (stage, state); returns scalars to log (training curves).
EvalCallback = Callable[[str, TrainState], dict]


class StepBudget:
  """How many more training steps this process may take (across stages); None = no limit.

  SIGTERM (a preempted or cancelled job) also ends the budget: the step in flight finishes, a
  checkpoint is saved and `Interrupted` is raised, so a rerun resumes from that step.
  """

  def __init__(self, steps: Optional[int]):
    self.remaining = steps
    self.terminated = False

  @property
  def exhausted(self) -> bool:
    return self.terminated or (self.remaining is not None and self.remaining <= 0)

  def spend(self) -> None:
    if self.remaining is not None:
      self.remaining -= 1

  def stop_on_sigterm(self):
    """Install the SIGTERM handler (main thread only, one process); returns the previous handler to restore.

    A multi-process run installs none: JAX's preemption service receives the signal and every process
    stops at the same step (`preempted_at`), so no host waits in a collective save alone.
    """
    if threading.current_thread() is not threading.main_thread() or multi_process():
      return None

    def handler(signum, frame):
      del signum, frame
      print('SIGTERM: saving a checkpoint after this step, then stopping.', flush=True)
      self.terminated = True

    return signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def sigterm_stops(budget: StepBudget):
  """While inside, SIGTERM ends `budget` (a checkpoint is saved, then `Interrupted`); the previous
  handler comes back on exit."""
  previous = budget.stop_on_sigterm()
  try:
    yield budget
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


def multi_process() -> bool:
  return jax.process_count() > 1


def stage_split(config, dataset, stage: str):
  """The training set of a stage; stage 2 trains on the review set or, if configured, the whole tail."""
  use = 'naive' if stage == 'stage2' and config.stage2.train_set == 'long_tail' else stage
  return stage_train_split(dataset, use, config.data.subset_seed)


def _step_config(ctx, stage: str, steps_per_epoch: int) -> StepConfig:
  config, dataset = ctx.config, ctx.dataset
  augment = config.stage2.augment if stage == 'stage2' else config.data.augment
  spec = BatchSpec(batch_size=config.batch_size, steps_per_epoch=steps_per_epoch, augment=augment,
                   mean=dataset.mean, std=dataset.std, dtype=DTYPES[config.model.dtype])
  return StepConfig(mode='head' if stage == 'stage2' else 'full', batch=spec,
                    max_norm=config.stage2.max_norm if stage == 'stage2' else None)


def run_stage(ctx, stage: str, budget: StepBudget, backbone_state: Optional[TrainState] = None,
              head_settings: Optional[list] = None, checkpoint_name: Optional[str] = None,
              on_eval: Optional[EvalCallback] = None) -> TrainState:
  """Train one stage to its end, resuming from its latest checkpoint; returns the final state.

  With `head_settings` (stage 2 only), K heads train at once, one per setting (see
  `steps.make_multihead_step`), for as many epochs as the longest; the state then holds the K heads
  stacked on a leading axis. Checkpoints go to WORKDIR/checkpoints/<checkpoint_name or stage>.
  `on_eval` is called every `config.eval_every_epochs` epochs (single-model stages).
  """
  config = ctx.config
  split = stage_split(config, ctx.dataset, stage)
  steps_per_epoch = device_pipeline.steps_per_epoch(len(split), config.batch_size)
  epochs = max(s['epochs'] for s in head_settings) if head_settings else config[stage].epochs
  total_steps = epochs * steps_per_epoch
  tx, schedule = optim.stage_optimizer(config[stage], total_steps, steps_per_epoch)
  if stage == 'stage2' and backbone_state is None:
    backbone_state = load_backbone_state(config, ctx.workdir)
  step_cfg = _step_config(ctx, stage, steps_per_epoch)
  counts = losses.loss_counts(config.stage2, ctx.dataset.train_counts, split.labels, ctx.dataset.num_classes)
  state = initial_state(ctx, stage, tx, backbone_state)
  if head_settings is not None:
    multihead = feeders.multihead_parts(ctx, split, head_settings, step_cfg, counts)
    heads = {'head': stack_heads(state.params['head'], len(head_settings))}
    state = state.replace(params=heads, opt_state=multihead['init_opt_state'](heads))
  state = jax.device_put(state, ctx.replicated)

  store = checkpoints.StageCheckpoints(checkpoints.stage_directory(ctx.workdir, checkpoint_name or stage),
                                       config.keep_checkpoints)
  try:
    restored = store.restore_latest(state)
    if restored is not None:
      state, meta = restored
      if meta.get('finished'):
        print(f'{stage}: finished earlier ({meta["step"]} steps); using its checkpoint.')
        return state
      print(f'{stage}: resuming at step {meta["step"]} of {total_steps}.')
    if head_settings is None:
      feeder = feeders.single_head_feeder(ctx, stage, split, step_cfg, tx,
                                          losses.stage_loss(stage, config.stage2, counts), schedule, state,
                                          total_steps)
    else:
      feeder = multihead['feeder'](state)
    return _train(ctx, stage, state, feeder, store, budget, total_steps, steps_per_epoch,
                  on_eval if head_settings is None else None, stacked=head_settings is not None)
  finally:
    store.close()


def _divergence_hint(config, stage: str) -> str:
  hint = (f'{stage}.learning_rate={config[stage].learning_rate:g} is too high for this model and batch '
          f'(lower it with --config.{stage}.learning_rate)')
  if config.model.dtype != 'float32':
    hint += f', or model.dtype={config.model.dtype} overflowed (try float32)'
  return hint + '.'


def _train(ctx, stage, state, feeder, store, budget, total_steps, steps_per_epoch, on_eval, stacked: bool):
  """The step loop; `stacked`: the state holds K heads at once."""
  config = ctx.config
  start = int(state.step)
  writer = stage_writer(ctx.workdir, stage, resume_step=start)
  progress = tqdm(total=total_steps, initial=start, desc=stage, unit='step', dynamic_ncols=True, mininterval=1.0,
                  disable=jax.process_index() != 0)
  watch = NonFiniteWatch(stage, _divergence_hint(config, stage))
  interval = IntervalMetrics(writer, steps_per_epoch, progress, watch, total_steps)

  def save(step, finished):
    """Save only a state whose loss and parameters are finite (else `watch` raises)."""
    interval.flush()
    interval.check_open_interval(step)
    finite = np.atleast_1d(jax.device_get(finite_params(state.params, stacked)))
    watch.check(np.where(finite, 0, step), total_steps)
    store.save(step, state, checkpoints.checkpoint_meta(stage, step, total_steps, finished, config.to_dict(),
                                                        ctx.dataset, ctx.fingerprint))

  eval_every = config.eval_every_epochs * steps_per_epoch if on_eval is not None else 0
  try:
    for step in range(start, total_steps):
      if budget.exhausted:  # checked before each step, so a spent budget never starts the next stage
        interval.flush()
        if step > start:
          save(step, False)
        reason = 'on SIGTERM' if budget.terminated else 'as asked'
        raise Interrupted(f'{stage}: stopped after step {step} {reason}; rerun to resume.')
      state, step_metrics = feeder(state)
      budget.spend()
      if multi_process() and store.reached_preemption(step + 1):
        budget.terminated = True  # all processes reach this sync point at the same step
      interval.add(step_metrics, config.batch_size)
      progress.update(1)
      done = step + 1
      if done % config.log_every_steps == 0 or done == total_steps:
        interval.close_interval(done)
      if eval_every and done % eval_every == 0:
        writer.write_scalars(done, {**on_eval(stage, state), 'epoch': done / steps_per_epoch})
      if done % config.checkpoint_every_steps == 0 and done != total_steps:
        save(done, False)
    save(total_steps, True)
    return state
  finally:
    progress.close()
    writer.close()
