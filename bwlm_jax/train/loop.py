"""Train one stage to its end: resume from its latest checkpoint, step, log, checkpoint, stop when asked."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from bwlm_jax import checkpoints, losses, stages
from bwlm_jax.runtime import stopping
from bwlm_jax.data import device_pipeline, stage_train_split
from bwlm_jax.data.sampling import BatchSpec
from bwlm_jax.runtime.errors import Interrupted
from bwlm_jax.head_setting import HeadSetting
from bwlm_jax.models import DTYPES
from bwlm_jax.train import feeders, migration, optim
from bwlm_jax.train import trainable
from bwlm_jax.train.interval_metrics import IntervalMetrics, NonFiniteWatch, finite_params
from bwlm_jax.train.metric_writer import stage_writer
from bwlm_jax.train.mixing import Mixing, Reweighting
from bwlm_jax.train.state import TrainState, initial_state
from bwlm_jax.train.steps import MEMBER_FIELDS, Members, stacked_copies

# Called every config.eval_every_epochs with (stage, state); returns scalars to log (training curves).
EvalCallback = Callable[[stages.Stage, TrainState], dict]


class StepBudget:
  """How many more training steps this process may take (across stages); None = no limit.

  A SIGTERM (`stopping`) or a multi-process preemption also ends the budget: the step in flight
  finishes, a checkpoint is saved and `Interrupted` is raised, so a rerun resumes from that step.
  """

  def __init__(self, steps: Optional[int]):
    self.remaining = steps
    self.preempted = False

  @property
  def terminated(self) -> bool:
    return self.preempted or stopping.requested()

  @property
  def exhausted(self) -> bool:
    return self.terminated or (self.remaining is not None and self.remaining <= 0)

  def spend(self) -> None:
    if self.remaining is not None:
      self.remaining -= 1


def multi_process() -> bool:
  return jax.process_count() > 1


def stage_split(config, dataset, stage, head_train_set: Optional[str] = None):
  """The training set of a stage (`Stage.train_set`); stage 2's heads train on `head_train_set`
  (`HeadSetting.train_set`: the Review set or the whole tail)."""
  stage = stages.get(stage)
  train_set = head_train_set if stage.trains_heads else stage.train_set
  return stage_train_split(dataset, stage.name if train_set != stages.NAIVE.train_set else stages.NAIVE.name,
                           config.data.subset_seed)


def _plan(ctx, stage, epochs: int, head_train_set: Optional[str] = None):
  """What both kinds of stage start from: (training split, its batch spec, steps per epoch, total steps)."""
  config, dataset = ctx.config, ctx.dataset
  split = stage_split(config, dataset, stage, head_train_set)
  steps_per_epoch = device_pipeline.steps_per_epoch(len(split), config.batch_size)
  augment = config.stage2.augment if stage.trains_heads else config.data.augment
  rand = (0, 0.0) if stage.trains_heads else (config[stage.name].randaugment_layers,
                                              float(config[stage.name].randaugment_magnitude))
  spec = BatchSpec(batch_size=config.batch_size, steps_per_epoch=steps_per_epoch, augment=augment,
                   mean=dataset.mean, std=dataset.std, dtype=DTYPES[config.model.dtype], randaugment=rand)
  return split, spec, steps_per_epoch, epochs * steps_per_epoch


def run_stage(ctx, stage, budget: StepBudget, on_eval: Optional[EvalCallback] = None,
              members: Optional[list[dict]] = None) -> TrainState:
  """Train a backbone stage (naive, stage 1) to its end, resuming from its latest checkpoint; returns the
  final state. `on_eval` is called every `config.eval_every_epochs` epochs. With `members` (K dicts of
  `steps.MEMBER_FIELDS`), K backbones that differ from the config in those fields alone train at once under
  `jax.vmap`, from one init on the same batches (no training curves then); the state holds them stacked on a
  leading axis."""
  stage = stages.get(stage)
  split, spec, steps_per_epoch, total_steps = _plan(ctx, stage, ctx.config[stage.name].epochs)
  stage_cfg = ctx.config[stage.name]

  def optimizer(learning_rate=None, weight_decay=None):
    tx, schedule = optim.stage_optimizer(stage_cfg, total_steps, steps_per_epoch, learning_rate, weight_decay)
    return trainable.masked(tx, stage_cfg.tune, ctx.config.model.name), schedule

  tx, schedule = optimizer()
  state = initial_state(ctx, stage, tx, split=split)
  stacked = None
  if members:
    stacked = Members(*(jnp.asarray([float(m[field]) for m in members], jnp.float32) for field in MEMBER_FIELDS),
                      optimizer=optimizer)
    state = state.replace(**{name: stacked_copies(getattr(state, name), len(members))
                             for name in ('params', 'batch_stats', 'opt_state')})
  state = jax.device_put(state, ctx.replicated)
  feed = feeders.backbone_feed(ctx, stage, split, spec, tx, _backbone_loss(ctx, stage_cfg.loss, split), schedule,
                               trainable.trains_batch_norm(stage_cfg.tune), Mixing.from_config(stage_cfg),
                               _reweighting(ctx, stage_cfg, split, steps_per_epoch), stacked)
  return _resume_and_train(ctx, stage, stage.name, state, feed, budget, total_steps, steps_per_epoch,
                           None if members else on_eval, stacked=bool(members))


def _stage_counts(ctx, split) -> jax.Array:
  """n_j of a backbone stage's own training set (a class without images counts 1: it is never a label)."""
  return jnp.asarray(np.maximum(np.bincount(split.labels, minlength=ctx.dataset.num_classes), 1), jnp.float32)


def _reweighting(ctx, stage_cfg, split, steps_per_epoch: int) -> Optional[Reweighting]:
  """Deferred re-weighting from `<stage>.drw_epoch` on (None where it is 0)."""
  if not stage_cfg.drw_epoch:
    return None
  weights = losses.class_balanced_weights(_stage_counts(ctx, split), stage_cfg.drw_beta)
  return Reweighting(stage_cfg.drw_epoch * steps_per_epoch, weights)


def _backbone_loss(ctx, name: str, split):
  """A backbone stage's loss on logits and labels: cross-entropy, or one of the balanced family over the
  stage's own training counts with stage 2's default alpha, beta and gamma."""
  if name == 'ce':
    return losses.cross_entropy
  counts = _stage_counts(ctx, split)
  setting = HeadSetting(loss=name)
  return lambda logits, labels: losses.head_loss(name, logits, labels, counts, setting)


def run_heads(ctx, budget: StepBudget, backbone_state: TrainState, settings: list, checkpoint_name: str
              ) -> TrainState:
  """Stage 2: a grid of K >= 1 heads, one per `HeadSetting` (all of one training set), trained at once on
  `backbone_state`'s frozen backbone (see `steps.make_heads_step`) for as many epochs as the longest, resuming
  from WORKDIR/checkpoints/<checkpoint_name>. The state holds the K heads stacked on a leading axis."""
  stage = stages.STAGE2
  split, spec, steps_per_epoch, total_steps = _plan(ctx, stage, max(s.epochs for s in settings),
                                                    settings[0].train_set)
  counts = losses.loss_counts(ctx.config.stage2, ctx.dataset.train_counts, split.labels, ctx.dataset.num_classes)
  feed, init_opt_state = feeders.heads_feed(ctx, split, settings, spec, counts)
  state = initial_state(ctx, stage, None, backbone_state)
  heads = {'head': stacked_copies(state.params['head'], len(settings))}
  state = jax.device_put(state.replace(params=heads, opt_state=init_opt_state(heads)), ctx.replicated)
  migration.adopt_single_head(ctx, state, checkpoint_name, total_steps)
  return _resume_and_train(ctx, stage, checkpoint_name, state, feed, budget, total_steps, steps_per_epoch, None,
                           stacked=True)


def _resume_and_train(ctx, stage, checkpoint_name: str, state, feed: feeders.Feed, budget, total_steps: int,
                      steps_per_epoch: int, on_eval, stacked: bool) -> TrainState:
  """Resume `state` from WORKDIR/checkpoints/<checkpoint_name> (a finished one is returned as it is),
  then train it to `total_steps`; `stacked`: the state holds K models (heads or backbones) on axis 0."""
  store = checkpoints.StageCheckpoints(checkpoints.stage_directory(ctx.workdir, checkpoint_name),
                                       ctx.config.keep_checkpoints)
  try:
    restored = store.restore_latest(state)
    if restored is not None:
      state, meta = restored
      if meta.get('finished'):
        print(f'{checkpoint_name}: finished earlier ({meta["step"]} steps); using its checkpoint.')
        return state
      print(f'{checkpoint_name}: resuming at step {meta["step"]} of {total_steps}.')
    return _train(ctx, stage, state, feed, store, budget, total_steps, steps_per_epoch, on_eval, stacked)
  finally:
    store.close()


def _divergence_hint(config, stage) -> str:
  hint = (f'{stage}.learning_rate={config[stage.name].learning_rate:g} is too high for this model and batch '
          f'(lower it with --config.{stage}.learning_rate)')
  if config.model.dtype != 'float32':
    hint += f', or model.dtype={config.model.dtype} overflowed (try float32)'
  return hint + '.'


def _train(ctx, stage, state, feed: feeders.Feed, store, budget, total_steps, steps_per_epoch, on_eval, stacked):
  """The step loop; a `stacked` state holds K models at once (stage 2's heads, or backbones)."""
  config = ctx.config
  start = int(state.step)
  writer = stage_writer(ctx.workdir, stage.name, resume_step=start)
  progress = tqdm(total=total_steps, initial=start, desc=stage.name, unit='step', dynamic_ncols=True,
                  mininterval=1.0, disable=jax.process_index() != 0)
  watch = NonFiniteWatch(stage.name, _divergence_hint(config, stage), 'head' if stage.trains_heads else 'backbone')
  interval = IntervalMetrics(writer, steps_per_epoch, progress, watch, total_steps)

  saved = {'step': start}  # the step whose state is on disk (a stop right after a periodic save saves nothing)

  def save(step, finished):
    """Save only a state whose loss and parameters are finite (else `watch` raises)."""
    if step == saved['step'] and not finished:
      return
    saved['step'] = step
    interval.flush()
    interval.check_open_interval(step)
    finite = np.atleast_1d(jax.device_get(finite_params(state.params, stacked)))
    watch.check(np.where(finite, 0, step), total_steps)
    store.save(step, state, checkpoints.checkpoint_meta(stage.name, step, total_steps, finished, config.to_dict(),
                                                        ctx.dataset, ctx.fingerprint))

  eval_every = config.eval_every_epochs * steps_per_epoch if on_eval is not None else 0
  try:
    with stopping.deferred(f"saving {stage}'s finished checkpoint"):
      for step, inputs in zip(range(start, total_steps), feed.inputs(state, total_steps)):
        if budget.exhausted:  # checked before each step, so a spent budget never starts the next stage
          interval.flush()
          save(step, False)
          reason = 'on SIGTERM' if budget.terminated else 'as asked'
          raise Interrupted(f'{stage}: stopped after step {step} {reason}; rerun to resume.')
        state, step_metrics = feed.step(state, *inputs)
        budget.spend()
        if multi_process() and store.reached_preemption(step + 1):
          budget.preempted = True  # all processes reach this sync point at the same step
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
