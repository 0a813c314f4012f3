"""One writer per workdir: a lock file created atomically, with its owner inside.

`WORKDIR/.lock` is created with O_CREAT | O_EXCL, which is atomic on local filesystems and on NFS (v3
and later) and Lustre, where advisory locks (flock, fcntl) may silently do nothing. It holds the owner's
host, process id, process start time, command and start date. A second writer stops at once with one
line naming them. A lock whose owner is gone is stale: on the same host (its process no longer runs, or
its id now belongs to another process) it is replaced and the new run says so; a lock from another host
cannot be checked from here, so the error says how to clear it.

Multi-process runs: process 0 holds the lock for the job. Readers (predict, evaluate's reading of
checkpoints) take no lock; every file they read is replaced whole, never written in place.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from typing import Optional

from bwlm_jax.runtime.errors import UsageError


def check_workdir_path(workdir: Optional[str]) -> None:
  """A workdir that can hold a run: named, a directory (or creatable as one), writable."""
  if not workdir or not workdir.strip():
    raise UsageError('the workdir is empty: give --workdir=DIR, the directory for checkpoints, logs and results.')
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UsageError(f'workdir {workdir!r} is a file, not a directory.')
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UsageError(f'workdir {workdir!r} cannot be created: {parent!r} is a file.')
  if not os.access(parent, os.W_OK):
    raise UsageError(f'workdir {workdir!r} cannot be written: no write permission in {parent!r}.')


LOCK_NAME = '.lock'
_held: dict[str, int] = {}  # lock path -> nesting depth, for this process
_created_dirs: set[str] = set()  # lock paths whose workdir this process created


def _process_start(pid: int) -> str | None:
  """The start time of process `pid` (Linux: clock ticks after boot, /proc/PID/stat); None if unknown or gone."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _owner_record() -> dict:
  return {'host': socket.gethostname(), 'pid': os.getpid(), 'process_start': _process_start(os.getpid()),
          'since': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
          'command': ' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])[:300]}


def _read_owner(path: str) -> dict | None:
  """The lock's record; {} when it cannot be read as one (being written, or damaged); None when gone."""
  try:
    with open(path) as f:
      owner = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}
  return owner if isinstance(owner, dict) else {}


def _stale_reason(owner: dict) -> str | None:
  """Why the lock's owner is certainly gone (same host only); None when it may still run."""
  if owner.get('host') != socket.gethostname() or not isinstance(owner.get('pid'), int):
    return None
  if not _alive(owner['pid']):
    return f'process {owner["pid"]} no longer runs'
  start = _process_start(owner['pid'])
  if owner.get('process_start') and start and start != owner['process_start']:
    return f'process id {owner["pid"]} now belongs to another process'
  return None


def _describe(owner: dict) -> str:
  return (f'process {owner.get("pid", "?")} on host {owner.get("host", "?")} since {owner.get("since", "?")} '
          f'({owner.get("command", "?")})')


def _create(path: str) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'w') as f:
    json.dump(_owner_record(), f)
    f.flush()
    os.fsync(f.fileno())
  return True


def acquire(workdir: str) -> str:
  """Take WORKDIR's lock (creating WORKDIR) or raise the one-line error; returns the lock's path."""
  check_workdir_path(workdir)
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  if path in _held:  # this process holds it already (a command that runs another inside)
    _held[path] += 1
    return path
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  for _ in range(3):
    if _create(path):
      _held[path] = 1
      if created:
        _created_dirs.add(path)
      return path
    owner = _read_owner(path)
    if owner is None:  # released in between: try again
      continue
    reason = _stale_reason(owner)
    if reason is None:
      break
    stale = f'{path}.stale-{owner["pid"]}'
    os.replace(path, stale)  # atomic: of two runs finding it stale, one moves it
    print(f'{workdir}: a stale lock was left by {_describe(owner)}: {reason}. Set aside as {stale}; this run '
          'takes the workdir.', flush=True)
  owner = _read_owner(path) or {}
  if not owner:
    raise UsageError(f'workdir {workdir} is locked by {path}, which names no owner (being written, or damaged): if '
                     'no run uses this workdir, delete that file and rerun.')
  other_host = owner.get('host') != socket.gethostname()
  clear = (f'If that process is gone (a lost node), delete {path} and rerun.' if other_host else
           'Wait for it to finish, stop it, or use another --workdir.')
  raise UsageError(f'workdir {workdir} is in use by {_describe(owner)}: one run writes into a workdir at a time. '
                   + clear)


def release(path: str) -> None:
  """Give the lock up (the last of nested acquisitions); a lock that is no longer this process's stays."""
  if path not in _held:
    return
  _held[path] -= 1
  if _held[path]:
    return
  del _held[path]
  owner = _read_owner(path)
  if owner and owner.get('pid') == os.getpid() and owner.get('host') == socket.gethostname():
    os.remove(path)
  if path in _created_dirs:  # a run refused before it wrote anything leaves no empty workdir behind
    _created_dirs.discard(path)
    with contextlib.suppress(OSError):
      os.rmdir(os.path.dirname(path))


def release_all() -> None:
  """Every lock this process holds (before an immediate exit)."""
  for path in list(_held):
    _held[path] = 1
    release(path)


@contextlib.contextmanager
def holding(workdir: str):
  """WORKDIR's lock while inside (one process; a multi-process job uses `distributed.workdir_writer`)."""
  path = acquire(workdir)
  try:
    yield
  finally:
    release(path)
