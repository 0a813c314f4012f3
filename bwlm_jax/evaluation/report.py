"""Result files and tables: the terminal table, markdown/CSV/JSON tables, the stage-2 selection table."""

from __future__ import annotations

import os

from bwlm_jax.runtime.files import make_directory, unique_path, write_csv, write_json, write_text
from bwlm_jax import head_setting

COLUMNS = ('many', 'medium', 'few', 'all')


def format_cell(value) -> str:
  return '  -  ' if value is None else f'{100 * value:5.1f}'


def results_table(results: dict) -> str:
  """One row per (model, split): Many / Medium / Few / All top-1 accuracy (and Unseen where classes have no
  training image) and ECE in %; '-' for an absent group. A model with a temperature fitted on val gets a
  '+temperature' row: same accuracy, scaled ECE."""
  rows = []
  for model, splits in results['models'].items():
    rows += [(model, split, report) for split, report in splits.items()]
    scaled = {split: r['temperature_scaled'] for split, r in splits.items() if 'temperature_scaled' in r}
    for split, calibration in scaled.items():
      rows.append((f'{model}+temperature ({calibration["temperature"]:.2f})', split,
                   {**splits[split], 'calibration': calibration}))
  width = max([10] + [len(model) for model, _, _ in rows])
  columns = COLUMNS + (('unseen',) if any('unseen' in report for _, _, report in rows) else ())
  lines = [f'{"model":<{width}} {"split":<6} ' + ' '.join(f'{c.capitalize():>6}' for c in columns) + '    ECE']
  for model, split, report in rows:
    lines.append(f'{model:<{width}} {split:<6} ' + ' '.join(f'{format_cell(report.get(c)):>6}' for c in columns)
                 + f' {format_cell(ece(report)):>6}')
  return '\n'.join(lines)


def ece(report: dict):
  """The report's expected calibration error (None for a report made without logits)."""
  return (report.get('calibration') or {}).get('ece')


def without_per_class(report: dict) -> dict:
  """A report without its per-class list (for tables and summaries)."""
  return {key: value for key, value in report.items() if key != 'per_class'}


def markdown_table(rows: dict, title: str) -> str:
  """Rows = {method: report}; columns Many / Medium / Few / All in %, as the paper's Table 2."""
  lines = [f'| {title} | Many | Medium | Few | All |', '|---|---|---|---|---|']
  for method, report in rows.items():
    cells = [format_cell(report.get(c)).strip() for c in COLUMNS]
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def selection_table(selection: dict, title: str) -> str:
  """Markdown: every candidate's validation score and test accuracy by group; the chosen row marked."""
  metric = selection['metric']
  lines = [f'| {title} | val {metric} | val All | test Many | test Medium | test Few | test All | chosen |',
           '|---|---|---|---|---|---|---|---|']
  for k, candidate in enumerate(selection['candidates']):
    test = candidate.get('test')
    cells = [format_cell(test[c]).strip() if test else '' for c in ('many', 'medium', 'few', 'all')]
    mark = '**chosen**' if k == selection['chosen'] else ''
    lines.append(f'| {head_setting.label(candidate["setting"])} | {format_cell(candidate["score"]).strip()} | '
                 f'{format_cell(candidate["val"]["all"]).strip()} | ' + ' | '.join(cells) + f' | {mark} |')
  return '\n'.join(lines)



def write_tables(out_dir: str, rows: dict, title: str, row_label: str, csv_columns: tuple,
                  notes: dict | None = None) -> str:
  """table.md, table.csv and table.json in out_dir (never overwritten); returns the md.

  `notes` (row -> {'val': score, 'chosen': text}) adds the validation score and the settings
  chosen on validation to each row.
  """
  make_directory(out_dir)
  notes = notes or {}
  extra = ('val', 'chosen on validation') if notes else ()
  lines = [f'| {title} | ' + ' | '.join(c.capitalize() for c in COLUMNS) + ' | ECE'
           + ''.join(f' | {e}' for e in extra) + ' |', '|---' * (2 + len(COLUMNS) + len(extra)) + '|']
  for name, report in rows.items():
    cells = [format_cell(report.get(c)).strip() for c in (*COLUMNS,)] + [format_cell(ece(report)).strip()]
    if notes:
      note = notes.get(name, {})
      cells += [format_cell(note.get('val')).strip(), note.get('chosen', '')]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  table = '\n'.join(lines)
  write_text(unique_path(os.path.join(out_dir, 'table.md')), table + '\n')
  write_csv(unique_path(os.path.join(out_dir, 'table.csv')),
            [row_label, *csv_columns, 'ece', *(['val', 'chosen'] if notes else [])],
            [[name, *(report.get(column) for column in csv_columns), ece(report),
              *([notes.get(name, {}).get('val'), notes.get(name, {}).get('chosen', '')] if notes else [])]
             for name, report in rows.items()])
  write_json(unique_path(os.path.join(out_dir, 'table.json')),
             {'dataset': title, 'rows': {name: without_per_class(report)
                                         for name, report in rows.items()}, 'notes': notes})
  return table
