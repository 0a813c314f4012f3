"""Rows of a comparison table (the ablation, a sweep): records with a name, a kind and a setting.

A row's `name` identifies it, also across seeds; its `label` is made only for display: a post-hoc
row shows the temperature validation chose, the best-on-validation row the row it repeats.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

KINDS = ('model', 'posthoc', 'best', 'failed')


@dataclasses.dataclass
class Row:
  name: str  # '+BWLM', 'cRT', 'naive+tau-norm', 'best on validation', 'alpha=0.1,lambda=0.01', ...
  kind: str  # 'model' (a trained model), 'posthoc' (a correction of the naive model), 'best' (repeats a row),
  # 'failed' (a candidate that diverged or could not run: no report, never chosen)
  test: dict  # the report on the test split ({} for a failed candidate)
  setting: str = ''  # what validation chose for it ('' when nothing was chosen); for 'best', the row's name;
  # for 'failed', why
  val: Optional[dict] = None  # the report on the validation split
  score: Optional[float] = None  # the validation score the choice compared
  source: dict = dataclasses.field(default_factory=dict)  # where the model is saved (predict.py --stage=best)
  weight_norms: Optional[list] = None

  @property
  def label(self) -> str:
    if self.kind == 'posthoc':
      return f'{self.name} ({self.setting})'
    if self.kind == 'best':
      return f'{self.name}: {self.setting}'
    return self.name


def by_name(rows: list[Row]) -> dict[str, Row]:
  return {row.name: row for row in rows}


def table_inputs(rows: list[Row], with_notes: bool) -> tuple[dict, Optional[dict]]:
  """({label: test report}, {label: {'val', 'chosen'}} or None) for `report.write_tables`."""
  reports = {row.label: row.test for row in rows}
  if not with_notes:
    return reports, None
  notes = {}
  for row in rows:
    chosen = by_name(rows)[row.setting] if row.kind == 'best' else row
    note = {'chosen': chosen.setting if chosen.kind != 'best' else ''}
    if chosen.score is not None:
      note['val'] = chosen.score
    notes[row.label] = note
  return reports, notes
