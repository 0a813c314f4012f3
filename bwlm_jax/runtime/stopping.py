"""SIGTERM at any moment: the run stops with a resumable state and exit status 143.

While `sigterm_stops()` is active, a SIGTERM (a preempted or cancelled job) stops the run at once with
`Interrupted`, except inside a `deferred()` section: a training loop (it saves a checkpoint after the step
in flight, then stops) or the writing of a checkpoint or result, which finishes first. Nothing written
before is lost: checkpoints and result files are only ever replaced whole.

Multi-process runs install no handler: JAX's preemption service receives the signal and every process
stops at the same training step (`train/loop.py`).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading

import jax

from bwlm_jax.runtime.errors import Interrupted

_state = {'requested': False, 'deferred': 0}


def requested() -> bool:
  """Whether a SIGTERM arrived since `sigterm_stops` began."""
  return _state['requested']


def stop_now(signum, frame):
  """The SIGTERM handler: `Interrupted` at once, or at the end of the `deferred` section in flight."""
  del signum, frame
  first = not _state['requested']
  _state['requested'] = True
  if _state['deferred']:
    if first:
      print('SIGTERM: finishing the step or file in flight and saving, then stopping.', flush=True)
    return
  raise Interrupted('stopped on SIGTERM before anything unfinished was written; rerun the same command to resume.')


@contextlib.contextmanager
def sigterm_stops():
  """SIGTERM stops the run while inside (main thread of a single-process run; elsewhere nothing changes)."""
  if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
    yield
    return
  previous = signal.signal(signal.SIGTERM, stop_now)
  _state['requested'] = False
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)
    _state['requested'] = False  # a stop belongs to the run it stopped, not to what this process does next


def stops_on_sigterm(function):
  """`function` run inside `sigterm_stops()`."""
  @functools.wraps(function)
  def wrapped(*args, **kwargs):
    with sigterm_stops():
      return function(*args, **kwargs)
  return wrapped


@contextlib.contextmanager
def deferred(what: str):
  """A SIGTERM inside waits until the section ends (then `Interrupted`, unless an error is on its way)."""
  _state['deferred'] += 1
  try:
    yield
  finally:
    _state['deferred'] -= 1
  if _state['requested'] and not _state['deferred']:
    raise Interrupted(f'stopped on SIGTERM after {what}; rerun the same command to resume.')
