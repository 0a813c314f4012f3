"""Result files written so that no finished result is lost: atomic writes, never-overwriting paths, CSV."""

from __future__ import annotations

import json
import os

from bwlm_jax.errors import MissingFileError, UsageError


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
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


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
  with open(path, 'w', newline='') as f:
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
  with open(path) as f:
    try:
      same = parse(f.read()) == content
    except ValueError:
      same = False
  if not same:
    os.replace(path, unique_path(path))
