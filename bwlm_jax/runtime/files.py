"""Result files written so that no finished result is lost: atomic writes, never-overwriting paths, CSV,
and one error line for a write the operating system refuses (`writing`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os

from bwlm_jax.runtime.errors import MissingFileError, UsageError, WriteError

# What an exhausted disk, quota or file-size limit looks like, as errno values and in the checkpoint library's
# messages (TensorStore reports a write past the file-size limit as OUT_OF_RANGE).
_OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_OUT_OF_SPACE_TEXT = ('No space left', 'File too large', 'Disk quota', 'OUT_OF_RANGE: Error writing')
FREE_SPACE_ADVICE = ('The disk, a quota or the file-size limit (ulimit -f) is full: free space (or raise the '
                     'limit) and rerun the same command to resume.')


def out_of_space(err: BaseException) -> bool:
  """Whether `err` (or an error that caused it) says that a disk, quota or file-size limit is full."""
  while err is not None:
    if getattr(err, 'errno', None) in _OUT_OF_SPACE_ERRNOS or any(t in str(err) for t in _OUT_OF_SPACE_TEXT):
      return True
    err = err.__cause__ or err.__context__
  return False


@contextlib.contextmanager
def writing(path: str, also: tuple = ()):
  """Where `path` is written: an operating-system error (or one of `also`, a library's own I/O error) becomes
  one WriteError naming the file, the system's reason and what to do. Every writer of the project's files
  goes through here."""
  try:
    yield
  except (OSError, *also) as err:
    reason = f'{type(err).__name__}: {" ".join(str(err).split())[:200]}'
    advice = FREE_SPACE_ADVICE if out_of_space(err) else (
        'Check that folder (its permissions, a read-only mount, a file or folder in the way) and rerun the same '
        'command: finished stages and runs are reused.')
    raise WriteError(f'writing {path} failed ({reason}); nothing finished is lost. {advice}') from err


def make_directory(path: str) -> None:
  """`os.makedirs(path, exist_ok=True)`, failing as one WriteError (`writing`)."""
  with writing(path):
    os.makedirs(path, exist_ok=True)


def read_json(path: str, what: str, remedy: str, kind: type = dict):
  """The JSON value in `path` (a `kind`); a missing, damaged or hand-broken file is one error naming it,
  what it is and what to do (`remedy`). Nothing is deleted."""
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except FileNotFoundError:
    raise MissingFileError(f'{path} ({what}) does not exist. {remedy}') from None
  except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    raise UsageError(f'{path} ({what}) cannot be read: {" ".join(str(err).split())[:160]}. {remedy}') from None
  if not isinstance(value, kind):
    raise UsageError(f'{path} ({what}) is damaged: it holds a JSON {type(value).__name__}, not a JSON '
                     f'{"object" if kind is dict else kind.__name__}. {remedy}')
  return value


def write_json(path: str, payload: dict) -> None:
  write_text(path, json.dumps(payload, indent=1))


def write_text(path: str, text: str) -> None:
  """Write atomically, so an interrupted write never leaves a half file in place of a finished one."""
  tmp = path + '.tmp'
  with writing(path):
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, path)


def write_cache(path: str, save) -> OSError | None:
  """Write a cache file atomically through `save(file)` (a process reading it meanwhile sees the old file or
  none; concurrent writers each use their own partial file). A cache only saves recomputing, so a write the
  system refuses is returned, not raised, and leaves no partial file behind."""
  partial = f'{path}.{os.getpid()}.tmp'
  try:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(partial, 'wb') as file:
      save(file)
    os.replace(partial, path)
  except OSError as error:
    with contextlib.suppress(OSError):
      os.remove(partial)
    return error
  return None


def unique_path(path: str) -> str:
  """`path` if it is free, else the first free `name-2.ext`, `name-3.ext`, ...: never overwrite a result."""
  if not os.path.exists(path):
    return path
  stem, ext = os.path.splitext(path)
  run = 2
  while os.path.exists(f'{stem}-{run}{ext}'):
    run += 1
  return f'{stem}-{run}{ext}'


def write_csv(path: str, header, rows) -> None:
  import csv
  with writing(path), open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def write_json_keeping_earlier(path: str, payload: dict) -> None:
  """Write `payload` to `path`; an earlier file there with other content moves to the first free
  `name-N.json` first, so a result is never overwritten (and the same content is not written twice)."""
  _keep_earlier_if_changed(path, json.loads, json.loads(json.dumps(payload)))
  write_json(path, payload)


def write_text_keeping_earlier(path: str, text: str) -> None:
  """As `write_json_keeping_earlier`, for a text report such as a table."""
  _keep_earlier_if_changed(path, str, text)
  write_text(path, text)


def _keep_earlier_if_changed(path: str, parse, content) -> None:
  """Move the file at `path` to the first free `name-N.ext` unless `parse` of it equals `content`."""
  if not os.path.exists(path):
    return
  with writing(path):
    with open(path) as f:
      try:
        same = parse(f.read()) == content
      except ValueError:
        same = False
    if not same:
      os.replace(path, unique_path(path))
