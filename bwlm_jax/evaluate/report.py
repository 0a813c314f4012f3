"""Result files and the terminal table."""

from __future__ import annotations

import json
import os

COLUMNS = ('many', 'medium', 'few', 'all')


def format_cell(value) -> str:
  return '  -  ' if value is None else f'{100 * value:5.1f}'


def results_table(results: dict) -> str:
  """One row per (model, split): Many / Medium / Few / All top-1 accuracy in %; '-' for an absent group."""
  lines = [f'{"model":<10} {"split":<6} ' + ' '.join(f'{c.capitalize():>6}' for c in COLUMNS)]
  for model, splits in results['models'].items():
    for split, report in splits.items():
      lines.append(f'{model:<10} {split:<6} ' + ' '.join(f'{format_cell(report[c]):>6}' for c in COLUMNS))
  return '\n'.join(lines)


def write_json(path: str, payload: dict) -> None:
  """Write atomically, so an interrupted write never leaves a half file in place of a finished one."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=1)
  os.replace(tmp, path)
