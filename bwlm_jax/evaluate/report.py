"""Result files and the terminal table."""

from __future__ import annotations

import json
import os

COLUMNS = ('many', 'medium', 'few', 'all')


def format_cell(value) -> str:
  return '  -  ' if value is None else f'{100 * value:5.1f}'


def results_table(results: dict) -> str:
  """One row per (model, split): Many / Medium / Few / All top-1 accuracy in %; '-' for an absent group."""
  width = max([10] + [len(m) for m in results['models']])
  lines = [f'{"model":<{width}} {"split":<6} ' + ' '.join(f'{c.capitalize():>6}' for c in COLUMNS)]
  for model, splits in results['models'].items():
    for split, report in splits.items():
      lines.append(f'{model:<{width}} {split:<6} ' + ' '.join(f'{format_cell(report[c]):>6}' for c in COLUMNS))
  return '\n'.join(lines)


def write_json(path: str, payload: dict) -> None:
  """Write atomically, so an interrupted write never leaves a half file in place of a finished one."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=1)
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


def markdown_table(rows: dict, title: str) -> str:
  """Rows = {method: report}; columns Many / Medium / Few / All in %, as the paper's Table 2."""
  lines = [f'| {title} | Many | Medium | Few | All |', '|---|---|---|---|---|']
  for method, report in rows.items():
    cells = [format_cell(report[c]).strip() for c in COLUMNS]
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
