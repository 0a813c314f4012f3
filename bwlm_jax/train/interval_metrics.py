"""Step metrics summed on the device over a logging interval, written as interval means, and the watch
for a non-finite loss, all without making the host wait on the step it just queued."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from bwlm_jax.runtime.errors import RunError


@jax.jit
def _accumulate(totals: dict, step_metrics: dict) -> dict:
  """Add one step's metrics; 'first_bad' is the interval position of the first non-finite loss (-1: none),
  per head when K heads train at once."""
  bad = ~jnp.isfinite(step_metrics['loss'])
  first_bad = jnp.where((totals['first_bad'] < 0) & bad, totals['steps'], totals['first_bad'])
  return {'sums': jax.tree.map(jnp.add, totals['sums'], step_metrics), 'steps': totals['steps'] + 1,
          'first_bad': first_bad}


def _fresh_totals(step_metrics: dict) -> dict:
  return {'sums': jax.tree.map(jnp.zeros_like, step_metrics), 'steps': jnp.zeros((), jnp.int32),
          'first_bad': jnp.full(jnp.shape(step_metrics['loss']), -1, jnp.int32)}


@functools.partial(jax.jit, static_argnames='stacked')
def finite_params(params, stacked: bool) -> jax.Array:
  """Whether every parameter is finite: a bool, or one per head when K heads are `stacked` on axis 0."""
  leaves = jax.tree.leaves(params)
  if stacked:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in leaves]), axis=0)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class NonFiniteWatch:
  """Stops a stage at the first non-finite loss; with K heads (or backbones) trained at once, only when every
  one has one (a diverged one is reported once, and cannot be chosen)."""

  def __init__(self, stage: str, hint: str, model: str = 'head'):
    self.stage, self.hint, self.model, self.diverged = stage, hint, model, set()

  def check(self, first_step: np.ndarray, total_steps: int) -> None:
    """`first_step`: per model (or head) the first step whose loss was non-finite, 0 where none."""
    first_step = np.atleast_1d(first_step)
    bad = first_step > 0
    if not bad.any():
      return
    if bad.all():
      raise RunError(f'{self.stage}: the loss became non-finite (NaN or Inf) at step {int(first_step[bad].min())} '
                     f'of {total_steps}; stopped without saving, so the last good checkpoint stays the latest and '
                     f'nothing is marked finished. Likely cause: {self.hint}')
    new = set(np.flatnonzero(bad).tolist()) - self.diverged
    if new:
      self.diverged |= new
      print(f'{self.stage}: {self.model}s {sorted(new)} diverged (non-finite loss from step '
            f'{int(first_step[sorted(new)].min())}); they cannot be chosen. Likely cause: {self.hint}', flush=True)


class IntervalMetrics:
  """Metrics of a logging interval, read one interval later (the host never waits on the step it just
  queued); each read also checks the loss for NaN/Inf (`NonFiniteWatch`)."""

  def __init__(self, writer, steps_per_epoch: int, progress, watch: NonFiniteWatch, total_steps: int):
    self.writer, self.steps_per_epoch, self.progress = writer, steps_per_epoch, progress
    self.watch, self.total_steps = watch, total_steps
    self.totals, self.pending = None, None
    self.timer, self.images = time.perf_counter(), 0

  def add(self, step_metrics, batch_size: int) -> None:
    if self.totals is None:
      self.totals = _fresh_totals(step_metrics)
    self.totals = _accumulate(self.totals, step_metrics)
    self.images += batch_size

  def close_interval(self, step: int) -> None:
    now = time.perf_counter()
    rate = self.images / max(now - self.timer, 1e-9)
    self.flush()
    self.pending = (step, self.totals, rate)
    self.totals, self.timer, self.images = None, now, 0

  def check_open_interval(self, step: int) -> None:
    """Check the steps not yet in a closed interval (blocks: call before a checkpoint is saved)."""
    if self.totals is not None:
      totals = jax.device_get(self.totals)
      self._check(step - int(totals['steps']), totals['first_bad'])

  def _check(self, start: int, first_bad) -> None:
    first_bad = np.asarray(first_bad)
    self.watch.check(np.where(first_bad >= 0, start + first_bad + 1, 0), self.total_steps)

  def flush(self) -> None:
    if self.pending is None:
      return
    step, totals, rate = self.pending
    self.pending = None
    totals = jax.device_get(totals)
    count = int(totals['steps'])
    self._check(step - count, totals['first_bad'])
    values = {}
    for name, total in totals['sums'].items():
      mean = np.asarray(total) / count
      finite = mean[np.isfinite(mean)]
      values[name] = float(finite.mean()) if finite.size else float(np.mean(mean))  # K heads: finite heads
      if mean.ndim:
        values.update({f'{name}/{self.watch.model}{k}': float(v) for k, v in enumerate(mean)})
    values['images_per_second'] = rate
    values['epoch'] = step / self.steps_per_epoch
    self.writer.write_scalars(step, values)
    self.progress.set_postfix(epoch=f'{values["epoch"]:.1f}', loss=f'{values["loss"]:.3f}',
                              img_s=f'{rate:.0f}', refresh=False)
