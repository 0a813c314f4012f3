"""What every launch script shares: flags parsed and errors printed as one `error: ...` line.

A mistake in the input (an unknown config field, a missing file, a bad value) exits with status 2, a
run that cannot go on with status 1, a run stopped by SIGTERM with 143 after saving; none prints a
traceback unless --verbose is given. Errors that are bugs (anything else) keep their traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
from typing import Callable

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from bwlm_jax.runtime import distributed, process_setup, workdir_lock
from bwlm_jax.runtime.errors import BwlmError, Interrupted, SaveError, UsageError

_VERBOSE = flags.DEFINE_bool('verbose', False, 'Print the full traceback of an error (for bug reports).')


def one_line(error: BaseException) -> str:
  """The message of `error` on one line (ml_collections wraps its KeyError in an AttributeError)."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
  return ' '.join(text.replace('\\n', ' ').split())


def fail(message: str, status: int) -> None:
  sys.stdout.flush()
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(status)


def exit_now(status: int) -> None:
  """Leave at once, after the error line: the checkpoint library's background threads (a failed save) and
  JAX's exit handler (a dead peer) would otherwise print tracebacks after it, or wait and abort. Every
  result was written before; the workdir's lock is given up. (Other errors leave with sys.exit, so that
  the processes of a multi-process run shut down together.)"""
  workdir_lock.release_all()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with every parse-time error (config file missing or failing, unknown config field,
  wrong value type) as one line. --verbose is read from argv: the flags are not parsed yet."""
  try:
    args = flags.FLAGS(argv)
    for name in flags.FLAGS:
      _raise_config_load_error(name, flags.FLAGS[name])
    return args
  except Exception as err:  # noqa: BLE001  (config files run user code: any error is the input's)
    if '--verbose' in argv:
      raise
    fail(_flag_error_message(err, argv), 2)


def _raise_config_load_error(name: str, flag) -> None:
  """ml_collections defers a config file's load error to the first use of the config: raise it now."""
  if type(flag.value).__name__ != '_ErrorConfig':
    return
  path = flag.config_filename.partition(':')[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--{name}: config file {path!r} does not exist.')
  raise ValueError(f'--{name}: config file {flag.config_filename!r} failed to load: '
                   f'{one_line(object.__getattribute__(flag.value, "_error"))}')


def _flag_error_message(error: Exception, argv: list[str]) -> str:
  """One line; an unknown config field names the flag that set it (ml_collections names only the key)."""
  message = one_line(error)
  if 'Traceback (most recent call last)' in str(error):  # a config file's get_config raised: keep its message
    message = message.split(' Traceback (most recent call last)')[0] + ' ' + str(error).strip().splitlines()[-1]
  unknown = re.match(r"'([^']+)'\s*(Did you mean .*)?$", message) if isinstance(error, (AttributeError, KeyError)) \
      else None
  if unknown:
    field = unknown.group(1)
    given = next((a for a in argv if re.match(rf'--[\w.]*\.{re.escape(field)}(=|$)', a)), field)
    return f'{given}: no config field {field!r}.' + (f' {unknown.group(2)}' if unknown.group(2) else '')
  return message


def _finished_sigterm(signum, frame) -> None:
  del signum, frame
  print('SIGTERM after the run finished: every result was written; exiting with status 0.', flush=True)
  exit_now(0)


def _guarded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """`main` with one line per error, and SIGTERM handled until the process exits: outside a run's own
  handling (`stopping.sigterm_stops`: between the runs of a sweep, while data loads) it stops as there, with
  status 143; once `main` has returned, every result is written, so the process leaves at once with status
  0 (a scheduler's requeue would find nothing left to do). A multi-process run keeps JAX's own handler."""
  def run_main(argv: list[str]) -> None:
    from bwlm_jax.runtime import stopping  # here: it imports JAX, which the launch scripts set up first
    ours = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    if ours:
      signal.signal(signal.SIGTERM, stopping.stop_now)
    try:
      main(argv)
      if ours and signal.getsignal(signal.SIGTERM) is stopping.stop_now:  # not JAX's preemption handler
        signal.signal(signal.SIGTERM, _finished_sigterm)
    except Interrupted as stop:
      print(stop, flush=True)
      sys.exit(stop.exit_status)
    except (BwlmError, app.UsageError) as err:
      if _VERBOSE.value:
        raise
      if isinstance(err, SaveError):  # a checkpoint barrier can be where a dead peer is noticed
        _stop_if_peer_lost(err.__cause__)
        print(f'error: {one_line(err)}', file=sys.stderr, flush=True)
        exit_now(err.exit_status)
      fail(one_line(err), getattr(err, 'exit_status', 2))  # sys.exit: JAX's shutdown syncs with the peers
    except Exception as err:  # noqa: BLE001  (only a lost peer is turned into a line; the rest propagates)
      if _VERBOSE.value:
        raise
      _stop_if_peer_lost(err)
      raise
  return run_main


def _stop_if_peer_lost(err) -> None:
  """One line and an immediate exit where `err` says that another process of the run died."""
  lost = _lost_peer(err) if isinstance(err, Exception) else None
  if lost is None:
    return
  sys.stdout.flush()
  print(f'error: another process of this multi-process run stopped ({lost}); this one stops too. The '
        'checkpoints saved before are kept: rerun every process to resume.', file=sys.stderr, flush=True)
  exit_now(1)


# What JAX's collectives and coordination service say when a peer process is gone.
_PEER_LOST = ('Connection closed by peer', 'Connection reset by peer', 'heartbeat timeout',
              'stopped sending heartbeats', 'Gloo all-reduce failed', 'Gloo all-gather failed', 'Barrier failed',
              'Barrier timed out', 'barrier timed out')


def _lost_peer(err: Exception):
  """The reason, where `err` or an error along its causes says that another process of a multi-process run
  died (the checkpoint library wraps a failed barrier in its own errors, whose types vary); else None."""
  import jax
  if jax.process_count() == 1:
    return None
  while err is not None:
    text = str(err)
    found = next((marker for marker in _PEER_LOST if marker in text), None)
    if found is not None:
      start = text.rfind('Gloo') if 'Gloo' in text else text.find(found)
      return ' '.join(text[start:start + 160].split())
    err = err.__cause__ or err.__context__
  return None


class _OrbaxThreadTracebacks(logging.Filter):
  """Drops the tracebacks the checkpoint library logs from its background threads when a save fails (a
  full disk: hundreds of lines): the same failure reaches the run as an exception and ends it with one
  `error:` line that names it. --verbose keeps them."""

  def filter(self, record: logging.LogRecord) -> bool:
    from_orbax = f'{os.sep}orbax{os.sep}' in record.pathname and record.levelno >= logging.ERROR
    return not from_orbax or (flags.FLAGS.is_parsed() and _VERBOSE.value)


def _without_closed_loop_callbacks(hook):
  """sys.unraisablehook, quiet for the reads a failed checkpoint restore leaves in flight: TensorStore
  completes them later, and its callback into the checkpoint library's closed event loop raises 'Event loop
  is closed' (a damaged checkpoint printed ~50 of these tracebacks after the run had said in one line that
  it is unreadable). Everything else, and everything under --verbose, goes to `hook`."""
  def unraisablehook(unraisable):
    last = unraisable.exc_traceback
    while last is not None and last.tb_next is not None:
      last = last.tb_next
    in_asyncio = last is not None and f'{os.sep}asyncio{os.sep}' in last.tb_frame.f_code.co_filename
    closed_loop = unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == 'Event loop is closed'
    if not (closed_loop and in_asyncio) or (flags.FLAGS.is_parsed() and _VERBOSE.value):
      hook(unraisable)
  return unraisablehook


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with the error handling above."""
  absl_logging.get_absl_handler().addFilter(_OrbaxThreadTracebacks())
  sys.unraisablehook = _without_closed_loop_callbacks(sys.unraisablehook)
  app.run(_guarded(main), flags_parser=_parse_flags)


def no_arguments(argv: list[str]) -> None:
  """Refuse positional arguments (a launch script takes flags only)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}: every option is a --flag.')


def number_list(text: str, flag: str) -> list[float]:
  """'0,0.1,0.5' -> [0.0, 0.1, 0.5]; an error naming --flag and the item that is not a number."""
  values = []
  for item in (i.strip() for i in text.split(',')):
    if not item:
      continue
    try:
      values.append(float(item))
    except ValueError:
      raise UsageError(f'--{flag}={text}: {item!r} is not a number; expected e.g. --{flag}=0,0.1,0.5.') from None
  if not values:
    raise UsageError(f'--{flag} needs at least one value, e.g. --{flag}=0,0.1,0.5.')
  return values


def whole_numbers(text: str, flag: str) -> list[int]:
  """'0,1,2' -> [0, 1, 2]; an error naming --flag for an item that is not a whole number."""
  values = number_list(text, flag)
  if any(v != int(v) for v in values):
    raise UsageError(f'--{flag}={text}: expected whole numbers, e.g. --{flag}=0,1,2.')
  return [int(v) for v in values]


@dataclasses.dataclass
class RunFlags:
  """The flags every training tool shares (`define_run_flags`)."""
  config: object
  workdir: object
  seeds: object
  vary_subset: object
  cpu_devices: object
  distributed: dict

  def seed_list(self):
    """--seeds as whole numbers, or None (one run)."""
    return whole_numbers(self.seeds.value, 'seeds') if self.seeds.value is not None else None


def define_run_flags(what: str, workdir_help: str = 'Directory for checkpoints, logs and results.') -> RunFlags:
  """--config, --workdir, --seeds (`what` once per seed), --seeds_vary_subset, --cpu_devices and the
  multi-process flags: what train.py and every study's script take."""
  config = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, workdir_help)
  seeds = flags.DEFINE_string('seeds', None, f'Comma-separated seeds, e.g. 0,1,2: {what} once per seed in '
                              'WORKDIR/seed-<s>/, then mean ± std over seeds and paired differences '
                              '(WORKDIR/seeds.{json,md}).')
  vary_subset = flags.DEFINE_bool('seeds_vary_subset', False, 'With --seeds: each seed also picks which images the '
                                  'long tail keeps (data.subset_seed).')
  run_flags = RunFlags(config, workdir, seeds, vary_subset, process_setup.define_cpu_devices_flag(),
                       distributed.define_flags())
  flags.mark_flags_as_required(['config', 'workdir'])
  return run_flags


def define_grid_flag(name: str, grid, help_text: str):
  """A study's grid as `--NAME.FIELD=...` flags. ml_collections reads those overrides when the flag is defined,
  as the tool is imported and before `run`'s handling: a field the grid lacks is one error line here too."""
  try:
    return config_flags.DEFINE_config_dict(name, grid, help_text, lock_config=True)
  except (AttributeError, KeyError) as err:
    if '--verbose' in sys.argv:
      raise
    fail(_flag_error_message(err, sys.argv), 2)


@contextlib.contextmanager
def started(run_flags: RunFlags, argv: list[str], cpu_runtime: Callable[[str], str]):
  """A training tool's opening: its flags checked, the process set up before JAX runs (the CPU settings
  `cpu_runtime(config.model.name)` names, devices, the processes of a multi-process run), and the workdir held
  by this run alone; yields the seeds (None: one run)."""
  no_arguments(argv)
  seeds = run_flags.seed_list()
  process_setup.start_process(run_flags.cpu_devices.value, cpu_runtime(run_flags.config.value.model.name))
  distributed.start({name: flag.value for name, flag in run_flags.distributed.items()})
  with distributed.workdir_writer(run_flags.workdir.value):  # one run writes into a workdir at a time
    yield seeds
